"""The audit trail over lineage records and manifests, at AudioSet scale."""

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audioclip_core.cli import main
from audioclip_core.errors import LineageError
from audioclip_core.files import sha256_file
from audioclip_core.lineage import chain, checkpoints_for_clip, format_chain, record_name

ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))


@pytest.fixture(scope="module")
def big_lineage(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    n = 2_000_000
    codes = rng.integers(0, len(ALPHABET), size=(n, 11), dtype=np.int8)
    ytids = ["".join(row) for row in ALPHABET[codes].tolist()]
    ytids[123_456] = "NeedleClip1"
    ytids[7] = "BadClip0001"
    status = np.where(np.arange(n) == 7, "unavailable", "ok")
    table = pa.table({"segment_id": [f"{y}_0" for y in ytids], "ytid": ytids, "status": status})
    manifest = root / "audioset" / "manifests" / "unbalanced_00.parquet"
    manifest.parent.mkdir(parents=True)
    pq.write_table(table, manifest)
    other = root / "esc50" / "folds" / "1" / "train.parquet"
    other.parent.mkdir(parents=True)
    pq.write_table(pa.table({"path": ["audio/1-100032-A-0.wav"], "status": ["ok"]}), other)

    def record(stage, manifests, parent=None, step=None):
        ck = root / "checkpoints" / stage / f"{stage}.safetensors"
        ck.parent.mkdir(parents=True, exist_ok=True)
        ck.write_bytes(stage.encode())
        # `name` is the asset, `stage` the paper's step; a record without `step` has the older
        # shape, its asset under "stage", and must still be read
        names = {"name": stage, "stage": step} if step else {"stage": stage}
        rec = {
            **names,
            "checkpoint": {"path": str(ck), "sha256": sha256_file(ck)},
            "manifests": {
                name: {"path": str(p), "sha256": sha256_file(p), "rows": rows} for name, (p, rows) in manifests.items()
            },
            "parent": parent,
            "config": {"preset": "audioclip-tiny", "epochs": 1},
            "seed": 0,
            "code": {"git_commit": "abc123", "git_dirty": False},
            "dagster": {"run_id": f"run-{stage}"},
            "mlflow_run_id": f"ml-{stage}",
        }
        ck.with_suffix(".lineage.json").write_text(json.dumps(rec))
        return {"path": str(ck), "sha256": rec["checkpoint"]["sha256"], "name": stage}

    s1 = record("esresnext_audioset", {"audioset_unbalanced_00": (manifest, n - 1)})
    s2 = record("audioclip_partial", {"audioset_unbalanced_00": (manifest, n - 1)}, s1, "audioclip_partial")
    s4 = record("audioclip_esc50", {"esc50_fold1_train": (other, 1)}, s2, "audioclip_finetune")
    return root, s1, s2, s4


def test_clip_to_checkpoints_over_two_million_rows(big_lineage, capsys):
    root, s1, s2, s4 = big_lineage
    start = time.perf_counter()
    hits = checkpoints_for_clip("NeedleClip1", root)
    elapsed = time.perf_counter() - start
    print(f"2,000,000-row manifest: {elapsed:.2f} s")
    by_stage = {h.name: h for h in hits}
    assert set(by_stage) == {"esresnext_audioset", "audioclip_partial", "audioclip_esc50"}
    assert by_stage["audioclip_partial"].via == "trained on it"
    assert by_stage["audioclip_esc50"].via.startswith("descends from audioclip_partial")
    assert checkpoints_for_clip("BadClip0001", root) == []  # listed but never downloaded: not trained on
    assert checkpoints_for_clip("NotThere123", root) == []
    assert [h.name for h in checkpoints_for_clip("1-100032-A-0.wav", root)] == ["audioclip_esc50"]
    assert main(["lineage", "--clip", "NeedleClip1", "--data-root", str(root)]) == 0
    assert "3 checkpoints from data holding NeedleClip1: 2 trained on it, 1 descend from one of those" in (
        capsys.readouterr().out
    )


def test_checkpoint_to_data_and_code(big_lineage, capsys):
    root, s1, s2, s4 = big_lineage
    records = chain(s4["path"])
    assert [record_name(r) for r in records] == ["audioclip_esc50", "audioclip_partial", "esresnext_audioset"]
    assert records[0]["stage"] == "audioclip_finetune"
    text = format_chain(records)
    assert "1999999 clips" in text and "[unchanged]" in text and "run-audioclip_partial" in text
    assert main(["lineage", s4["path"]]) == 0
    assert "esresnext_audioset" in capsys.readouterr().out


def test_a_checkpoint_without_record_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(LineageError, match="no lineage record"):
        chain(tmp_path / "x.pt")
    assert main(["lineage", str(tmp_path / "x.pt")]) == 1
    assert "no lineage record" in capsys.readouterr().err


def test_clips_of_a_checkpoint_survive_a_manifest_change(tmp_path, capsys):
    """The record names the exact manifest version (kept, content-addressed): after the manifest
    is rewritten with other clips, --clips still lists what the checkpoint was trained on."""
    from audioclip_core.lineage import lineage_record, write_lineage
    from audioclip_core.training.assemble import manifest_entry

    manifest = tmp_path / "audioset" / "manifests" / "eval.parquet"
    manifest.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"segment_id": ["OldClip0001_0", "OldClip0002_0", "Gone0000001_0"], "status": ["ok", "ok", "unavailable"]}
        ),
        manifest,
    )
    entry = manifest_entry(manifest, 2, store=tmp_path / "versions")
    ck = tmp_path / "checkpoints" / "audioclip_full" / "audioclip_full.safetensors"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"weights")
    write_lineage(
        lineage_record(
            name="audioclip_full", stage="audioclip_full", checkpoint=ck, config={}, manifests={"audioset_eval": entry}
        ),
        ck,
    )
    pq.write_table(pa.table({"segment_id": ["NewClip0001_0"], "status": ["ok"]}), manifest)  # moved on

    assert main(["lineage", str(ck), "--clips"]) == 0
    out = capsys.readouterr().out
    assert "audioset_eval" in out and "2 clips" in out
    assert "OldClip0001_0" in out and "OldClip0002_0" in out
    assert "NewClip0001_0" not in out and "Gone0000001_0" not in out  # only what it trained on (status ok)
    assert sha256_file(entry["version"]) == entry["sha256"]
    assert "[CHANGED since training]  (version kept, intact)" in format_chain(chain(ck))
    kept = Path(entry["version"])  # rewritten in place by its owner: the chain says so
    kept.chmod(0o644)
    kept.write_bytes(kept.read_bytes() + b"x")
    assert "(version kept, but CHANGED IN PLACE" in format_chain(chain(ck))
    # without the kept version and with the manifest changed, it says so instead of guessing
    (tmp_path / "versions" / f"{entry['sha256']}.parquet").unlink()
    assert main(["lineage", str(ck), "--clips"]) != 0
    assert "no longer on disk" in capsys.readouterr().err


def _flip_a_weight_byte(path):
    """One bit of the first tensor's lowest byte (safetensors: 8-byte header length, header,
    then the tensor data): the file still loads, with other weights."""
    data = bytearray(path.read_bytes())
    data[8 + int.from_bytes(data[:8], "little")] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def recorded_chain(tiny_model, tmp_path):
    """A parent and a child checkpoint of ours (tiny), each with its lineage record."""
    import audioclip_core as ac
    from audioclip_core.lineage import lineage_record, write_lineage

    out = {}
    parent = None
    for name in ("audioclip_partial", "audioclip_full"):
        ck = tmp_path / name / f"{name}.safetensors"
        ck.parent.mkdir()
        ac.save_checkpoint(tiny_model, ck, metadata={"name": name, "input_scale": "int16"})
        write_lineage(lineage_record(name=name, stage=name, checkpoint=ck, config={}, manifests={}, parent=parent), ck)
        parent = {"path": str(ck), "sha256": sha256_file(ck), "name": name}
        out[name] = ck
    return out


def test_lineage_says_verified_or_mismatch_for_every_file_of_the_chain(recorded_chain, capsys):
    from audioclip_core.cli import EXIT_MISMATCH
    from audioclip_core.lineage import MISMATCH, UNRECORDED, VERIFIED, verify_checkpoint

    parent, child = recorded_chain["audioclip_partial"], recorded_chain["audioclip_full"]
    assert main(["lineage", str(child)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("VERIFIED") == 2 and "MISMATCH" not in captured.out and captured.err == ""
    assert verify_checkpoint(child).state == VERIFIED

    recorded = sha256_file(parent)
    _flip_a_weight_byte(parent)
    actual = sha256_file(parent)
    check = verify_checkpoint(parent)
    assert (check.state, check.recorded, check.actual) == (MISMATCH, recorded, actual)
    assert main(["lineage", str(child)]) == EXIT_MISMATCH
    captured = capsys.readouterr()
    assert f"sha256 {recorded}  MISMATCH: the file's sha256 is now {actual}" in captured.out
    assert captured.out.count("VERIFIED") == 1  # the child is intact
    assert f"{parent}: MISMATCH - its sha256 is {actual}, its lineage record says {recorded}" in captured.err
    assert main(["lineage", str(parent)]) == EXIT_MISMATCH
    capsys.readouterr()
    # a checkpoint without a record (a released one) is not hashed, nor called changed
    parent.with_suffix(".lineage.json").unlink()
    assert verify_checkpoint(parent).state == UNRECORDED and verify_checkpoint(parent).actual is None


def test_classify_warns_of_a_changed_checkpoint_and_still_answers(recorded_chain, shared_data, tmp_path, capsys):
    ck = recorded_chain["audioclip_full"]
    clip = str(sorted((shared_data / "esc50" / "audio").glob("*.wav"))[0])
    args = ["classify", "-c", str(ck), "--labels", "dog,rain", "-o", str(tmp_path / "p.json"), clip]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    recorded = sha256_file(ck)
    _flip_a_weight_byte(ck)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        f"audioclip: warning: {ck}: MISMATCH - its sha256 is {sha256_file(ck)}, its lineage record says {recorded}"
    ) in err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["status"] == "ok" and rows[0]["label"] in {"dog", "rain"}
    assert main(["query", "-c", str(ck), "--text", "dog", "-o", str(tmp_path / "q.json"), clip]) == 0
    assert "MISMATCH" in capsys.readouterr().err
