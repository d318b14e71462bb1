"""The CLI answers exactly: class names that hold commas, the whole lineage (towers included),
unknown clip ids told from unused ones, natural order, a closed pipe, and query scores beside
a reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from audioclip_core.cli import EXIT_PIPE, EXIT_UNKNOWN, UserError, _labels, build_parser, main, split_labels
from audioclip_core.files import sha256_file
from audioclip_core.inference import score_reference
from audioclip_core.layout import DataLayout
from audioclip_core.lineage import chain, format_chain, record_name, verify_chain


# -- labels ------------------------------------------------------------------------------------
def _parse_labels(*argv):
    return _labels(build_parser().parse_args(["classify", "-c", "x", *argv, "a.wav"]))


def test_a_quoted_label_keeps_its_comma():
    assert split_labels('"Beep, bleep",Drum') == ["Beep, bleep", "Drum"]
    assert split_labels('Drum, "Beep, bleep" , Siren') == ["Drum", "Beep, bleep", "Siren"]
    assert split_labels("dog,rain,car horn") == ["dog", "rain", "car horn"]
    assert split_labels('"say ""hi""",x') == ['say "hi"', "x"]
    assert _parse_labels("--labels", '"Beep, bleep",Drum') == ["Beep, bleep", "Drum"]


def test_label_is_repeatable_and_keeps_commas(tmp_path):
    assert _parse_labels("--label", "Beep, bleep", "--label", "Drum") == ["Beep, bleep", "Drum"]
    f = tmp_path / "classes.txt"
    f.write_text("Beep, bleep\nDrum\n\n", encoding="utf-8")
    assert _parse_labels("--labels-file", str(f), "--label", "Siren") == ["Siren", "Beep, bleep", "Drum"]


def test_an_audioset_name_split_at_its_comma_is_pointed_out(capsys):
    assert _parse_labels("--labels", "Beep, bleep,Drum") == ["Beep", "bleep", "Drum"]  # as documented
    assert "split the AudioSet class 'Beep, bleep'" in capsys.readouterr().err
    assert _parse_labels("--labels", '"Beep, bleep",Drum') == ["Beep, bleep", "Drum"]
    assert capsys.readouterr().err == ""


def test_bad_labels_are_refused_with_a_reason(capsys):
    with pytest.raises(UserError, match="quote"):
        _parse_labels("--labels", '"Beep, bleep,Drum')  # unclosed quote
    with pytest.raises(UserError, match="twice"):
        _parse_labels("--labels", "Drum", "--label", "Drum")


def test_the_demo_labels_file_holds_the_ten_audioset_names(tmp_path):
    from audioclip_core.data.demo_dataset import CLASSES, write_labels_file

    path = write_labels_file(DataLayout.at(tmp_path).labels_file("demo_classes"))
    assert path == tmp_path.resolve() / "labels" / "demo_classes.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [c.name for c in CLASSES] and "Beep, bleep" in lines and len(lines) == 10
    assert _parse_labels("--labels-file", str(path)) == lines
    mtime = path.stat().st_mtime_ns
    write_labels_file(path)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_classify_with_a_comma_label(shared_data, tiny_checkpoint, tmp_path):
    clip = sorted((shared_data / "esc50" / "audio").glob("*.wav"))[0]
    out = tmp_path / "p.json"
    argv = ["classify", "-c", str(tiny_checkpoint), "--labels", '"Beep, bleep",Drum,Siren', "-o", str(out), str(clip)]
    assert main(argv) == 0
    assert {t["label"] for t in json.loads(out.read_text())[0]["top"]} == {"Beep, bleep", "Drum", "Siren"}


# -- lineage -----------------------------------------------------------------------------------
def _record(root, name, *, manifests=None, parent=None, towers=None, fold=None):
    ck = DataLayout(root).checkpoint(name, fold)
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(f"{name}{fold}".encode())
    rec = {
        "name": name,
        "stage": name,
        "checkpoint": {"path": str(ck), "sha256": sha256_file(ck)},
        "parent": parent,
        "manifests": {k: {"path": str(p), "sha256": sha256_file(p), "rows": 1} for k, p in (manifests or {}).items()},
        "config": {"preset": "audioclip-tiny", "epochs": 1},
        "seed": 0,
        "code": {"git_commit": "abc", "git_dirty": False},
        "dagster": {},
        "mlflow_run_id": None,
        **({"clip_towers": towers} if towers else {}),
    }
    ck.with_suffix(".lineage.json").write_text(json.dumps(rec))
    return {"name": name, "path": str(ck), "sha256": rec["checkpoint"]["sha256"]}


@pytest.fixture
def stages(tmp_path):
    root = tmp_path / "data"
    manifest = root / "audioset" / "manifests" / "balanced_train.parquet"
    manifest.parent.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "segment_id": ["Used0000001_0", "Listed00001_0"],
                "ytid": ["Used0000001", "Listed00001"],
                "status": ["ok", "unavailable"],
            }
        ),
        manifest,
    )
    m = {"audioset_balanced_train": manifest}
    s1 = _record(root, "esresnext_audioset", manifests=m)
    towers = _record(root, "clip_towers", manifests=m)
    s2 = _record(
        root,
        "audioclip_partial",
        manifests=m,
        parent=s1,
        towers={"kind": "standin", "path": towers["path"], "sha256": towers["sha256"]},
    )
    s3 = _record(root, "audioclip_full", manifests=m, parent=s2)
    folds = [_record(root, "audioclip_esc50_with_a_long_name", parent=s3, fold=k) for k in (1, 2, 10)]
    return root, s3, folds


def test_lineage_prints_every_parent_towers_included(stages, capsys):
    root, full, _ = stages
    records = chain(full["path"])
    assert [record_name(r) for r in records] == [
        "audioclip_full",
        "audioclip_partial",
        "esresnext_audioset",
        "clip_towers",
    ]
    assert [r["depth"] for r in records] == [0, 1, 2, 2]
    assert records[-1]["role"] == "towers"
    assert [c.state for c in verify_chain(full["path"], records)] == ["VERIFIED"] * 4
    assert main(["lineage", full["path"]]) == 0
    out = capsys.readouterr().out
    assert "<- clip_towers (towers distilled into):" in out and "<- esresnext_audioset:" in out


def test_random_towers_are_named_too(tmp_path):
    s = _record(tmp_path, "audioclip_partial", towers={"kind": "random", "path": None, "sha256": None})
    records = chain(s["path"])
    text = format_chain(records, verify_chain(s["path"], records))
    assert "<- clip_towers (towers distilled into): random initialisation" in text


def test_an_unknown_clip_is_told_from_an_unused_one(stages, capsys):
    root, _, _ = stages
    assert main(["lineage", "--clip", "doesnotexist", "--data-root", str(root)]) == EXIT_UNKNOWN
    captured = capsys.readouterr()
    assert "not a clip id this data root knows" in captured.err and captured.out == ""
    # listed in a manifest but never downloaded: known, and no checkpoint trained on it
    assert main(["lineage", "--clip", "Listed00001", "--data-root", str(root)]) == 0
    assert "0 checkpoints from data holding Listed00001: 0 trained on it (listed in 1 manifest;" in (
        capsys.readouterr().out
    )


def test_clip_hits_sort_naturally_in_aligned_columns(stages, capsys):
    root, _, folds = stages
    assert main(["lineage", "--clip", "Used0000001", "--data-root", str(root)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    fold_lines = [line for line in lines if "fold" in line]
    assert [line.split("/fold")[1].split("/")[0] for line in fold_lines] == ["1", "2", "10"]
    assert len({line.index("(") for line in lines}) == 1  # the via column starts at one place
    assert len({line.index("/") for line in lines}) == 1  # so does the path column


# -- a closed pipe -----------------------------------------------------------------------------
def test_a_closed_stdout_ends_quietly(stages, monkeypatch, capsys):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("no descriptor")

    _, full, _ = stages
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["lineage", full["path"]]) == EXIT_PIPE
    assert capsys.readouterr().err == ""


def test_lineage_piped_into_head_has_no_broken_pipe_error(tmp_path):
    """A listing far over the pipe's buffer, read by `head -1`: one line, nothing on stderr."""
    manifest = tmp_path / "versions" / "m.parquet"
    manifest.parent.mkdir(parents=True)
    ids = [f"Clip{i:07d}_0" for i in range(20000)]
    pq.write_table(pa.table({"segment_id": ids, "status": ["ok"] * len(ids)}), manifest)
    s = _record(tmp_path, "audioclip_full", manifests={"audioset_eval": manifest})
    exe = Path(sys.executable).with_name("audioclip")
    proc = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{exe}" lineage --clips "{s["path"]}" | head -1; echo "rc=$?" >&2'],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AUDIOCLIP_DEBUG": ""},
    )
    assert proc.stdout.startswith("audioset_eval") and proc.stdout.count("\n") == 1
    assert proc.stderr.strip() in (f"rc={EXIT_PIPE}", "rc=0"), proc.stderr  # no traceback, no error line


# -- query scores beside a reference -----------------------------------------------------------
def test_score_reference_is_a_robust_leave_one_out_z():
    scores = torch.tensor([0.90, 0.10, 0.12, 0.11, 0.09, 0.105])
    median, spread, z = score_reference(scores, 0)
    others = scores[1:].double()
    mad = float((others - others.median()).abs().median())
    assert median == pytest.approx(float(others.median())) and spread == pytest.approx(1.4826 * mad)
    assert z == pytest.approx((0.90 - median) / spread) and z > 50  # a match stands far above the rest
    assert abs(score_reference(scores, 2)[2]) < 3  # so does no ordinary candidate
    assert score_reference(torch.tensor([0.3, 0.2, 0.1]), 0) == (None, None, None)  # too few to tell
    # a query with four matches among 40: each match stands out against the median of the
    # others, where against their mean and standard deviation the other matches hid it
    matches = [0.090, 0.087, 0.075, 0.074]
    rest = [0.015 * ((7 * k) % 11 - 5) / 5 for k in range(36)]  # -0.015 .. 0.015
    collection = torch.tensor(matches + rest, dtype=torch.float64)
    zs = [score_reference(collection, i)[2] for i in range(4)]
    assert min(zs) > 3 and max(score_reference(collection, i)[2] for i in range(4, 40)) < 3
    others = torch.cat([collection[:3], collection[4:]])
    assert (0.074 - float(others.mean())) / float(others.std()) < 3  # the mean reference missed it


def test_query_rows_carry_the_reference(shared_data, tiny_checkpoint, tmp_path, capsys):
    files = sorted(map(str, (shared_data / "esc50" / "audio").glob("*.wav")))[:6]
    out = tmp_path / "q.json"
    assert main(["query", "-c", str(tiny_checkpoint), "--text", "Siren", "--top-k", "3", "-o", str(out), *files]) == 0
    rows = json.loads(out.read_text())
    for r in rows:
        assert r["z"] == pytest.approx((r["score"] - r["others_median"]) / r["others_spread"], abs=0.01)
    assert "query 'Siren':" in capsys.readouterr().err
    assert "z = (score - others_median) / others_spread" in build_parser()._subparsers._group_actions[0].choices[
        "query"
    ].format_help().replace("\n", " ").replace("  ", " ")
