"""Files: atomic writes (a complete file or none), SHA-256 digests, cross-process locks, and
immutable content-addressed versions behind a pointer (manifests).

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
from typing import Iterator, Optional

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


def folder_sizes(folders) -> dict[str, int]:
    """path -> size of every file in `folders`, from one listing of each (no stat per path asked
    about: a partition's clip folder holds ~550,000 files)."""
    out: dict[str, int] = {}
    for folder in {str(f) for f in folders}:
        if os.path.isdir(folder):
            with os.scandir(folder) as it:
                out.update((os.path.join(folder, e.name), e.stat().st_size) for e in it if e.is_file())
    return out


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


def publish_version(df: pd.DataFrame, store: Path, pointer: Path) -> tuple[str, Path]:
    """Write `df` as an immutable, content-addressed version `<store>/<sha256>.parquet`, then
    point `pointer` at it: a relative symbolic link, replaced atomically (readers of `pointer`
    see the old version or the new one, never a half-written file; a data root that moves
    keeps its links). Returns (SHA-256, version path). A version is never rewritten: the same
    content is the same file, and it is made read-only."""
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".incoming.", suffix=".parquet", dir=store)
    os.close(fd)
    tmp = Path(name)
    try:
        df.to_parquet(tmp, index=False)
        sha, final = _into_store(tmp, store, ".parquet")
    finally:
        tmp.unlink(missing_ok=True)
    point_to(pointer, final)
    return sha, final


def _into_store(tmp: Path, store: Path, suffix: str) -> tuple[str, Path]:
    """Name the complete file `tmp` (in `store`) by its SHA-256: renamed to `<sha256><suffix>`,
    read-only, unless that version is already there."""
    sha = sha256_file(tmp)
    final = store / f"{sha}{suffix}"
    if not final.exists():
        tmp.chmod(0o444)
        os.replace(tmp, final)
    return sha, final


def point_to(pointer: Path, target: Path) -> None:
    """Make `pointer` a relative symbolic link to `target`, atomically (a regular file there,
    as older roots have, is replaced by the link)."""
    pointer = Path(pointer)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    link = pointer.parent / f".{pointer.name}.{os.getpid()}.link"
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, pointer.parent), link)
    os.replace(link, pointer)


def version_of(path: Path, store: Path) -> Optional[tuple[str, Path]]:
    """(SHA-256, version) when `path` is a pointer into `store`, else None."""
    path = Path(path)
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent != Path(store).resolve() or len(target.stem) != 64:
        return None
    return target.stem, target


def keep_version(path: Path, store: Path) -> tuple[str, Path]:
    """(SHA-256, immutable copy) of `path` in the content-addressed `store`. A pointer
    (`publish_version`) names its version as it is; any other file's bytes are copied (a hard
    link would follow a later in-place rewrite of `path`), and the digest is taken of the copy
    itself, so a concurrent rewrite cannot mislabel it."""
    import shutil

    known = version_of(path, store)
    if known is not None:
        return known
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=store)
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copyfile(path, tmp)
        return _into_store(tmp, store, Path(path).suffix)
    finally:
        tmp.unlink(missing_ok=True)
