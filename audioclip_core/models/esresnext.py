"""ESResNeXt-fbsp: the audio head (fbsp front end + ResNeXt with attention gates).

A clip `[B, C, T]` in the int16 range is rescaled to [-1, 1] in float32 exactly as the
reference does, framed, passed through the fbsp filter bank, turned into dB power and cut
into three frequency bands that act as the three "colour" channels of a ResNeXt-50 32x4d.
Every audio channel goes through the same backbone; pooled features are summed over
channels before the final linear layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fbsp import LinearFBSP, blackman_harris, frame_signal

LOG10_FLOOR = 1e-18


@dataclass
class AudioConfig:
    """Architecture of the audio head; defaults are the paper's (ResNeXt-50 32x4d)."""

    n_fft: int = 2048
    hop_length: int = 561
    win_length: int = 1654
    normalized: bool = True
    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 64
    planes: tuple[int, ...] = (64, 128, 256, 512)
    groups: int = 32
    width_per_group: int = 4
    apply_attention: bool = True
    num_classes: int = 1024

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown audio config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("layers", "planes"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["planes"] = list(self.planes)
        return d


def rescale_int16(x: torch.Tensor) -> torch.Tensor:
    """Map [-32768, 32767] to [-1, 1] with the reference's float32 operation order.

    The released weights depend on this exact arithmetic: for input already in [-1, 1]
    (the demo-notebook convention) `x + 32768` rounds the signal to steps of 2**-8, and a
    higher-precision rescale changes such an embedding by cosine 0.92. float64 input stays
    float64 (a float64 model, for exactness checks: `TrainConfig(dtype="float64")`).
    """
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return (((x + 32768.0) * 2.0) / 65535.0) - 1.0


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Attention2d(nn.Module):
    """Sigmoid gate computed from the tensor entering a stage, multiplied into its output."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.conv_depth = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(size):  # same size: every window is one element
            x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


# (kernel, padding) of the five gates, as in the published model
_GATES = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2)))


class ESResNeXt(nn.Module):
    """ESResNeXt-fbsp. `forward(x)` maps int16-range audio `[B, C, T]` to `[B, num_classes]`."""

    def __init__(self, config: AudioConfig | None = None, **overrides):
        super().__init__()
        config = config or AudioConfig()
        if overrides:
            config = AudioConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.preset: str | None = None  # the preset it was built from, when known
        self.checkpoint_metadata: dict = {}  # the metadata record of the checkpoint it was loaded from
        c = config
        if c.win_length > c.n_fft:
            raise ValueError(f"win_length {c.win_length} > n_fft {c.n_fft}")
        self.register_buffer("window", blackman_harris(c.win_length))
        self.fbsp = LinearFBSP(c.n_fft // 2 + 1, normalized=c.normalized)

        self.conv1 = nn.Conv2d(3, c.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = c.stem_width
        for i, (blocks, planes) in enumerate(zip(c.layers, c.planes)):
            stride = 1 if i == 0 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, c.groups, c.width_per_group))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.num_features = inplanes
        if c.apply_attention:
            ins = [c.stem_width] + [p * Bottleneck.expansion for p in c.planes]
            outs = [p * Bottleneck.expansion for p in c.planes] + [inplanes]
            for i, ((k, pad), cin, cout) in enumerate(zip(_GATES, ins, outs)):
                setattr(self, f"att{i + 1}", Attention2d(cin, cout, k, pad))
        self.fc = nn.Linear(inplanes, c.num_classes)
        self._fast = None
        self._init_weights()

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def reset_attention(self) -> None:
        """Gates start at sigmoid(1): what the reference does after an ImageNet init."""
        for i in range(1, 6):
            att = getattr(self, f"att{i}", None)
            if att is not None:
                with torch.no_grad():
                    att.bn.weight.fill_(1.0)
                    att.bn.bias.fill_(1.0)

    @property
    def num_bands(self) -> int:
        return self.conv1.in_channels

    # -- front end -------------------------------------------------------------------
    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """Already rescaled waveform `[B, C, T]` -> fbsp output `[B*C, K, frames, 2]`."""
        c = self.config
        with torch.no_grad():
            frames = frame_signal(x.reshape(-1, x.shape[-1]), c.win_length, c.hop_length, self.window)
            if c.n_fft > c.win_length:
                pad = c.n_fft - c.win_length
                frames = F.pad(frames, (pad // 2, pad - pad // 2))
        # the filter bank and the dB conversion stay float32 under autocast (bf16 would cost
        # the spectrum ~3 significant digits before a log)
        with torch.autocast(device_type=frames.device.type, enabled=False):
            frames = frames if frames.dtype == torch.float64 else frames.float()
            return self.fbsp(frames).transpose(-2, -3)

    def to_db(self, spec: torch.Tensor, batch_size: int) -> torch.Tensor:
        """fbsp output -> dB bands `[B, C, 3, K // 3, frames]` (the top K mod 3 bins dropped)."""
        bands = self.num_bands
        per_band = spec.shape[-3] // bands
        spec = spec[:, : per_band * bands]
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_FLOOR))
        power = power.reshape(batch_size, -1, bands, per_band, power.shape[-1])
        return torch.log10(power).mul(10.0)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """int16-range audio `[B, C, T]` -> the backbone's dB input `[B, C, 3, H, W]`."""
        if x.dim() != 3:
            raise ValueError(f"audio must be [batch, channels, samples], got shape {tuple(x.shape)}")
        x = rescale_int16(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.to_db(self.spectrogram(x), x.shape[0])

    # -- backbone --------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        attention = self.config.apply_attention
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            if attention:
                gate_input = x
                x = layer(x)
                x = x * getattr(self, f"att{i}")(gate_input, x.shape[-2:])
            else:
                x = layer(x)
        pooled = F.adaptive_avg_pool2d(x, 1)
        if attention:
            pooled = pooled * self.att5(x, pooled.shape[-2:])
        return torch.flatten(pooled, 1)

    def enable_fast_inference(
        self, *, compile: bool = True, channels_last: bool = True, bf16: bool = False, freeze: bool = True
    ) -> "ESResNeXt":
        """Faster inference (eval mode, no grad): channels-last layout, the backbone compiled
        with torch.compile (the first call compiles, ~30-40 s for the paper preset on a CPU),
        optionally bfloat16 autocast for the backbone (the fbsp front end and dB stay float32).

        `freeze` (with `compile`) lets the compiler treat the weights as constants: BatchNorm
        folded into the convolutions and weights pre-packed for oneDNN. The compiled code is
        rebuilt when a weight changes in place (a `load_state_dict`, an optimiser step).
        Training and gradient-enabled calls keep the plain path. Also applies
        `audioclip_core.perf.tune_malloc()`. `disable_fast_inference()` undoes the layout."""
        from ..perf import tune_malloc

        tune_malloc()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._fast = {
            "compile": compile,
            "freeze": freeze and compile,
            "channels_last": channels_last,
            "bf16": bf16,
            "fn": None,
            "stamp": None,
        }
        return self

    def disable_fast_inference(self) -> "ESResNeXt":
        self._fast = None
        self.to(memory_format=torch.contiguous_format)
        return self

    def _weights_stamp(self) -> tuple:
        """Changes whenever a parameter or buffer is replaced or modified in place."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    def _fast_features(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast
        stamp = self._weights_stamp() if fast["freeze"] else None
        if fast["fn"] is None or stamp != fast["stamp"]:
            if fast["fn"] is not None:
                torch._dynamo.reset()  # frozen weights are baked into the compiled code
            fast["fn"] = (
                torch.compile(self._features, dynamic=False, options={"freezing": True} if fast["freeze"] else None)
                if fast["compile"]
                else self._features
            )
            fast["stamp"] = stamp
            fast["batch"] = x.shape[0]
        n = x.shape[0]
        fast["batch"] = max(fast["batch"], n)  # a larger batch is compiled for once
        if fast["compile"] and n < fast["batch"]:
            # a short last batch is padded to the compiled size instead of compiling again
            # (eval-mode BatchNorm: items do not interact, the padding is sliced off)
            x = torch.cat([x, x.new_zeros(fast["batch"] - n, *x.shape[1:])])
        if fast["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        if fast["bf16"]:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return fast["fn"](x).float()[:n]
        return fast["fn"](x)[:n]

    def embed(self, x_db: torch.Tensor) -> torch.Tensor:
        """dB input `[B, C, 3, H, W]` -> pooled features summed over channels `[B, F]`."""
        b, ch = x_db.shape[:2]
        if self._fast is not None and not self.training and not torch.is_grad_enabled():
            pooled = self._fast_features(x_db.reshape(b * ch, *x_db.shape[2:]))
            return pooled.view(b, ch, -1).sum(1)
        if self.training and ch > 1:
            # Train-mode BatchNorm statistics must be taken per audio channel, as the
            # reference does; in eval mode the channels can share one batched pass.
            return torch.stack([self._features(x_db[:, i]) for i in range(ch)], 0).sum(0)
        pooled = self._features(x_db.reshape(b * ch, *x_db.shape[2:]))
        return pooled.view(b, ch, -1).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(self.preprocess(x)))

    # -- losses ----------------------------------------------------------------------
    def loss_ttf(self) -> torch.Tensor:
        return self.fbsp.loss_ttf(self.config.n_fft)

    def classification_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Multi-hot target: BCE-with-logits summed over classes / batch; class ids: CE. Plus ttf."""
        if target.shape == logits.shape:
            loss = (
                F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum") / logits.shape[0]
            )
        else:
            loss = F.cross_entropy(logits, target.long())
        return loss + self.loss_ttf()
