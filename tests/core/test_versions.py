"""Manifests as immutable content-addressed versions behind a pointer, paths relative to the
data root, and the gate that stops a stage whose in-batch retrieval is at chance."""

import logging
import math
import os
import shutil

import pandas as pd
import pytest
import torch

from audioclip_core.cli import main
from audioclip_core.data.manifests import absolute_paths, read_manifest, relative_paths
from audioclip_core.files import CorruptVersion, keep_version, publish_version, sha256_file
from audioclip_core.lineage import lineage_record, write_lineage
from audioclip_core.training.assemble import manifest_entry
from audioclip_core.training.health import at_chance
from audioclip_core.training.steps import caption_retrieval


def _manifest(ids, root):
    return pd.DataFrame(
        {
            "segment_id": ids,
            "status": ["ok"] * len(ids),
            "audio_path": [str(root / "audioset" / "clips" / "eval" / f"{i}.wav") for i in ids],
            "frame_paths": [
                [str(root / "audioset" / "clips" / "eval" / f"{i}_f{k:02d}.jpg") for k in range(2)] for i in ids
            ],
        }
    )


def test_a_published_manifest_is_an_immutable_version_behind_a_relative_pointer(tmp_path):
    root = tmp_path / "data"
    pointer, store = root / "audioset" / "manifests" / "eval.parquet", root / "versions"
    sha1, v1 = publish_version(relative_paths(_manifest(["A", "B"], root), root), store, pointer)
    assert v1 == store / f"{sha1}.parquet" and sha256_file(v1) == sha1
    assert pointer.is_symlink() and os.readlink(pointer) == f"../../versions/{sha1}.parquet"
    assert v1.stat().st_mode & 0o222 == 0
    # the same content again is the same version; new content a new one, the old one untouched
    assert publish_version(relative_paths(_manifest(["A", "B"], root), root), store, pointer) == (sha1, v1)
    sha2, v2 = publish_version(relative_paths(_manifest(["C"], root), root), store, pointer)
    assert sha2 != sha1 and sha256_file(v1) == sha1 and pointer.resolve() == v2.resolve()
    assert list(pd.read_parquet(pointer)["segment_id"]) == ["C"]
    # a pointer names its version without a copy; a plain file is copied into the store
    assert keep_version(pointer, store) == (sha2, v2.resolve())
    plain = tmp_path / "plain.parquet"
    _manifest(["D"], root).to_parquet(plain)
    sha3, v3 = keep_version(plain, store)
    assert sha3 == sha256_file(plain) and v3.parent == store and not v3.is_symlink()
    # a regular file where the pointer goes (an older root) is replaced by the pointer
    legacy = root / "esc50" / "manifest.parquet"
    legacy.parent.mkdir(parents=True)
    _manifest(["E"], root).to_parquet(legacy)
    publish_version(_manifest(["F"], root), store, legacy)
    assert legacy.is_symlink() and list(pd.read_parquet(legacy)["segment_id"]) == ["F"]


def test_a_version_changed_in_place_is_refused_where_it_is_read_and_replaced_when_published(tmp_path, caplog):
    """A version's bytes are checked against its name wherever it is used - training
    (manifest_entry / keep_version), the tables and the shards (read_manifest) - and publishing
    its content again writes it anew instead of keeping the changed file."""
    root = tmp_path / "data"
    pointer, store = root / "audioset" / "manifests" / "eval.parquet", root / "versions"
    sha, version = publish_version(relative_paths(_manifest(["A", "B"], root), root), store, pointer)
    version.chmod(0o644)
    relative_paths(_manifest(["Injected"], root), root).to_parquet(version)  # same name, other rows
    actual = sha256_file(version)
    assert actual != sha
    for read in (
        lambda: read_manifest(pointer, root),
        lambda: read_manifest(version, root),
        lambda: keep_version(pointer, store),
        lambda: manifest_entry(pointer, 2, store=store),
        lambda: manifest_entry(pointer, 2),
    ):
        with pytest.raises(CorruptVersion) as err:
            read()
        assert str(version.resolve()) in str(err.value) and sha in str(err.value) and actual in str(err.value)
        assert (err.value.expected, err.value.actual) == (sha, actual)
    with caplog.at_level(logging.WARNING, logger="audioclip_core.files"):
        assert publish_version(relative_paths(_manifest(["A", "B"], root), root), store, pointer) == (sha, version)
    assert f"{version}: version changed in place (its bytes hash to {actual}" in caplog.text
    assert sha256_file(version) == sha and version.stat().st_mode & 0o222 == 0
    assert list(read_manifest(pointer, root)["segment_id"]) == ["A", "B"]
    assert keep_version(pointer, store) == (sha, version.resolve())
    # an intact version published again is left as it is, without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audioclip_core.files"):
        publish_version(relative_paths(_manifest(["A", "B"], root), root), store, pointer)
    assert caplog.text == ""


def test_paths_are_relative_to_the_root_and_resolve_after_a_move(tmp_path):
    root = tmp_path / "a" / "data"
    df = _manifest(["A", "B"], root)
    df.loc[1, "audio_path"] = "/elsewhere/B.wav"  # a source outside the root stays absolute
    df.loc[2] = {"segment_id": "C", "status": "unavailable", "audio_path": None, "frame_paths": None}
    rel = relative_paths(df, root)
    assert rel.loc[0, "audio_path"] == "audioset/clips/eval/A.wav"
    assert list(rel.loc[0, "frame_paths"]) == ["audioset/clips/eval/A_f00.jpg", "audioset/clips/eval/A_f01.jpg"]
    assert rel.loc[1, "audio_path"] == "/elsewhere/B.wav" and rel.loc[2, "audio_path"] is None
    pointer = root / "audioset" / "manifests" / "eval.parquet"
    publish_version(rel, root / "versions", pointer)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    moved = tmp_path / "b" / "data"
    back = read_manifest(moved / "audioset" / "manifests" / "eval.parquet", moved)
    assert back.loc[0, "audio_path"] == str(moved / "audioset" / "clips" / "eval" / "A.wav")
    assert back.loc[0, "frame_paths"][1] == str(moved / "audioset" / "clips" / "eval" / "A_f01.jpg")
    assert back.loc[1, "audio_path"] == "/elsewhere/B.wav" and back.loc[2, "audio_path"] is None
    assert absolute_paths(rel, root).loc[0, "audio_path"] == df.loc[0, "audio_path"]


def test_clips_of_a_checkpoint_after_its_published_manifest_moved_on(tmp_path, capsys):
    root = tmp_path / "data"
    pointer, store = root / "audioset" / "manifests" / "eval.parquet", root / "versions"
    publish_version(relative_paths(_manifest(["OldClip0001_0", "OldClip0002_0"], root), root), store, pointer)
    entry = manifest_entry(pointer, 2, store=store)
    ck = root / "checkpoints" / "audioclip_full" / "audioclip_full.safetensors"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"weights")
    write_lineage(
        lineage_record(
            name="audioclip_full", stage="audioclip_full", checkpoint=ck, config={}, manifests={"audioset_eval": entry}
        ),
        ck,
    )
    publish_version(relative_paths(_manifest(["NewClip0001_0"], root), root), store, pointer)
    assert main(["lineage", str(ck), "--clips"]) == 0
    out = capsys.readouterr().out
    assert "OldClip0001_0" in out and "OldClip0002_0" in out and "NewClip0001_0" not in out


def test_caption_retrieval_counts_identical_captions_and_its_chance():
    texts = [["dog"], ["dog"], ["cat"], ["rain"]]
    logits = torch.tensor(
        [
            [0.0, 5.0, 1.0, 0.0],  # clip 0 -> caption 1: "dog" as well, a hit
            [0.0, 0.0, 5.0, 0.0],  # clip 1 -> "cat": a miss
            [0.0, 0.0, 5.0, 0.0],  # clip 2 -> its own: a hit
            [5.0, 0.0, 0.0, 0.0],
        ]
    )  # clip 3 -> "dog": a miss
    r = caption_retrieval(logits, texts)
    assert r["acc_audio_text"] == 0.5
    assert r["acc_chance"] == pytest.approx((2 / 4 + 2 / 4 + 1 / 4 + 1 / 4) / 4)
    assert caption_retrieval(None, texts) == {} and caption_retrieval(logits, texts, world=2) == {}


def test_the_chance_gate_uses_a_binomial_bound():
    c, n = 0.25, 400
    bound = c + 2 * math.sqrt(c * (1 - c) / n)  # 0.2933
    at = at_chance([{"acc_audio_text": 0.29, "acc_chance": c, "samples": n}])
    above = at_chance([{"acc_audio_text": 0.30, "acc_chance": c, "samples": n}])
    assert at["at_chance"] and not above["at_chance"] and at["bound"] == pytest.approx(bound)
    assert at_chance([{"loss": 1.0}]) is None and at_chance([]) is None
