"""The AudioSet data steps as plain functions: segments -> downloads -> clips -> manifest.

Each step reads the previous step's table and its own previous result, does only the work
that is missing, and returns a new table; callers write tables atomically. Work already
done is never redone: a finished download or clip is recognised on disk (files are renamed
into place only when complete), so a run killed at any point resumes where it stopped.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import soundfile as sf

from ..media import NUM_FRAMES, ExtractionError, extract_clip
from ..youtube import FINAL_FAILURES, DownloadOptions, DownloadResult, download_segment, finished_downloads
from .audioset import SEGMENT_FILES, LabelIndex, partition_source, read_class_labels, read_segment_file
from .io import sha256_file

Progress = Optional[Callable[[int, int], None]]

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
    key, rows = partition_source(partition)
    filename = "demo_segments.csv" if key == "demo" else SEGMENT_FILES[key]
    path = Path(source_dir) / filename
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


def remove_stale_temporaries(folder: Path) -> int:
    """Delete what a killed run left half-written (hidden temporary folders and files)."""
    import shutil

    n = 0
    for p in Path(folder).glob(".*"):
        if p.name == ".bin":
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


def _result_row(r: DownloadResult, skipped: bool = False) -> dict:
    return {"segment_id": None, "ytid": r.ytid, "start": r.start, "end": r.end, "status": r.status,
            "message": r.message, "attempts": r.attempts, "path": r.path, "bytes": r.bytes,
            "sha256": r.sha256, "started_at": r.started_at, "finished_at": r.finished_at,
            "skipped": skipped}


def run_downloads(segments: pd.DataFrame, dest_dir: Path, previous: Optional[pd.DataFrame],
                  options: DownloadOptions, *, max_workers: int = 4, progress: Progress = None) -> pd.DataFrame:
    """Download every segment not yet `ok`; final failures are kept, transient ones retried."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest_dir)
    prev = {} if previous is None else {r["segment_id"]: r for r in previous.to_dict("records")}
    rows, todo = [], []
    finished = finished_downloads(dest_dir)
    for seg in segments.itertuples(index=False):
        old = prev.get(seg.segment_id)
        found = finished.get(seg.segment_id)
        if found is not None:
            if old is not None and old["status"] == "ok" and old.get("path") == str(found):
                rows.append({**old, "skipped": True})
            else:  # finished on disk by a run that died before recording it
                now = time.time()
                rows.append(_result_row(DownloadResult(seg.ytid, seg.start, seg.end, "ok", "", 0, str(found),
                                                       found.stat().st_size, sha256_file(found), now, now), True))
            rows[-1]["segment_id"] = seg.segment_id
        elif old is not None and old["status"] in FINAL_FAILURES:
            rows.append({**old, "skipped": True})
        else:
            todo.append(seg)
    done = len(rows)
    total = len(segments)
    if progress:
        progress(done, total)
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(download_segment, s.ytid, s.start, s.end, dest_dir, options=options): s for s in todo}
        for fut in as_completed(futures):
            seg = futures[fut]
            row = _result_row(fut.result())
            row["segment_id"] = seg.segment_id
            old = prev.get(seg.segment_id)
            if old is not None:
                row["attempts"] += int(old.get("attempts") or 0)
            rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    order = {sid: i for i, sid in enumerate(segments["segment_id"])}
    out = pd.DataFrame(rows)
    out = out.sort_values("segment_id", key=lambda s: s.map(order)).reset_index(drop=True)
    return out


def _existing_clip(clips_dir: Path, name: str) -> Optional[dict]:
    wav = clips_dir / f"{name}.wav"
    frames = [clips_dir / f"{name}_f{i:02d}.jpg" for i in range(NUM_FRAMES)]
    if wav.is_file() and all(f.is_file() for f in frames):
        info = sf.info(str(wav))
        return {"audio_path": str(wav), "frame_paths": [str(f) for f in frames],
                "duration": info.frames / info.samplerate, "sample_rate": int(info.samplerate),
                "channels": int(info.channels)}
    return None


def run_extraction(downloads: pd.DataFrame, clips_dir: Path, previous: Optional[pd.DataFrame] = None, *,
                   progress: Progress = None) -> pd.DataFrame:
    """Cut every `ok` download into audio + 10 frames; failures are quarantined with the reason
    and not retried while the download stays the same (same SHA-256)."""
    clips_dir = Path(clips_dir)
    quarantined = {}
    if previous is not None and "download_sha256" in previous:
        bad = previous[previous["status"] != "ok"]
        quarantined = {(r.segment_id, r.download_sha256): r for r in bad.itertuples(index=False)}
    clips_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(clips_dir)
    rows = []
    ok = downloads[downloads["status"] == "ok"]
    for i, d in enumerate(ok.itertuples(index=False), start=1):
        name = d.segment_id
        row = {"segment_id": name, "status": "ok", "reason": "", "audio_path": None, "frame_paths": None,
               "duration": None, "sample_rate": None, "channels": None, "sha256": None, "skipped": False,
               "download_sha256": d.sha256}
        existing = _existing_clip(clips_dir, name)
        known_bad = quarantined.get((name, d.sha256))
        if known_bad is not None:
            row.update(status=known_bad.status, reason=known_bad.reason, skipped=True)
        elif existing is not None:
            row.update(existing, skipped=True)
        else:
            try:
                clip = extract_clip(Path(d.path), clips_dir, name, duration=float(d.end - d.start))
                row.update(audio_path=clip.audio_path, frame_paths=clip.frame_paths, duration=clip.duration,
                           sample_rate=clip.sample_rate, channels=clip.channels)
            except (ExtractionError, OSError) as exc:
                row.update(status="invalid_media", reason=str(exc))
        if row["status"] == "ok":
            row["sha256"] = sha256_file(Path(row["audio_path"]))
        rows.append(row)
        if progress:
            progress(i, len(ok))
    cols = ["segment_id", "status", "reason", "audio_path", "frame_paths", "duration", "sample_rate",
            "channels", "sha256", "skipped", "download_sha256"]
    return pd.DataFrame(rows, columns=cols)


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


def update_catalog(catalog: Path, views: dict[str, Path]) -> None:
    """(Re)create one DuckDB view per manifest file, plus `audioset` over every AudioSet partition."""
    import duckdb

    from .io import file_lock

    with file_lock(catalog.with_suffix(".lock")):
        con = duckdb.connect(str(catalog))
        try:
            for name, path in views.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')")
            parts = Path(catalog).parent / "audioset" / "manifests"
            if any(parts.glob("*.parquet")):
                con.execute(f"CREATE OR REPLACE VIEW audioset AS SELECT * FROM read_parquet('{str(parts).replace(chr(39), chr(39) * 2)}/*.parquet', union_by_name=true)")
        finally:
            con.close()
