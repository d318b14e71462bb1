"""Audio augmentations of the paper, seeded and reproducible.

Every transform is called as ``t(x, rng)`` with `x` `[C, T]` and a `torch.Generator`; a
dataset derives the generator from (seed, epoch, index), so a sample is augmented the
same way whatever worker or resume point produces it.

* time scaling: factor 1.5^U(-1, 1), linear interpolation (duration and pitch change together);
* time inversion with p = 0.5: ``mode="time"`` reverses along time as the paper says;
  ``mode="channels"`` reproduces the published code, which flips the channel axis (a no-op
  for mono, a left/right swap for stereo);
* random crop / pad to a fixed length (centred at evaluation), with the reference's
  fallback when a random crop is much quieter than the clip (std below half the clip's);
* white Gaussian noise with p = 0.25 at SNR U[10, 120] dB (drawn as U * (max - min + 1) + min,
  as the reference draws it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(rng: torch.Generator) -> float:
    return float(torch.rand((), generator=rng, dtype=torch.float64))


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, rng)
        return x


class TimeInversion:
    MODES = ("time", "channels")

    def __init__(self, p: float = 0.5, mode: str = "time"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.p, self.mode = p, mode

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if _uniform(rng) < self.p:
            return x.flip(-1 if self.mode == "time" else 0)
        return x


class RandomScale:
    def __init__(self, max_scale: float = 1.5):
        self.max_scale = max_scale

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        factor = self.max_scale ** (2.0 * _uniform(rng) - 1.0)
        return time_scale(x, factor)


def time_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample the time axis by `factor` (output length floor(T * factor)) with linear interpolation."""
    length = x.shape[-1]
    out_len = max(1, int(length * factor))
    pos = torch.arange(out_len, dtype=torch.float64) / factor
    left = pos.long().clamp(max=length - 1)
    right = (left + 1).clamp(max=length - 1)
    frac = (pos - left.double()).to(x.dtype)
    return x[..., left] * (1 - frac) + x[..., right] * frac


class RandomPadding:
    """Pad to `out_len` at a random (train) or centred (eval) offset with the edge values
    (mean over channels of the first / last sample)."""

    def __init__(self, out_len: int, train: bool = True):
        self.out_len, self.train = out_len, train

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        length = x.shape[-1]
        if length >= self.out_len:
            return x
        room = self.out_len - length
        if self.train:
            left = int(torch.randint(0, room, (), generator=rng)) if room > 0 else 0
        else:
            left = int(round(0.5 * room))
        right = room - left
        lval = x[..., 0].float().mean().to(x.dtype)
        rval = x[..., -1].float().mean().to(x.dtype)
        shape = x.shape[:-1]
        return torch.cat([x.new_full((*shape, left), lval), x, x.new_full((*shape, right), rval)], -1)


class RandomCrop:
    """Crop to `out_len` at a random (train) or centred (eval) offset; if that window's std is
    below half the clip's, take the first `out_len` samples, and if those are quieter still,
    the last ones (the reference's fallback, also at evaluation)."""

    def __init__(self, out_len: int, train: bool = True):
        self.out_len, self.train = out_len, train

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        length = x.shape[-1]
        if length <= self.out_len:
            return x
        room = length - self.out_len
        left = int(torch.randint(0, room, (), generator=rng)) if self.train else int(round(0.5 * room))
        half_std = x.float().std() * 0.5
        out = x[..., left : left + self.out_len]
        out_std = out.float().std()
        if out_std < half_std:
            out = x[..., : self.out_len]
        new_std = out.float().std()
        if half_std > new_std > out_std:
            out = x[..., -self.out_len :]
        return out


class RandomNoise:
    def __init__(self, snr_min_db: float = 10.0, snr_max_db: float = 120.0, p: float = 0.25):
        self.snr_min_db, self.snr_max_db, self.p = snr_min_db, snr_max_db, p

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if _uniform(rng) >= self.p:
            return x
        snr = _uniform(rng) * (self.snr_max_db - self.snr_min_db + 1.0) + self.snr_min_db
        power = x.double().pow(2).mean()
        if power <= 0:
            return x
        noise_power = power / (10.0 ** (snr / 10.0))
        noise = torch.randn(x.shape, generator=rng, dtype=torch.float64) * noise_power.sqrt()
        return (x.double() + noise).to(x.dtype)


def train_transforms(
    out_len: int, *, inversion: str = "time", max_scale: float = 1.5, noise_p: float = 0.25
) -> Compose:
    """The paper's training chain, in the reference's order: invert, scale, pad, crop, noise."""
    return Compose(
        [
            TimeInversion(0.5, inversion),
            RandomScale(max_scale),
            RandomPadding(out_len, train=True),
            RandomCrop(out_len, train=True),
            RandomNoise(10.0, 120.0, noise_p),
        ]
    )


def eval_transforms(out_len: int) -> Compose:
    """Centre pad, then centre crop."""
    return Compose([RandomPadding(out_len, train=False), RandomCrop(out_len, train=False)])


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index)."""
    g = torch.Generator()
    g.manual_seed(((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(index)) % (2**63 - 1))
    return g
