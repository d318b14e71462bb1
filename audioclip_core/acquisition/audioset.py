"""Acquiring AudioSet: every segment's time range downloaded (yt-dlp), then cut into audio and
frames (ffmpeg), as plain functions over tables.

Each step reads the previous step's table and its own previous result, does only the work
that is missing, and returns a new table; callers write tables atomically. Work already
done is never redone: a finished download or clip is recognised on disk (files are renamed
into place only when complete), so a run killed at any point resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

import pandas as pd
import soundfile as sf

from ..data.audioset import NUM_FRAMES
from ..data.manifests import relative_path
from ..files import folder_sizes, sha256_file
from ..perf import add_seconds, timed
from .media import (
    CUT,
    TAIL_TOLERANCE,
    EnvironmentFault,
    MediaError,
    environment_cause,
    extract_clip,
    info_columns,
    info_from_row,
    probe,
)
from .youtube import (
    FINAL_FAILURES,
    PIECE_SUFFIX,
    TRANSIENT,
    DownloadOptions,
    DownloadResult,
    download_segment,
    finished_downloads,
)

Progress = Optional[Callable[[int, int], None]]


def remove_stale_temporaries(folder: Path) -> int:
    """Delete what a killed run left half-written (hidden temporary folders and files)."""
    import shutil

    n = 0
    for p in Path(folder).glob(".*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


def remove_uncut_downloads(folder: Path) -> int:
    """Delete downloads made before pieces kept the source's time line (any visible file that is
    not `<segment id>.cut.mkv`): a clip cut from one could be shifted by up to a keyframe
    interval, so the segment is downloaded again."""
    n = 0
    for p in Path(folder).iterdir():
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(PIECE_SUFFIX):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _result_row(r: DownloadResult, skipped: bool = False) -> dict:
    return {
        "segment_id": None,
        "ytid": r.ytid,
        "start": r.start,
        "end": r.end,
        "status": r.status,
        "message": r.message,
        "attempts": r.attempts,
        "path": r.path,
        "bytes": r.bytes,
        "sha256": r.sha256,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "media_duration": r.media_duration,
        **info_columns(r.info),
        "tail_tolerance": r.tail_tolerance,
        "environment": r.environment or "",
        "failed_runs": 0,
        "next_attempt_at": None,
        "skipped": skipped,
    }


def environment_faults(table: pd.DataFrame) -> list[str]:
    """'segment: cause' for each row of a download or clip table that failed through a fault of
    this machine (not of its source or media): a step that has any fails after writing its table."""
    if table is None or not len(table) or "environment" not in table:
        return []
    bad = table[table["environment"].fillna("").astype(str) != ""]
    return [f"{r.segment_id}: {r.environment}" for r in bad.itertuples(index=False)]


def intact_clips(clips: Optional[pd.DataFrame], root: Optional[Path] = None) -> set[str]:
    """The segments whose clip was recorded `ok`, cut exactly (`media.CUT`), and whose WAV and 10
    frames are on disk (one listing of the clip folder, not a stat per file)."""
    if clips is None or not len(clips) or "cut" not in clips:
        return set()
    ok = clips[(clips["status"] == "ok") & (clips["cut"] == CUT)]
    present = folder_sizes(_resolve(p, root).parent for p in ok["audio_path"] if p)
    return {
        r.segment_id
        for r in ok.itertuples(index=False)
        if r.audio_path
        and str(_resolve(r.audio_path, root)) in present
        and r.frame_paths is not None
        and len(r.frame_paths) == NUM_FRAMES
        and all(str(_resolve(f, root)) in present for f in r.frame_paths)
    }


def default_workers() -> int:
    """Downloads in flight at once: they wait on the network more than on the CPU, so a few per
    core (at least 4, at most 16)."""
    return max(4, min(16, 4 * (os.cpu_count() or 1)))


class _HostLimit:
    """At most `n` downloads in flight to one host, and - with `per_minute` - at most that many
    started per minute (a request budget: starts are spaced 60 / per_minute s apart per host)."""

    def __init__(self, n: int, per_minute: float = 0.0, clock=time.monotonic, sleep=time.sleep):
        self.n, self._lock, self._sems, self._next = n, threading.Lock(), {}, {}
        self.gap = 60.0 / per_minute if per_minute else 0.0
        self._clock, self._sleep = clock, sleep

    @contextlib.contextmanager
    def __call__(self, url: str) -> Iterator[None]:
        host = urlsplit(url).netloc
        with self._lock:
            sem = self._sems.setdefault(host, threading.BoundedSemaphore(self.n))
        with sem:
            if self.gap:
                with self._lock:  # reserve the host's next start slot
                    slot = max(self._clock(), self._next.get(host, 0.0))
                    self._next[host] = slot + self.gap
                wait = slot - self._clock()
                if wait > 0:
                    self._sleep(wait)
            yield


MAX_RETRY_AFTER = 86400.0  # a day: the longest a transient failure waits for the next try


def _due(old: dict, now: float) -> bool:
    nxt = old.get("next_attempt_at")
    return nxt is None or pd.isna(nxt) or float(nxt) <= now


def run_downloads(
    segments: pd.DataFrame,
    dest_dir: Path,
    previous: Optional[pd.DataFrame],
    options: DownloadOptions,
    *,
    max_workers: Optional[int] = None,
    per_host: int = 8,
    per_host_per_minute: float = 0.0,
    keep: frozenset[str] | set[str] = frozenset(),
    retry_after: float = 0.0,
    progress: Progress = None,
    seconds: Optional[dict] = None,
    root: Optional[Path] = None,
) -> pd.DataFrame:
    """Download every segment not yet `ok`; final failures are kept, transient ones retried.

    A segment in `keep` (its clip is intact) that was downloaded `ok` stays `ok` even when its
    download file is gone: nothing is fetched again, and no later failure can demote it.
    `max_workers` downloads run at once (default: `default_workers()`), at most `per_host` of
    them to one host, and with `per_host_per_minute` at most that many started per minute per
    host. A transient failure (throttled, error, a stalled transfer) is retried on
    a later run once `retry_after` seconds have passed, doubling with each run it fails again
    (at most a day): until then a re-run skips it, so re-running a finished partition costs
    seconds even when some of its sources hang. `seconds` collects wall time per phase, summed
    over downloads.

    A fault of this machine (no space, no permission) is recorded as `error` with its cause in
    `environment`, without back-off (the source did nothing wrong): the caller fails the step
    (`environment_faults`) and the next run tries again. Paths are recorded relative to `root`
    (the data root) when it is given, so a copied root reads only itself."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest_dir)
    remove_uncut_downloads(dest_dir)
    prev = {} if previous is None else {r["segment_id"]: r for r in previous.to_dict("records")}
    rows, todo = [], []
    finished = finished_downloads(dest_dir)
    now = time.time()
    for seg in segments.itertuples(index=False):
        old = prev.get(seg.segment_id)
        found = finished.get(seg.segment_id)
        if found is not None:
            if old is not None and old["status"] == "ok" and old.get("path") and Path(old["path"]).name == found.name:
                # recorded by an earlier run; compared by name, so a data root that moved keeps its history
                rows.append({**old, "path": str(found), "skipped": True})
            else:  # finished on disk by a run that died before recording it: its extent read again
                try:
                    info = probe(found)
                except MediaError:
                    found.unlink(missing_ok=True)
                    todo.append(seg)
                    continue
                rows.append(
                    _result_row(
                        DownloadResult(
                            seg.ytid,
                            seg.start,
                            seg.end,
                            "ok",
                            "",
                            0,
                            str(found),
                            found.stat().st_size,
                            sha256_file(found),
                            now,
                            now,
                            info=info,
                        ),
                        True,
                    )
                )
            rows[-1]["segment_id"] = seg.segment_id
        elif old is not None and old["status"] == "ok" and seg.segment_id in keep:
            rows.append(
                {**old, "skipped": True, "message": "download file removed; the clip made from it is intact and kept"}
            )
        elif old is not None and old["status"] in FINAL_FAILURES:
            rows.append({**old, "skipped": True})
        elif old is not None and old["status"] in TRANSIENT and retry_after > 0 and not _due(old, now):
            rows.append({**old, "skipped": True})
        else:
            todo.append(seg)
    done = len(rows)
    total = len(segments)
    if progress:
        progress(done, total)
    limit = _HostLimit(per_host, per_host_per_minute)

    def fetch(seg):
        with limit(options.url_template.format(ytid=seg.ytid)):
            return download_segment(seg.ytid, seg.start, seg.end, dest_dir, options=options)

    with ThreadPoolExecutor(max_workers=max_workers or default_workers()) as pool:
        futures = {pool.submit(fetch, s): s for s in todo}
        for fut in as_completed(futures):
            seg = futures[fut]
            result = fut.result()
            row = _result_row(result)
            row["segment_id"] = seg.segment_id
            old = prev.get(seg.segment_id)
            if old is not None:
                row["attempts"] += int(old.get("attempts") or 0)
            if result.status in TRANSIENT and not result.environment:  # runs in a row that failed it, this one included
                failed = 1 + (int(old.get("failed_runs") or 0) if old is not None and old["status"] in TRANSIENT else 0)
                wait = min(MAX_RETRY_AFTER, retry_after * 2 ** (failed - 1)) if retry_after > 0 else 0.0
                row["failed_runs"] = failed
                row["next_attempt_at"] = result.finished_at + wait if wait else None
                if wait:
                    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.finished_at + wait))
                    row["message"] = f"{row['message']} (retried by a run after {when})"
            add_seconds(seconds, result.seconds)
            rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    order = {sid: i for i, sid in enumerate(segments["segment_id"])}
    out = pd.DataFrame(rows)
    out = out.sort_values("segment_id", key=lambda s: s.map(order)).reset_index(drop=True)
    if root is not None and len(out):
        out["path"] = [relative_path(p, Path(root).resolve()) for p in out["path"]]
    return out


def _existing_clip(clips_dir: Path, name: str) -> Optional[dict]:
    wav = clips_dir / f"{name}.wav"
    frames = [clips_dir / f"{name}_f{i:02d}.jpg" for i in range(NUM_FRAMES)]
    if wav.is_file() and all(f.is_file() for f in frames):
        info = sf.info(str(wav))
        return {
            "audio_path": str(wav),
            "frame_paths": [str(f) for f in frames],
            "duration": info.frames / info.samplerate,
            "sample_rate": int(info.samplerate),
            "channels": int(info.channels),
        }
    return None


def extraction_workers() -> int:
    """ffmpeg processes at once: one per core (each decodes a segment on one thread)."""
    return max(1, os.cpu_count() or 1)


CLIP_COLUMNS = [
    "segment_id",
    "status",
    "reason",
    "audio_path",
    "frame_paths",
    "duration",
    "sample_rate",
    "channels",
    "sha256",
    "skipped",
    "download_sha256",
    "cut",
    "environment",
]


def _number(v, default: float) -> float:
    return default if v is None or (isinstance(v, float) and v != v) else float(v)


def _resolve(p, root: Optional[Path]) -> Path:
    return Path(p) if root is None else Path(root) / p


def run_extraction(
    downloads: pd.DataFrame,
    clips_dir: Path,
    previous: Optional[pd.DataFrame] = None,
    *,
    progress: Progress = None,
    max_workers: Optional[int] = None,
    seconds: Optional[dict] = None,
    tail_tolerance: float = TAIL_TOLERANCE,
    root: Optional[Path] = None,
) -> pd.DataFrame:
    """Cut every `ok` download into `[start, end]` of audio + 10 frames (`media.extract_clip`),
    `max_workers` ffmpeg processes at once (default: one per core).

    What the media causes (`MediaError`) is quarantined as `invalid_media` with the reason and not
    tried again while the download stays the same (same SHA-256). A fault of this machine
    (`EnvironmentFault`, or an OSError such as no space) quarantines nothing: the row is `error`
    with the cause in `environment`, the caller fails the step (`environment_faults`) and the next
    run extracts it again. A clip recorded before, cut the current way (`media.CUT`), whose files
    are all on disk (one listing of the folder) is kept as recorded, without reading it again;
    clips cut another way are cut again. Paths are read and recorded relative to `root` (the data
    root) when it is given."""
    clips_dir = Path(clips_dir)
    quarantined, recorded = {}, {}
    if previous is not None and "download_sha256" in previous and "cut" in previous:
        for r in previous.to_dict("records"):
            if r.get("cut") != CUT:
                continue
            if r["status"] == "invalid_media":
                quarantined[(r["segment_id"], r["download_sha256"])] = r
            elif r["status"] == "ok":
                recorded[r["segment_id"]] = r
    clips_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(clips_dir)
    present = folder_sizes([clips_dir])
    ok = downloads[downloads["status"] == "ok"]
    rows: list[Optional[dict]] = [None] * len(ok)
    todo = []
    for i, d in enumerate(ok.to_dict("records")):
        name = d["segment_id"]
        row = {
            "segment_id": name,
            "status": "ok",
            "reason": "",
            "audio_path": None,
            "frame_paths": None,
            "duration": None,
            "sample_rate": None,
            "channels": None,
            "sha256": None,
            "skipped": False,
            "download_sha256": d["sha256"],
            "cut": CUT,
            "environment": "",
        }
        files = [str(clips_dir / f"{name}.wav")] + [str(clips_dir / f"{name}_f{k:02d}.jpg") for k in range(NUM_FRAMES)]
        on_disk = all(f in present for f in files)
        known_bad = quarantined.get((name, d["sha256"]))
        old = recorded.get(name)
        piece = _resolve(d["path"], root) if d.get("path") else None
        if known_bad is not None:
            row.update(status=known_bad["status"], reason=known_bad["reason"], skipped=True)
        elif on_disk and old is not None and old["download_sha256"] == d["sha256"] and old.get("sha256"):
            row.update(
                {k: old[k] for k in ("duration", "sample_rate", "channels", "sha256")},
                skipped=True,
                audio_path=files[0],
                frame_paths=files[1:],
            )
        elif (
            on_disk
            and piece is not None
            and piece.is_file()
            and os.stat(files[0]).st_mtime_ns >= piece.stat().st_mtime_ns
        ):
            # finished from this download by a run that died before recording it (a clip older than
            # its download was cut from something else)
            row.update(_existing_clip(clips_dir, name), skipped=True)
            row["sha256"] = sha256_file(Path(row["audio_path"]))
        else:
            todo.append((i, d, row))
        rows[i] = row
    done = len(ok) - len(todo)
    if progress:
        progress(done, len(ok))

    def extract(d: dict, row: dict) -> dict:
        spent: dict = {}
        try:
            if not d.get("path"):
                raise MediaError("the download row names no file")
            clip = extract_clip(
                _resolve(d["path"], root),
                clips_dir,
                d["segment_id"],
                start=float(d["start"]),
                end=float(d["end"]),
                info=info_from_row(d),
                tail_tolerance=_number(d.get("tail_tolerance"), tail_tolerance),
                seconds=spent,
            )
            row.update(
                audio_path=clip.audio_path,
                frame_paths=clip.frame_paths,
                duration=clip.duration,
                sample_rate=clip.sample_rate,
                channels=clip.channels,
            )
            with timed(spent, "verify"):
                row["sha256"] = sha256_file(Path(clip.audio_path))
        except MediaError as exc:
            row.update(status="invalid_media", reason=str(exc))
        except (EnvironmentFault, OSError) as exc:
            cause = (
                str(exc)
                if isinstance(exc, EnvironmentFault)
                else (environment_cause(exc) or f"{type(exc).__name__}: {exc}")
            )
            row.update(status="error", reason=cause, environment=cause)
        row["_seconds"] = spent
        return row

    with ThreadPoolExecutor(max_workers=max_workers or extraction_workers()) as pool:
        futures = [pool.submit(extract, d, row) for _, d, row in todo]
        for fut in as_completed(futures):
            add_seconds(seconds, fut.result().pop("_seconds"))
            done += 1
            if progress:
                progress(done, len(ok))
    out = pd.DataFrame(rows, columns=CLIP_COLUMNS)
    if root is not None and len(out):
        base = Path(root).resolve()
        out["audio_path"] = [relative_path(p, base) for p in out["audio_path"]]
        out["frame_paths"] = [None if f is None else [relative_path(x, base) for x in f] for f in out["frame_paths"]]
    return out
