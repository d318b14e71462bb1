"""Small file helpers shared by the pipeline steps: atomic writes, parquet, digests, locks."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd


def atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_parquet(df: pd.DataFrame, path: Path) -> str:
    """Write atomically; returns the SHA-256 of the file written."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        df.to_parquet(tmp, index=False)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def write_json(obj, path: Path) -> None:
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (runs of different partitions share the catalog)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def markdown_table(df: pd.DataFrame, max_rows: int = 10) -> str:
    """A small markdown preview (no optional dependency on tabulate)."""
    df = df.head(max_rows)
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = []
        for v in row.tolist():
            text = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            cells.append(text.replace("|", "\\|")[:60])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
