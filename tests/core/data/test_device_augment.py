"""The batched augmentations (`WaveAugment.apply`, `clip_preprocess_jpegs`) against the
per-sample ones, and the device placement of the datasets against the worker placement."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from audioclip_core.data.datasets import (
    AudioOptions,
    AudioSetDataset,
    ClipSetDataset,
    clip_samples,
    collate,
    device_audio,
)
from audioclip_core.data.transforms import (
    RandomCrop,
    eval_transforms,
    gaussian_noise,
    sample_generator,
    stack_params,
    train_transforms,
)
from audioclip_core.files import sha256_file
from audioclip_core.images import CLIP_STD, clip_preprocess, clip_preprocess_jpegs, draw_crop, jpeg_size, resized_size

OUT_LEN = 4000


def _clips(channels: int) -> list[torch.Tensor]:
    """Clips shorter and longer than OUT_LEN (also after scaling by 1.5^+-1), some with a silent
    stretch that makes a random crop fall back to the first or last window."""
    g = torch.Generator().manual_seed(channels)
    clips = []
    for length in (900, 2500, 3999, 4000, 6100, 9000, 12345):
        x = torch.randn(channels, length, generator=g) * 0.3
        if length > 6000:
            x[:, length // 4 : -length // 5] *= 0.01  # quiet middle: crops there fall back
        clips.append(x)
    return clips


def _batched(transform, clips, seeds):
    params = [transform.draw(x.shape[-1], sample_generator(*s)) for x, s in zip(clips, seeds)]
    waves = torch.zeros(len(clips), clips[0].shape[0], max(x.shape[-1] for x in clips))
    for i, x in enumerate(clips):
        waves[i, :, : x.shape[-1]] = x
    return transform.apply(waves, stack_params(params)), params


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("inversion", ["time", "channels"])
@pytest.mark.parametrize("noise_p", [0.0, 1.0])
def test_batched_apply_equals_per_sample_exactly(channels, inversion, noise_p):
    t = train_transforms(OUT_LEN, inversion=inversion, noise_p=noise_p)
    clips = _clips(channels)
    fallbacks, inverted = 0, []
    for epoch in range(6):
        seeds = [(3, epoch, i) for i in range(len(clips))]
        batch, params = _batched(t, clips, seeds)
        assert batch.shape == (len(clips), channels, OUT_LEN)
        for i, (x, s) in enumerate(zip(clips, seeds)):
            one = t(x, sample_generator(*s))
            assert torch.equal(batch[i], one), (epoch, i)
            p = params[i]
            if noise_p == 0.0 and p["scaled_len"] > OUT_LEN:  # did the fallback move the window?
                drawn = _scaled_clip(t, x, p)[:, p["crop_left"] : p["crop_left"] + OUT_LEN]
                fallbacks += not torch.equal(one, drawn)
        inverted += [p["invert"] for p in params]
        assert all(p["noise"] == (noise_p == 1.0) for p in params)
    assert any(inverted) and not all(inverted)
    if noise_p == 0.0:
        assert fallbacks > 0  # the fallback ran batched too, and agreed


def _scaled_clip(t, x, p):
    """The inverted, scaled clip `p` describes, whole (no pad or crop)."""
    params = stack_params([p])
    return t._scaled(x[None], params, p["scaled_len"])[0]


def test_batched_crop_fallback_takes_first_and_last_windows():
    """The cases of test_pad_centre_and_crop_fallback, in one batch with a plain clip."""
    g = torch.Generator().manual_seed(0)
    start_loud = torch.zeros(1, 100)
    start_loud[0, :20] = torch.randn(20, generator=g)
    end_loud = torch.zeros(1, 100)
    end_loud[0, :20] = 0.05 * torch.randn(20, generator=g)
    end_loud[0, -20:] = torch.randn(20, generator=g)
    plain = torch.randn(1, 100, generator=g)
    t = eval_transforms(20)
    out, _ = _batched(t, [start_loud, end_loud, plain], [(0, 0, i) for i in range(3)])
    assert torch.equal(out[0], start_loud[:, :20])
    assert torch.equal(out[1], end_loud[:, -20:])
    assert torch.equal(out[2], plain[:, 40:60])
    assert torch.equal(out[1], RandomCrop(20, train=False)(end_loud, sample_generator(0, 0, 1)))


def _splitmix64(key: int, i: int) -> int:
    mask = 2**64 - 1
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_noise_is_a_function_of_key_and_index():
    key = 6_917_529_027_641_081_855  # above 2^62: the int64 arithmetic wraps and shifts logically
    noise = gaussian_noise(key, (3, 7))
    flat = noise.flatten().tolist()
    for i in (0, 1, 10, 20):  # Box-Muller of the reference splitmix64's two 53-bit uniforms
        u1 = (_splitmix64(key, 2 * i) >> 11) * 2.0**-53
        u2 = (_splitmix64(key, 2 * i + 1) >> 11) * 2.0**-53
        assert flat[i] == pytest.approx(math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2), rel=1e-12)
    # the same element whatever the shape or length asked for
    assert torch.equal(gaussian_noise(key, (21,)), noise.flatten())
    assert torch.equal(gaussian_noise(key, (1000,))[:21], noise.flatten())


def test_noise_is_standard_normal_and_keys_differ():
    n = 200_000
    a, b = gaussian_noise(12345, (n,)), gaussian_noise(12346, (n,))
    # 5 sigma of the sampling error: mean sd 1/sqrt(n), variance sd sqrt(2/n), correlation 1/sqrt(n)
    assert abs(float(a.mean())) < 5 / math.sqrt(n)
    assert abs(float(a.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((a * b).mean())) < 5 / math.sqrt(n)
    assert float((a.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=5 * math.sqrt(0.0027 / n))


def test_noise_hits_the_drawn_snr_and_spares_silence():
    x = torch.sin(torch.linspace(0, 200, 20000)).view(1, -1)
    t = train_transforms(20000, noise_p=1.0)
    p = t.draw(20000, sample_generator(0, 0, 0))
    clean = t.apply(x[None], stack_params([{**p, "noise": False}]))[0]
    noisy = t.apply(x[None], stack_params([p]))[0]
    snr = 10 * math.log10(float(clean.double().pow(2).mean() / (noisy - clean).double().pow(2).mean()))
    assert abs(snr - p["snr_db"]) < 0.2
    silent = torch.zeros(1, 1, 20000)
    assert torch.equal(t.apply(silent, stack_params([p])), silent)


def _write_clips(root: Path, n: int, frame_size=(300, 200)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0 : frame_size[1], 0 : frame_size[0]]
    for i in range(n):
        sid = f"Clip{i:03d}"
        length = [30000, 52000, 80000, 44100][i % 4]
        wave = 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * np.arange(length) / 44100)[:, None]
        wave = wave + rng.normal(0, 0.02, (length, 2))
        wave[length // 3 : length // 2] *= 0.001
        sf.write(root / f"{sid}.wav", wave.astype(np.float32), 44100, subtype="PCM_16")
        frames = []
        for k in range(3):  # edges and gradients: a wrong crop shows at once
            img = np.stack([(xx * (3 + k + i)) % 256, (yy * 5 + 40 * k) % 256, ((xx + yy) // 7 * 30) % 256], -1)
            path = root / f"{sid}_f{k}.jpg"
            Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
            frames.append(str(path))
        rows.append(
            {
                "segment_id": sid,
                "status": "ok",
                "audio_path": str(root / f"{sid}.wav"),
                "frame_paths": frames,
                "label_ids": ["/m/a"],
                "label_names": ["A"],
                "sha256": sha256_file(root / f"{sid}.wav"),
            }
        )
    return pd.DataFrame(rows)


# Image bound, in uint8 levels of one channel. On a CPU the JPEG decodes are identical
# (libjpeg-turbo in both); the resamplers differ: PIL rounds to uint8 and clamps between its
# horizontal and vertical passes, the tensor path keeps floats. A clamped bicubic (a = -0.5)
# overshoot is at most 1/24 of a step (255/24 < 10.7 levels), weighed by at most 1 + 1/12 in
# the vertical pass, plus two roundings: |difference| <= 13 levels. Away from edges only the
# roundings differ (mean |difference| ~ 1/3 level): the mean is bounded by half a level.
# Measured on the demo photos and video frames: at most 5 levels, mean 0.11 level.
MAX_LEVELS, MEAN_LEVELS = 13, 0.5


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255


@pytest.mark.parametrize("channels", [1, 2])
def test_device_placement_gives_the_worker_items(tmp_path, channels):
    import torchvision.transforms.functional as TF

    df = _write_clips(tmp_path, 8)
    opts = AudioOptions(clip_seconds=1.0, channels=channels, noise_p=0.5, inversion="time")
    worker = AudioSetDataset(df, ["/m/a"], train=True, seed=4, audio=opts, image_size=64)
    device = AudioSetDataset(
        df, ["/m/a"], train=True, seed=4, audio=AudioOptions(**{**opts.__dict__, "augment_on": "device"}), image_size=64
    )
    for epoch in (0, 3):
        worker.set_epoch(epoch)
        device.set_epoch(epoch)
        expected = collate([worker[i] for i in range(len(df))])
        raw = collate([device[i] for i in range(len(df))])
        wave = raw["raw"]["wave"]  # the files' int16 samples [B, T, C]: converted on the device
        assert "audio" not in raw and wave.shape[0] == len(df) and wave.dtype == torch.int16
        got = device.augment_batch(raw, torch.device("cpu"))
        assert torch.equal(got["audio"], expected["audio"])
        assert torch.equal(got["target"], expected["target"]) and got["text"] == expected["text"]
        levels = _levels(got["image"], expected["image"])
        assert float(levels.max()) <= MAX_LEVELS and float(levels.mean()) <= MEAN_LEVELS
        # the frame picks and crops are the worker's: the same draws, replayed here
        for i in range(len(df)):
            rng = sample_generator(4, epoch, i)
            worker.transform.draw(raw["raw"]["augment"][i]["length"], rng)
            frame = df["frame_paths"][i][int(torch.randint(0, 3, (), generator=rng))]
            with Image.open(frame) as im:
                width, height = TF.resize(im, 64).size
            assert raw["raw"]["crop"][i] == tuple(draw_crop(width, height, 64, rng))
            jpeg = torch.split(raw["raw"]["jpeg"], raw["raw"]["jpeg_sizes"])[i]
            assert jpeg.numpy().tobytes() == Path(frame).read_bytes()


def test_device_placement_of_a_clip_set_and_of_shards(tmp_path):
    from audioclip_core.data.shards import ShardStore, write_shards

    df = _write_clips(tmp_path, 6)
    write_shards(df, tmp_path, tmp_path / "shards", target_bytes=1 << 20)
    table = pd.DataFrame({"audio_path": df["audio_path"], "path": df["audio_path"], "class_name": "A", "class_id": 0})
    opts = AudioOptions(clip_seconds=0.5, channels=2, inversion="channels", noise_p=0.5)
    worker = ClipSetDataset(table, train=True, seed=1, audio=opts)
    device = ClipSetDataset(table, train=True, seed=1, audio=AudioOptions(**{**opts.__dict__, "augment_on": "device"}))
    device.store = ShardStore(tmp_path / "shards", tmp_path)
    expected = collate([worker[i] for i in range(len(table))])
    got = device.augment_batch(collate([device[i] for i in range(len(table))]), "cpu")
    assert torch.equal(got["audio"], expected["audio"])
    # evaluation reads as the worker placement does
    plain = ClipSetDataset(table, train=False, audio=AudioOptions(**{**opts.__dict__, "augment_on": "device"}))
    assert "audio" in plain[0]


def test_wav_bytes_decode_as_soundfile_does(tmp_path):
    wave = np.random.default_rng(1).normal(0, 0.3, (5000, 2)).clip(-1, 1)
    for subtype, rate in (("PCM_16", 44100), ("PCM_24", 44100), ("PCM_16", 22050)):
        path = tmp_path / f"{subtype}_{rate}.wav"
        sf.write(path, wave, rate, subtype=subtype)
        for channels in (1, 2, 3):
            from audioclip_core.data.datasets import load_clip_audio

            assert torch.equal(
                device_audio(clip_samples(path.read_bytes(), channels)[None], channels)[0],
                load_clip_audio(path, channels),
            )


def test_augment_on_is_checked():
    from audioclip_core.training.config import TrainConfig

    with pytest.raises(ValueError, match="augment_on"):
        AudioOptions(augment_on="gpu")
    with pytest.raises(ValueError, match="augment_on"):
        TrainConfig(stage="esresnext_finetune", augment_on="gpu")


def test_jpeg_path_on_real_photos(shared_data):
    """The device image path on the demo photos: the header's resized size is PIL's, the crop
    draws are clip_preprocess's, and the pixels are within the bound above."""
    import torchvision.transforms.functional as TF

    photos = sorted((shared_data / "audioclip_demo" / "images").glob("*.jpg"))
    assert photos
    for path in photos:
        data = path.read_bytes()
        for seed in range(2):
            ref_rng, rng = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            with Image.open(path) as im:
                ref = clip_preprocess(im, 224, ref_rng)
                assert resized_size(*jpeg_size(data), 224) == TF.resize(im.convert("RGB"), 224).size
            crop = draw_crop(*resized_size(*jpeg_size(data), 224), 224, rng)
            assert torch.equal(rng.get_state(), ref_rng.get_state())
            got = clip_preprocess_jpegs(
                [torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.tensor([crop]), 224
            )
            levels = _levels(got, ref[None])
            assert float(levels.max()) <= MAX_LEVELS and float(levels.mean()) <= MEAN_LEVELS, path.name


def test_a_batch_of_pcm_and_decoded_files_collates_to_the_decoded_values(tmp_path):
    """The device placement sends PCM 16-bit WAVs as their int16 samples and decodes anything
    else in the worker; a batch holding both, or mono beside stereo files, is collated as
    decoded float32, with the values `load_clip_audio` gives each file."""
    from audioclip_core.data.datasets import load_clip_audio

    rng = np.random.default_rng(2)
    paths = []
    layout = (("PCM_16", 4000, 2), ("PCM_24", 3000, 2), ("PCM_16", 2500, 2), ("PCM_16", 2000, 1))
    for i, (subtype, frames, channels) in enumerate(layout):
        path = tmp_path / f"{i}.wav"
        sf.write(path, rng.normal(0, 0.3, (frames, channels)).clip(-1, 1), 44100, subtype=subtype)
        paths.append(path)
    items = [clip_samples(p.read_bytes(), 1) for p in paths]
    assert [t.dtype for t in items] == [torch.int16, torch.float32, torch.int16, torch.int16]
    from audioclip_core.data.transforms import train_transforms

    draw = train_transforms(2000).draw
    batch = collate(
        [
            {"index": i, "text": ["x"], "wave": w, "channels": 1, "augment": draw(w.shape[0], torch.Generator())}
            for i, w in enumerate(items)
        ]
    )
    got = device_audio(batch["raw"]["wave"], 1)
    assert got.shape == (4, 1, 4000)
    for i, path in enumerate(paths):
        want = load_clip_audio(path, 1)
        assert torch.equal(got[i, :, : want.shape[-1]], want) and not got[i, :, want.shape[-1] :].any()


def test_a_frame_that_fails_to_decode_on_the_device_costs_its_sample(tmp_path):
    """The worker reads only a JPEG's header; a truncated frame fails when the batch is decoded
    and costs its sample (reported), as in the worker placement; a PNG named .jpg is read by its
    format, as the worker placement's PIL reads it."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(4):
        wav, frame = tmp_path / f"c{i}.wav", tmp_path / f"c{i}.jpg"
        sf.write(wav, rng.normal(0, 0.3, (8000, 2)).clip(-1, 1), 44100, subtype="PCM_16")
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(frame, quality=90)
        rows.append({"segment_id": f"c{i}", "status": "ok", "audio_path": str(wav), "frame_paths": [str(frame)]})
        rows[-1].update(label_ids=["/m/a"], label_names=["A"])
    data = (tmp_path / "c1.jpg").read_bytes()
    (tmp_path / "c1.jpg").write_bytes(data[: len(data) // 2])  # truncated: the header is whole
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "c3.jpg", format="PNG")
    df = pd.DataFrame(rows)
    opts = dict(clip_seconds=0.1, channels=1, noise_p=0.5)
    worker = AudioSetDataset(df, ["/m/a"], train=True, seed=2, audio=AudioOptions(**opts), image_size=64)
    device = AudioSetDataset(
        df, ["/m/a"], train=True, seed=2, audio=AudioOptions(**opts, augment_on="device"), image_size=64
    )
    expected = collate([worker[i] for i in range(4)])
    got = device.augment_batch(collate([device[i] for i in range(4)]), torch.device("cpu"))
    assert expected["index"] == [0, 2, 3] and got["index"] == [0, 2, 3]  # the truncated frame's sample lost
    assert len(got["errors"]) == 1 and "frame" in got["errors"][0]
    assert torch.equal(got["audio"], expected["audio"]) and got["text"] == expected["text"]
    assert torch.equal(got["target"], expected["target"]) and got["image"].shape == (3, 3, 64, 64)
    levels = _levels(got["image"], expected["image"])  # the PNG read by its format, as PIL reads it
    assert float(levels.max()) <= MAX_LEVELS and float(levels.mean()) <= MEAN_LEVELS
