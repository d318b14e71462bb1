"""The CLI and the loaders on ordinary bad input: every good input still answered, every bad one
named with its reason, a documented exit status, valid JSON, no tracebacks."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import audioclip_core as ac
from audioclip_core.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from audioclip_core.errors import CheckpointError, InputError


def _strict_json(text):
    """json.loads that refuses NaN/Infinity (Python's json accepts them by default)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, shared_data):
    """Good clips and images, with bad ones of every kind in between."""
    d = tmp_path_factory.mktemp("bad")
    clips = sorted(map(str, (shared_data / "esc50" / "audio").glob("*.wav")))[:3]
    image = sorted(map(str, (shared_data / "audioclip_demo" / "images").glob("*.jpg")))[0]
    noise = d / "garbage.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    nan = d / "nan.wav"
    wave = np.zeros((44100, 1), np.float32)
    wave[1000:1010] = np.nan
    sf.write(nan, wave, 44100, subtype="FLOAT")
    inf = d / "inf.flac.wav"
    sf.write(inf, np.full((22050, 2), np.inf, np.float32), 22050, subtype="FLOAT")
    data = open(image, "rb").read()
    truncated = d / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    folder = d / "folder.wav"
    folder.mkdir()
    missing = d / "missing.wav"
    loop = d / "loop.wav"
    loop.symlink_to(d / "loop2.wav")
    (d / "loop2.wav").symlink_to(loop)
    files = [
        clips[0],
        str(noise),
        clips[1],
        str(nan),
        str(truncated),
        image,
        str(folder),
        str(inf),
        str(missing),
        str(loop),
        clips[2],
    ]
    bad = {
        str(noise): "ffmpeg could not decode",
        str(nan): "non-finite",
        str(inf): "non-finite",
        str(truncated): "cannot read image",
        str(folder): "is a directory",
        str(missing): "no such",
        str(loop): "is a symbolic link loop",
    }
    return files, bad


def test_classify_answers_every_good_file_and_names_every_bad_one(bad_inputs, tiny_checkpoint, tmp_path, capsys):
    files, bad = bad_inputs
    out = tmp_path / "pred.json"
    rc = main(["classify", "-c", str(tiny_checkpoint), "--labels", "dog,rain,clock tick", "-o", str(out), *files])
    assert rc == EXIT_PARTIAL
    rows = _strict_json(out.read_text())
    assert [r["file"] for r in rows] == files  # one row per input, in order
    for r in rows:
        if r["file"] in bad:
            assert r["status"] == "error" and r["label"] is None, r
            assert r["file"] in r["error"] and bad[r["file"]] in r["error"], r
        else:
            assert r["status"] == "ok" and r["error"] is None and r["label"] in {"dog", "rain", "clock tick"}
            assert 0 < r["probability"] <= 1
    err = capsys.readouterr().err
    assert f"{len(bad)} of {len(files)} inputs failed" in err and "Traceback" not in err
    # the same as CSV and parquet: a status and an error column
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"pred{suffix}"
        assert (
            main(["classify", "-c", str(tiny_checkpoint), "--labels", "dog,rain", "-o", str(path), *files])
            == EXIT_PARTIAL
        )
        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert list(df["file"]) == files
        assert set(df.loc[df["status"] == "error", "file"]) == set(bad)
        assert df.loc[df["status"] == "ok", "error"].isna().all()


def test_embed_and_query_keep_the_good_files(bad_inputs, tiny_checkpoint, tmp_path):
    files, bad = bad_inputs
    out = tmp_path / "emb.json"
    assert main(["embed", "-c", str(tiny_checkpoint), *files, "--text", "a dog", "-o", str(out)]) == EXIT_PARTIAL
    rows = _strict_json(out.read_text())
    assert [r["item"] for r in rows] == files + ["a dog"]
    for r in rows:
        if r["item"] in bad:
            assert r["status"] == "error" and r["embedding"] is None
        else:
            assert r["status"] == "ok" and abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5
    q = tmp_path / "q.json"
    assert (
        main(["query", "-c", str(tiny_checkpoint), "--text", "dog", "--top-k", "50", "-o", str(q), *files])
        == EXIT_PARTIAL
    )
    rows = _strict_json(q.read_text())
    ranked = [r["item"] for r in rows if r["status"] == "ok"]
    assert sorted(ranked) == sorted(f for f in files if f not in bad)  # every good file ranked once
    assert {r["item"] for r in rows if r["status"] == "error"} == set(bad)
    good = [f for f in files if f not in bad]
    assert main(["classify", "-c", str(tiny_checkpoint), "--labels", "dog", "-o", str(q), *good]) == EXIT_OK


def test_non_finite_weights_are_refused_by_name(tiny_model, tmp_path, capsys):
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sd["audio.fc.weight"][0, 0] = float("nan")
    sd["logit_scale"].fill_(float("inf"))
    path = tmp_path / "nan.safetensors"
    model = ac.build_model("audioclip-tiny")
    model.load_state_dict(sd)
    ac.save_checkpoint(model, path)
    with pytest.raises(CheckpointError, match=r"2 tensors hold NaN/Inf.*audio\.fc\.weight \(1 of"):
        ac.load_model(path)
    assert not math.isfinite(float(ac.load_model(path, allow_non_finite=True).logit_scale.detach()))
    clip = tmp_path / "tone.wav"
    sf.write(clip, (0.3 * np.sin(np.arange(44100) / 10)).astype(np.float32), 44100)
    assert main(["classify", "-c", str(path), "--labels", "dog,rain", str(clip)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "audio.fc.weight" in err and "--allow-non-finite-weights" in err and "Traceback" not in err
    # allowed for debugging: the output is still JSON (no bare NaN), the file's row says why
    out = tmp_path / "o.json"
    rc = main(
        ["classify", "-c", str(path), "--allow-non-finite-weights", "--labels", "dog,rain", "-o", str(out), str(clip)]
    )
    rows = _strict_json(out.read_text())
    assert rc == EXIT_PARTIAL and rows[0]["status"] == "error" and "not finite" in rows[0]["error"]
    assert main(["convert", str(path), str(tmp_path / "c.pt")]) == EXIT_ERROR
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-k", "0"], "must be at least 1"),
        (["--batch-size", "0"], "must be at least 1"),
        (["--batch-size", "two"], "not a whole number"),
        (["--window", "-1"], "positive number"),
        (["--out", "x.txt"], "unknown output format"),
    ],
)
def test_argument_values_are_checked_by_the_parser(args, message, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["classify", "-c", str(tiny_checkpoint), "--labels", "dog", *args, "x.wav"])
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_long_labels_name_their_length_and_can_be_truncated(shared_data, tiny_checkpoint, tmp_path, capsys):
    clip = str(sorted((shared_data / "esc50" / "audio").glob("*.wav"))[0])
    long_label = " ".join(["an extraordinarily long description of a barking dog"] * 12)
    assert main(["classify", "-c", str(tiny_checkpoint), "--labels", f"rain,{long_label}", clip]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "tokens long" in err and "--truncate" in err and "Traceback" not in err
    out = tmp_path / "t.json"
    assert (
        main(
            [
                "classify",
                "-c",
                str(tiny_checkpoint),
                "--truncate",
                "--labels",
                f"rain,{long_label}",
                "-o",
                str(out),
                clip,
            ]
        )
        == EXIT_OK
    )
    assert _strict_json(out.read_text())[0]["status"] == "ok"


def test_checkpoint_paths_get_their_own_messages(tmp_path, capsys):
    cases = {tmp_path: "is a directory", tmp_path / "nope.pt": "does not exist"}
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    cases[garbage] = "could not be read"
    for path, message in cases.items():
        assert main(["classify", "-c", str(path), "--labels", "dog", "x.wav"]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (path, err)
        with pytest.raises(CheckpointError, match=message):
            ac.load_model(path)


def test_a_symbolic_link_loop_is_named_not_called_missing(tiny_checkpoint, tmp_path, capsys):
    loop = tmp_path / "ckpt.safetensors"
    loop.symlink_to(loop)
    for argv in (
        ["classify", "-c", str(loop), "--labels", "dog", "x.wav"],
        ["lineage", str(loop)],
        ["convert", str(loop), str(tmp_path / "out.safetensors")],
    ):
        assert main(argv) == EXIT_ERROR
        err = capsys.readouterr().err
        assert f"{loop}' is a symbolic link loop" in err or f"{loop}: is a symbolic link loop" in err, (argv, err)
        assert "does not exist" not in err and "no such" not in err


def test_convert_and_lineage_on_bad_input(tiny_checkpoint, tmp_path, capsys):
    assert main(["convert", str(tiny_checkpoint), str(tmp_path)]) == EXIT_ERROR
    assert "is a directory" in capsys.readouterr().err
    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "x.bin")]) == EXIT_ERROR
    assert "unknown output format" in capsys.readouterr().err
    assert main(["lineage", str(tmp_path / "none.safetensors")]) == EXIT_ERROR
    assert "no such checkpoint" in capsys.readouterr().err
    damaged = tmp_path / "root" / "stage.safetensors"
    damaged.parent.mkdir()
    damaged.write_bytes(b"x" * 16)
    damaged.with_suffix(".lineage.json").write_text('{"checkpoint": {"sha256": "ab"', encoding="utf-8")
    assert main(["lineage", str(damaged)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "damaged" in err and "Traceback" not in err
    # a clip search over a data root with a damaged record: the others are still searched
    assert main(["lineage", "--clip", "abc", "--data-root", str(damaged.parent)]) == EXIT_PARTIAL
    captured = capsys.readouterr()
    assert "skipped (damaged)" in captured.err and "0 checkpoints" in captured.out
    assert main(["lineage", "--clip", "abc", "--data-root", str(tmp_path / "absent")]) == EXIT_ERROR
    assert "no such data root" in capsys.readouterr().err


def test_api_names_the_bad_file(bad_inputs, tiny_model):
    from audioclip_core.inference import embed_files, try_embed_files

    files, bad = bad_inputs
    res = try_embed_files(tiny_model, files, progress=False, input_scale="int16")
    assert res.failed == [i for i, f in enumerate(files) if f in bad]
    assert torch.isfinite(res.embeddings).all()
    with pytest.raises(InputError, match="garbage.wav"):
        embed_files(tiny_model, files)
