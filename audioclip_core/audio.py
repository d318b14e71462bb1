"""Reading audio files and turning waveforms into what the audio head receives.

The audio head takes float32 `[B, C, T]` at 44.1 kHz and assumes the int16 range (its first
step maps [-32768, 32767] to [-1, 1]). Two conventions exist for feeding it:

* ``"int16"`` - samples in [-1, 1] multiplied by 32768 (the ESC-50 / US8K training loaders);
* ``"unit"``  - samples in [-1, 1] fed unscaled (the published demo). The head then sees an
  ~8-bit quantised signal, yet this is how the released AudioCLIP weights were shown to
  classify correctly, so it is the default for them (`DEFAULT_INPUT_SCALE`).

Our own checkpoints record the scale they were trained with (metadata ``input_scale``).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import torch

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100
INPUT_SCALES = ("unit", "int16")
DEFAULT_INPUT_SCALE = "unit"
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".mp4",
                    ".mkv", ".aiff", ".aif"}


from .errors import AudioDecodeError  # noqa: E402  (re-exported)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="audioclip-decode-") as tmp:
        out = Path(tmp) / "decoded.wav"
        proc = subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-vn", "-acodec", "pcm_f32le",
             str(out)], capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
            raise AudioDecodeError(f"{path}: ffmpeg could not decode audio: {msg}")
        data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    return data, sr


def load_audio(path: Union[str, os.PathLike]) -> tuple[torch.Tensor, int]:
    """Decode a file into float32 `[channels, samples]` in [-1, 1] at its own sample rate."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        data, sr = _decode_with_ffmpeg(path)
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{path}: contains no samples")
    import torch

    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def resample(wave: torch.Tensor, orig_sr: int, target_sr: int = SAMPLE_RATE) -> torch.Tensor:
    if orig_sr == target_sr:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, orig_sr, target_sr)


def to_model_input(wave: torch.Tensor, input_scale: str = DEFAULT_INPUT_SCALE) -> torch.Tensor:
    """[-1, 1] waveform `[C, T]` or `[B, C, T]` -> float32 values the audio head expects."""
    import torch

    if input_scale not in INPUT_SCALES:
        raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {input_scale!r}")
    wave = wave.to(torch.float32)
    return wave * 32768.0 if input_scale == "int16" else wave


def prepare_waveform(wave: Union["torch.Tensor", np.ndarray], sample_rate: int, *,
                     input_scale: str = DEFAULT_INPUT_SCALE) -> torch.Tensor:
    """Any-rate, any-channel waveform in [-1, 1] (`[T]` or `[C, T]`) -> `[C, T]` at 44.1 kHz, scaled."""
    import torch

    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"waveform must be [samples] or [channels, samples], got {tuple(wave.shape)}")
    return to_model_input(resample(wave, int(sample_rate)), input_scale)


def windows(wave: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """`[C, T]` -> `[N, C, window]`: the whole clip if it fits, else overlapping windows; the
    last window is aligned to the end so no sample is dropped."""
    import torch

    length = wave.shape[-1]
    if length <= window:
        return wave.unsqueeze(0)
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return torch.stack([wave[:, s:s + window] for s in starts])
