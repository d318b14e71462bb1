"""Media whose content says where in the source it is: a time code in the signal.

The audio is seeded band-limited noise (100 Hz - 4 kHz, so lossy codecs keep it): any stretch of
it appears once, so a clip's true start is where it correlates with the source (to a sample).
Each video frame shows its own number as 10 black/white bars (binary, 1 bit per bar), so a
frame read back tells which source frame it is. Encodings are chosen for their keyframe layout
(one every 10 s, one at 0 only, open GOP with B-frames) and container (MP4, Matroska, WebM,
audio-only M4A / Opus / WebM)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclip_core.audio import ffmpeg_exe

SR, FPS, W, H = 44100, 25, 320, 240

# name -> (file name, ffmpeg output arguments, has video)
ENCODINGS = {
    "gop10_h264_aac_mp4": (
        "Gop10H264Aa.mp4",
        ["-c:v", "libx264", "-g", "250", "-keyint_min", "250", "-sc_threshold", "0", "-c:a", "aac", "-b:a", "128k"],
        True,
    ),
    "kf0_h264_mp3_mp4": (
        "Kf0H264Mp3x.mp4",
        [
            "-c:v",
            "libx264",
            "-g",
            "100000",
            "-keyint_min",
            "100000",
            "-sc_threshold",
            "0",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
        ],
        True,
    ),
    "opengop_h264_aac_mkv": (
        "OpenGopH264.mkv",
        ["-c:v", "libx264", "-x264-params", "keyint=50:open-gop=1:bframes=3", "-c:a", "aac", "-b:a", "128k"],
        True,
    ),
    "vp9_opus_webm": (
        "Vp9OpusWebm.webm",
        ["-c:v", "libvpx-vp9", "-g", "125", "-b:v", "200k", "-deadline", "realtime", "-c:a", "libopus"],
        True,
    ),
    "aac_m4a": ("AudioOnlyM4.m4a", ["-vn", "-c:a", "aac", "-b:a", "128k"], False),
    "opus_ogg": ("AudioOnlyOp.opus", ["-vn", "-c:a", "libopus"], False),
    "opus_webm": ("AudioOnlyWb.webm", ["-vn", "-c:a", "libopus"], False),
}


def source_audio(duration: float, seed: int = 0) -> np.ndarray:
    n = int(round(SR * duration))
    x = np.random.default_rng(seed).standard_normal((n, 2))
    spec = np.fft.rfft(x, axis=0)
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < 100) | (f > 4000)] = 0
    x = np.fft.irfft(spec, n=n, axis=0)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def frame_image(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(10):
        if (i >> b) & 1:
            img[:, b * (W // 10) : (b + 1) * (W // 10)] = 255
    return img


def make_sources(folder: Path, duration: float = 20.0, names=tuple(ENCODINGS)) -> dict[str, Path]:
    """Encode the time-coded source once per encoding into `folder`; name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / "source.wav"
    sf.write(wav, source_audio(duration), SR, subtype="FLOAT")
    raw = folder / "source.rgb"
    np.stack([frame_image(i) for i in range(int(duration * FPS))]).tofile(raw)
    out = {}
    for name in names:
        file, args, video = ENCODINGS[name]
        inputs = (
            ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS), "-i", str(raw)] if video else []
        )
        subprocess.run(
            [
                ffmpeg_exe(),
                "-v",
                "error",
                "-y",
                *inputs,
                "-i",
                str(wav),
                *(["-pix_fmt", "yuv420p"] if video else []),
                *args,
                str(folder / file),
            ],
            check=True,
        )
        out[name] = folder / file
    raw.unlink()
    return out


def audio_offset(wav: Path, duration: float = 20.0) -> float:
    """Where in the source the clip's first sample is, in seconds (cross-correlation)."""
    y, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert sr == SR
    y = y.mean(1)
    s = source_audio(duration).mean(1)
    n = len(s) + len(y)
    size = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(s, size) * np.conj(np.fft.rfft(y, size)), size)
    return int(np.argmax(c[: len(s)])) / SR


def frame_number(jpg: Path) -> int:
    from PIL import Image

    a = np.asarray(Image.open(jpg).convert("L"), dtype=float)
    bar = a.shape[1] / 10
    return sum(1 << b for b in range(10) if a[:, int(b * bar) + 2 : int((b + 1) * bar) - 2].mean() > 128)
