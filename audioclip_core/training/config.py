"""Typed training configuration of one stage run. Defaults are the paper's; the values of a
run come from a profile (`profiles.resolve`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from .spec import STAGE_NAMES


@dataclass
class TrainConfig:
    stage: str  # the paper's step (training.stages.STAGES)
    preset: str = "audioclip-rn50"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    gamma: float = 0.95  # ExponentialLR, stepped once per epoch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to the fbsp parameters and logit scales
    seed: int = 0
    clip_seconds: float = 5.0  # crop / pad length of the audio
    channels: int = 1  # audio channels fed (mono mix-down, or duplicated mono)
    input_scale: str = "int16"  # how [-1, 1] audio is fed (see audioclip_core.audio)
    inversion: str = "time"  # "time" (paper) or "channels" (the original code)
    noise_p: float = 0.25
    augment: bool = True
    augment_on: str = "worker"  # "worker": DataLoader workers augment; "device": they read the files
    # and draw the parameters, the batch is augmented on the training device (data.datasets)
    num_workers: int = 0
    max_steps_per_epoch: Optional[int] = None
    max_grad_norm: Optional[float] = None  # clip the global gradient norm to this (None: never, as the paper)
    loss_variant: str = "reference"
    device: str = "auto"  # "auto": cuda when available
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the training module (CUDA; the first steps compile)
    cpu_bf16: bool = False  # bf16 autocast on CPU too (~2.6x faster steps with avx512_bf16;
    # off by default: fp32 keeps runs bit-reproducible)
    freeze_bn: bool = False  # BatchNorm uses and keeps its running statistics
    dtype: str = "float32"  # "float64": model and batches in double precision, for
    # exactness checks (float32 sums in another order differ at
    # ~1e-7, enough to flip a max pool's argmax; float64 at ~1e-16)
    keep_epochs: list[int] = field(default_factory=list)  # also keep the weights after these many epochs
    # (snapshots/after_NNN_epochs.safetensors; Table 1's 5-epoch row)
    allow_random_init: bool = False  # stage 1 without ImageNet weights / stage 2 without CLIP weights
    # start from random weights instead of refusing (the demo)
    validation_share: float = 0.0  # fine-tuning: hold out this share of each class's training clips,
    # score the starting model and every epoch on them and keep the best (0: off, train to the end;
    # the paper does not say)
    allow_changed_parent: bool = False  # train from a parent checkpoint whose bytes differ from its own
    # lineage record (stages.require_unchanged_parent) instead of refusing
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {self.stage!r}; one of {STAGE_NAMES}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if self.augment_on not in ("worker", "device"):
            raise ValueError(f"augment_on must be 'worker' or 'device', not {self.augment_on!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {self.dtype!r}")
        if not 0 <= self.validation_share < 1:
            raise ValueError(f"validation_share must be in [0, 1), not {self.validation_share}")
        if self.validation_share and self.stage not in ("esresnext_finetune", "audioclip_finetune"):
            raise ValueError(
                f"validation_share: only fine-tuning holds out validation clips (its training folds); "
                f"{self.stage} trains on AudioSet"
            )
        if self.dtype == "float64" and self.cpu_bf16:
            raise ValueError("cpu_bf16 autocast and dtype='float64' exclude each other")

    def to_dict(self) -> dict:
        return asdict(self)
