"""Every path under the data root, in one place.

The data root holds what the pipeline writes: the generated demo sources, the AudioSet
segments / downloads / clips / manifests, the ESC-50 and UrbanSound8K manifests and folds,
the checkpoints, the evaluation tables, the DuckDB catalog and MLflow's store. Its default
is ``AUDIOCLIP_DATA_ROOT``, else ``data/`` of the checkout this package runs from (``./data``
when the package is installed elsewhere); the CLI and the pipeline's resources share it.

    <root>/
      demo_source/                    the built-in demo dataset (generated on first use)
      sources/<name>/                 archives fetched from AUDIOCLIP_ESC50_URL / _US8K_URL
      labels/demo_classes.txt         the demo's class names, one per line (classify --labels-file)
      audioset/segments/<p>.parquet   (+ <p>.issues.parquet)
      audioset/downloads/<p>.parquet  audioset/downloads/<p>/   (media files)
      audioset/clips/<p>.parquet      audioset/clips/<p>/       (WAV + 10 JPEG frames)
      audioset/manifests/<p>.parquet  -> ../../versions/<sha256>.parquet (a pointer)
      <esc50|us8k>/manifest.parquet   <esc50|us8k>/folds/<k>/{train,test}.parquet
      checkpoints/<name>/[fold<k>/]<name>.safetensors (+ .lineage.json, epoch state,
                                      snapshots/after_<n>_epochs.safetensors)
      tables/<table>.parquet|.md      tables/plots/*.png
      audioset/locks/<p>.lock         held by the run working on partition <p>
      shards/<name>/<sha256[:16]>/    training shards of a manifest version (tar + index.parquet +
                                      shards.json); shards/<name>/CURRENT names the current one
      versions/<sha256>.parquet       every manifest version (immutable; the manifests point at one)
      catalog.duckdb                  mlflow/mlflow.db   mlflow/artifacts/   logs/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENV = "AUDIOCLIP_DATA_ROOT"
_CHECKOUT = Path(__file__).resolve().parents[1]


def default_root() -> Path:
    """AUDIOCLIP_DATA_ROOT, else `data/` of the checkout, else `./data`."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).resolve()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "audioclip_core").is_dir():
        return _CHECKOUT / "data"
    return Path.cwd() / "data"


@dataclass(frozen=True)
class DataLayout:
    """The paths under one data root. Methods name paths; `ensure` creates a folder."""

    root: Path

    @classmethod
    def at(cls, root: Optional[os.PathLike | str] = None) -> "DataLayout":
        return cls(Path(root).resolve() if root else default_root())

    @staticmethod
    def ensure(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- sources ---------------------------------------------------------------------------
    @property
    def demo_source(self) -> Path:
        return self.root / "demo_source"

    def fetched_source(self, name: str) -> Path:
        return self.root / "sources" / name

    def labels_file(self, name: str) -> Path:
        """A list of class names, one per line (`audioclip classify --labels-file`); the demo
        dataset writes its ten classes to `labels_file("demo_classes")`."""
        return self.root / "labels" / f"{name}.txt"

    # -- AudioSet --------------------------------------------------------------------------
    @property
    def audioset(self) -> Path:
        return self.root / "audioset"

    def segments(self, partition: str) -> Path:
        return self.audioset / "segments" / f"{partition}.parquet"

    def segment_issues(self, partition: str) -> Path:
        return self.audioset / "segments" / f"{partition}.issues.parquet"

    def downloads(self, partition: str) -> Path:
        return self.audioset / "downloads" / f"{partition}.parquet"

    def download_dir(self, partition: str) -> Path:
        return self.audioset / "downloads" / partition

    def clips(self, partition: str) -> Path:
        return self.audioset / "clips" / f"{partition}.parquet"

    def clip_dir(self, partition: str) -> Path:
        return self.audioset / "clips" / partition

    def partition_lock(self, partition: str) -> Path:
        """Held by the run that downloads or extracts `partition` (one run per partition)."""
        return self.audioset / "locks" / f"{partition}.lock"

    @property
    def manifests_dir(self) -> Path:
        return self.audioset / "manifests"

    def audioset_manifest(self, partition: str) -> Path:
        return self.manifests_dir / f"{partition}.parquet"

    # -- ESC-50 / UrbanSound8K -------------------------------------------------------------
    def clipset_manifest(self, name: str) -> Path:
        return self.root / name / "manifest.parquet"

    def folds_dir(self, name: str) -> Path:
        return self.root / name / "folds"

    def fold(self, name: str, fold: int | str, split: str) -> Path:
        """`split`: "train" or "test"."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        return self.folds_dir(name) / str(fold) / f"{split}.parquet"

    def fold_tests(self, name: str) -> dict[str, Path]:
        """fold -> test split, for the folds that have one, in fold order."""
        folder = self.folds_dir(name)
        if not folder.is_dir():
            return {}
        folds = sorted((d.name for d in folder.iterdir() if d.name.isdigit()), key=int)
        return {k: self.fold(name, k, "test") for k in folds if self.fold(name, k, "test").is_file()}

    # -- training shards -------------------------------------------------------------------
    def shards(self, name: str) -> Path:
        """The shard sets of dataset `name` (`audioset_<partition>`, `esc50`, `us8k`), one folder
        per manifest version they were packed from (data.shards)."""
        return self.root / "shards" / name

    def shards_pointer(self, name: str) -> Path:
        """Names the folder of the current shard set of `name`."""
        return self.shards(name) / "CURRENT"

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_dir(self, name: str, fold: int | str | None = None) -> Path:
        base = self.root / "checkpoints" / name
        return base / f"fold{fold}" if fold is not None else base

    def checkpoint(self, name: str, fold: int | str | None = None) -> Path:
        return self.checkpoint_dir(name, fold) / f"{name}.safetensors"

    def snapshots(self, name: str) -> dict[int, Path]:
        """epochs -> the weights of stage `name` after that many epochs (`keep_epochs`)."""
        folder = self.checkpoint_dir(name) / "snapshots"
        found = {}
        for p in sorted(folder.glob("after_*_epochs.safetensors")) if folder.is_dir() else []:
            count = p.name[len("after_") : -len("_epochs.safetensors")]
            if count.isdigit():
                found[int(count)] = p
        return found

    # -- results and stores ----------------------------------------------------------------
    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    def table(self, name: str, suffix: str = ".parquet") -> Path:
        return self.tables_dir / f"{name}{suffix}"

    @property
    def plots_dir(self) -> Path:
        return self.tables_dir / "plots"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def catalog_lock(self) -> Path:
        return self.root / "catalog.lock"

    @property
    def versions_dir(self) -> Path:
        """Immutable, content-addressed manifest versions (the manifests are pointers to them)."""
        return self.root / "versions"

    def version(self, sha256: str) -> Path:
        return self.versions_dir / f"{sha256}.parquet"

    @property
    def logs_dir(self) -> Path:
        """Logs of the local Dagster processes that `make demo` starts."""
        return self.root / "logs"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"


def snapshot_file(workdir: Path, epochs: int) -> Path:
    """Where a training run in `workdir` keeps its weights after `epochs` epochs."""
    return Path(workdir) / "snapshots" / f"after_{epochs:03d}_epochs.safetensors"
