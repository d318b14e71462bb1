"""One stage run end to end: train (resumable), write the final checkpoint and its lineage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..checkpoints import export_official, save_checkpoint
from ..files import keep_version, verified_version
from ..lineage import lineage_record, write_lineage
from ..models.esresnext import ESResNeXt
from .config import TrainConfig
from .loop import StepFn, TrainResult, train


@dataclass
class StageRun:
    name: str                                   # the asset, e.g. "audioclip_esc50" (config.stage: the step)
    config: TrainConfig
    model: nn.Module
    dataset: object
    step: StepFn
    workdir: Path
    manifests: dict[str, dict]                  # name -> {"path", "sha256", "rows"}
    parent: Optional[dict] = None               # {"path", "sha256", "name"}
    prepare: Optional[Callable[[nn.Module], None]] = None
    dagster: dict = field(default_factory=dict)
    extra_lineage: dict = field(default_factory=dict)


@dataclass
class StageOutput:
    checkpoint: Path
    official: Optional[Path]
    lineage: dict
    lineage_path: Path
    result: TrainResult


def run_stage(run: StageRun, *, on_epoch=None, mlflow_run_id: Optional[str] = None,
              log: Callable[[str], None] = print) -> Optional[StageOutput]:
    """Train, then (on rank 0 only) write the final checkpoint, its exports and lineage."""
    from . import distributed as D

    result = train(run.model, run.dataset, run.step, run.config, run.workdir, on_epoch=on_epoch,
                   prepare=run.prepare, log=log)
    if D.rank() != 0:
        D.barrier()
        return None
    run.model = result.model if result.model is not None else run.model
    if isinstance(run.model, torch.nn.Module):
        run.model = _plain_batchnorm(run.model)
    run.model.cpu().eval()
    checkpoint = Path(run.workdir) / f"{run.name}.safetensors"
    meta = {"name": run.name, "stage": run.config.stage, "input_scale": run.config.input_scale, "config": run.config.to_dict(),
            "manifests": {k: v["sha256"] for k, v in run.manifests.items()},
            "parent_sha256": (run.parent or {}).get("sha256")}
    save_checkpoint(run.model, checkpoint, metadata=meta)
    official = None
    if isinstance(run.model, ESResNeXt):  # also in the ESRNXFBSP layout the original code reads
        official = export_official(run.model, Path(run.workdir) / f"{run.name}.esrnxfbsp.pt")
    record = lineage_record(name=run.name, stage=run.config.stage, checkpoint=checkpoint, config=run.config.to_dict(),
                            manifests=run.manifests, parent=run.parent, dagster=run.dagster,
                            mlflow_run_id=mlflow_run_id,
                            extra={"history": result.history, "skipped_items": result.skipped_items,
                                   "resumed_from_epoch": result.resumed_from,
                                   "official_export": str(official) if official else None,
                                   **run.extra_lineage})
    path = write_lineage(record, checkpoint)
    D.barrier()
    return StageOutput(checkpoint, official, record, path, result)


def _plain_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm (used across GPUs) back to BatchNorm2d, so checkpoints keep the official layout."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _plain_batchnorm(child)
    return module


def manifest_entry(path: Path, rows: int, store: Optional[Path] = None) -> dict:
    """A manifest a stage trains on: path, digest, usable rows; with `store`, the exact
    version is kept there (content-addressed) and named, so the clips stay listable after the
    manifest moves on (`audioclip lineage CKPT --clips`). A version (or a pointer to one) is
    checked against its name (`files.CorruptVersion`), never trusted."""
    if store is None:
        return {"path": str(path), "sha256": verified_version(Path(path))[0], "rows": int(rows)}
    sha, version = keep_version(Path(path), store)
    return {"path": str(path), "sha256": sha, "rows": int(rows), "version": str(version)}
