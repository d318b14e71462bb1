"""Files: atomic writes (a complete file or none), SHA-256 digests, a cross-process lock.

Tables, records, checkpoints and CLI outputs are written through `atomic_write`: into a
temporary file beside the target, renamed into place only once complete, so a killed process
never leaves half a file (media steps rename their own finished files the same way)."""
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


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` when the block ends without
    an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(df: pd.DataFrame, path: Path) -> str:
    """Write atomically; returns the SHA-256 of the file written."""
    with atomic_write(path) as tmp:
        df.to_parquet(tmp, index=False)
        digest = sha256_file(tmp)
    return digest


def write_json(obj, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")


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


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` or fail at once: `Busy` names `what` and the holder's pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise Busy(f"{what} is being processed by another process (pid {holder}); "
                       "wait for it to finish, or stop it") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def keep_version(path: Path, store: Path) -> tuple[str, Path]:
    """(SHA-256, immutable copy) of `path` in the content-addressed `store`. The bytes are
    copied (a hard link would follow a later in-place rewrite of `path`), and the digest is
    taken of the copy itself, so a concurrent rewrite cannot mislabel it."""
    import shutil

    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=store)
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copyfile(path, tmp)
        sha = sha256_file(tmp)
        final = store / f"{sha}{Path(path).suffix}"
        if not final.exists():
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return sha, final
