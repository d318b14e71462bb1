import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import audioclip_core as ac
from audioclip_core.audio import load_audio, prepare_waveform, windows
from audioclip_core.cli import main
from audioclip_core.inference import AudioEmbedder, embed_images, embed_texts


def test_classify_real_esc50_clips(shared_data, tiny_checkpoint, tmp_path, capsys):
    clips = sorted((shared_data / "esc50" / "audio").glob("*.wav"))[:6]
    out = tmp_path / "pred.json"
    rc = main(
        [
            "classify",
            "--checkpoint",
            str(tiny_checkpoint),
            "--labels",
            "dog,rain,crying baby,clock tick",
            "--top-k",
            "2",
            "--out",
            str(out),
            *map(str, clips),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["file"] for r in rows] == list(map(str, clips))
    for r in rows:
        assert r["label"] in {"dog", "rain", "crying baby", "clock tick"} and len(r["top"]) == 2
        assert 0.25 <= r["probability"] <= 1.0 and r["top"][0]["probability"] >= r["top"][1]["probability"]
    # the same clips as parquet, readable by pandas
    rc = main(
        [
            "classify",
            "-c",
            str(tiny_checkpoint),
            "--labels",
            "dog,rain",
            "-o",
            str(tmp_path / "p.parquet"),
            *map(str, clips[:2]),
        ]
    )
    assert rc == 0 and len(pd.read_parquet(tmp_path / "p.parquet")) == 2


def test_no_checkpoint_says_what_to_do(shared_data, capsys, monkeypatch):
    monkeypatch.delenv("AUDIOCLIP_CHECKPOINT", raising=False)
    clip = next((shared_data / "esc50" / "audio").glob("*.wav"))
    with pytest.raises(SystemExit) as exc:
        main(["classify", "--labels", "dog", str(clip)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "AudioCLIP-Full-Training.pt" in err and "releases" in err and "--checkpoint" in err


def test_missing_checkpoint_file_is_a_clear_error(tmp_path, capsys):
    rc = main(["classify", "-c", str(tmp_path / "nope.pt"), "--labels", "dog", "x.wav"])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_embed_and_query_mixed_files(shared_data, tiny_checkpoint, tmp_path):
    demo = shared_data / "audioclip_demo"
    files = sorted(map(str, (demo / "audio").glob("*.wav"))) + sorted(map(str, (demo / "images").glob("*.jpg")))
    out = tmp_path / "emb.csv"
    assert main(["embed", "-c", str(tiny_checkpoint), *files, "--text", "a cat", "-o", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df["modality"]) == ["audio"] * 5 + ["image"] * 5 + ["text"]
    emb = np.array([json.loads(e) for e in df["embedding"]])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    q = tmp_path / "q.json"
    assert main(["query", "-c", str(tiny_checkpoint), "--text", "cat", "--top-k", "3", "-o", str(q), *files]) == 0
    rows = json.loads(q.read_text())
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]


@pytest.mark.slow
def test_embed_fast_and_bf16_agree_with_the_plain_path(shared_data, tiny_checkpoint, tmp_path, monkeypatch):
    from audioclip_core.models.esresnext import ESResNeXt

    enabled = []
    real = ESResNeXt.enable_fast_inference

    def spy(self, **kwargs):
        enabled.append(kwargs.get("bf16", False))
        return real(self, **kwargs)

    monkeypatch.setattr(ESResNeXt, "enable_fast_inference", spy)
    files = sorted(map(str, (shared_data / "audioclip_demo" / "audio").glob("*.wav")))
    embeddings = {}
    for flag in (None, "--fast", "--bf16"):
        out = tmp_path / f"{flag or 'plain'}.json"
        args = ["embed", "-c", str(tiny_checkpoint), *files, "-o", str(out)]
        assert main(args + ([flag] if flag else [])) == 0
        embeddings[flag] = np.array([r["embedding"] for r in json.loads(out.read_text())])
    assert enabled == [False, True]  # plain: not compiled; --fast: fp32; --bf16: bf16
    plain = embeddings[None]
    assert not np.array_equal(embeddings["--bf16"], plain)  # the bf16 backbone really ran
    for flag, limit in (("--fast", 0.99999), ("--bf16", 0.999)):
        cos = (embeddings[flag] * plain).sum(1)  # rows are unit vectors
        assert embeddings[flag].shape == plain.shape and cos.min() > limit, (flag, cos)


def test_any_rate_and_channels_and_long_audio(tmp_path, tiny_model):
    sr = 22050
    t = np.arange(int(sr * 23.5)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], 1).astype(np.float32) * 0.3
    path = tmp_path / "long.flac"
    sf.write(path, stereo, sr)
    wave, rate = load_audio(path)
    assert rate == sr and wave.shape == (2, len(t))
    x = prepare_waveform(wave, rate, input_scale="int16")
    assert x.shape == (2, int(44100 * 23.5)) and float(x.abs().max()) > 3000
    w = windows(x, 441000, 220500)
    assert w.shape[0] == 4 and torch.equal(w[-1], x[:, -441000:])  # last window aligned to the end
    emb = AudioEmbedder(tiny_model, input_scale="int16").embed_files([path], progress=False)
    assert emb.shape == (1, tiny_model.embed_dim) and abs(float(emb.norm()) - 1) < 1e-5
    with pytest.raises(ValueError):
        AudioEmbedder(tiny_model, pooling="median")


def test_decode_errors_are_clear(tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ac.audio.AudioDecodeError, match="broken.mp3"):
        load_audio(bad)


def test_video_container_audio_via_ffmpeg(shared_data):
    wave, sr = load_audio(shared_data / "video" / "chaplin.mp4")
    assert wave.shape[0] in (1, 2) and wave.shape[1] > sr and sr > 8000


def test_images_and_texts(shared_data, tiny_model):
    imgs = sorted((shared_data / "audioclip_demo" / "images").glob("*.jpg"))[:3]
    e = embed_images(tiny_model, imgs, progress=False)
    assert e.shape == (3, tiny_model.embed_dim)
    t = embed_texts(tiny_model, [["dog", "bark"], "rain"], template="the sound of {}")
    assert t.shape == (2, tiny_model.embed_dim)
    with torch.no_grad():
        direct = tiny_model.encode_text(["the sound of dog, bark"], normalize=True)
    assert torch.allclose(t[0], direct[0], atol=1e-6)


@pytest.mark.parametrize("rate", [48000, 22050, 16000, 8000, 96000, 44100])
def test_streamed_spans_are_torchaudio_resampling_of_the_whole(rate):
    """`AudioStream.read` resamples each span from just the input it depends on. In float64 each
    output sample is a dot product of 2 x width + rate/gcd (< 1000) kernel taps (|k| <= 1) with
    |x| < 6: reordering it can change it by at most 1000 x 6 x 2**-52 ~ 1.3e-12, so 1e-11 bounds
    any summation order, while an off-by-one sample or a missing margin is O(1) on noise."""
    import torchaudio.functional as AF

    from audioclip_core.audio import AudioStream

    x = torch.randn(2, rate * 3 + 17, dtype=torch.float64, generator=torch.Generator().manual_seed(rate))
    whole = AF.resample(x, rate, 44100)
    stream = AudioStream(wave=x, sample_rate=rate)
    assert stream.frames == whole.shape[1]
    spans = stream.window_starts(44100, 22050) + [(0, 10), (5, 7), (whole.shape[1] - 3, whole.shape[1] + 4)]
    for a, b in spans:
        part = stream.read(a, b)
        expected = torch.nn.functional.pad(whole, (0, max(0, b - whole.shape[1])))[:, a:b]
        assert part.shape == (2, b - a) and float((part - expected).abs().max()) < 1e-11, (a, b)


def test_long_files_are_read_and_embedded_a_window_at_a_time(tmp_path, tiny_model, monkeypatch):
    """A 44.1 kHz file: each span read from disk is the same samples as the whole file sliced,
    batches hold the same windows as embedding them all at once, so the only difference is the
    order of the pooling sum (n <= 16 unit vectors: < 16 x 2**-24 ~ 1e-6 per entry)."""
    from audioclip_core.audio import AudioStream, to_model_input

    sr = 44100
    t = np.arange(int(sr * 62.3)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t / 60))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, wave, sr, subtype="FLOAT")
    reads = []
    real = AudioStream._read_input
    monkeypatch.setattr(AudioStream, "_read_input", lambda self, a, b: reads.append(b - a) or real(self, a, b))
    embedder = AudioEmbedder(tiny_model, input_scale="int16", batch_size=3)
    streamed = embedder.embed_file(path)
    assert max(reads) == 441000 and len(reads) == 12  # one window's samples per read, never the file
    x = to_model_input(torch.from_numpy(wave)[None], "int16")
    win = windows(x, 441000, 220500)
    with torch.no_grad():
        parts = [tiny_model.encode_audio(win[i : i + 3]) for i in range(0, len(win), 3)]
    whole = torch.nn.functional.normalize(torch.nn.functional.normalize(torch.cat(parts), dim=-1).mean(0), dim=-1)
    assert float((streamed - whole).abs().max()) < 1e-6


def test_the_cli_feeds_a_checkpoint_at_the_scale_the_tables_use(tiny_model, tmp_path, monkeypatch, capsys):
    """One input-scale rule: a checkpoint that records none (the released layout) is fed at
    int16, at the dataset protocol's scale with --protocol, at --input-scale when given - and
    the tables' rule gives the same for the same checkpoint and dataset."""
    from audioclip_core import inference
    from audioclip_core.evaluation.tables import Settings, _scale

    released = ac.export_official(tiny_model, tmp_path / "released.pt")
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.sin(np.linspace(0, 400, 44100)).astype(np.float32) * 0.3, 44100)
    seen = []
    real = inference.try_embed_files
    monkeypatch.setattr(
        inference,
        "try_embed_files",
        lambda model, files, **kw: seen.append(kw["input_scale"]) or real(model, files, **kw),
    )
    for extra in ([], ["--protocol", "us8k"], ["--protocol", "esc50"], ["--protocol", "us8k", "--input-scale", "unit"]):
        assert (
            main(["classify", "-c", str(released), "--preset", "audioclip-tiny", "--labels", "a,b", str(wav), *extra])
            == 0
        )
    capsys.readouterr()
    assert seen == ["int16", "minmax", "int16", "unit"]
    model = ac.load_model(released, preset="audioclip-tiny")
    assert [_scale(model, Settings(), d) for d in (None, "us8k", "esc50")] == seen[:3]
