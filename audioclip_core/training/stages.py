"""The paper's training stages, one definition each: what a stage starts from, what it
freezes, what it reads and how it steps. `STAGES` is the one list of them.

0. ``clip_standin`` - the demo's stand-in for CLIP's pre-training (the paper starts from
   OpenAI's CLIP, which the demo cannot download): AudioCLIP's image and text towers trained
   contrastively from random weights on image-caption pairs - every frame of the AudioSet
   training clips with the clip's label names - so that stage 2 distils the audio head into
   an aligned image-text space, as in the paper. Its checkpoint is stage 2's `clip_weights`.
1. ``esresnext_audioset`` - the stand-alone ESResNeXt, multi-label BCE over the AudioSet
   classes, from an ImageNet ResNeXt-50 32x4d state dict when given (attention gates reset
   as the original does), else random.
2. ``audioclip_partial`` - AudioCLIP whose audio head comes from stage 1 with a fresh
   projection; image and text towers from CLIP weights when given, frozen as teachers;
   trains the audio head and the two audio logit scales.
3. ``audioclip_full`` - all three heads on AudioSet, from the partial checkpoint.
4. fine-tuning per fold of ESC-50 / UrbanSound8K: ``esresnext_finetune`` (stand-alone, a new
   classifier sized to the classes, CE) and ``audioclip_finetune`` (cooperative: only the
   audio head and the audio scales update; the class name of each clip is its text).

`stage` always names one of these steps; `name` names the asset (and checkpoint) that runs
it, e.g. stage ``audioclip_finetune`` for the assets ``audioclip_esc50`` / ``audioclip_us8k``.
A `spec.StageSpec` (JSON) describes one run of a stage, so the same definition runs
in-process or in every worker that torchrun starts; `build_stage` turns it into a model, a
dataset and a step (`builders`, `steps`), after the start-up rules below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
from torch import nn

from ..data.clipsets import validation_split
from ..data.datasets import AudioSetDataset, ClipSetDataset, ImageCaptionDataset, clipset_dataset
from ..data.manifests import read_manifest
from ..lineage import MISMATCH, verify_checkpoint
from .builders import audio_options, build_audioclip, build_classifier
from .config import TrainConfig
from .loop import Validation
from .spec import STAGE_NAMES, StageSpec
from .steps import (
    audioclip_step,
    class_name_logits,
    classifier_logits,
    classifier_step,
    image_text_step,
    keep_frozen_in_eval,
)

# model, dataset, step, and (fine-tuning) the held-out clips that pick the epoch kept
Built = tuple[nn.Module, object, Callable, Optional[Validation]]


# -- the stages ------------------------------------------------------------------------------
def _tables(spec: StageSpec) -> list[pd.DataFrame]:
    root = Path(spec.data_root) if spec.data_root else Path.cwd()
    return [read_manifest(Path(p), root) for p in spec.tables]


def _read_from(spec: StageSpec, dataset):
    """`dataset` reading its files from the spec's shard sets, when it names any."""
    if spec.shards:
        from ..data.shards import ShardStore

        dataset.store = ShardStore(
            [Path(s) for s in spec.shards], Path(spec.data_root) if spec.data_root else Path.cwd()
        )
    return dataset


def _audioset_data(spec: StageSpec, cfg: TrainConfig, *, with_image: bool, image_size: int = 224) -> AudioSetDataset:
    tables = _tables(spec)
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return _read_from(
        spec,
        AudioSetDataset(
            df,
            spec.class_ids,
            train=True,
            seed=cfg.seed,
            audio=audio_options(cfg),
            image_size=image_size,
            with_image=with_image,
        ),
    )


def _clipset_data(spec: StageSpec, cfg: TrainConfig) -> tuple[ClipSetDataset, Optional[ClipSetDataset]]:
    """An ESC-50 / US8K train split, augmented as `cfg` says, and the clips it holds out for
    validation (`cfg.validation_share`; None without), read unaugmented."""
    table = pd.concat(_tables(spec), ignore_index=True)
    train, held = validation_split(table, spec.extra_lineage.get("dataset", ""), cfg.validation_share, cfg.seed)
    data = _read_from(spec, clipset_dataset(train, spec.classes, audio_options(cfg), train=True, seed=cfg.seed))
    if not len(held):
        return data, None
    plain = dataclasses.replace(audio_options(cfg), augment=False)
    return data, _read_from(spec, clipset_dataset(held, spec.classes, plain, train=False, seed=cfg.seed))


def _validation(dataset: Optional[ClipSetDataset], logits) -> Optional[Validation]:
    if dataset is None:
        return None
    return Validation(dataset, logits, [str(p) for p in dataset.df["path"]])


IMAGENET_SOURCE = (
    "imagenet_weights",
    "a torchvision resnext50_32x4d ImageNet state dict (resnext50_32x4d-7cdf4587.pth)",
    "torchvision: https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth",
)
CLIP_SOURCE = (
    "clip_weights",
    "CLIP's ResNet-50 weights (CLIP.pt of the AudioCLIP release, or OpenAI's RN50.pt)",
    "https://github.com/AndreyGuzhov/AudioCLIP/releases (CLIP.pt) or OpenAI's CLIP repository (RN50)",
)


class InitialisationError(ValueError):
    """A paper stage would start from random weights where the paper starts from trained ones."""


def require_initialisation(spec: StageSpec, cfg: TrainConfig) -> None:
    """Stage 1 starts from ImageNet weights and stage 2 from CLIP's, as in the paper: without
    them (and without a checkpoint to start from) a stage refuses to start, naming the config
    key, the file it wants and where it is published - unless `allow_random_init` is set."""
    if cfg.allow_random_init:
        return
    need = None
    if spec.stage == "esresnext_audioset" and not (spec.init or spec.imagenet_weights):
        need = IMAGENET_SOURCE
    elif spec.stage == "audioclip_partial" and not spec.clip_weights:
        need = CLIP_SOURCE
    if need:
        raise missing_weights(spec.name, need)


def missing_weights(name: str, source: tuple[str, str, str]) -> InitialisationError:
    """The error of `name` starting without the trained weights `source` (IMAGENET_SOURCE,
    CLIP_SOURCE) names: the config key, the file and where it is published."""
    key, what, where = source
    return InitialisationError(
        f"{name}: the paper starts this stage from {what}, and `{key}` is not set. Set `{key}` in the stage's run "
        f"config to that file (published at {where}), or set `allow_random_init: true` to train from random "
        f"weights (what the demo profile does)."
    )


class ChangedParentError(ValueError):
    """A stage's parent checkpoint differs from its own lineage record."""


def require_unchanged_parent(spec: StageSpec, cfg: TrainConfig):
    """A stage starts from its parent as the parent's lineage records it: a parent file whose
    sha256 (`spec.parent`'s, taken once when the spec was made; not hashed again) differs from
    the digest in `<parent>.lineage.json` is refused, naming the file and both digests, unless
    `allow_changed_parent` - then it trains from the file as it is, and its lineage records
    both. A parent without a record (a released checkpoint) starts as it is. Returns the
    `lineage.Verification`, or None without a parent."""
    if not spec.parent:
        return None
    check = verify_checkpoint(Path(spec.parent["path"]), sha256=spec.parent["sha256"])
    if check.state == MISMATCH and not cfg.allow_changed_parent:
        raise ChangedParentError(
            f"{spec.name}: the parent checkpoint {check.path} has sha256 {check.actual}, but its lineage record "
            f"says {check.recorded}: it changed after {spec.parent.get('name') or 'its stage'} wrote it (damaged or "
            "replaced). Materialise that stage again (or restore the file), or set `allow_changed_parent: true` "
            "to train from it as it is"
        )
    return check


def _clip_standin(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg)  # random towers: the demo's CLIP is trained here
    model.freeze(audio=True)  # no audio: the audio head and its scales stay as built
    model.logit_scale_ai.requires_grad_(False)
    model.logit_scale_at.requires_grad_(False)
    tables = _tables(spec)
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    data = _read_from(spec, ImageCaptionDataset(df, train=True, seed=cfg.seed, image_size=model.visual.image_size))
    return model, data, image_text_step(cfg.loss_variant), None


def _esresnext_audioset(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_classifier(cfg, len(spec.class_ids), init=spec.init, imagenet=spec.imagenet_weights)
    return model, _audioset_data(spec, cfg, with_image=False), classifier_step, None


def _audioclip_partial(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, audio_head=spec.init, clip_weights=spec.clip_weights)
    model.freeze(image=True, text=True)  # CLIP's towers are the teachers
    data = _audioset_data(spec, cfg, with_image=True, image_size=model.visual.image_size)
    return model, data, audioclip_step(use_image=True, loss_variant=cfg.loss_variant), None


def _audioclip_full(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, init=spec.init)
    data = _audioset_data(spec, cfg, with_image=True, image_size=model.visual.image_size)
    return model, data, audioclip_step(use_image=True, loss_variant=cfg.loss_variant), None


def _esresnext_finetune(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_classifier(cfg, len(spec.classes), init=spec.init)
    data, held = _clipset_data(spec, cfg)
    return model, data, classifier_step, _validation(held, classifier_logits)


def _audioclip_finetune(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, init=spec.init)
    model.freeze(image=True, text=True)  # cooperative: only the audio head ...
    model.logit_scale.requires_grad_(False)  # ... and the two audio scales update
    data, held = _clipset_data(spec, cfg)
    step = audioclip_step(use_image=False, loss_variant=cfg.loss_variant)
    return model, data, step, _validation(held, class_name_logits(spec.classes))


@dataclass(frozen=True)
class Stage:
    """One step of the paper's training. `data` is what it reads ("audioset" manifests or an
    ESC-50 / US8K fold's "clipset" train split); `build` makes its model (loaded and frozen
    as the step requires), dataset and step function from a `StageSpec`."""

    name: str
    data: str
    summary: str
    build: Callable[[StageSpec, TrainConfig], Built]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "clip_standin",
            "audioset",
            "the demo's stand-in for CLIP pre-training: image and text towers trained "
            "contrastively on frame-caption pairs",
            _clip_standin,
        ),
        Stage(
            "esresnext_audioset",
            "audioset",
            "stand-alone ESResNeXt, multi-label BCE over the AudioSet classes",
            _esresnext_audioset,
        ),
        Stage("audioclip_partial", "audioset", "the audio head trained under frozen CLIP teachers", _audioclip_partial),
        Stage("audioclip_full", "audioset", "all three heads trained jointly on AudioSet", _audioclip_full),
        Stage(
            "esresnext_finetune",
            "clipset",
            "stand-alone ESResNeXt fine-tuned on a fold, new classifier",
            _esresnext_finetune,
        ),
        Stage(
            "audioclip_finetune",
            "clipset",
            "cooperative fine-tuning on a fold: the audio head only",
            _audioclip_finetune,
        ),
    )
}


assert tuple(STAGES) == STAGE_NAMES, "spec.STAGE_NAMES lists the stages of STAGES"


@dataclass
class BuiltStage:
    """A spec made ready to train: its config, model (loaded and frozen as its stage says),
    dataset and step, and what its lineage record adds."""

    spec: StageSpec
    config: TrainConfig
    model: nn.Module
    dataset: object
    step: Callable
    prepare: Callable[[nn.Module], None]
    extra_lineage: dict
    validation: Optional[Validation] = None


def build_stage(spec: StageSpec) -> BuiltStage:
    """`spec`'s stage built: its model, dataset and step, ready for `run.run_stage`, after the
    start-up rules (initial weights, an unchanged parent)."""
    cfg = TrainConfig(**spec.config)
    if cfg.stage != spec.stage:
        raise ValueError(f"{spec.name}: the spec is for stage {spec.stage!r}, its config for {cfg.stage!r}")
    require_initialisation(spec, cfg)
    parent = require_unchanged_parent(spec, cfg)
    changed = (
        {"parent_changed": {"recorded_sha256": parent.recorded, "sha256": parent.actual}}
        if parent is not None and parent.state == MISMATCH
        else {}
    )
    model, dataset, step, validation = STAGES[spec.stage].build(spec, cfg)
    return BuiltStage(
        spec,
        cfg,
        model,
        dataset,
        step,
        keep_frozen_in_eval,
        {**spec.extra_lineage, "clip_weights": spec.clip_weights, "imagenet_weights": spec.imagenet_weights, **changed},
        validation,
    )
