"""Acquiring AudioSet: every segment's time range downloaded (yt-dlp), then cut into audio and
frames (ffmpeg), as plain functions over tables.

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

import pandas as pd
import soundfile as sf

from ..data.audioset import NUM_FRAMES
from ..files import sha256_file
from .media import ExtractionError, extract_clip
from .youtube import FINAL_FAILURES, DownloadOptions, DownloadResult, download_segment, finished_downloads

Progress = Optional[Callable[[int, int], None]]


def remove_stale_temporaries(folder: Path) -> int:
    """Delete what a killed run left half-written (hidden temporary folders and files)."""
    import shutil

    n = 0
    for p in Path(folder).glob(".*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


def _result_row(r: DownloadResult, skipped: bool = False) -> dict:
    return {"segment_id": None, "ytid": r.ytid, "start": r.start, "end": r.end, "status": r.status,
            "message": r.message, "attempts": r.attempts, "path": r.path, "bytes": r.bytes,
            "sha256": r.sha256, "started_at": r.started_at, "finished_at": r.finished_at,
            "skipped": skipped}


def intact_clips(clips: Optional[pd.DataFrame]) -> set[str]:
    """The segments whose clip was recorded `ok` and whose WAV and 10 frames are on disk."""
    if clips is None or not len(clips):
        return set()
    out = set()
    for r in clips[clips["status"] == "ok"].itertuples(index=False):
        if r.audio_path and Path(r.audio_path).is_file() and r.frame_paths is not None \
                and len(r.frame_paths) == NUM_FRAMES and all(Path(f).is_file() for f in r.frame_paths):
            out.add(r.segment_id)
    return out


def run_downloads(segments: pd.DataFrame, dest_dir: Path, previous: Optional[pd.DataFrame],
                  options: DownloadOptions, *, max_workers: int = 4, keep: frozenset[str] | set[str] = frozenset(),
                  progress: Progress = None) -> pd.DataFrame:
    """Download every segment not yet `ok`; final failures are kept, transient ones retried.
    A segment in `keep` (its clip is intact) that was downloaded `ok` stays `ok` even when its
    download file is gone: nothing is fetched again, and no later failure can demote it."""
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
            if old is not None and old["status"] == "ok" and old.get("path") and Path(old["path"]).name == found.name:
                # recorded by an earlier run; compared by name, so a data root that moved keeps its history
                rows.append({**old, "path": str(found), "skipped": True})
            else:  # finished on disk by a run that died before recording it
                now = time.time()
                rows.append(_result_row(DownloadResult(seg.ytid, seg.start, seg.end, "ok", "", 0, str(found),
                                                       found.stat().st_size, sha256_file(found), now, now), True))
            rows[-1]["segment_id"] = seg.segment_id
        elif old is not None and old["status"] == "ok" and seg.segment_id in keep:
            rows.append({**old, "skipped": True,
                         "message": "download file removed; the clip made from it is intact and kept"})
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
