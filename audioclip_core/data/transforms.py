"""Audio augmentations of the paper, seeded and reproducible, per sample or batched.

* time scaling: factor 1.5^U(-1, 1), linear interpolation (duration and pitch change together);
* time inversion with p = 0.5: ``mode="time"`` reverses along time as the paper says;
  ``mode="channels"`` reproduces the published code, which flips the channel axis (a no-op
  for mono, a left/right swap for stereo);
* random crop / pad to a fixed length (centred at evaluation), with the reference's
  fallback when a random crop is much quieter than the clip (std below half the clip's);
* white Gaussian noise with p = 0.25 at SNR U[10, 120] dB (drawn as U * (max - min + 1) + min,
  as the reference draws it).

Every augmentation is two steps. `WaveAugment.draw` takes the random parameters of one clip
- a few scalars - from its `torch.Generator`, on the CPU, in the reference's order; a dataset
derives the generator from (seed, epoch, index), so a sample is augmented the same way
whatever worker or resume point produces it. `WaveAugment.apply` runs drawn parameters over a
batch of clips `[B, C, T]` (zero-padded to the longest) on whatever device the batch is on.
Called per sample, ``t(x, rng)`` draws, then applies to a batch of one: the same function
serves evaluation, the CLI and DataLoader workers (``augment_on="worker"``), and a training
loop that has its workers only draw and runs `apply` on the GPU (``augment_on="device"``).

Inversion, scaling, padding and cropping are one gather: output sample j of a clip reads
position j + crop start - pad offset of the scaled clip, interpolated from the raw clip
(reversed when inverted) exactly as `time_scale` interpolates, so a batch gives, clip by
clip, the values the per-sample call gives (`tests/core/data/test_device_augment.py`). The
crop fallback compares standard deviations in float64, of the deviations from the clip's
first sample (exact for a constant clip), summed in fixed chunks: the same on one or many
threads and whatever the batch (on CUDA, sums in another order move them by ~1e-16,
relative). The reference compares float32 ones, so a window within ~1e-7 of the threshold
can be judged the other way; the draws, and all other values, are the reference's.

The noise is Gaussian of a counter-based hash: the generator draws a 63-bit key per noisy
clip and element i of its noise is a function of (key, i) alone (`gaussian_noise`), the
same on any device and in any batch. A CPU generator's `randn` stream cannot be reproduced
on a GPU, which is why the noise is not drawn from it: the noise is another realisation of
the same distribution as the reference's, and the draws after it (an AudioSet item's frame
and crop) differ from a `randn`-drawing chain's for a noisy clip.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# what `WaveAugment.draw` returns per clip, and the dtype each is batched in
PARAM_DTYPES = {
    "length": torch.int64,  # samples of the raw clip
    "invert": torch.bool,
    "factor": torch.float64,  # time scaling (1.0 without)
    "scaled_len": torch.int64,  # samples after scaling
    "pad_left": torch.int64,  # padding before the clip (0 when not padded)
    "crop_left": torch.int64,  # start of the drawn crop window (0 when not cropped)
    "noise": torch.bool,
    "snr_db": torch.float64,
    "noise_key": torch.int64,
}

_SUM_CHUNK = 4096  # `_row_sum`'s fixed chunk: below torch's parallel grain, so each is summed serially


def _uniform(rng: torch.Generator) -> float:
    return float(torch.rand((), generator=rng, dtype=torch.float64))


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, rng)
        return x


def stack_params(params: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Per-clip parameters (`WaveAugment.draw`) as one CPU tensor per name, `[B]` each."""
    return {k: torch.tensor([p[k] for p in params], dtype=dt) for k, dt in PARAM_DTYPES.items()}


class WaveAugment:
    """A chain of the augmentations above, in the reference's order: invert, scale, pad, crop,
    noise. A step is left out when its argument says so (`invert_p` / `max_scale` / `noise_p`
    None, `pad` / `crop` False); `out_len` is the length padding and cropping aim at, at
    random offsets when `train`, centred otherwise."""

    MODES = ("time", "channels")

    def __init__(
        self,
        out_len: Optional[int] = None,
        *,
        train: bool = True,
        invert_p: Optional[float] = None,
        inversion: str = "time",
        max_scale: Optional[float] = None,
        pad: bool = False,
        crop: bool = False,
        noise_p: Optional[float] = None,
        snr_min_db: float = 10.0,
        snr_max_db: float = 120.0,
    ):
        if inversion not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {inversion!r}")
        if (pad or crop) and out_len is None:
            raise ValueError("padding and cropping need an out_len")
        self.out_len, self.train = out_len, train
        self.invert_p, self.inversion, self.max_scale = invert_p, inversion, max_scale
        self.pad, self.crop = pad, crop
        self.noise_p, self.snr_min_db, self.snr_max_db = noise_p, snr_min_db, snr_max_db

    def __call__(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """`x` `[C, T]` augmented with parameters drawn from `rng`."""
        params = stack_params([self.draw(x.shape[-1], rng)])
        return self.apply(x.unsqueeze(0), params)[0]

    def draw(self, length: int, rng: torch.Generator) -> dict:
        """The random parameters of a clip of `length` samples, drawn from `rng` in the order the
        reference draws them (a dataset draws its frame and crop after them, from the same `rng`)."""
        invert = self.invert_p is not None and _uniform(rng) < self.invert_p
        factor, scaled = 1.0, length
        if self.max_scale is not None:
            factor = self.max_scale ** (2.0 * _uniform(rng) - 1.0)
            scaled = max(1, int(length * factor))
        pad_left = crop_left = 0
        if self.pad and scaled < self.out_len:
            room = self.out_len - scaled
            pad_left = int(torch.randint(0, room, (), generator=rng)) if self.train else int(round(0.5 * room))
        if self.crop and scaled > self.out_len:
            room = scaled - self.out_len
            crop_left = int(torch.randint(0, room, (), generator=rng)) if self.train else int(round(0.5 * room))
        noise, snr, key = False, 0.0, 0
        if self.noise_p is not None and _uniform(rng) < self.noise_p:
            noise = True
            snr = _uniform(rng) * (self.snr_max_db - self.snr_min_db + 1.0) + self.snr_min_db
            key = int(torch.randint(0, 2**63 - 1, (), generator=rng))
        return {
            "length": length,
            "invert": invert,
            "factor": factor,
            "scaled_len": scaled,
            "pad_left": pad_left,
            "crop_left": crop_left,
            "noise": noise,
            "snr_db": snr,
            "noise_key": key,
        }

    def out_lengths(self, scaled_len: torch.Tensor) -> torch.Tensor:
        """Output length of clips of `scaled_len` samples after scaling."""
        out = scaled_len.clone()
        if self.pad:
            out[scaled_len < self.out_len] = self.out_len
        if self.crop:
            out[scaled_len > self.out_len] = self.out_len
        return out

    def apply(self, waves: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Clips `[B, C, T]` (clip b in its first `params["length"][b]` samples) augmented with
        drawn `params` (`stack_params`, on the CPU) -> `[B, C, out]`, on `waves`' device and in its
        dtype. All clips of a batch must come out equally long (with padding and cropping they do)."""
        out_lens = self.out_lengths(params["scaled_len"]).unique()
        if len(out_lens) != 1:
            raise ValueError(f"clips of one batch come out {out_lens.tolist()} samples long; pad and crop them")
        out_len = int(out_lens[0])
        max_scaled = int(params["scaled_len"].max())
        dev = waves.device
        p = {k: v.to(dev, non_blocking=True) for k, v in params.items()}
        scaled_len = p["scaled_len"]
        y = self._scaled(waves, params, max_scaled)  # [B, C, max_scaled]

        start = p["crop_left"]
        cropped = params["scaled_len"] > out_len if self.crop else torch.zeros(len(waves), dtype=torch.bool)
        if bool(cropped.any()):
            # the reference's fallback: a window quieter than half the clip gives way to the
            # first one, and that, if quieter still yet louder than the drawn one, to the last.
            # Deviations from each clip's first sample (float64) keep the one-pass variance exact
            # for a constant clip and free of cancellation for one with a DC offset
            dev_ = y.double() - y[:, :1, :1].double()
            if bool((params["scaled_len"] < max_scaled).any()):
                valid = (torch.arange(max_scaled, device=dev) < scaled_len[:, None]).unsqueeze(1)
                half_std = 0.5 * _std(torch.where(valid, dev_, 0.0), scaled_len * y.shape[1])
            else:
                half_std = 0.5 * _std(dev_, torch.full_like(scaled_len, dev_[0].numel()))
            n_window = torch.full_like(scaled_len, out_len * y.shape[1])
            window = start[:, None] + torch.arange(out_len, device=dev)
            drawn_std = _std(dev_.gather(2, window.unsqueeze(1).expand(-1, y.shape[1], -1)), n_window)
            first_std = _std(dev_[:, :, :out_len], n_window)
            to_first = drawn_std < half_std
            to_last = to_first & (half_std > first_std) & (first_std > drawn_std)
            start = torch.where(to_first, torch.zeros_like(start), start)
            start = torch.where(to_last, scaled_len - out_len, start)
            start = torch.where(cropped.to(dev), start, p["crop_left"])

        # output sample j reads scaled sample j + start - pad_left; outside the clip, the edge values
        src = torch.arange(out_len, device=dev) + (start - p["pad_left"])[:, None]  # [B, out]
        last = (scaled_len - 1)[:, None]
        out = y.gather(2, torch.minimum(src.clamp(min=0), last).unsqueeze(1).expand(-1, y.shape[1], -1))
        if self.pad and bool((params["scaled_len"] < out_len).any()):
            first_val = y[:, :, 0].float().mean(1).to(y.dtype)[:, None, None]
            last_val = y.gather(2, last.unsqueeze(1).expand(-1, y.shape[1], 1)).float().mean(1).to(y.dtype)
            out = torch.where((src < 0).unsqueeze(1), first_val, out)
            out = torch.where((src > last).unsqueeze(1), last_val[:, :, None], out)

        if self.noise_p is not None:
            for b in params["noise"].nonzero().flatten().tolist():
                out[b] = add_noise(out[b], float(params["snr_db"][b]), int(params["noise_key"][b]))
        return out

    def _scaled(self, waves: torch.Tensor, params: dict[str, torch.Tensor], max_scaled: int) -> torch.Tensor:
        """Inverted and time-scaled clips `[B, C, max_scaled]` (past a clip's `scaled_len`: unused
        values); `params` on the CPU (the decisions below read them without waiting for a device)."""
        dev = waves.device
        lengths, invert = params["length"], params["invert"]
        p = {k: params[k].to(dev, non_blocking=True) for k in ("length", "invert", "factor")}
        last = (p["length"] - 1)[:, None]
        same_length = bool((lengths == lengths[0]).all())

        def clamp(index: torch.Tensor) -> torch.Tensor:  # to the clip's last sample
            return index.clamp(max=int(lengths[0]) - 1) if same_length else torch.minimum(index, last)

        if self.max_scale is None:
            left, right, frac = clamp(torch.arange(max_scaled, device=dev)[None]), None, None
        else:  # as time_scale, position by position
            pos = torch.arange(max_scaled, dtype=torch.float64, device=dev)[None] / p["factor"][:, None]
            left = clamp(pos.long())
            right = clamp(left + 1)
            frac = (pos - left.double()).to(waves.dtype).unsqueeze(1)
        time_flip = invert if self.inversion == "time" else torch.zeros_like(invert)
        some_flip, all_flip = bool(time_flip.any()), bool(time_flip.all())
        channel_flip = bool(invert.any()) and self.inversion == "channels"

        def read(index: torch.Tensor) -> torch.Tensor:
            if all_flip:
                index = last - index
            elif some_flip:
                index = torch.where(p["invert"][:, None], last - index, index)
            x = waves.gather(2, index.unsqueeze(1).expand(waves.shape[0], waves.shape[1], -1))
            if channel_flip:
                x = torch.where(p["invert"][:, None, None], x.flip(1), x)
            return x

        if right is None:
            return read(left)
        return read(left) * (1 - frac) + read(right) * frac


def _row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over all but the first dimension in a fixed order - chunks of `_SUM_CHUNK` summed
    serially, then the chunk sums, then the rest - the same on any thread count and in any batch."""
    flat = x.reshape(x.shape[0], -1)
    whole = flat.shape[1] - flat.shape[1] % _SUM_CHUNK
    total = flat[:, :whole].reshape(flat.shape[0], -1, _SUM_CHUNK).sum(-1).sum(-1)
    return total + flat[:, whole:].sum(-1) if whole < flat.shape[1] else total


def _std(deviation: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each clip's `n` samples, from their deviations `[B, C, N]` (float64, zero
    where unused) from a value near them: (sum(d^2) - sum(d)^2 / n) / (n - 1), square-rooted."""
    n = n.to(deviation.dtype)
    s1, s2 = _row_sum(deviation), _row_sum(deviation * deviation)
    return ((s2 - s1 * s1 / n) / (n - 1)).clamp(min=0).sqrt()


def add_noise(x: torch.Tensor, snr_db: float, key: int) -> torch.Tensor:
    """`x` `[C, T]` plus white Gaussian noise (`gaussian_noise(key, ...)`) at `snr_db` below its
    power; a silent `x` unchanged. In float64, cast back to `x`'s dtype."""
    wide = x.double()
    power = _row_sum(wide.pow(2).unsqueeze(0))[0] / x.numel()
    noise_power = power / (10.0 ** (snr_db / 10.0))
    noisy = (wide + gaussian_noise(key, x.shape, device=x.device) * noise_power.sqrt()).to(x.dtype)
    return torch.where(power > 0, noisy, x)


# splitmix64 (Steele, Lea and Flood 2014) in int64 arithmetic: products wrap modulo 2^64 on
# every device, and a right shift is made logical by masking the sign bits it copies
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(key: int, counter: torch.Tensor) -> torch.Tensor:
    z = key + (counter + 1) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def gaussian_noise(key: int, shape: Sequence[int], *, device=None) -> torch.Tensor:
    """Standard normal float64 noise of `shape`: element i (row-major) from the 64-bit hashes of
    (key, 2i) and (key, 2i + 1) - two uniforms of 53 bits - by Box-Muller (`r cos(theta)`).

    The hashes and uniforms are exact integer and float64 operations, identical on every
    device; log, sqrt and cos may differ by an ulp or two between CPU and CUDA libraries, so
    a value can differ in its last bits (~1e-16 relative), which float32 audio absorbs but in
    the rare element whose float64 sum lies that close to a float32 rounding boundary (about
    one element in 10^8, then by one float32 ulp)."""
    n = math.prod(shape)
    bits = _shift_right(_splitmix64(key, torch.arange(2 * n, dtype=torch.int64, device=device)), 11)
    uniform = bits.double() * 2.0**-53  # [0, 1)
    radius = (-2.0 * torch.log1p(-uniform[0::2])).sqrt()  # 1 - u in (0, 1]
    return (radius * torch.cos(2.0 * math.pi * uniform[1::2])).view(*shape)


def time_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample the time axis by `factor` (output length floor(T * factor)) with linear interpolation."""
    return WaveAugment(max_scale=factor)._scaled(
        x.unsqueeze(0),
        {
            "length": torch.tensor([x.shape[-1]]),
            "factor": torch.tensor([factor], dtype=torch.float64),
            "invert": torch.zeros(1, dtype=torch.bool),
        },
        max(1, int(x.shape[-1] * factor)),
    )[0]


class TimeInversion(WaveAugment):
    def __init__(self, p: float = 0.5, mode: str = "time"):
        super().__init__(invert_p=p, inversion=mode)


class RandomScale(WaveAugment):
    def __init__(self, max_scale: float = 1.5):
        super().__init__(max_scale=max_scale)


class RandomPadding(WaveAugment):
    """Pad to `out_len` at a random (train) or centred (eval) offset with the edge values
    (mean over channels of the first / last sample)."""

    def __init__(self, out_len: int, train: bool = True):
        super().__init__(out_len, train=train, pad=True)


class RandomCrop(WaveAugment):
    """Crop to `out_len` at a random (train) or centred (eval) offset; if that window's std is
    below half the clip's, take the first `out_len` samples, and if those are quieter still,
    the last ones (the reference's fallback, also at evaluation)."""

    def __init__(self, out_len: int, train: bool = True):
        super().__init__(out_len, train=train, crop=True)


class RandomNoise(WaveAugment):
    def __init__(self, snr_min_db: float = 10.0, snr_max_db: float = 120.0, p: float = 0.25):
        super().__init__(noise_p=p, snr_min_db=snr_min_db, snr_max_db=snr_max_db)


def train_transforms(
    out_len: int, *, inversion: str = "time", max_scale: float = 1.5, noise_p: float = 0.25
) -> WaveAugment:
    """The paper's training chain, in the reference's order: invert, scale, pad, crop, noise."""
    return WaveAugment(
        out_len,
        train=True,
        invert_p=0.5,
        inversion=inversion,
        max_scale=max_scale,
        pad=True,
        crop=True,
        noise_p=noise_p,
    )


def eval_transforms(out_len: int) -> WaveAugment:
    """Centre pad, then centre crop."""
    return WaveAugment(out_len, train=False, pad=True, crop=True)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index)."""
    g = torch.Generator()
    g.manual_seed(((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(index)) % (2**63 - 1))
    return g
