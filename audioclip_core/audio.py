"""Reading audio files and turning waveforms into what the audio head receives.

The audio head takes float32 `[B, C, T]` at 44.1 kHz and assumes the int16 range (its first
step maps [-32768, 32767] to [-1, 1]). Three conventions exist for feeding it:

* ``"int16"``  - samples in [-1, 1] multiplied by 32768: the published ESC-50 loader (and the
  default, `DEFAULT_INPUT_SCALE`);
* ``"minmax"`` - each clip (after its crop or pad, all channels together) min-max scaled to
  [-32768, 32767]: the published UrbanSound8K loader. A constant clip becomes zeros;
* ``"unit"``   - samples in [-1, 1] fed unscaled: the published demo notebook. The head then
  sees an ~8-bit quantised signal, yet the released AudioCLIP weights classify the demo's
  ESC-50 clips with it (see the reference notes).

One rule picks the scale of a model on some audio (`inference.resolve_input_scale`): the
scale asked for; else the one the checkpoint records (our checkpoints record what they were
trained with, metadata ``input_scale``); else the dataset protocol's when the clips belong to
ESC-50 (``int16``) or UrbanSound8K (``minmax``) - the published loaders, which the paper's
figures come from; else ``int16``. The tables and the CLI (``--protocol``) apply the same rule.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    import torch

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100
INPUT_SCALES = ("int16", "minmax", "unit")
DEFAULT_INPUT_SCALE = "int16"
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".mp4", ".mkv", ".aiff", ".aif"}


from .errors import AudioDecodeError, check_input_file  # noqa: E402  (AudioDecodeError re-exported)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_to_wav(path: Path, out: Path) -> None:
    """Decode any file ffmpeg reads to a float32 WAV (RF64 past 4 GB) at its own rate."""
    proc = subprocess.run(
        [
            ffmpeg_exe(),
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-vn",
            "-acodec",
            "pcm_f32le",
            "-rf64",
            "auto",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.exists():
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
        raise AudioDecodeError(f"{path}: ffmpeg could not decode audio: {msg}")


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="audioclip-decode-") as tmp:
        out = Path(tmp) / "decoded.wav"
        _ffmpeg_to_wav(path, out)
        data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    return data, sr


def load_audio(path: Union[str, os.PathLike]) -> tuple[torch.Tensor, int]:
    """Decode a file into float32 `[channels, samples]` in [-1, 1] at its own sample rate."""
    path = Path(path)
    check_input_file(path, "audio file", AudioDecodeError)
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
    if input_scale == "int16":
        return wave * 32768.0
    if input_scale == "minmax":
        dims = (-2, -1) if wave.dim() >= 2 else (-1,)
        lo, hi = wave.amin(dim=dims, keepdim=True), wave.amax(dim=dims, keepdim=True)
        span = hi - lo
        scaled = (wave - lo) / torch.where(span > 0, span, torch.ones_like(span)) * 65535.0 - 32768.0
        return torch.where(span > 0, scaled, torch.zeros_like(wave))
    return wave


def prepare_waveform(
    wave: Union["torch.Tensor", np.ndarray], sample_rate: int, *, input_scale: str = DEFAULT_INPUT_SCALE
) -> torch.Tensor:
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
    return torch.stack([wave[:, s : s + window] for s in starts])


# -- streaming: long files in bounded memory ------------------------------------------------
# soundfile formats whose frame count and seeking are exact; anything else goes through ffmpeg
_SEEKABLE_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "AU", "CAF"}


class AudioStream:
    """An audio file (or an in-memory waveform) read a span at a time, as the 44.1 kHz signal
    `resample(load_audio(path))` would give, without holding the whole file.

    `read(start, stop)` returns `[C, stop - start]` float32 samples of the 44.1 kHz signal
    (zeros outside it). At another rate, each span is resampled from just the input it
    depends on, with torchaudio's own sinc kernel: every output sample is the same dot
    product over the same input samples as in a resampling of the whole file. Formats that
    libsndfile cannot seek exactly (MP3, Ogg, video containers...) are decoded once by
    ffmpeg to a temporary WAV file, so memory does not grow with the length of the file.
    Use it as a context manager (it closes the file and removes the temporary one).
    """

    def __init__(self, path: Union[str, os.PathLike, None] = None, *, wave=None, sample_rate: Optional[int] = None):
        import torch

        self._tmp = None
        self._file = None
        self.name = str(path) if path is not None else "waveform"
        if path is None:
            w = torch.as_tensor(wave)
            if w.dim() == 1:
                w = w.unsqueeze(0)
            if w.dim() != 2:
                raise ValueError(f"waveform must be [samples] or [channels, samples], got {tuple(w.shape)}")
            self._wave = w if w.dtype == torch.float64 else w.to(torch.float32)  # float64 stays exact
            self.input_rate, self.channels, self.input_frames = int(sample_rate), w.shape[0], w.shape[1]
        else:
            self._wave = None
            self._open(Path(path))
        if self.input_frames == 0:
            raise AudioDecodeError(f"{self.name}: contains no samples")
        self._setup_resampling()

    # the input at its own rate --------------------------------------------------------
    def _open(self, path: Path) -> None:
        check_input_file(path, "audio file", AudioDecodeError)
        try:
            info = sf.info(str(path))
            seekable = info.format in _SEEKABLE_FORMATS
        except (sf.LibsndfileError, RuntimeError, TypeError):
            seekable = False
        if not seekable:
            self._tmp = tempfile.TemporaryDirectory(prefix="audioclip-decode-")
            out = Path(self._tmp.name) / "decoded.wav"
            try:
                _ffmpeg_to_wav(path, out)
            except AudioDecodeError:
                self.close()
                raise
            path = out
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            self.close()
            raise AudioDecodeError(f"{self.name}: cannot decode audio: {exc}") from exc
        self.input_rate, self.channels, self.input_frames = (
            self._file.samplerate,
            self._file.channels,
            self._file.frames,
        )

    def _read_input(self, start: int, stop: int):
        """`[C, stop - start]` input-rate samples, zeros outside the file; non-finite ones refused."""
        import torch

        lo, hi = max(start, 0), min(stop, self.input_frames)
        if self._wave is not None:
            data = self._wave[:, lo:hi]
        else:
            self._file.seek(lo)
            data = torch.from_numpy(
                np.ascontiguousarray(self._file.read(max(hi - lo, 0), dtype="float32", always_2d=True).T)
            )
            if data.shape[1] != max(hi - lo, 0):
                raise AudioDecodeError(
                    f"{self.name}: ended after {lo + data.shape[1]} of {self.input_frames} samples (truncated?)"
                )
        if data.numel() and not torch.isfinite(data).all():
            bad = int((~torch.isfinite(data)).sum())
            raise AudioDecodeError(
                f"{self.name}: {bad} non-finite (NaN/Inf) samples from {lo / self.input_rate:.2f} s on: not audio"
            )
        if lo - start or stop - hi:
            data = torch.nn.functional.pad(data, (lo - start, stop - hi))
        return data

    # the 44.1 kHz signal --------------------------------------------------------------
    def _setup_resampling(self) -> None:
        import math

        import torch

        self.frames = self.input_frames
        self._kernel = None
        if self.input_rate != SAMPLE_RATE:
            from torchaudio.functional.functional import _get_sinc_resample_kernel

            g = math.gcd(self.input_rate, SAMPLE_RATE)
            self._orig, self._new = self.input_rate // g, SAMPLE_RATE // g
            # as torchaudio's resample builds it, in the waveform's dtype (made on first use)
            self._kernel = {}
            self._make_kernel = lambda dt: _get_sinc_resample_kernel(self.input_rate, SAMPLE_RATE, g, dtype=dt)
            self._kernel[torch.float32], self._width = self._make_kernel(torch.float32)
            self.frames = math.ceil(self._new * self.input_frames / self._orig)

    def read(self, start: int, stop: int):
        """44.1 kHz samples `[start, stop)` as float32 `[C, stop - start]`."""
        import torch

        stop_in = min(stop, self.frames)
        if self._kernel is None or stop_in <= start:
            return self._read_input(start, stop) if self._kernel is None else torch.zeros(self.channels, stop - start)
        o, n, w = self._orig, self._new, self._width
        f0, f1 = start // n, -(-stop_in // n)  # the conv frames whose outputs cover [start, stop_in)
        x = self._read_input(f0 * o - w, f1 * o + w)
        if x.dtype not in self._kernel:
            self._kernel[x.dtype] = self._make_kernel(x.dtype)[0]
        kernel = self._kernel[x.dtype]
        y = torch.nn.functional.conv1d(x[:, None], kernel, stride=o).transpose(1, 2).reshape(self.channels, -1)
        y = y[:, start - f0 * n : stop_in - f0 * n]
        return torch.nn.functional.pad(y, (0, stop - stop_in)) if stop > stop_in else y

    def window_starts(self, window: int, hop: int) -> list[tuple[int, int]]:
        """The `(start, stop)` spans `windows()` cuts: the whole clip if it fits, else windows of
        `window` samples every `hop`, the last one aligned to the end."""
        if self.frames <= window:
            return [(0, self.frames)]
        starts = list(range(0, self.frames - window + 1, hop))
        if starts[-1] + window < self.frames:
            starts.append(self.frames - window)
        return [(s, s + window) for s in starts]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
