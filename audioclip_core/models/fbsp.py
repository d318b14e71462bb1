"""The fbsp front end: framing, the trainable frequency-B-spline filter bank, dB bands.

Maths follow the published ESResNeXt-fbsp code exactly (see docs/reference.md), because the
released weights were trained through it:

* framing: one frame if the clip is no longer than the window, else 1 + ceil((L - win) / hop);
  zero padding split floor/ceil around the signal; each frame windowed by the stored buffer
  and zero-padded to n_fft;
* kernel_k(t) = sqrt(fb_k) * sinc(fb_k t / (m_k + eps))^m_k * exp(-i fc_k t) / sqrt(N), with
  t = pi * linspace(-1, 1, N) + eps and the power taken of the *complex* number (w + 0i), so a
  negative sinc lobe raised to a non-integer order has phase pi * m;
* output = a plain correlation of each real frame with the kernel rows (re, im).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


def blackman_harris(length: int) -> torch.Tensor:
    """Periodic 4-term Blackman-Harris window (scipy `get_window('blackmanharris', n)`)."""
    n = torch.arange(length, dtype=torch.float64)
    x = 2.0 * math.pi * n / length
    w = 0.35875 - 0.48829 * torch.cos(x) + 0.14128 * torch.cos(2 * x) - 0.01168 * torch.cos(3 * x)
    return w.to(torch.float32)


def frame_signal(signal: torch.Tensor, frame_length: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """`[N, L]` -> windowed frames `[N, F, frame_length]`, padded as the reference pads."""
    length = signal.shape[-1]
    if length <= frame_length:
        num_frames = 1
    else:
        num_frames = 1 + math.ceil((length - frame_length) / hop_length)
    padded = (num_frames - 1) * hop_length + frame_length
    if padded > length:
        extra = padded - length
        signal = F.pad(signal, (extra // 2, extra - extra // 2))
    return signal.unfold(-1, frame_length, hop_length) * window


def _normalise_gradient(grad: torch.Tensor) -> torch.Tensor:
    # The reference rescales the gradients of m, fb and fc to unit max-norm each step, so
    # the filter parameters move at a rate independent of the loss scale.
    return grad / (grad.abs().max() + EPS)


class _GradientHook:
    """Tensor hook that normalises the gradient unless its layer defers it (data parallel:
    the normalisation must see the gradient after it is averaged across processes)."""

    def __init__(self, layer: "LinearFBSP"):
        self.layer = layer

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return _normalise_gradient(grad) if self.layer.normalize_in_hook else grad


class LinearFBSP(nn.Module):
    """Complex frequency-B-spline filter bank with `out_features` filters (n_fft/2 + 1)."""

    def __init__(self, out_features: int, normalized: bool = True):
        super().__init__()
        self.out_features = out_features
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        # The official layout carries an empty `fbsp.bias` (the reference builds the layer
        # with bias=False but still registers the parameter); kept for strict loading.
        self.bias = nn.Parameter(torch.empty(0))
        self.normalize_in_hook = True
        self._kernel_cache: tuple | None = None
        hook = _GradientHook(self)
        for p in (self.m, self.fb, self.fc):
            p.register_hook(hook)

    @torch.no_grad()
    def normalize_gradients(self) -> None:
        """What the hooks do, applied explicitly (after a data-parallel all-reduce)."""
        for p in (self.m, self.fb, self.fc):
            if p.grad is not None:
                p.grad.copy_(_normalise_gradient(p.grad))

    def kernel(self, in_features: int) -> torch.Tensor:
        """The filter bank materialised for frames of `in_features` samples: `[K, N, 2]`."""
        dtype, device = self.fc.dtype, self.fc.device
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device) + EPS
        t = t.view(1, -1)
        m = self.m.view(-1, 1)
        fb = self.fb.view(-1, 1)
        fc = self.fc.view(-1, 1)
        carrier_re = torch.cos(fc * t)
        carrier_im = -torch.sin(fc * t)
        x = fb * t / (m + EPS)
        sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)
        # (sinc + 0i) ** m: magnitude |sinc|^m, phase m * atan2(0, sinc) (0 or m*pi)
        magnitude = (sinc**2) ** 0.5
        phase = torch.atan2(torch.zeros_like(sinc), sinc)
        env_mag = (magnitude**2) ** (0.5 * m)
        env_re = env_mag * torch.cos(m * phase)
        env_im = env_mag * torch.sin(m * phase)
        scale = fb.sqrt()
        k_re = scale * (env_re * carrier_re - env_im * carrier_im)
        k_im = scale * (env_re * carrier_im + env_im * carrier_re)
        kernel = torch.stack((k_re, k_im), dim=-1)
        if self.normalized:
            kernel = kernel / (in_features**0.5)
        return kernel

    def cached_kernel(self, in_features: int) -> torch.Tensor:
        """The kernel, recomputed only when a parameter changed (no autograd graph: inference)."""
        key = (
            in_features,
            self.m._version,
            self.fb._version,
            self.fc._version,
            self.fc.device,
            self.fc.dtype,
            id(self.m),
            id(self.fb),
            id(self.fc),
        )
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            with torch.no_grad():
                self._kernel_cache = (key, self.kernel(in_features))
        return self._kernel_cache[1]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Real frames `[..., N]` -> `[..., K, 2]` (re, im)."""
        if torch.is_grad_enabled() and self.m.requires_grad:
            kernel = self.kernel(frames.shape[-1])
        else:
            kernel = self.cached_kernel(frames.shape[-1])
        # One matmul over the stacked (re; im) rows instead of two.
        weight = torch.cat((kernel[..., 0], kernel[..., 1]), dim=0)
        out = F.linear(frames, weight)
        return torch.stack(out.split(self.out_features, dim=-1), dim=-1)

    def loss_ttf(self, in_features: int) -> torch.Tensor:
        """Filter-norm regulariser: MSE of each kernel row's norm against 1 (normalized) or sqrt(N)."""
        norms = torch.linalg.vector_norm(self.kernel(in_features), dim=(-1, -2))
        target = 1.0 if self.normalized else in_features**0.5
        return F.mse_loss(norms, torch.full_like(norms, target))

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, normalized={self.normalized}"
