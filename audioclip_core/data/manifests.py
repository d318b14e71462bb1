"""AudioSet partitions as tables: segments parsed from the official lists, checks of the
extracted clips, and the manifest that joins segments, downloads and clips (one row per
segment, MANIFEST_COLUMNS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from .audioset import (NUM_FRAMES, LabelIndex, partition_file, partition_source, read_class_labels,
                       read_segment_file)

MANIFEST_COLUMNS = {
    "segment_id": "id and start in ms, the stem of the clip's files",
    "ytid": "YouTube id",
    "start": "segment start, seconds",
    "end": "segment end, seconds",
    "label_ids": "AudioSet label ids (mids)",
    "label_names": "display names of the labels, same order",
    "status": "ok | unavailable | private | age_restricted | geo_blocked | throttled | error | invalid_media",
    "reason": "why the segment is not ok (empty when ok)",
    "audio_path": "absolute path of the 44.1 kHz 16-bit WAV",
    "sha256": "SHA-256 of the WAV",
    "duration": "audio duration, seconds",
    "sample_rate": "44100",
    "channels": "1 or 2 (the source's, capped at 2)",
    "frame_paths": "absolute paths of the 10 equally spaced JPEG frames",
    "partition": "the AudioSet partition the segment belongs to",
}


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
    df = pd.DataFrame({
        "segment_id": [s.segment_id for s in parsed.segments],
        "ytid": [s.ytid for s in parsed.segments],
        "start": [s.start for s in parsed.segments],
        "end": [s.end for s in parsed.segments],
        "label_ids": [list(s.labels) for s in parsed.segments],
        "label_names": [[names[m] for m in s.labels] for s in parsed.segments],
        "line": [s.line for s in parsed.segments],
    })
    df = df.drop_duplicates("segment_id", keep="first").reset_index(drop=True)
    return df, parsed.issues, parsed.sha256


def clip_problems(clips: pd.DataFrame, *, reread_all: bool = False) -> dict[str, list[str]]:
    """Empty, silent or missing audio and wrong frame counts among the `ok` clips.

    Clips extracted in this run (`skipped` false) are read in full. Clips kept from an earlier
    run were read in full when they were made, so only their WAV header (the frame count) and
    the presence of their files are checked again: re-reading a whole AudioSet partition on
    every materialisation would mean reading ~1.7 TB. `reread_all` reads every clip."""
    empty, silent, missing, frames = [], [], [], []
    for c in clips[clips["status"] == "ok"].itertuples(index=False):
        fresh = reread_all or not bool(getattr(c, "skipped", False))
        if not Path(c.audio_path).is_file():
            missing.append(c.segment_id)
        elif fresh:
            data, _ = sf.read(c.audio_path, dtype="int16", always_2d=True)
            if data.shape[0] == 0:
                empty.append(c.segment_id)
            elif not np.any(data):
                silent.append(c.segment_id)
        elif sf.info(c.audio_path).frames == 0:
            empty.append(c.segment_id)
        paths = list(c.frame_paths) if c.frame_paths is not None else []
        if len(paths) != NUM_FRAMES or not all(Path(p).is_file() for p in paths):
            frames.append(c.segment_id)
    return {"empty": empty, "silent": silent, "missing": missing, "frames": frames}


def build_manifest(segments: pd.DataFrame, downloads: pd.DataFrame, clips: pd.DataFrame,
                   partition: str) -> pd.DataFrame:
    """One row per segment with the documented columns (MANIFEST_COLUMNS)."""
    d = downloads.set_index("segment_id")
    c = clips.set_index("segment_id") if len(clips) else None
    rows = []
    for s in segments.itertuples(index=False):
        row = {"segment_id": s.segment_id, "ytid": s.ytid, "start": s.start, "end": s.end,
               "label_ids": list(s.label_ids), "label_names": list(s.label_names), "status": "error",
               "reason": "not downloaded", "audio_path": None, "sha256": None, "duration": None,
               "sample_rate": None, "channels": None, "frame_paths": None, "partition": partition}
        if s.segment_id in d.index:
            dl = d.loc[s.segment_id]
            row["status"], row["reason"] = dl["status"], dl["message"] or ""
            if dl["status"] == "ok":
                if c is not None and s.segment_id in c.index:
                    cl = c.loc[s.segment_id]
                    row["status"], row["reason"] = cl["status"], cl["reason"]
                    if cl["status"] == "ok":
                        row.update(audio_path=cl["audio_path"], sha256=cl["sha256"], duration=float(cl["duration"]),
                                   sample_rate=int(cl["sample_rate"]), channels=int(cl["channels"]),
                                   frame_paths=list(cl["frame_paths"]))
                else:
                    row["status"], row["reason"] = "error", "downloaded but not extracted"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
