"""Downloading AudioSet segments with yt-dlp, and classifying why a download failed.

One call downloads one segment (the [start, end] range only) into a temporary folder and
renames the result into place, so a killed download never leaves a file that looks done.
Failures become a status: ``unavailable``, ``private``, ``age_restricted``, ``geo_blocked``,
``throttled`` or ``error``; ``throttled`` and ``error`` are transient and retried with
exponential backoff and jitter, the others are final.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..data.audioset import segment_id, validate_ytid
from ..files import sha256_file
from ..perf import timed

YOUTUBE_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"
# audio plus a small video stream (frames are resized to 224 px on the short side later)
DEFAULT_FORMAT = "bv*[height<=360]+ba/b[height<=360]/bv*+ba/b"
STATUSES = ("ok", "unavailable", "private", "age_restricted", "geo_blocked", "throttled", "error")
TRANSIENT = ("throttled", "error")


@dataclass
class DownloadOptions:
    url_template: str = YOUTUBE_URL_TEMPLATE
    format: str = DEFAULT_FORMAT
    max_attempts: int = 4
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 120.0
    socket_timeout: float = 15.0          # seconds a read may wait for data (yt-dlp's default is 20)
    sleep_requests: float = 0.0           # pause between HTTP requests (yt-dlp sleep_interval_requests)
    rate_limit: Optional[int] = None      # bytes/s
    cookies_file: Optional[str] = None    # what real YouTube needs for age-gated or busy periods
    js_runtime: Optional[str] = None      # e.g. "node" or "deno": full YouTube support needs one


@dataclass
class DownloadResult:
    ytid: str
    start: float
    end: float
    status: str
    message: str = ""
    attempts: int = 0
    path: Optional[str] = None
    bytes: int = 0
    sha256: Optional[str] = None
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    media_duration: Optional[float] = None   # of the file kept, from the probe that checked it
    audio_channels: Optional[int] = None
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds (request, download, cut, probe, hash)


def classify_error(exc: BaseException) -> tuple[str, str]:
    """(status, message) of a yt-dlp failure."""
    cause = getattr(exc, "exc_info", None)
    inner = cause[1] if cause and len(cause) > 1 and cause[1] is not None else exc
    message = str(inner) or str(exc)
    low = (message + " " + str(exc)).lower()
    status_code = getattr(inner, "status", None) or getattr(getattr(inner, "response", None), "status", None)
    name = type(inner).__name__
    if name == "GeoRestrictedError" or "available in your country" in low or "geo restrict" in low:
        return "geo_blocked", message
    if status_code == 429 or "rate-limited" in low or "too many requests" in low:
        return "throttled", message
    if "private video" in low:
        return "private", message
    if "confirm your age" in low or "age-restricted" in low or "age restricted" in low or "inappropriate for some users" in low:
        return "age_restricted", message
    if status_code in (404, 410) or "video unavailable" in low or "removed" in low or "does not exist" in low \
            or "not found" in low:
        return "unavailable", message
    return "error", message


@contextlib.contextmanager
def _bundled_ffmpeg() -> Iterator[str]:
    """The bundled ffmpeg for yt-dlp, for the calling thread only: its `ffmpeg_location` option
    covers the download itself, but whether a range download can use ffmpeg is decided without
    the options, from a context variable that yt-dlp's own command line sets. Nothing of the
    process (PATH, environment) is changed."""
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    from ..audio import ffmpeg_exe

    exe = str(ffmpeg_exe())
    token = FFmpegPostProcessor._ffmpeg_location.set(exe)
    try:
        yield exe
    finally:
        FFmpegPostProcessor._ffmpeg_location.reset(token)


def download_segment(ytid: str, start: float, end: float, dest_dir: Path, *,
                     options: Optional[DownloadOptions] = None,
                     sleep: Callable[[float], None] = time.sleep) -> DownloadResult:
    """Download [start, end] of a video into `dest_dir/<segment_id>.<ext>` (atomic)."""
    options = options or DownloadOptions()
    result = DownloadResult(ytid, start, end, status="error")
    try:
        validate_ytid(ytid)
    except ValueError as exc:
        result.message, result.finished_at = str(exc), time.time()
        return result
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = segment_id(ytid, start)
    url = options.url_template.format(ytid=ytid)
    with _bundled_ffmpeg() as ffmpeg:
        return _download(start, end, dest_dir, name, url, options, sleep, result, ffmpeg)


class NotMedia(Exception):
    """The URL is a page that links to other media, not the segment's own media."""


def _refusal(info: dict) -> str:
    """Why an extracted URL is not downloaded ('' when it is): only a media file at the URL
    itself or a YouTube video, never media that a web page links to or embeds."""
    if info.get("direct") or info.get("extractor_key", "").lower().startswith("youtube"):
        return ""
    return (f"the URL is not media but a web page ({info.get('extractor_key') or 'unknown'}): "
            "links inside pages are not followed")


def _short(path: Path, expected: float, seen: Optional[dict] = None) -> Optional[str]:
    """Why a downloaded range is incomplete (None if it is not): no duration, or under 90 % of the
    range. What the probe read (duration, audio channels) goes into `seen`."""
    from .media import ExtractionError, probe

    try:
        duration, channels = probe(path)
    except ExtractionError as exc:
        return str(exc)
    if seen is not None:
        seen.update(duration=duration, channels=channels)
    if duration is None:
        return "no duration in the downloaded file"
    if duration < 0.9 * expected - 0.2:
        return f"truncated: {duration:.2f} s of the {expected:.2f} s asked for"
    return None


def _cut(full: Path, out: Path, start: float, end: float, ffmpeg: str, timeout: float) -> None:
    """[start, end] of a whole downloaded file, cut here to the frame: a stream copy could only
    start at the keyframe before `start` (seconds early), so the cut is decoded and encoded again
    - video H.264 at a near-lossless quality, audio FLAC (lossless) - into Matroska."""
    import subprocess

    proc = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}", "-i", str(full),
                           "-t", f"{end - start:.3f}", "-map", "0:v:0?", "-map", "0:a:0?", "-c:v", "libx264",
                           "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "flac",
                           "-f", "matroska", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not cut the range from the whole file: {proc.stderr.strip()[-300:]}")


def _download(start: float, end: float, dest_dir: Path, name: str, url: str, options: DownloadOptions,
              sleep: Callable[[float], None], result: DownloadResult, ffmpeg: str) -> DownloadResult:
    """Attempts with backoff. Each reads with a timeout (yt-dlp's socket timeout, ffmpeg's
    -rw_timeout), so a stalled server costs a bounded time and a retry. A range that comes back
    without a duration or shorter than asked (a source without a duration header, a cut
    transfer) is never recorded `ok`: the next attempt downloads the whole file and cuts the
    range here; a whole file that is still short is a transient `error`. So does a range that
    ffmpeg fails to write (a container the URL names that cannot hold the codecs).

    A transfer that failed after waiting a whole read timeout is a stall: the server stopped
    sending. It is not retried in this run (a stalled source rarely resumes within seconds,
    and each try would cost the timeout again); it stays a transient `error` that a later run
    retries (`run_downloads`' `retry_after`)."""
    import yt_dlp
    from yt_dlp.utils import DownloadError, download_range_func

    whole = False
    for attempt in range(1, options.max_attempts + 1):
        result.attempts = attempt
        switched = False  # this attempt found the range short: the next one takes the whole file
        waited = result.seconds.get("download", 0.0)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_dir))
        ydl_opts = {
            "format": options.format,
            # a fixed Matroska container takes any codec pair and does not depend on the URL's extension
            "outtmpl": str(tmp / f"{name}.mkv"),
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
            # no retries inside yt-dlp: each would wait out the read timeout of a stalled server
            # again; this loop retries (with backoff) what is worth retrying
            "retries": 0, "fragment_retries": 2, "socket_timeout": options.socket_timeout,
            "merge_output_format": "mkv", "logger": _QuietLogger(), "cachedir": False, "ffmpeg_location": ffmpeg,
            "external_downloader_args": {"ffmpeg_i": ["-rw_timeout", str(int(options.socket_timeout * 1e6))]},
        }
        if not whole:
            ydl_opts["download_ranges"] = download_range_func(None, [(start, end)])
        if options.sleep_requests:
            ydl_opts["sleep_interval_requests"] = options.sleep_requests
        if options.rate_limit:
            ydl_opts["ratelimit"] = options.rate_limit
        if options.cookies_file:
            ydl_opts["cookiefile"] = options.cookies_file
        if options.js_runtime:
            ydl_opts["js_runtimes"] = {options.js_runtime: {}}
        try:
            with yt_dlp.YoutubeDL(ydl_opts) as ydl:
                with timed(result.seconds, "request"):
                    info = ydl.extract_info(url, download=False, process=False)
                refused = _refusal(info or {})
                if refused:
                    raise NotMedia(refused)
                with timed(result.seconds, "download"):
                    ydl.process_ie_result(info, download=True)
            files = [p for p in tmp.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
            if not files:
                raise RuntimeError("yt-dlp finished without writing a file")
            media = max(files, key=lambda p: p.stat().st_size)
            if whole:
                cut = tmp / f"{name}.cut.mkv"
                with timed(result.seconds, "cut"):
                    _cut(media, cut, start, end, ffmpeg, timeout=max(60.0, options.socket_timeout * 4))
                media = cut
            seen: dict = {}
            with timed(result.seconds, "probe"):
                problem = _short(media, end - start, seen)
            if problem:
                if whole:
                    raise RuntimeError(problem)
                whole = switched = True
                raise RuntimeError(f"{problem}; retrying with the whole file")
            final = dest_dir / f"{name}{media.suffix}"
            os.replace(media, final)
            result.status, result.message, result.path = "ok", "", str(final)
            result.media_duration, result.audio_channels = seen.get("duration"), seen.get("channels")
            with timed(result.seconds, "hash"):
                result.bytes, result.sha256 = final.stat().st_size, sha256_file(final)
            break
        except NotMedia as exc:
            result.status, result.message = "unavailable", str(exc)
        except DownloadError as exc:
            result.status, result.message = classify_error(exc)
            if not whole and result.status == "error" and "ffmpeg exited" in result.message:
                # ffmpeg could not write the range into the container the URL suggests (e.g. VP8 in a
                # URL ending .mp4): the whole file needs no remuxing, and the cut here keeps any codec
                whole = switched = True
                result.message += "; retrying with the whole file"
        except Exception as exc:  # network stacks raise many types; all are transient errors here
            result.status, result.message = "error", f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if result.status in TRANSIENT and result.seconds.get("download", 0.0) - waited >= 0.9 * options.socket_timeout:
            result.message = (f"stalled: the transfer waited {options.socket_timeout:g} s for data and failed "
                              f"({result.message}); not retried in this run")
            break
        if result.status not in TRANSIENT or attempt == options.max_attempts:
            break
        if switched:
            continue  # not a server fault: no backoff
        delay = min(options.max_backoff_seconds, options.backoff_seconds * 2 ** (attempt - 1))
        sleep(delay * (0.5 + random.random()))
    result.finished_at = time.time()
    return result


FINAL_FAILURES = ("unavailable", "private", "age_restricted", "geo_blocked")


def finished_downloads(dest_dir: Path) -> dict[str, Path]:
    """segment id -> its finished download in `dest_dir` (a file renamed into place is complete;
    hidden temporaries and partial files are not), from one listing of the folder."""
    out: dict[str, Path] = {}
    if not Path(dest_dir).is_dir():
        return out
    for p in sorted(Path(dest_dir).iterdir()):
        if p.name.startswith(".") or p.name.endswith((".part", ".ytdl", ".tmp")) or not p.is_file():
            continue
        out.setdefault(p.name.split(".", 1)[0], p)
    return out


class _QuietLogger:
    def debug(self, msg):  # noqa: D401 - yt-dlp logger protocol
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        pass

    def error(self, msg):
        pass
