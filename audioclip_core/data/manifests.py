"""AudioSet partitions as tables: segments parsed from the official lists, checks of the
extracted clips, and the manifest that joins segments, downloads and clips (one row per
segment, MANIFEST_COLUMNS).

Manifests (these, the ESC-50 / UrbanSound8K ones and their fold splits) are written as
immutable content-addressed versions behind a pointer (`files.publish_version`), with the
paths of files under the data root relative to it (`relative_paths`): a root can move, and a
checkpoint's lineage names the exact version it was trained on. Readers resolve the paths
against their data root with `read_manifest`, which checks a version against its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .audioset import NUM_FRAMES, LabelIndex, partition_file, partition_source, read_class_labels, read_segment_file

MANIFEST_COLUMNS = {
    "segment_id": "id and start in ms, the stem of the clip's files",
    "ytid": "YouTube id",
    "start": "segment start, seconds",
    "end": "segment end, seconds",
    "label_ids": "AudioSet label ids (mids)",
    "label_names": "display names of the labels, same order",
    "status": "ok | unavailable | private | age_restricted | geo_blocked | throttled | error | invalid_media",
    "reason": "why the segment is not ok (empty when ok)",
    "audio_path": "path of the 44.1 kHz 16-bit WAV, relative to the data root",
    "sha256": "SHA-256 of the WAV",
    "duration": "audio duration, seconds",
    "sample_rate": "44100",
    "channels": "1 or 2 (the source's, capped at 2)",
    "frame_paths": "paths of the 10 equally spaced JPEG frames, relative to the data root",
    "partition": "the AudioSet partition the segment belongs to",
}


PATH_COLUMNS = ("audio_path", "frame_paths")


def relative_path(p, root: Path):
    if p is None or (isinstance(p, float) and p != p):
        return None
    path = Path(p)
    try:
        return path.relative_to(root).as_posix() if path.is_absolute() else str(p)
    except ValueError:
        return str(p)  # outside the data root (a source given by path): kept absolute


def _absolute(p, root: Path):
    if p is None or (isinstance(p, float) and p != p):
        return None
    return str(root / p)  # an absolute p stays as it is


def _map(df: pd.DataFrame, fn, root: Path) -> pd.DataFrame:
    out = df.copy()
    root = Path(root)
    for col in PATH_COLUMNS:
        if col in out:
            out[col] = [
                None
                if v is None
                else ([fn(x, root) for x in v] if not isinstance(v, str) and hasattr(v, "__len__") else fn(v, root))
                for v in out[col]
            ]
    return out


def relative_paths(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """A copy of `df` whose file paths under `root` are relative to it (others unchanged)."""
    return _map(df, relative_path, Path(root).resolve())


def absolute_paths(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """A copy of `df` whose relative file paths are resolved against `root`."""
    return _map(df, _absolute, Path(root))


def read_manifest(path: Path, root: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A manifest (or fold split, or kept version) with its file paths resolved against `root`.
    A version (or a pointer to one) is checked against its name as it is read
    (`files.CorruptVersion` names a version rewritten in place): training, the tables and the
    shards all read their manifests here."""
    from ..files import read_version_parquet

    return absolute_paths(read_version_parquet(path, columns=columns), root)


def label_index_for(source_dir: Path) -> LabelIndex:
    """The folder's class_labels_indices.csv, else the copy this package carries."""
    path = Path(source_dir) / "class_labels_indices.csv"
    if not path.is_file():
        from importlib.resources import files

        path = Path(str(files("audioclip_core") / "resources" / "audioset" / "class_labels_indices.csv"))
    return read_class_labels(path)


def read_partition(source_dir: Path, partition: str) -> tuple[pd.DataFrame, list, str]:
    """(segments table, parse issues, SHA-256 of the source file) of one partition."""
    _, rows = partition_source(partition)
    path = Path(source_dir) / partition_file(partition)
    if not path.is_file():
        raise FileNotFoundError(f"AudioSet partition {partition!r} needs {path}, which does not exist")
    labels = label_index_for(source_dir)
    parsed = read_segment_file(path, set(labels.mids), rows=rows)
    names = labels.name_of
    df = pd.DataFrame(
        {
            "segment_id": [s.segment_id for s in parsed.segments],
            "ytid": [s.ytid for s in parsed.segments],
            "start": [s.start for s in parsed.segments],
            "end": [s.end for s in parsed.segments],
            "label_ids": [list(s.labels) for s in parsed.segments],
            "label_names": [[names[m] for m in s.labels] for s in parsed.segments],
            "line": [s.line for s in parsed.segments],
        }
    )
    df = df.drop_duplicates("segment_id", keep="first").reset_index(drop=True)
    return df, parsed.issues, parsed.sha256


def clip_problems(clips: pd.DataFrame, *, reread_all: bool = False, root: Path | None = None) -> dict[str, list[str]]:
    """Empty, silent or missing audio and wrong frame counts among the `ok` clips.

    Clips extracted in this run (`skipped` false) are read in full. Clips kept from an earlier
    run were read in full when they were made, so only the presence of their files and the size
    of their WAV (more than a header) are checked again, from one listing of each folder:
    re-reading a whole AudioSet partition on every materialisation would mean reading ~1.7 TB.
    `reread_all` reads every clip. Relative paths are resolved against `root` (the data root)."""
    from ..files import folder_sizes

    def at(p) -> str:
        return str(p if root is None else Path(root) / p)

    empty, silent, missing, frames = [], [], [], []
    ok = clips[clips["status"] == "ok"]
    sizes = folder_sizes(Path(at(p)).parent for p in ok["audio_path"] if p)
    for c in ok.itertuples(index=False):
        fresh = reread_all or not bool(getattr(c, "skipped", False))
        size = sizes.get(at(c.audio_path))
        if size is None:
            missing.append(c.segment_id)
        elif fresh:
            data, _ = sf.read(at(c.audio_path), dtype="int16", always_2d=True)
            if data.shape[0] == 0:
                empty.append(c.segment_id)
            elif not np.any(data):
                silent.append(c.segment_id)
        elif size <= WAV_HEADER_BYTES:
            empty.append(c.segment_id)
        paths = list(c.frame_paths) if c.frame_paths is not None else []
        if len(paths) != NUM_FRAMES or not all(at(p) in sizes for p in paths):
            frames.append(c.segment_id)
    return {"empty": empty, "silent": silent, "missing": missing, "frames": frames}


WAV_HEADER_BYTES = 44


def build_manifest(
    segments: pd.DataFrame, downloads: pd.DataFrame, clips: pd.DataFrame, partition: str
) -> pd.DataFrame:
    """One row per segment with the documented columns (MANIFEST_COLUMNS), by joins (no work
    per segment in Python)."""
    seg = segments[["segment_id", "ytid", "start", "end", "label_ids", "label_names"]].reset_index(drop=True)
    dl = (
        downloads[["segment_id", "status", "message"]]
        .drop_duplicates("segment_id")
        .rename(columns={"status": "dl_status", "message": "dl_message"})
    )
    out = seg.merge(dl, on="segment_id", how="left")
    clip_cols = [
        "segment_id",
        "status",
        "reason",
        "audio_path",
        "sha256",
        "duration",
        "sample_rate",
        "channels",
        "frame_paths",
    ]
    cl = (clips[clip_cols] if len(clips) else pd.DataFrame(columns=clip_cols)).drop_duplicates("segment_id")
    out = out.merge(cl.rename(columns={"status": "cl_status", "reason": "cl_reason"}), on="segment_id", how="left")
    downloaded = out["dl_status"].notna()
    dl_ok = out["dl_status"] == "ok"
    clipped = out["cl_status"].notna()
    clip_ok = dl_ok & (out["cl_status"] == "ok")
    status = np.where(
        ~downloaded, "error", np.where(~dl_ok, out["dl_status"], np.where(clipped, out["cl_status"], "error"))
    )
    reason = np.where(
        ~downloaded,
        "not downloaded",
        np.where(
            ~dl_ok, out["dl_message"].fillna(""), np.where(clipped, out["cl_reason"], "downloaded but not extracted")
        ),
    )
    result = pd.DataFrame(
        {
            "segment_id": out["segment_id"],
            "ytid": out["ytid"],
            "start": out["start"],
            "end": out["end"],
            "label_ids": out["label_ids"].map(list),
            "label_names": out["label_names"].map(list),
            "status": status.astype(object),
            "reason": reason.astype(object),
            "audio_path": out["audio_path"].where(clip_ok, None),
            "sha256": out["sha256"].where(clip_ok, None),
            "duration": pd.to_numeric(out["duration"], errors="coerce").astype(float).where(clip_ok, None),
            "sample_rate": out["sample_rate"].where(clip_ok, None),
            "channels": out["channels"].where(clip_ok, None),
            "frame_paths": [list(f) if ok and f is not None else None for f, ok in zip(out["frame_paths"], clip_ok)],
            "partition": partition,
        }
    )
    for col in ("sample_rate", "channels"):
        result[col] = [int(v) if ok and v is not None and v == v else None for v, ok in zip(result[col], clip_ok)]
    return result[list(MANIFEST_COLUMNS)]
