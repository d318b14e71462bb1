"""The run config of a training stage, and how it resolves against a profile (paper or demo)
into the stage's `TrainConfig`."""

import os
from typing import Optional

import dagster as dg
from pydantic import Field

from audioclip_core.layout import DataLayout

from .resources import DatasetSources


class StageConfig(dg.Config):
    """Run config of a training stage. Unset values come from the profile: `paper` (the paper's
    values) or `demo` (tiny, for the demo data); the default profile is `demo` on the built-in
    demo data and `paper` otherwise (AUDIOCLIP_TRAIN_PROFILE overrides)."""

    profile: str = ""
    preset: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    gamma: Optional[float] = None
    clip_seconds: Optional[float] = Field(
        default=None,
        description="AudioSet stages; fine-tuning always uses the "
        "clip set's protocol (ESC-50 5 s mono, US8K 4 s stereo)",
    )
    seed: Optional[int] = Field(default=None, description="default: $AUDIOCLIP_SEED (make demo SEED=n), else 0")
    max_steps_per_epoch: Optional[int] = None
    keep_epochs: Optional[list[int]] = Field(
        default=None,
        description="also keep the weights after these many "
        "epochs (Table 1's shorter-trained row); default: the profile's (paper "
        "stage 1: [5], demo: [8])",
    )
    input_scale: Optional[str] = Field(
        default=None,
        description="int16 | minmax | unit; default: the profile's "
        "(int16), and for fine-tuning the clip set's published loader's (ESC-50 "
        "int16, US8K minmax)",
    )
    validation_share: Optional[float] = Field(
        default=None,
        description="fine-tuning: hold out this share of each class's training clips (whole "
        "recordings), score the start and every epoch on them and keep the best; default: the "
        "profile's (demo 0.2, paper 0: train to the last epoch)",
    )
    device: str = "auto"
    init_checkpoint: str = Field(
        default="",
        description="start from this checkpoint (e.g. a released "
        "AudioCLIP-Full-Training.pt) instead of the upstream asset",
    )
    clip_weights: str = Field(default="", description="CLIP.pt or OpenAI RN50.pt for the image/text towers")
    imagenet_weights: str = Field(default="", description="torchvision resnext50_32x4d state dict for stage 1")
    audioset_partitions: list[str] = Field(
        default_factory=list,
        description="AudioSet partitions to train on; "
        "empty: every training partition that has a segment list (all but eval; "
        "the demo's balanced_train)",
    )
    allow_random_init: Optional[bool] = Field(
        default=None,
        description="let stage 1 start without ImageNet weights "
        "and stage 2 without CLIP weights (random towers); the demo profile "
        "sets it, the paper profile refuses",
    )
    allow_changed_parent: bool = Field(
        default=False,
        description="train from the upstream (or init_checkpoint) "
        "checkpoint even when its sha256 differs from its own lineage record (the file "
        "changed after its stage wrote it); by default the stage refuses, naming the "
        "file and both digests",
    )
    augment_on: Optional[str] = Field(
        default=None,
        description="worker | device: where the training augmentations and the frame's JPEG decode run - "
        "in the DataLoader workers, or batched on the training device (the workers then only read "
        "files and draw the parameters); default: the profile's (worker)",
    )
    quality_gates: str = Field(
        default="block",
        description="block: a stage that fails `not_collapsed` or `above_chance` is set aside and "
        "nothing starts from it; record: the failure is recorded as a warning and the stage is "
        "published (a rehearsal of the pipeline on untrained weights). `finite_weights` always blocks",
    )
    nproc_per_node: int = Field(default=1, ge=1, description="> 1: launch torchrun (DDP) through Dagster Pipes")
    nnodes: int = Field(
        default=1,
        ge=1,
        description="> 1: torchrun agents on that many nodes, meeting in a c10d "
        "rendezvous (resource `launcher`; locally, as many agents on this machine)",
    )
    freeze_bn: Optional[bool] = None
    cpu_bf16: bool = Field(default=False, description="bfloat16 autocast on CPU (faster; not bit-reproducible)")
    dtype: str = Field(
        default="float32",
        description="float64: train in double precision (slow; for "
        "exactness checks such as 1 process against torchrun)",
    )


def profile(cfg: StageConfig, sources: DatasetSources, layout: DataLayout) -> str:
    return (
        cfg.profile
        or os.environ.get("AUDIOCLIP_TRAIN_PROFILE")
        or ("demo" if sources.uses_demo_audioset(layout) else "paper")
    )


def train_config(
    cfg: StageConfig, stage: str, sources: DatasetSources, layout: DataLayout, clipset: Optional[str] = None
):
    from audioclip_core.training.profiles import resolve

    name = profile(cfg, sources, layout)
    return resolve(name, stage, cfg.model_dump(), clipset=clipset), name
