"""A stage described as data (`StageSpec`, JSON-serialisable) and built into a `StageRun`.

The same spec runs in-process or in every worker that torchrun starts, so one code path
decides what a stage trains, freezes and reads.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from . import stages
from .config import TrainConfig
from .run import StageRun

KINDS = ("esresnext_audioset", "audioclip_partial", "audioclip_full", "esresnext_finetune", "audioclip_finetune")


@dataclass
class StageSpec:
    name: str                                  # the asset, e.g. "audioclip_esc50"
    kind: str                                  # one of KINDS
    config: dict                               # TrainConfig fields
    workdir: str
    tables: list[str]                          # parquet files to train on
    manifests: dict                            # name -> {"path", "sha256", "rows"}
    class_ids: list[str] = field(default_factory=list)   # AudioSet mids (audioset stages)
    classes: list[str] = field(default_factory=list)     # class names (fine-tuning)
    init: Optional[str] = None                 # checkpoint to start from (upstream or released)
    parent: Optional[dict] = None
    clip_weights: Optional[str] = None
    imagenet_weights: Optional[str] = None
    dagster: dict = field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    extra_lineage: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown stage kind {self.kind!r}; one of {KINDS}")

    def to_json(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> "StageSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def build_stage(spec: StageSpec) -> StageRun:
    cfg = TrainConfig(**spec.config)
    tables = [pd.read_parquet(p) for p in spec.tables]
    prepare = stages.keep_frozen_in_eval
    if spec.kind == "esresnext_audioset":
        model = stages.build_classifier(cfg, len(spec.class_ids), init=spec.init, imagenet=spec.imagenet_weights)
        dataset = stages.audioset_dataset(tables, spec.class_ids, cfg, with_image=False)
        step = stages.classifier_step
    elif spec.kind in ("audioclip_partial", "audioclip_full"):
        partial = spec.kind == "audioclip_partial"
        if partial:
            model = stages.build_audioclip(cfg, audio_head=spec.init, clip_weights=spec.clip_weights)
            stages.freeze_teachers(model)
        else:
            model = stages.build_audioclip(cfg, init=spec.init)
        dataset = stages.audioset_dataset(tables, spec.class_ids, cfg, with_image=True,
                                          image_size=model.visual.image_size)
        step = stages.audioclip_step(use_image=True, loss_variant=cfg.loss_variant)
    elif spec.kind == "esresnext_finetune":
        model = stages.build_classifier(cfg, len(spec.classes), init=spec.init)
        dataset = stages.clipset_dataset(pd.concat(tables, ignore_index=True), cfg, spec.classes)
        step = stages.classifier_step
    else:  # audioclip_finetune: cooperative, only the audio head and the audio scales update
        model = stages.build_audioclip(cfg, init=spec.init)
        stages.freeze_teachers(model)
        model.logit_scale.requires_grad_(False)
        dataset = stages.clipset_dataset(pd.concat(tables, ignore_index=True), cfg, spec.classes)
        step = stages.audioclip_step(use_image=False, loss_variant=cfg.loss_variant)
    return StageRun(spec.name, cfg, model, dataset, step, Path(spec.workdir), spec.manifests, parent=spec.parent,
                    prepare=prepare, dagster=spec.dagster,
                    extra_lineage={**spec.extra_lineage, "clip_weights": spec.clip_weights,
                                   "imagenet_weights": spec.imagenet_weights})
