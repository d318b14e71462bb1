"""Downloading AudioSet segments with yt-dlp, and classifying why a download failed.

One call downloads one segment into a temporary folder and renames the result into place, so
a killed download never leaves a file that looks done. What is kept is a piece of the source:
`[start - PRE_ROLL, end + POST_ROLL]`, a stream copy from the keyframe before, on the source's
own time line (`media` explains why and how it is cut exactly later). The piece's true extent
is read from its packets and recorded (`media_start`, `media_end`); a piece that does not hold
the segment is fetched again whole, and a segment the whole media does not hold is
`invalid_media` with the reason.

Failures become a status: ``unavailable``, ``private``, ``age_restricted``, ``geo_blocked``,
``invalid_media`` (final: the media's own fault), ``throttled``, ``bot_check`` (the host asks
to "confirm you're not a bot": this client, not the video) or ``error``; the last three are
transient and retried with exponential backoff and jitter, and by later runs.

A fault of this machine (no space, no permission) is ``error`` with `environment` set: not the
source's failure, so it is retried by the next run without back-off, and the step fails.

A range download is watched (`RangeWatch`): one the host throttles (YouTube drips
`--download-sections` of long videos at ~32 KiB/s) - under `min_range_rate` bytes/s after
`range_grace_seconds` - is stopped and the whole file fetched instead, which such hosts serve
at full speed; one that receives nothing for a read timeout is stopped as a stall.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..data.audioset import segment_id, validate_ytid
from ..files import sha256_file
from ..perf import timed
from .media import (
    POST_ROLL,
    PRE_ROLL,
    TAIL_TOLERANCE,
    EnvironmentFault,
    MediaError,
    MediaInfo,
    cut_piece,
    environment_cause,
    probe,
    segment_problem,
)

YOUTUBE_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"
# audio plus a small video stream (frames are resized to 224 px on the short side later)
DEFAULT_FORMAT = "bv*[height<=360]+ba/b[height<=360]/bv*+ba/b"
STATUSES = (
    "ok",
    "unavailable",
    "private",
    "age_restricted",
    "geo_blocked",
    "invalid_media",
    "throttled",
    "bot_check",
    "error",
)
PIECE_SUFFIX = ".cut.mkv"  # a finished download: `<segment id>.cut.mkv`
TRANSIENT = ("throttled", "bot_check", "error")


@dataclass
class DownloadOptions:
    url_template: str = YOUTUBE_URL_TEMPLATE
    format: str = DEFAULT_FORMAT
    max_attempts: int = 4
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 120.0
    socket_timeout: float = 15.0  # seconds a read may wait for data (yt-dlp's default is 20)
    sleep_requests: float = 0.0  # pause between HTTP requests (yt-dlp sleep_interval_requests)
    rate_limit: Optional[int] = None  # bytes/s
    cookies_file: Optional[str] = None  # what real YouTube needs for age-gated or busy periods
    js_runtime: Optional[str] = None  # e.g. "node" or "deno": full YouTube support needs one
    tail_tolerance: float = TAIL_TOLERANCE  # seconds a segment may end past the media's end
    proxy: Optional[str] = None  # yt-dlp `proxy`: http://, https:// or socks5:// URL
    sleep_interval: float = 0.0  # seconds to wait before each download (yt-dlp `sleep_interval`)
    max_sleep_interval: float = 0.0  # with sleep_interval: a random wait in [sleep_interval, this]
    player_client: tuple[str, ...] = ()  # YouTube player clients to try, e.g. ("web_safari", "mweb")
    po_token: tuple[str, ...] = ()  # static proof-of-origin tokens, "CLIENT.CONTEXT+TOKEN"
    pot_provider_url: Optional[str] = None  # a bgutil-ytdlp-pot-provider HTTP server to mint tokens
    extractor_args: dict = field(default_factory=dict)  # any other: {"youtube": {"lang": ["en"]}}
    min_range_rate: int = 64 * 1024  # bytes/s below which a range download counts as throttled; 0: never
    range_grace_seconds: float = 8.0  # how long a range download runs before its rate is judged


def ydl_extractor_args(options: DownloadOptions) -> dict:
    """yt-dlp's `extractor_args` of `options`: the named YouTube settings merged into any given
    ones (values are lists of strings, as yt-dlp's own --extractor-args parses them)."""
    out = {ie: {k: list(v) for k, v in args.items()} for ie, args in (options.extractor_args or {}).items()}
    youtube = out.setdefault("youtube", {})
    if options.player_client:
        youtube["player_client"] = list(options.player_client)
    if options.po_token:
        youtube["po_token"] = list(options.po_token)
    if options.pot_provider_url:
        out.setdefault("youtubepot-bgutilhttp", {})["base_url"] = [options.pot_provider_url]
    return {ie: args for ie, args in out.items() if args}


def ydl_network_options(options: DownloadOptions) -> dict:
    """The options of `options` that say how yt-dlp talks to the host, as yt-dlp names them."""
    opts: dict = {}
    if options.sleep_requests:
        opts["sleep_interval_requests"] = options.sleep_requests
    if options.sleep_interval:
        opts["sleep_interval"] = options.sleep_interval
        if options.max_sleep_interval > options.sleep_interval:
            opts["max_sleep_interval"] = options.max_sleep_interval
    if options.rate_limit:
        opts["ratelimit"] = options.rate_limit
    if options.cookies_file:
        opts["cookiefile"] = options.cookies_file
    if options.js_runtime:
        opts["js_runtimes"] = {options.js_runtime: {}}
    if options.proxy:
        opts["proxy"] = options.proxy
    extractor_args = ydl_extractor_args(options)
    if extractor_args:
        opts["extractor_args"] = extractor_args
    return opts


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
    media_duration: Optional[float] = None  # of the piece kept (media_end - media_start)
    audio_channels: Optional[int] = None
    info: Optional[MediaInfo] = None  # the piece's extent on the source's time line, from its packets
    environment: str = ""  # a fault of this machine, not of the source
    tail_tolerance: Optional[float] = None  # the one the segment was checked with
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
    if "not a bot" in low or "not a robot" in low:  # "Sign in to confirm you're not a bot"
        return "bot_check", message
    if status_code == 429 or "rate-limited" in low or "too many requests" in low:
        return "throttled", message
    if "private video" in low:
        return "private", message
    if (
        "confirm your age" in low
        or "age-restricted" in low
        or "age restricted" in low
        or "inappropriate for some users" in low
    ):
        return "age_restricted", message
    if "unsupported url" in low:  # neither a YouTube video nor a media file (allowed_extractors)
        return "unavailable", f"the URL is not media (no YouTube video or media file at it): {message}"
    if "did not get any data blocks" in low:  # the source answered with an empty body: its media is empty
        return "invalid_media", f"the source sent an empty file (0 bytes): {message}"
    if (
        status_code in (404, 410)
        or "video unavailable" in low
        or "removed" in low
        or "does not exist" in low
        or "not found" in low
    ):
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


def download_segment(
    ytid: str,
    start: float,
    end: float,
    dest_dir: Path,
    *,
    options: Optional[DownloadOptions] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download [start, end] of a video into `dest_dir/<segment_id>.<ext>` (atomic)."""
    options = options or DownloadOptions()
    result = DownloadResult(ytid, start, end, status="error", tail_tolerance=options.tail_tolerance)
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
    return (
        f"the URL is not media but a web page ({info.get('extractor_key') or 'unknown'}): "
        "links inside pages are not followed"
    )


def _download(
    start: float,
    end: float,
    dest_dir: Path,
    name: str,
    url: str,
    options: DownloadOptions,
    sleep: Callable[[float], None],
    result: DownloadResult,
    ffmpeg: str,
) -> DownloadResult:
    """Attempts with backoff. Each reads with a timeout (yt-dlp's socket timeout, ffmpeg's
    -rw_timeout), so a stalled server costs a bounded time and a retry.

    The range is fetched with pre- and post-roll as a stream copy that keeps the source's
    timestamps (`-copyts -start_at_zero`). Its packets are read back (`media.probe`): a piece that
    does not hold the segment (a source without a duration header, a cut transfer, a range past
    the end, a container the URL names that cannot hold the codecs) is never recorded `ok`: the
    next attempt downloads the whole file and cuts the piece here, the same way. What the whole
    file does not hold is the media's fault: `invalid_media`, final, with the reason.

    A transfer that failed after waiting a whole read timeout is a stall: the server stopped
    sending. It is not retried in this run (a stalled source rarely resumes within seconds,
    and each try would cost the timeout again); it stays a transient `error` that a later run
    retries (`run_downloads`' `retry_after`). A fault of this machine (no space, no permission)
    ends the attempts at once: `error` with `environment` set."""
    import yt_dlp
    from yt_dlp.utils import DownloadError, download_range_func

    whole = False
    lo, hi = max(0.0, start - PRE_ROLL), end + POST_ROLL
    for attempt in range(1, options.max_attempts + 1):
        result.attempts = attempt
        switched = False  # this attempt found the range unusable: the next one takes the whole file
        waited = result.seconds.get("download", 0.0)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest_dir))
        except OSError as exc:
            result.status, result.message = "error", f"{type(exc).__name__}: {exc}"
            result.environment = environment_cause(exc) or result.message
            break
        ydl_opts = {
            "format": options.format,
            # a fixed Matroska container takes any codec pair and does not depend on the URL's extension
            "outtmpl": str(tmp / f"{name}.mkv"),
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "noplaylist": True,
            # the only sources downloaded (`_refusal`): YouTube videos and media files at a URL; matching
            # a URL against yt-dlp's ~1,750 extractors cost 42 ms of CPU per download, now 1 ms
            "allowed_extractors": ["youtube", "generic"],
            # no retries inside yt-dlp: each would wait out the read timeout of a stalled server
            # again; this loop retries (with backoff) what is worth retrying
            "retries": 0,
            "fragment_retries": 2,
            "socket_timeout": options.socket_timeout,
            "merge_output_format": "mkv",
            "logger": _QuietLogger(),
            "cachedir": False,
            "ffmpeg_location": ffmpeg,
            # the range keeps the source's time line: a packet at 13.2 s is 13.2 s into the video
            "external_downloader_args": {
                "ffmpeg_i": ["-rw_timeout", str(int(options.socket_timeout * 1e6))],
                "ffmpeg_o": ["-copyts", "-start_at_zero"],
            },
        }
        if not whole:
            ydl_opts["download_ranges"] = download_range_func(None, [(lo, hi)])
            ydl_opts["fixup"] = "never"  # a fix-up remux would move the piece back to a time line from 0
        elif options.min_range_rate:
            ydl_opts["throttledratelimit"] = options.min_range_rate  # yt-dlp's own re-extraction
        ydl_opts.update(ydl_network_options(options))
        watch = RangeWatch(tmp, options.min_range_rate, options.range_grace_seconds, options.socket_timeout)
        try:
            with yt_dlp.YoutubeDL(ydl_opts) as ydl:
                with timed(result.seconds, "request"):
                    info = ydl.extract_info(url, download=False, process=False)
                refused = _refusal(info or {})
                if refused:
                    raise NotMedia(refused)
                watching = watch if not whole else contextlib.nullcontext()
                with timed(result.seconds, "download"), watching:
                    ydl.process_ie_result(info, download=True)
            files = [p for p in tmp.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
            if not files:
                raise RuntimeError("yt-dlp finished without writing a file")
            media = max(files, key=lambda p: p.stat().st_size)
            if whole:
                piece = tmp / f"{name}{PIECE_SUFFIX}"
                with timed(result.seconds, "cut"):
                    cut_piece(media, piece, start, end, timeout=max(60.0, options.socket_timeout * 4))
                with timed(result.seconds, "probe"):
                    full = probe(media)
                problem = segment_problem(full, start, end, tail_tolerance=options.tail_tolerance, need_video=False)
                if problem:
                    raise MediaError(problem)
                media = piece
            with timed(result.seconds, "probe"):
                try:
                    seen = probe(media)
                    problem = segment_problem(seen, start, end, tail_tolerance=options.tail_tolerance, need_video=False)
                except MediaError as exc:
                    if whole:
                        raise
                    problem = str(exc)
            if problem:
                if whole:
                    raise MediaError(problem)
                whole = switched = True
                raise RuntimeError(f"the range does not hold the segment ({problem}); retrying with the whole file")
            final = dest_dir / f"{name}{PIECE_SUFFIX}"
            os.replace(media, final)
            result.status, result.path = "ok", str(final)
            # an ok after a fallback says why the whole file was fetched (a throttled range, ...)
            result.message = f"ok with the whole file after: {result.message}" if whole and result.message else ""
            result.info = seen
            result.media_duration, result.audio_channels = seen.audio[1] - seen.audio[0], seen.channels
            with timed(result.seconds, "hash"):
                result.bytes, result.sha256 = final.stat().st_size, sha256_file(final)
            break
        except NotMedia as exc:
            result.status, result.message = "unavailable", str(exc)
        except MediaError as exc:
            result.status, result.message = "invalid_media", str(exc)
        except EnvironmentFault as exc:
            result.status, result.message, result.environment = "error", str(exc), str(exc)
        except DownloadError as exc:
            result.status, result.message = classify_error(exc)
            if watch.stalled:  # what ffmpeg's reconnects would have waited for again and again
                result.status, result.message = "error", f"ffmpeg: {watch.stalled}"
            elif watch.tripped:
                # the host drips the range: the whole file comes at full speed (no backoff)
                result.status, result.message = "throttled", watch.tripped + "; retrying with the whole file"
                whole = switched = True
            elif not whole and result.status == "error" and "ffmpeg exited" in result.message:
                # ffmpeg could not write the range into the container the URL suggests (e.g. VP8 in a
                # URL ending .mp4): the whole file needs no remuxing, and the cut here keeps any codec
                whole = switched = True
                result.message += "; retrying with the whole file"
            result.environment = environment_cause(exc, result.message) or ""
        except Exception as exc:  # network stacks raise many types; all are transient errors here
            result.status, result.message = "error", f"{type(exc).__name__}: {exc}"
            result.environment = environment_cause(exc, result.message) or ""
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if result.status == "error" and not result.environment and _disk_full(dest_dir):
            result.environment = f"No space left on device ({dest_dir}: {_free_mb(dest_dir):.0f} MB free)"
        if result.environment:
            if result.environment not in result.message:
                result.message = f"{result.message} ({result.environment})"
            break  # not the source's failure: the next run tries again
        if (
            result.status in TRANSIENT
            and not watch.tripped  # a throttled range took its time by design: the whole file is next
            and result.seconds.get("download", 0.0) - waited >= 0.9 * options.socket_timeout
        ):
            result.message = (
                f"stalled: the transfer waited {options.socket_timeout:g} s for data and failed "
                f"({result.message}); not retried in this run"
            )
            break
        if result.status not in TRANSIENT or attempt == options.max_attempts:
            break
        if switched:
            continue  # not a server fault: no backoff
        delay = min(options.max_backoff_seconds, options.backoff_seconds * 2 ** (attempt - 1))
        sleep(delay * (0.5 + random.random()))
    result.finished_at = time.time()
    return result


STALL_BYTES = 1024  # a transfer that receives less than this in ~2 s is stalled, not throttled


class RangeWatch:
    """Watches a range download writing into `folder` (its ffmpeg, found by the folder in its
    command line; what it has read taken from /proc on Linux, elsewhere what it has written):

    - throttled: once `grace` seconds have passed, a transfer still receiving but averaging
      under `min_rate` bytes/s (0: never) is stopped, and `tripped` says why;
    - stalled: a transfer that has received nothing (under STALL_BYTES) for `stall_seconds` is
      stopped, and `stalled` says so - ffmpeg's own read timeout is followed by its reconnects,
      which made one stalled source cost four timeouts (61 s at 15 s) and held up its step.

    yt-dlp's own `throttledratelimit` covers only its native downloader; a range goes through
    ffmpeg."""

    def __init__(self, folder: Path, min_rate: int, grace: float, stall_seconds: float, poll: float = 0.5):
        self.folder, self.min_rate, self.grace, self.poll = Path(folder), min_rate, grace, poll
        self.stall_seconds = stall_seconds
        self.tripped = self.stalled = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RangeWatch":
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"range-watch {self.folder.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _received(self) -> int:
        pids = _ffmpeg_writing_into(self.folder)
        if pids:
            return sum(_bytes_read(pid) for pid in pids)
        try:
            return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        except OSError:
            return 0

    def _run(self) -> None:
        last, grew = 0, self._start  # bytes received when they last grew by STALL_BYTES, and when
        while not self._stop.wait(self.poll):
            now, received = time.monotonic(), self._received()
            if received >= last + STALL_BYTES:  # a reconnect's headers are not data arriving
                last, grew = received, now
            elapsed, idle = now - self._start, now - grew
            if idle >= self.stall_seconds:
                killed = _kill(_ffmpeg_writing_into(self.folder))
                self.stalled = f"no data for {idle:.0f} s after {last} bytes ({killed} ffmpeg stopped)"
                return
            if not self.min_rate or elapsed < self.grace or idle > 2 * self.poll + 1.0:
                continue
            if received / elapsed < self.min_rate:
                killed = _kill(_ffmpeg_writing_into(self.folder))
                self.tripped = (
                    f"range download throttled: {received / elapsed / 1024:.1f} KiB/s after {elapsed:.0f} s, under "
                    f"min_range_rate {self.min_rate / 1024:g} KiB/s ({killed} ffmpeg stopped)"
                )
                return


def _ffmpeg_writing_into(folder: Path) -> list[int]:
    """The ffmpeg processes whose command line names `folder` (a range download's)."""
    needle, out = str(folder).encode(), []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        program = Path(argv[0].decode(errors="replace")).name if argv else ""
        if "ffmpeg" in program and any(needle in a for a in argv):
            out.append(pid)
    return out


def _bytes_read(pid: int) -> int:
    """Bytes process `pid` has read (sockets included), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _kill(pids: list[int]) -> int:
    import signal

    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


MIN_FREE_BYTES = 16 << 20  # a download folder with less free space than this is full


def _free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return float("nan")


def _disk_full(folder: Path) -> bool:
    """Whether the disk of `folder` is (nearly) full: an ffmpeg that ran out of space inside
    yt-dlp reports only its exit status, so an unexplained failure is checked against this."""
    try:
        return shutil.disk_usage(folder).free < MIN_FREE_BYTES
    except OSError:
        return False


FINAL_FAILURES = ("unavailable", "private", "age_restricted", "geo_blocked", "invalid_media")


def finished_downloads(dest_dir: Path) -> dict[str, Path]:
    """segment id -> its finished download in `dest_dir` (a piece renamed into place is complete;
    hidden temporaries, partial files and downloads of an earlier kind, which did not keep the
    source's time line, are not), from one listing of the folder."""
    out: dict[str, Path] = {}
    if not Path(dest_dir).is_dir():
        return out
    for p in sorted(Path(dest_dir).iterdir()):
        if p.name.startswith(".") or not p.name.endswith(PIECE_SUFFIX) or not p.is_file():
            continue
        out.setdefault(p.name[: -len(PIECE_SUFFIX)], p)
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
