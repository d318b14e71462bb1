"""Provenance: digests, code version, and the lineage record written beside each checkpoint."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Optional

from .data.io import sha256_file, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version(repo: Path = REPO_ROOT) -> dict:
    """Git commit and whether the working tree had uncommitted changes."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    from . import __version__

    return {"git_commit": commit or "unknown", "git_dirty": bool(status) if status is not None else None,
            "package_version": __version__}


def lineage_record(*, stage: str, checkpoint: Path, config: dict, manifests: dict[str, dict],
                   parent: Optional[dict] = None, dagster: Optional[dict] = None,
                   mlflow_run_id: Optional[str] = None, extra: Optional[dict] = None) -> dict:
    """`manifests`: name -> {"path", "sha256", "rows"}; `parent`: {"path", "sha256", "stage"}."""
    return {
        "stage": stage,
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "parent": parent,
        "manifests": manifests,
        "config": config,
        "seed": config.get("seed"),
        "code": code_version(),
        "dagster": dagster or {},
        "mlflow_run_id": mlflow_run_id,
        **(extra or {}),
    }


def write_lineage(record: dict, checkpoint: Path) -> Path:
    path = Path(checkpoint).with_suffix(".lineage.json")
    write_json(record, path)
    return path


def read_lineage(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint).with_suffix(".lineage.json")
    return json.loads(path.read_text(encoding="utf-8"))
