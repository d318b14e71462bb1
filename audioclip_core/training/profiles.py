"""Named training profiles - the paper's values, and a tiny one for the demo data on a CPU -
and `resolve`, which turns a profile, a stage and a run's overrides into its `TrainConfig`.

Fine-tuning always follows the clip set's protocol (`data.clipsets.protocol`: ESC-50 5.0 s
mono, UrbanSound8K 4.0 s stereo; the input scale of its published loader - ESC-50 int16,
UrbanSound8K minmax - unless a run sets one), in every profile, so a model is fine-tuned on
the clips it is evaluated on.

The paper profile never starts from random weights without being told: stage 1 wants
ImageNet weights and stage 2 CLIP weights (`stages.require_initialisation`), unless
`allow_random_init` is set. The demo profile sets it: its towers are trained from scratch, the image and text towers
first by `clip_standin`, the demo's stand-in for CLIP's pre-training.

A run that sets no seed takes $AUDIOCLIP_SEED (`make demo SEED=n`), else 0.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, Optional

from ..data.clipsets import protocol
from ..data.demo_dataset import demo_seed
from .config import TrainConfig

_PAPER_AUDIOSET = dict(preset="audioclip-rn50", epochs=30, batch_size=64, lr=1e-4, gamma=0.95, clip_seconds=10.0)
# Table 1 compares the original 5-epoch ESResNeXt AudioSet training with the extended one
_PAPER_STAGE1 = dict(_PAPER_AUDIOSET, keep_epochs=[5])
_DEMO = "audioclip-demo"
_PAPER_FINETUNE = dict(preset="audioclip-rn50", epochs=50, batch_size=64, lr=5e-5, gamma=0.98)

PROFILES = {
    # the paper: SGD + Nesterov 0.9, wd 5e-4, batch 64; AudioSet stages 1e-4 / 0.95 / 30 epochs,
    # fine-tuning 5e-5 / 0.98 / 50 epochs
    "paper": {
        "esresnext_audioset": _PAPER_STAGE1,
        "audioclip_partial": _PAPER_AUDIOSET,
        "audioclip_full": _PAPER_AUDIOSET,
        "esresnext_finetune": _PAPER_FINETUNE,
        "audioclip_finetune": _PAPER_FINETUNE,
    },
    # the demo data (ten synthetic classes, 4 s clips, towers trained from scratch; preset
    # audioclip-demo): minutes on 2 cores. `clip_standin` first trains the image and text
    # towers on frame-caption pairs (the demo's stand-in for CLIP's pre-training), which
    # stage 2 then distils the audio head into, as the paper does with OpenAI's CLIP.
    # BatchNorm statistics stay frozen where the stage starts from trained weights and batches
    # are tiny, otherwise a few noisy batches undo the alignment; and with ten classes most
    # batches hold several clips of one class, so the contrastive stages use the corrected
    # loss (identical captions are positives, not negatives). Fine-tuning runs without the
    # paper's augmentations: the demo's classes differ by pitch, which time scaling by up to
    # 1.5x moves onto another class's, and with 16-18 clips per class that costs more than it
    # adds (measured on 3-4 folds of a demo root: ESResNeXt ESC-50 84 % without against 67 %
    # with; cooperative 82 % against 52-68 %, zero-shot 68 %). Two cooperative epochs score
    # as three (80 % on four US8K folds) at two thirds of the time. Cooperative lr 0.002: at
    # 0.003 a weak partial model (seed 1: zero-shot 31 %) thrashed on three ESC-50 folds
    # (20 %; its first-epoch loss 10-14 against 5.0 at uniform logits) - 0.002 gives 65 % there
    # and 85 % from the full model (0.001: 63 % and 70 %).
    "demo": {
        "clip_standin": dict(
            preset=_DEMO,
            epochs=6,
            batch_size=32,
            lr=0.02,
            gamma=0.9,
            clip_seconds=4.0,
            loss_variant="corrected",
            allow_random_init=True,
        ),
        "esresnext_audioset": dict(
            preset=_DEMO,
            epochs=20,
            batch_size=16,
            lr=0.02,
            gamma=0.9,
            clip_seconds=4.0,
            allow_random_init=True,
            keep_epochs=[8],
        ),
        # the gradient's global norm clipped at 5 (typical norms 3-5 after the first epochs, 28-49
        # in the first): without it, seed 0 on an Intel Xeon diverged (pair terms 17 against 5.45
        # at uniform logits) to NaN at epoch 6; with it the same run ends at 2.0 (in-batch
        # audio-to-caption retrieval 0.85-0.88)
        "audioclip_partial": dict(
            preset=_DEMO,
            epochs=20,
            batch_size=16,
            lr=0.02,
            gamma=0.95,
            clip_seconds=4.0,
            loss_variant="corrected",
            allow_random_init=True,
            max_grad_norm=5.0,
        ),
        "audioclip_full": dict(
            preset=_DEMO,
            epochs=10,
            batch_size=16,
            lr=0.0005,
            gamma=0.95,
            clip_seconds=4.0,
            freeze_bn=True,
            loss_variant="corrected",
        ),
        "esresnext_finetune": dict(preset=_DEMO, epochs=3, batch_size=12, lr=0.01, gamma=0.9, augment=False),
        "audioclip_finetune": dict(
            preset=_DEMO,
            epochs=2,
            batch_size=12,
            lr=0.002,
            gamma=0.9,
            augment=False,
            freeze_bn=True,
            loss_variant="corrected",
        ),
    },
}
FINETUNE_STAGES = ("esresnext_finetune", "audioclip_finetune")


def profile_values(profile: str, stage: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown training profile {profile!r}; one of {sorted(PROFILES)}")
    return dict(PROFILES[profile][stage])


def resolve(
    profile: str, stage: str, overrides: Mapping[str, Any] = (), *, clipset: Optional[str] = None
) -> TrainConfig:
    """The `TrainConfig` of one run: the profile's values for `stage`, then every override
    that names a `TrainConfig` field and is not None (others are ignored: they configure the
    run, not the training), then - for fine-tuning on `clipset` - that set's clip length and
    channels."""
    values = profile_values(profile, stage)
    names = {f.name for f in fields(TrainConfig)} - {"stage"}
    given = {k: v for k, v in dict(overrides).items() if k in names and v is not None}
    values.update(given)
    if "seed" not in given:
        values.setdefault("seed", demo_seed())  # $AUDIOCLIP_SEED (make demo SEED=n), else 0
    if stage in FINETUNE_STAGES:
        if clipset is None:
            raise ValueError(f"{stage} fine-tunes on a clip set: give clipset='esc50' or 'us8k'")
        spec = protocol(clipset)
        values.update(clip_seconds=spec.clip_seconds, channels=spec.channels)
        if "input_scale" not in given:
            values["input_scale"] = spec.input_scale
    return TrainConfig(stage=stage, **values)
