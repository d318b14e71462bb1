"""What a downloaded piece of media holds, cutting exactly a segment out of it, and telling a
fault of the media from a fault of the machine.

Time. A download keeps the source's own timestamps (the piece of `[start - pre-roll, end +
post-roll]` is a stream copy that begins at the keyframe before, written with `-copyts
-start_at_zero`), so a packet at 13.2 s in the piece is 13.2 s into the video. `probe` reads
the piece's true extent from its packets (no decoding), and `extract_clip` decodes it once and
cuts `[start, end]` to the sample (`atrim` on the source's time line) and takes each of the 10
frames nearest its stated time (`select` on the same time line). Nothing trusts what was asked
for: a segment that the media does not hold, or holds only in part, is a `MediaError` with
that reason.

Faults. `MediaError` is what the media itself causes (no audio track, undecodable, silent,
too short, out of range): the segment is quarantined as `invalid_media`. `EnvironmentFault` is
what the machine causes (no space, permission, a killed or timed-out ffmpeg): the step fails
with the cause and the segment is tried again by the next run. Every ffmpeg command is built
with ffmpeg-python's graph API, run with the bundled binary, and quoted in its error message,
so a failure can be reproduced by hand.

Outputs are written to a temporary folder and moved into place only when they check out; a
failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ffmpeg
import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE, ffmpeg_exe
from ..data.audioset import NUM_FRAMES
from ..perf import add_seconds, timed

FRAME_SHORT_SIDE = 256
PRE_ROLL = 0.5  # seconds downloaded before a segment: audio decoders settle before its start
POST_ROLL = 0.5  # and after it: the last packet ends past the segment's end
START_TOLERANCE = 0.04  # the audio of a source may begin this late (an encoder delay of an AAC or Opus frame)
TAIL_TOLERANCE = 0.5  # default: a segment may end this far past the media's end (published segments do)
FFMPEG_TIMEOUT = 300.0  # seconds one ffmpeg command may take on a piece
CUT = "exact-1"  # how clips are cut; rows and files made otherwise are made again


class ExtractionError(ValueError):
    """Base of what the media causes (kept for callers that catch it)."""


class MediaError(ExtractionError):
    """The media itself is at fault: the segment is `invalid_media`, final for this download."""


class EnvironmentFault(RuntimeError):
    """The machine is at fault (disk, permissions, a killed or timed-out process): the step fails
    and the segment is tried again by the next run."""


_ENV_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOMEM,
    errno.EMFILE,
    errno.ENFILE,
    errno.EIO,
}
_ENV_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "permission denied",
    "read-only file system",
    "cannot allocate memory",
    "too many open files",
    "input/output error",
    "errno 28",
)


def environment_cause(exc: Optional[BaseException] = None, text: str = "") -> Optional[str]:
    """The machine's fault named by an exception (or an error text), or None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EnvironmentFault):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
            return f"{os.strerror(exc.errno)} ({exc.filename or exc})"
        info = getattr(exc, "exc_info", None)
        exc = info[1] if info and len(info) > 1 and info[1] is not None else (exc.__cause__ or exc.__context__)
    low = text.lower()
    for marker in _ENV_TEXT:
        if marker in low:
            return marker.capitalize() if marker != "errno 28" else "No space left on device"
    return None


def command_line(cmd: list[str]) -> str:
    return shlex.join(cmd)


def run_ffmpeg(cmd: list[str], what: str, *, timeout: float = FFMPEG_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one ffmpeg command. The machine's faults (a timeout, a signal, no space, no permission)
    raise `EnvironmentFault` quoting the command; any other failure is returned for the caller to
    read as the media's."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EnvironmentFault(
            f"{what}: ffmpeg took longer than {timeout:g} s and was stopped: {command_line(cmd)}"
        ) from None
    except OSError as exc:
        raise EnvironmentFault(f"{what}: could not start ffmpeg ({exc}): {command_line(cmd)}") from exc
    if proc.returncode < 0 or proc.returncode in (137, 143, 255) and "received signal" in proc.stderr.lower():
        raise EnvironmentFault(f"{what}: ffmpeg was killed (status {proc.returncode}): {command_line(cmd)}")
    if proc.returncode != 0:
        cause = environment_cause(text=proc.stderr)
        if cause:
            raise EnvironmentFault(f"{what}: {cause}: {command_line(cmd)}")
    return proc


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its packets: the extent of its first audio and first video
    stream on the source's time line (first packet's time, last packet's end), the audio's
    channel count and layout, and the video's frame duration."""

    audio: Optional[tuple[float, float]]
    video: Optional[tuple[float, float]]
    channels: int = 0
    layout: str = ""
    frame_duration: Optional[float] = None

    @property
    def end(self) -> Optional[float]:
        return self.audio[1] if self.audio else None


INFO_COLUMNS = (
    "media_start",
    "media_end",
    "video_start",
    "video_end",
    "audio_channels",
    "audio_layout",
    "frame_duration",
)


def info_columns(info: Optional[MediaInfo]) -> dict:
    """A `MediaInfo` as the columns of a download row (`INFO_COLUMNS`); all None without one."""
    if info is None:
        return dict.fromkeys(INFO_COLUMNS)
    return {
        "media_start": info.audio[0] if info.audio else None,
        "media_end": info.audio[1] if info.audio else None,
        "video_start": info.video[0] if info.video else None,
        "video_end": info.video[1] if info.video else None,
        "audio_channels": info.channels,
        "audio_layout": info.layout,
        "frame_duration": info.frame_duration,
    }


def info_from_row(row: dict) -> Optional[MediaInfo]:
    """The `MediaInfo` a download row recorded, or None when it has none (an older row)."""

    def num(key):
        v = row.get(key)
        return None if v is None or (isinstance(v, float) and v != v) else float(v)

    if num("media_start") is None or num("media_end") is None:
        return None
    video = (num("video_start"), num("video_end")) if num("video_start") is not None else None
    return MediaInfo(
        audio=(num("media_start"), num("media_end")),
        video=video,
        channels=int(num("audio_channels") or 0),
        layout=str(row.get("audio_layout") or ""),
        frame_duration=num("frame_duration"),
    )


def _ratio(text: str) -> float:
    num, _, den = text.strip().partition("/")
    return int(num) / int(den or 1)


def _channels_of(layout: str) -> int:
    layout = layout.strip()
    if layout.endswith(" channels"):
        return int(layout.split()[0])
    if layout == "mono":
        return 1
    if layout == "stereo":
        return 2
    if "." in layout.split("(")[0]:  # 5.1, 7.1(wide), 2.1 ...
        main, _, lfe = layout.split("(")[0].partition(".")
        return int(main) + int(lfe or 0)
    return 2


def probe(media: Path, *, timeout: float = FFMPEG_TIMEOUT) -> MediaInfo:
    """The packets of the first audio and first (non-picture) video stream of `media`, listed by
    ffmpeg without decoding (the bundled ffmpeg has no ffprobe), on the file's own time line."""
    media = Path(media)
    if not media.is_file():
        raise EnvironmentFault(f"{media}: the file to probe is not there")
    if media.stat().st_size == 0:
        raise MediaError(f"{media.name}: the file is empty (0 bytes)")
    src = ffmpeg.input(str(media), copyts=None)
    cmd = (
        ffmpeg.output(src["a:0?"], src["V:0?"], "-", format="framecrc", c="copy")
        .global_args("-nostdin", "-hide_banner")
        .compile(cmd=ffmpeg_exe())
    )
    proc = run_ffmpeg(cmd, f"{media.name}: probe", timeout=timeout)
    if proc.returncode != 0:
        raise MediaError(f"{media.name}: corrupt or unreadable ({_last_line(proc.stderr)}); ran: {command_line(cmd)}")
    tb, kind, layout, first, last, durations = {}, {}, {}, {}, {}, {}
    for line in proc.stdout.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            name, _, index = key.partition(" ")
            if not index.strip().isdigit():
                continue
            i = int(index)
            if name == "tb":
                tb[i] = _ratio(value)
            elif name == "media_type":
                kind[i] = value.strip()
            elif name == "channel_layout_name":
                layout[i] = value.strip()
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        i, pts, dur = int(parts[0]), int(parts[2]), int(parts[3])
        t = pts * tb.get(i, 1.0)
        first[i] = min(first.get(i, t), t)
        last[i] = max(last.get(i, t), t + dur * tb.get(i, 1.0))
        if dur > 0:
            durations.setdefault(i, []).append(dur * tb.get(i, 1.0))
    audio = next((i for i, k in kind.items() if k == "audio" and i in first), None)
    video = next((i for i, k in kind.items() if k == "video" and i in first), None)
    if audio is None and video is None:
        raise MediaError(f"{media.name}: no audio or video packets; ran: {command_line(cmd)}")
    frame = float(np.median(durations[video])) if video is not None and durations.get(video) else None
    lay = layout.get(audio, "") if audio is not None else ""
    return MediaInfo(
        audio=(first[audio], last[audio]) if audio is not None else None,
        video=(first[video], last[video]) if video is not None else None,
        channels=_channels_of(lay) if audio is not None else 0,
        layout=lay,
        frame_duration=frame,
    )


def segment_problem(
    info: MediaInfo, start: float, end: float, *, tail_tolerance: float = TAIL_TOLERANCE, need_video: bool = True
) -> Optional[str]:
    """Why `[start, end]` (seconds of the source) is not inside the media `info` describes
    (None when it is): no audio or video track, past the end, starting late, or ending more than
    `tail_tolerance` seconds before `end`."""
    if info.audio is None:
        return "no audio track"
    if need_video and info.video is None:
        return "no video track"
    a0, a1 = info.audio
    if start >= a1 - START_TOLERANCE:
        return f"out of range: the segment {start:.2f}-{end:.2f} s is past the end of the media (it ends at {a1:.2f} s)"
    if a0 > start + START_TOLERANCE:
        return f"out of range: the media's audio starts at {a0:.3f} s, after the segment's start {start:.2f} s"
    if end - a1 > tail_tolerance:
        return (
            f"out of range: the media ends at {a1:.2f} s, {end - a1:.2f} s before the segment's end {end:.2f} s "
            f"(tolerance {tail_tolerance:g} s)"
        )
    if need_video and info.video[0] > start + (info.frame_duration or 0.04) + START_TOLERANCE:
        return (
            f"out of range: the media's video starts at {info.video[0]:.3f} s, after the segment's start {start:.2f} s"
        )
    return None


def cut_piece(full: Path, out: Path, start: float, end: float, *, timeout: float = FFMPEG_TIMEOUT) -> list[str]:
    """`[start - PRE_ROLL, end + POST_ROLL]` of a whole file, as the range download makes it: a
    stream copy from the keyframe before, in Matroska (any codec), keeping the source's time line.
    Returns the command it ran."""
    lo = max(0.0, start - PRE_ROLL)
    src = ffmpeg.input(str(full), ss=f"{lo:.3f}", t=f"{end + POST_ROLL - lo:.3f}")
    cmd = (
        ffmpeg.output(src["a:0?"], src["V:0?"], str(out), format="matroska", c="copy", copyts=None, start_at_zero=None)
        .global_args("-nostdin", "-v", "error")
        .overwrite_output()
        .compile(cmd=ffmpeg_exe())
    )
    proc = run_ffmpeg(cmd, f"{full.name}: cut", timeout=timeout)
    if proc.returncode != 0:
        raise MediaError(
            f"{full.name}: ffmpeg could not cut the range ({_last_line(proc.stderr)}); ran: {command_line(cmd)}"
        )
    return cmd


@dataclass
class Clip:
    audio_path: str
    frame_paths: list[str]
    duration: float
    sample_rate: int
    channels: int
    frame_times: list[float] = field(default_factory=list)  # seconds into the clip
    command: str = ""


def frame_times(duration: float, n: int = NUM_FRAMES) -> list[float]:
    """Centres of n equal slices of the clip: equally spaced, never at the very edges."""
    return [duration * (i + 0.5) / n for i in range(n)]


def _downmix(stream, info: MediaInfo):
    """At most two channels. Layouts ffmpeg knows (5.1, 7.1, ...) are folded down by its own
    matrix; N channels without a layout go even ones left, odd ones right, at equal gain."""
    n = info.channels
    if n <= 2:
        return stream, n or 2
    if info.layout.endswith(" channels"):
        left = "+".join(f"c{i}" for i in range(0, n, 2))
        right = "+".join(f"c{i}" for i in range(1, n, 2))
        return stream.filter("pan", f"stereo|c0<{left}|c1<{right}"), 2
    return stream.filter("aformat", channel_layouts="stereo"), 2


def extract_clip(
    media: Path,
    out_dir: Path,
    name: str,
    *,
    start: float,
    end: float,
    info: Optional[MediaInfo] = None,
    tail_tolerance: float = TAIL_TOLERANCE,
    min_duration: float = 0.5,
    num_frames: int = NUM_FRAMES,
    timeout: float = FFMPEG_TIMEOUT,
    seconds: Optional[dict] = None,
) -> Clip:
    """Write `<name>.wav` (`[start, end]` of the source, 44.1 kHz, at most 2 channels, 16-bit) and
    `<name>_f00.jpg` .. (the frame nearest each of `num_frames` equally spaced times inside the
    range) into `out_dir`, from ONE ffmpeg pass over `media`, a piece on the source's time line.
    `info`: the piece's `probe` (the download step's, saving an ffmpeg start). Raises
    `MediaError` or `EnvironmentFault`. `seconds` collects wall time per phase."""
    seconds = {} if seconds is None else seconds
    media, out_dir = Path(media), Path(out_dir)
    if info is None:
        with timed(seconds, "probe"):
            info = probe(media, timeout=timeout)
    problem = segment_problem(info, start, end, tail_tolerance=tail_tolerance, need_video=num_frames > 0)
    if problem:
        raise MediaError(f"{media.name}: {problem}")
    stop = min(end, info.audio[1])
    duration = stop - start
    if duration < min_duration:
        raise MediaError(f"{media.name}: too short ({duration:.2f} s < {min_duration} s)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    except OSError as exc:
        raise EnvironmentFault(f"{media.name}: {environment_cause(exc) or exc}") from exc
    try:
        wav = tmp / f"{name}.wav"
        # one thread per ffmpeg: extraction runs one process per core
        src = ffmpeg.input(str(media), threads=1)
        audio, channels = _downmix(
            src["a:0"].filter("atrim", start=f"{start:.6f}", end=f"{stop:.6f}").filter("asetpts", "PTS-STARTPTS"), info
        )
        outputs = [ffmpeg.output(audio, str(wav), ac=channels, ar=SAMPLE_RATE, acodec="pcm_s16le")]
        if num_frames:
            # the frame nearest each stated time: the first whose time is past the time less half a frame
            half = (info.frame_duration or 0.04) / 2
            targets = [start + t - half for t in frame_times(duration, num_frames)]
            pick = "+".join(f"gte(t,{t:.6f})*(isnan(prev_t)+lt(prev_t,{t:.6f}))" for t in targets)
            video = (
                src["V:0"]
                .filter("select", pick)
                .filter("scale", f"if(gt(iw,ih),-2,{FRAME_SHORT_SIDE})", f"if(gt(iw,ih),{FRAME_SHORT_SIDE},-2)")
                .filter("format", "yuvj420p")
            )
            outputs.append(
                ffmpeg.output(video, str(tmp / f"{name}_f%02d.jpg"), fps_mode="passthrough", threads=1, **{"q:v": 3})
            )
        cmd = (
            ffmpeg.merge_outputs(*outputs)
            .global_args("-nostdin", "-v", "error", "-copyts", "-filter_threads", "1")
            .overwrite_output()
            .compile(cmd=ffmpeg_exe())
        )
        with timed(seconds, "extract"):
            proc = run_ffmpeg(cmd, f"{media.name}: extraction", timeout=timeout)
        verify_start = time.perf_counter()
        if proc.returncode != 0:
            raise MediaError(f"{media.name}: ffmpeg failed ({_last_line(proc.stderr)}); ran: {command_line(cmd)}")
        wav_info = sf.info(str(wav))
        got = wav_info.frames / SAMPLE_RATE
        if got < duration - START_TOLERANCE:
            raise MediaError(
                f"{media.name}: the audio decoded to {got:.3f} s of the {duration:.3f} s the packets "
                f"cover (a gap or damage in the stream); ran: {command_line(cmd)}"
            )
        frames = sorted(tmp.glob(f"{name}_f*.jpg"))
        if len(frames) < num_frames:
            raise MediaError(f"{media.name}: {len(frames)} frames, expected {num_frames}; ran: {command_line(cmd)}")
        frames = frames[:num_frames]
        data, _ = sf.read(str(wav), dtype="int16", always_2d=True)
        if not np.any(data):
            raise MediaError(f"{media.name}: audio is silent")
        final_frames = []
        for i, f in enumerate(frames):
            dst = out_dir / f"{name}_f{i:02d}.jpg"
            os.replace(f, dst)
            final_frames.append(str(dst))
        final_wav = out_dir / f"{name}.wav"
        os.replace(wav, final_wav)  # the audio last: its presence marks a complete clip
        add_seconds(seconds, {"verify": time.perf_counter() - verify_start})
        return Clip(
            str(final_wav),
            final_frames,
            got,
            SAMPLE_RATE,
            int(wav_info.channels),
            frame_times(duration, num_frames),
            command_line(cmd),
        )
    except OSError as exc:
        cause = environment_cause(exc)
        if cause:
            raise EnvironmentFault(f"{media.name}: {cause}") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
