"""One stage run end to end, from its spec: build, train (resumable), write the final checkpoint
and its lineage, return its `StageResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from ..checkpoints import export_official, save_checkpoint
from ..lineage import lineage_record, write_lineage
from ..models.esresnext import ESResNeXt
from .loop import train
from .spec import StageResult, StageSpec
from .stages import build_stage


def run_key(spec: StageSpec) -> str:
    """What makes two runs of a stage the same run, whose epoch states one may resume from the
    other: the stage, its resolved config, the digests of the manifests it reads and of the
    checkpoint and weights it starts from."""
    import hashlib
    import json

    what = {
        "stage": spec.stage,
        "config": spec.config,
        "manifests": {n: m.get("sha256") for n, m in sorted(spec.manifests.items())},
        "parent": (spec.parent or {}).get("sha256"),
        "init": spec.init,
        "clip_weights": spec.clip_weights,
        "imagenet_weights": spec.imagenet_weights,
        "classes": spec.classes,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def delta_base(spec: StageSpec, cfg) -> Optional[Path]:
    """The checkpoint a cooperative fine-tuning's weights files store their difference from: the
    model it starts from (the audio head trains; the towers stay as they are, so a fold's
    checkpoint is its head, not a second copy of them). None for every other stage."""
    if cfg.stage != "audioclip_finetune" or not spec.init or not Path(spec.init).is_file():
        return None
    return Path(spec.init)


def run_stage(spec: StageSpec, *, on_epoch=None, log: Callable[[str], None] = print) -> Optional[StageResult]:
    """Build `spec`'s stage, train it (resumable), then (on rank 0 only) write the final
    checkpoint, its export and lineage; the result on rank 0, None on the other ranks. The
    in-process path and every torchrun worker run this same function."""
    from . import distributed as D

    built = build_stage(spec)
    cfg, workdir = built.config, Path(spec.workdir)
    base = delta_base(spec, cfg)
    result = train(
        built.model,
        built.dataset,
        built.step,
        cfg,
        workdir,
        on_epoch=on_epoch,
        prepare=built.prepare,
        log=log,
        run_key=run_key(spec),
        validation=built.validation,
        delta_base=base,
    )
    if D.rank() != 0:
        D.barrier()
        return None
    model = result.model if result.model is not None else built.model
    if isinstance(model, torch.nn.Module):
        model = _plain_batchnorm(model)
    model.cpu().eval()
    checkpoint = workdir / f"{spec.name}.safetensors"
    validation = _validation_record(cfg, built.validation, result.validation)
    meta = {
        "name": spec.name,
        "stage": cfg.stage,
        "input_scale": cfg.input_scale,
        "config": cfg.to_dict(),
        "manifests": {k: v["sha256"] for k, v in spec.manifests.items()},
        "parent_sha256": (spec.parent or {}).get("sha256"),
    }
    save_checkpoint(model, checkpoint, metadata=meta, parent=base, data_root=spec.data_root)
    official = None
    if isinstance(model, ESResNeXt):  # also in the ESRNXFBSP layout the original code reads
        official = export_official(model, workdir / f"{spec.name}.esrnxfbsp.pt")
    record = lineage_record(
        name=spec.name,
        stage=cfg.stage,
        checkpoint=checkpoint,
        config=cfg.to_dict(),
        manifests=spec.manifests,
        parent=spec.parent,
        dagster=spec.dagster,
        mlflow_run_id=spec.mlflow_run_id,
        extra={
            "history": result.history,
            "skipped_items": result.skipped_items,
            "resumed_from_epoch": result.resumed_from,
            "official_export": str(official) if official else None,
            "validation": validation,
            **built.extra_lineage,
        },
    )
    path = write_lineage(record, checkpoint)
    D.barrier()
    return StageResult(
        checkpoint=str(checkpoint),
        lineage_path=str(path),
        history=result.history,
        official=str(official) if official else None,
        resumed_from=result.resumed_from,
        skipped_items=list(result.skipped_items),
        world_size=D.world_size(),
        validation=validation,
    )


def _validation_record(cfg, validation, scores: Optional[dict]) -> Optional[dict]:
    """What the lineage says of the held-out clips: the share asked for, the clips (their
    paths in the set), each score (epoch 0: the starting model) and the epoch kept."""
    if validation is None:
        return None
    return {
        "share": cfg.validation_share,
        "rule": "highest accuracy, then lowest cross-entropy, then the earliest epoch",
        "clips": list(validation.clips),
        **(scores or {}),
    }


def _plain_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm (used across GPUs) back to BatchNorm2d, so checkpoints keep the official layout."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _plain_batchnorm(child)
    return module
