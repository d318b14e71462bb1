"""Files: atomic writes (a complete file or none), SHA-256 digests, cross-process locks, and
immutable content-addressed versions behind a pointer (manifests).

A version is named by the SHA-256 of its bytes and made read-only, but anything running as
its owner can still rewrite it in place. So a version is checked against its name wherever
it is used (`read_version`, `version_of`) and rewritten where it no longer matches
(`publish_version`); a manifest is KBs to a few hundred MB, hashed at ~1 GB/s, against
minutes to hours of the training or evaluation that reads it.

Tables, records, checkpoints and CLI outputs are written through `atomic_write`: into a
temporary file beside the target, renamed into place only once complete, so a killed process
never leaves half a file (media steps rename their own finished files the same way); folders
(an epoch checkpoint, a shard set, the demo dataset) through `publish_folder`, the same way."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:  # pandas is imported where a table is read: the CLI's start-up does without it
    import pandas as pd

log = logging.getLogger(__name__)


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
        if tmp.exists():
            os.chmod(tmp, 0o644)  # readable by all, as the file written in place would be (a temporary is private)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def publish_folder(final: os.PathLike | str, *, suffix: str = "", replace: bool = True) -> Iterator[Path]:
    """Yields a new, empty temporary folder `.<name of final>.<random><suffix>` beside `final`;
    when the block ends without an error it is made readable by all (0o755: the folder is read
    by every worker and pod, and a temporary one is private) and renamed onto `final`, removed
    otherwise - a killed process never leaves a folder that looks complete, only a hidden one
    that its next run can recognise by that name and sweep. `replace`: an existing `final` is
    removed first; otherwise it is kept and `FileExistsError` says so (a content-addressed
    folder that another process published first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError as e:
            if replace or e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise FileExistsError(
                errno.EEXIST, "already published; the temporary folder is discarded", str(final)
            ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """`sha256_file(path)`, hashed once per version of the file in this process: keyed by its
    inode, size and modification time (every write here renames a new file into place, so a
    new version has a new inode). A delta checkpoint's parent is read by every fold, epoch
    state and table that loads one: 0.5 GB at the paper's size, hashed once instead of each time."""
    st = Path(path).stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def share_identical(copy: Path, original: Path, sha256: Optional[str] = None) -> bool:
    """Make file `copy` a hard link to `original` when their bytes are the same (by digest;
    `sha256`: the original's, when known), so that one set of bytes is stored: MLflow copies a
    model's checkpoint into its artifact store, and a `models:/` URI into the model cache. True
    when they are (now) one file; False when the bytes differ or the file system cannot link
    (another device, a remote store): the copy is kept as it is."""
    copy, original = Path(copy), Path(original)
    try:
        if os.path.samefile(copy, original):
            return True
        if copy.stat().st_size != original.stat().st_size:
            return False
    except OSError:
        return False
    if sha256_file(copy) != (sha256 or file_digest(original)):
        return False
    tmp = copy.with_name(f".{copy.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(original, tmp)
    except OSError:
        return False
    os.replace(tmp, copy)  # the copy's name now holds the original's bytes, never neither
    return True


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
            raise Busy(
                f"{what} is being processed by another process (pid {holder}); wait for it to finish, or stop it"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CorruptVersion(ValueError):
    """A content-addressed version whose bytes no longer hash to its name: rewritten in place."""

    def __init__(self, path: Path, expected: str, actual: str):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"{path}: manifest version changed in place - its name says sha256 {expected}, its bytes "
            f"hash to {actual}. Re-materialise the asset that publishes it (the version is written "
            "again), or restore the file"
        )


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def named_sha256(path: Path) -> Optional[str]:
    """The SHA-256 a content-addressed file's name claims (`<sha256>.<suffix>`), else None."""
    stem = Path(path).name.split(".", 1)[0]
    return stem if _SHA256_NAME.fullmatch(stem) else None


def read_version(path: Path) -> tuple[str, bytes]:
    """(SHA-256, bytes) of `path`, a pointer followed, read once; when the file is a
    content-addressed version, its bytes are checked against its name (`CorruptVersion`).
    What the caller parses is the bytes that were hashed: no rewrite can come in between."""
    target = Path(path).resolve()
    data = target.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    expected = named_sha256(target)
    if expected is not None and sha != expected:
        raise CorruptVersion(target, expected, sha)
    return sha, data


def read_version_parquet(path: Path, columns: Optional[list[str]] = None) -> pd.DataFrame:
    """A parquet file (a manifest pointer or version) read through `read_version`."""
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(read_version(path)[1]), columns=columns)


def verified_version(path: Path) -> tuple[str, Path]:
    """(SHA-256, version file) of a content-addressed version or a pointer to one, its bytes
    checked against its name (`CorruptVersion`); a file of any other name: its digest."""
    target = Path(path).resolve()
    sha = sha256_file(target)
    expected = named_sha256(target)
    if expected is not None and sha != expected:
        raise CorruptVersion(target, expected, sha)
    return sha, target


def publish_version(df: pd.DataFrame, store: Path, pointer: Path) -> tuple[str, Path]:
    """Write `df` as an immutable, content-addressed version `<store>/<sha256>.parquet`, then
    point `pointer` at it: a relative symbolic link, replaced atomically (readers of `pointer`
    see the old version or the new one, never a half-written file; a data root that moves
    keeps its links). Returns (SHA-256, version path). The same content is the same file, made
    read-only; one whose bytes were changed in place since is replaced (`_into_store`)."""
    sha, final = store_version(df, store)
    point_to(pointer, final)
    return sha, final


def store_version(df: pd.DataFrame, store: Path) -> tuple[str, Path]:
    """`df` as an immutable, content-addressed version `<store>/<sha256>.parquet` (no pointer
    moved): (SHA-256, version path)."""
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".incoming.", suffix=".parquet", dir=store)
    os.close(fd)
    tmp = Path(name)
    try:
        df.to_parquet(tmp, index=False)
        return _into_store(tmp, store, ".parquet")
    finally:
        tmp.unlink(missing_ok=True)


def _into_store(tmp: Path, store: Path, suffix: str) -> tuple[str, Path]:
    """Name the complete file `tmp` (in `store`) by its SHA-256: renamed to `<sha256><suffix>`,
    read-only, unless that version is already there intact. One there whose bytes no longer
    hash to its name (rewritten in place) is replaced, atomically, with a warning."""
    sha = sha256_file(tmp)
    final = store / f"{sha}{suffix}"
    if final.exists():
        actual = sha256_file(final)
        if actual == sha:
            return sha, final
        log.warning(
            "%s: version changed in place (its bytes hash to %s, not to its name); replaced by the "
            "content its name says",
            final,
            actual,
        )
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
    """(SHA-256, version) when `path` is a pointer into `store`, else None; the version's
    bytes are checked against its name (`CorruptVersion`), not trusted."""
    path = Path(path)
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent != Path(store).resolve() or named_sha256(target) is None:
        return None
    return verified_version(target)


def keep_version(path: Path, store: Path) -> tuple[str, Path]:
    """(SHA-256, immutable copy) of `path` in the content-addressed `store`. A pointer
    (`publish_version`) names its version once its bytes match that name (`CorruptVersion`
    otherwise); any other file's bytes are copied (a hard
    link would follow a later in-place rewrite of `path`), and the digest is taken of the copy
    itself, so a concurrent rewrite cannot mislabel it."""

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
