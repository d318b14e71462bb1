"""Training shards: the clips of a manifest packed into a few large tar files, so training reads
a handful of files of a few hundred MB instead of millions of small ones.

Layout (WebDataset's): each sample is a run of consecutive tar members named by its key -
``<key>.wav`` (the clip's WAV bytes, unchanged), ``<key>.f00.jpg`` .. ``<key>.f09.jpg`` (its
frames, when it has them) and ``<key>.json`` (its manifest row: ids, labels, class, the
SHA-256 of the audio packed) - so any tar reader, or WebDataset itself, can stream them.
Beside the tars:

* ``index.parquet``: one row per member - the file's path in the manifest (relative to the
  data root), the shard, the byte offset and size of its data, the sample's key, the member's
  SHA-256. Readers seek straight to a member; the auditor goes from a shard back to clip ids
  and files;
* ``shards.json``: the record - every shard's name, SHA-256, size and sample count, the
  index's SHA-256 and the manifest version the shards were packed from. A checkpoint's
  lineage names this record.

A set of shards is immutable and content-addressed by its manifest version
(``<data root>/shards/<name>/<manifest sha256[:16]>/``): packing the same manifest again is
a no-op, a new manifest version gets new shards, and older checkpoints keep theirs.

Integrity: packing hashes each clip's audio as it reads it and packs it only when it matches
the SHA-256 the manifest recorded at extraction (a clip changed since is an error, and no set
is published); frames have no recorded digest, so they are packed as they are and hashed
into the index. Every read of a member checks it against the index's SHA-256 (sets packed
before the index carried them: each shard against the record, once per process).

A set is written in ``.<set>.<random>.packing`` beside it, under the lock ``.<set>.lock``
(packers of one version take turns; the second finds the set made). A packer killed
mid-way leaves its folder; the next packing in the same place removes every such folder
whose lock nobody holds.

Reading: `ShardStore` opens a member by the path the manifest gives (the datasets of
`data.datasets` take it as their `store`), so a dataset over shards yields exactly the items
of the same dataset over files - same bytes, same (seed, epoch, index) randomness. `ShardStream`
is the streaming form: batches in a shard-local order, split over DataLoader workers (and
distributed ranks), deterministic per (seed, epoch), resumable at any batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..files import Busy, exclusive, file_lock, publish_folder, sha256_file
from .manifests import relative_path

SHARD_BYTES = 256 * 1024**2
RECORD = "shards.json"
INDEX = "index.parquet"
PACKING = ".packing"  # the suffix of a set being written
META_COLUMNS = (
    "segment_id",
    "ytid",
    "start",
    "end",
    "label_ids",
    "label_names",
    "class_id",
    "class_name",
    "fold",
    "path",
    "partition",
    "sha256",
    "duration",
    "channels",
)


def _json_value(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, float) and v != v:
        return None
    return v


def _relative(path, root: Path) -> str:
    """The path the index knows a file by: relative to the (resolved) data root, as manifests
    store it - no filesystem call, this runs for every read."""
    return relative_path(str(path), root)


def pack_order(n: int) -> list[int]:
    """The order rows are packed in: a fixed permutation, so a shard holds a spread of the
    manifest (a sorted manifest - by fold, by class - would otherwise give shards of one kind)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(20_210_612)).tolist()


class DigestMismatch(ValueError):
    """Bytes that do not hash to the SHA-256 recorded for them."""


def _lock_of(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


def remove_abandoned(parent: Path, *, held: str = "") -> list[Path]:
    """Remove the temporary folders that packers killed mid-way left in `parent` (a SIGKILL
    runs no cleanup; a set is tens of GB): every `.<set>.<random>.packing` whose set's lock
    nobody holds - a live packer holds it from before it makes its folder until after it
    removes or renames it. `held`: the set whose lock the caller holds. Returns those removed."""
    removed = []
    for tmp in sorted(Path(parent).glob(f".*{PACKING}")):
        name = tmp.name[1:].rsplit(".", 2)[0]
        if not tmp.is_dir():
            continue
        if name == held:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            continue
        try:
            with exclusive(_lock_of(Path(parent) / name), f"shard set {name}"):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        except Busy:
            pass  # being packed now
    return removed


def _expected_digests(rows: pd.DataFrame) -> list[str]:
    """The SHA-256 the manifest recorded for each clip's audio; a clip without one is an error
    (packing cannot tell its bytes from a file changed since)."""
    digests = list(rows["sha256"]) if "sha256" in rows else [None] * len(rows)
    missing = [str(p) for p, d in zip(rows["audio_path"], digests) if not (isinstance(d, str) and len(d) == 64)]
    if missing:
        raise ValueError(
            f"the manifest records no SHA-256 for {len(missing)} usable clip(s), e.g. {missing[:3]}: "
            "packing checks every clip against it; materialise the manifest again"
        )
    return digests


def write_shards(
    manifest: pd.DataFrame,
    root: Path,
    out_dir: Path,
    *,
    key: str = "segment_id",
    target_bytes: int = SHARD_BYTES,
    source_sha256: str = "",
    prefix: str = "shard",
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict:
    """Pack the `ok` rows of `manifest` (file paths absolute, or relative to `root`) into tar
    shards of about `target_bytes` in `out_dir` (written in a temporary folder and renamed into
    place: a killed run leaves nothing that looks finished, and the next run removes what it
    left). Each clip's audio must hash to the manifest's `sha256`: `DigestMismatch` names every
    clip that does not, and nothing is published. Returns the record."""
    root, out_dir = Path(root).resolve(), Path(out_dir)
    if (out_dir / RECORD).is_file():
        return json.loads((out_dir / RECORD).read_text())
    rows = manifest[manifest["status"] == "ok"] if "status" in manifest else manifest
    rows = rows.reset_index(drop=True)
    expected = _expected_digests(rows)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_of(out_dir)):
        if (out_dir / RECORD).is_file():  # packed by the process we waited for
            return json.loads((out_dir / RECORD).read_text())
        remove_abandoned(out_dir.parent, held=out_dir.name)
        try:
            with publish_folder(out_dir, suffix=PACKING, replace=False) as tmp:
                return _pack(
                    rows,
                    expected,
                    root,
                    tmp,
                    key=key,
                    target_bytes=target_bytes,
                    source_sha256=source_sha256,
                    prefix=prefix,
                    progress=progress,
                )
        except FileExistsError:  # another process packed the same version first: the same content, keep its set
            if not (out_dir / RECORD).is_file():
                raise
            return json.loads((out_dir / RECORD).read_text())


def _pack(
    rows: pd.DataFrame,
    expected: list[str],
    root: Path,
    tmp: Path,
    *,
    key: str,
    target_bytes: int,
    source_sha256: str,
    prefix: str,
    progress,
) -> dict:
    index, shards, mismatched = [], [], []
    tar, shard_path, shard_samples = None, None, 0

    def close():
        nonlocal tar
        if tar is not None:
            tar.close()
            shards.append(
                {
                    "name": shard_path.name,
                    "sha256": sha256_file(shard_path),
                    "bytes": shard_path.stat().st_size,
                    "samples": shard_samples,
                }
            )
            tar = None

    def add(name: str, data: bytes, source: str, sample_key: str, digest: str = ""):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        header = len(info.tobuf(tar.format, tar.encoding, tar.errors))
        offset = tar.offset + header
        tar.addfile(info, io.BytesIO(data))
        index.append(
            {
                "path": source,
                "shard": shard_path.name,
                "offset": offset,
                "size": len(data),
                "key": sample_key,
                "member": name,
                "sha256": digest or hashlib.sha256(data).hexdigest(),
            }
        )

    order = pack_order(len(rows))
    for done, i in enumerate(order, start=1):
        row = rows.iloc[i]
        audio = str(row["audio_path"])
        src = audio if Path(audio).is_absolute() else str(root / audio)
        data = Path(src).read_bytes()
        digest = hashlib.sha256(data).hexdigest()  # of the bytes packed: the file may change after
        if digest != expected[i]:
            mismatched.append(f"{src}: manifest {expected[i]}, file {digest}")
        if progress:
            progress(done, len(rows))
        if mismatched:
            continue  # nothing will be published: the remaining clips are only checked
        if tar is None or tar.fileobj.tell() >= target_bytes:
            close()
            shard_path = tmp / f"{prefix}-{len(shards):05d}.tar"
            tar, shard_samples = tarfile.open(shard_path, "w", format=tarfile.USTAR_FORMAT), 0
        # a sample's key names its members up to the first dot (WebDataset's rule)
        k = (str(row[key]) if key in row.index else Path(audio).stem).replace(".", "_")
        add(f"{k}.wav", data, _relative(src, root), k, digest)
        frames = row.get("frame_paths")
        if frames is not None and not (isinstance(frames, float) and frames != frames):
            for j, f in enumerate(frames):
                fsrc = str(f) if Path(str(f)).is_absolute() else str(root / str(f))
                add(f"{k}.f{j:02d}.jpg", Path(fsrc).read_bytes(), _relative(fsrc, root), k)
        meta = {c: _json_value(row[c]) for c in META_COLUMNS if c in row.index}
        meta["sha256"] = digest
        add(f"{k}.json", json.dumps(meta, sort_keys=True).encode(), f"{k}.json", k)
        shard_samples += 1
    if mismatched:
        if tar is not None:
            tar.close()
        more = f"\n... and {len(mismatched) - 20} more" if len(mismatched) > 20 else ""
        raise DigestMismatch(
            f"{len(mismatched)} of {len(rows)} clips do not hash to the SHA-256 their manifest recorded at extraction "
            f"(changed since?); no shards were published. Restore the files, or delete them and materialise the "
            f"clips and the manifest again (a clip whose WAV is gone is extracted again from its download; one "
            f"on disk is kept as recorded, not read again):\n" + "\n".join(mismatched[:20]) + more
        )
    close()
    index_df = pd.DataFrame(index, columns=["path", "shard", "offset", "size", "key", "member", "sha256"])
    index_df.to_parquet(tmp / INDEX, index=False)
    record = {
        "format": "webdataset-tar",
        "samples": len(rows),
        "shards": shards,
        "bytes": sum(s["bytes"] for s in shards),
        "index": INDEX,
        "index_sha256": sha256_file(tmp / INDEX),
        "source_sha256": source_sha256,
        "key": key,
    }
    (tmp / RECORD).write_text(json.dumps(record, indent=1))
    return record


def verify_shards(folder: Path) -> list[str]:
    """What is wrong with a set of shards (empty when nothing): a shard or the index missing or
    not matching the SHA-256 its record gives."""
    folder = Path(folder)
    record = json.loads((folder / RECORD).read_text())
    problems = []
    for s in record["shards"] + [{"name": record["index"], "sha256": record["index_sha256"]}]:
        path = folder / s["name"]
        if not path.is_file():
            problems.append(f"{s['name']}: missing")
        elif sha256_file(path) != s["sha256"]:
            problems.append(f"{s['name']}: SHA-256 differs from the record")
    return problems


class ShardStore:
    """Members of one or more sets of shards, opened by the path the manifest gives them.

    `open(path)` returns the member's bytes as a file object; a path not in the shards is an
    error that names it. Reads are positioned (`os.pread`) on descriptors opened once per
    process, so DataLoader workers share nothing and never seek each other's files. Every
    member read is hashed and checked against the index (`DigestMismatch` names the shard and
    member); a set whose index has no member digests (packed before it had them) has each
    shard hashed against its record once per process, before its first read."""

    def __init__(self, folders: list[Path] | Path, root: Path):
        folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
        self.root = Path(root).resolve()
        self.folders = folders
        frames, self._unchecked = [], {}
        for folder in folders:
            idx = pd.read_parquet(folder / INDEX)
            idx["file"] = [str(folder / s) for s in idx["shard"]]
            if "sha256" in idx:  # raw digests: a third of the memory of the hex text, per member
                idx["digest"] = [bytes.fromhex(d) for d in idx["sha256"]]
            else:
                idx["digest"] = None
                record = json.loads((folder / RECORD).read_text())
                self._unchecked.update({str(folder / s["name"]): s["sha256"] for s in record["shards"]})
            frames.append(idx)
        idx = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        self._where = dict(
            zip(idx["path"], zip(idx["file"], idx["offset"].astype(int), idx["size"].astype(int), idx["digest"]))
        )
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _fd(self, file: str) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors are opened anew
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(file)
        if fd is None:
            with self._lock:
                fd = self._fds.get(file)
                if fd is None:
                    fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def _check_shard(self, file: str) -> None:
        """A shard of a set without member digests, hashed whole against its record before its
        first read in this process."""
        expected = self._unchecked.get(file)
        if expected is None:
            return
        actual = sha256_file(Path(file))
        if actual != expected:
            raise DigestMismatch(
                f"{file}: the shard hashes to {actual}, its record gives {expected} (damaged "
                "after packing): re-pack it (delete its folder and materialise the shards again)"
            )
        self._unchecked.pop(file, None)

    def read(self, path) -> bytes:
        rel = _relative(str(path), self.root)
        where = self._where.get(rel)
        if where is None:
            raise FileNotFoundError(f"{rel} is not in the shards {', '.join(str(f) for f in self.folders)}")
        file, offset, size, digest = where
        if digest is None:
            self._check_shard(file)
        data = os.pread(self._fd(file), size, offset)
        if len(data) != size:
            raise OSError(f"{file}: {len(data)} of {size} bytes of {rel} at offset {offset} (truncated shard?)")
        if digest is not None and hashlib.sha256(data).digest() != digest:
            idx = pd.read_parquet(Path(file).parent / INDEX, columns=["path", "member"])
            member = idx.loc[idx["path"] == rel, "member"].iloc[0]
            raise DigestMismatch(
                f"{file}: member {member} ({rel}, {size} bytes at offset {offset}) does not hash to "
                f"the SHA-256 the index gives (damaged after packing): re-pack the set (delete "
                "its folder and materialise the shards again)"
            )
        return data

    def open(self, path) -> io.BytesIO:
        return io.BytesIO(self.read(path))

    def shard_of(self, path) -> str:
        return self._where[_relative(str(path), self.root)][0]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


@dataclass
class StreamState:
    epoch: int = 0
    batch: int = 0  # the next batch of the epoch to produce (resume point)


class ShardStream(IterableDataset):
    """A dataset over shards as a stream of collated batches.

    The epoch's order is shard-local: the shards are permuted by (seed, epoch), taken `mix` at
    a time, and the samples of each group permuted together, then cut into batches of
    `batch_size` (a last batch of one sample is dropped: a contrastive step needs two). Batch
    `b` goes to distributed rank `b % world`; among that rank's batches, DataLoader worker `w`
    of `W` produces every W-th, and a DataLoader (batch_size=None) delivers them in order.
    Each sample is `dataset[index]` with the dataset's (seed, epoch, index) randomness, so the
    stream holds exactly the items of the per-file dataset, in another order. `state.batch`
    resumes an epoch at any batch.
    """

    def __init__(
        self,
        dataset,
        shard_of_item: list[str],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        mix: int = 4,
        rank: int = 0,
        world: int = 1,
        collate_fn: Optional[Callable] = None,
    ):
        from .datasets import collate

        self.dataset, self.batch_size, self.seed, self.shuffle, self.mix = dataset, batch_size, seed, shuffle, mix
        self.rank, self.world = rank, world
        self.collate_fn = collate_fn or collate
        self.groups: dict[str, list[int]] = {}
        for i, s in enumerate(shard_of_item):
            self.groups.setdefault(s, []).append(i)
        self.state = StreamState()

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        self.state = StreamState(epoch, batch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def epoch_batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        """Every batch of the epoch (all ranks), as dataset indices."""
        epoch = self.state.epoch if epoch is None else epoch
        if not self.shuffle:
            order = sorted(i for members in self.groups.values() for i in members)
        else:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            names = sorted(self.groups)
            names = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]
            order = []
            for k in range(0, len(names), self.mix):
                members = [i for n in names[k : k + self.mix] for i in self.groups[n]]
                order += [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches = batches[:-1]
        return batches

    def rank_batches(self) -> list[tuple[int, list[int]]]:
        """(batch number, indices) of this rank's batches from the resume point on."""
        return [
            (b, idx)
            for b, idx in enumerate(self.epoch_batches())
            if b % self.world == self.rank and b >= self.state.batch
        ]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, (b, idx) in enumerate(self.rank_batches()):
            if j % n == w:
                batch = self.collate_fn([self.dataset[i] for i in idx])
                batch["batch"] = b
                yield batch

    def __len__(self) -> int:
        return len(self.rank_batches())


def shards_folder(parent: Path, source_sha256: str) -> Path:
    """Where the shards of a manifest version live: `<parent>/<sha256[:16]>`."""
    return Path(parent) / source_sha256[:16]


def publish_shards(
    layout,
    name: str,
    manifest_path: Path,
    *,
    target_bytes: int = SHARD_BYTES,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[Path, dict, bool]:
    """Pack the manifest at `manifest_path` (a pointer to a version) into the shards of dataset
    `name` and make them current. (folder, record, packed now?): a version packed before is
    not packed again."""
    from ..files import read_version
    from .manifests import absolute_paths

    # one read: the digest names the very bytes parsed, whatever the pointer does meanwhile, and
    # a version is checked against its name (files.CorruptVersion)
    sha, data = read_version(Path(manifest_path))
    folder = shards_folder(layout.shards(name), sha)
    fresh = not (folder / RECORD).is_file()
    manifest = absolute_paths(pd.read_parquet(io.BytesIO(data)), layout.root)
    record = write_shards(
        manifest, layout.root, folder, target_bytes=target_bytes, source_sha256=sha, prefix=name, progress=progress
    )
    pointer = layout.shards_pointer(name)
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}")
    tmp.write_text(folder.name + "\n")
    os.replace(tmp, pointer)
    return folder, record, fresh


def current_shards(layout, name: str) -> Optional[Path]:
    """The folder of the current shard set of `name`, or None when none was packed."""
    pointer = layout.shards_pointer(name)
    if not pointer.is_file():
        return None
    folder = layout.shards(name) / pointer.read_text().strip()
    return folder if (folder / RECORD).is_file() else None


def shards_entry(folder: Path, root: Path) -> dict:
    """What a checkpoint's lineage says of the shards it was trained from: the folder (relative
    to the data root), the record's digests and the manifest version they hold."""
    record = json.loads((Path(folder) / RECORD).read_text())
    return {
        "folder": _relative(str(folder), Path(root).resolve()),
        "record_sha256": sha256_file(Path(folder) / RECORD),
        "source_sha256": record["source_sha256"],
        "samples": record["samples"],
        "index_sha256": record["index_sha256"],
        "shards": [{"name": s["name"], "sha256": s["sha256"]} for s in record["shards"]],
    }
