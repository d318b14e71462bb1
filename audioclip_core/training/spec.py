"""One run of a training stage, as data: `StageSpec` (what to build, what to start from, what
to read, where, with which resolved config) and `StageResult` (what the run wrote). Both are
JSON, so the same spec runs in-process or in every worker torchrun starts, and both launch
paths hand back the same typed result (`run.run_stage`, the torchrun worker's result file)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

# the paper's steps (training.stages.STAGES defines each; kept here so a spec validates
# without importing the models)
STAGE_NAMES = (
    "clip_standin",
    "esresnext_audioset",
    "audioclip_partial",
    "audioclip_full",
    "esresnext_finetune",
    "audioclip_finetune",
)


def _write(obj, path: Path) -> Path:
    from ..files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(asdict(obj), indent=2, default=str), encoding="utf-8")
    return path


@dataclass
class StageSpec:
    name: str  # the asset, e.g. "audioclip_esc50"
    stage: str  # the paper's step, one of STAGE_NAMES
    config: dict  # TrainConfig fields, resolved (profiles.resolve)
    workdir: str
    tables: list[str]  # parquet files to train on (manifest versions)
    manifests: dict  # name -> {"path", "sha256", "rows", "version", "shards"}
    class_ids: list[str] = field(default_factory=list)  # AudioSet mids (AudioSet stages)
    classes: list[str] = field(default_factory=list)  # class names (fine-tuning)
    init: Optional[str] = None  # checkpoint to start from (upstream or released)
    parent: Optional[dict] = None  # {"path", "sha256", "name"} of `init`
    clip_weights: Optional[str] = None
    imagenet_weights: Optional[str] = None
    dagster: dict = field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    extra_lineage: dict = field(default_factory=dict)
    data_root: Optional[str] = None  # relative file paths in `tables` are under it
    shards: list[str] = field(default_factory=list)  # shard sets holding the tables' files (data.shards):
    # read from them, not from the files

    def __post_init__(self) -> None:
        if self.stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {self.stage!r}; one of {STAGE_NAMES}")

    def to_json(self, path: Path) -> Path:
        return _write(self, path)

    @classmethod
    def from_json(cls, path: Path) -> "StageSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class StageResult:
    """What a stage run wrote: the checkpoint (and its export in the original code's layout for
    ESResNeXt), its lineage record, the per-epoch history, where a resumed run took up, the
    items that failed to load, how many processes trained it and, for fine-tuning with held-out
    clips, their scores per epoch and the epoch kept."""

    checkpoint: str
    lineage_path: str
    history: list[dict]
    official: Optional[str] = None
    resumed_from: Optional[int] = None
    skipped_items: list = field(default_factory=list)
    world_size: int = 1
    validation: Optional[dict] = None  # fine-tuning with held-out clips: their scores, the epoch kept

    @property
    def lineage(self) -> dict:
        return json.loads(Path(self.lineage_path).read_text(encoding="utf-8"))

    @property
    def sha256(self) -> str:
        return self.lineage["checkpoint"]["sha256"]

    def files(self) -> list[Path]:
        """The files a run published (checkpoint, lineage, export)."""
        return [Path(p) for p in (self.checkpoint, self.lineage_path, self.official) if p]

    def to_json(self, path: Path) -> Path:
        return _write(self, path)

    @classmethod
    def from_json(cls, path: Path) -> "StageResult":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
