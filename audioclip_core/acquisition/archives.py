"""Fetching an official dataset archive (zip or tar) into the data root, once, atomically."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

MARKERS = ("meta/esc50.csv", "metadata/UrbanSound8K.csv")


def _dataset_root(folder: Path) -> Path:
    """The folder inside an unpacked archive that holds the official layout."""
    for marker in MARKERS:
        hits = sorted(folder.rglob(Path(marker).name))
        for hit in hits:
            root = hit.parent.parent
            if (root / marker).is_file():
                return root
    raise FileNotFoundError(f"{folder}: the archive holds no {' or '.join(MARKERS)}")


def _safe_members(tar: tarfile.TarFile, dest: Path):
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
            raise ValueError(f"archive member {m.name!r} would leave the destination")
        yield m


def fetch_archive(url: str, dest: Path) -> Path:
    """Download `url` and unpack it into `dest` (skipped when already done); returns the
    dataset root inside it."""
    dest = Path(dest)
    done = dest / ".complete"
    if done.is_file():
        return _dataset_root(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        archive = work / "archive"
        with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {dest.name}") as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        unpacked = work / "unpacked"
        unpacked.mkdir()
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if not str((unpacked / name).resolve()).startswith(str(unpacked.resolve())):
                        raise ValueError(f"archive member {name!r} would leave the destination")
                zf.extractall(unpacked)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(unpacked, members=list(_safe_members(tf, unpacked)))
        _dataset_root(unpacked)  # validate before moving into place
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpacked, dest)
        done.write_text(url + "\n")
        return _dataset_root(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
