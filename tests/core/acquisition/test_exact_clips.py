"""A clip recorded ok holds exactly its segment, whatever the container, codecs and keyframes.

Media made for it (tests/timecoded.py) carry a time code in the signal: seeded noise whose
position in the source is found by correlation, and a frame number drawn into every frame. Each
is served on 127.0.0.1 and downloaded through the production yt-dlp path, then cut; the test
reads the clip's true start from its content."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import soundfile as sf
from timecoded import ENCODINGS, FPS, audio_offset, frame_number, make_sources

from audioclip_core.acquisition.media import (
    EnvironmentFault,
    MediaError,
    extract_clip,
    probe,
    run_ffmpeg,
    segment_problem,
)
from audioclip_core.acquisition.media_server import MediaServer
from audioclip_core.acquisition.youtube import DownloadOptions, download_segment

DURATION = 20.0
AUDIO_TOLERANCE = 0.040  # an AAC frame of encoder delay
VIDEO = [k for k, v in ENCODINGS.items() if v[2]]
AUDIO_ONLY = [k for k, v in ENCODINGS.items() if not v[2]]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("timecoded")
    files = make_sources(root, DURATION)
    with MediaServer(root) as server:
        yield server, files


def _download(served, name, start, end, dest):
    server, files = served
    file = files[name]
    ytid, ext = file.stem, file.suffix
    opts = DownloadOptions(url_template=server.url("{ytid}" + ext), backoff_seconds=0.01)
    return download_segment(ytid, start, end, dest, options=opts)


# at 0, mid-GOP (between keyframes 10 s apart), near the end, ending 0.3 s past the end (tolerated)
OFFSETS = [(0.0, 5.0), (13.37, 18.37), (14.0, 19.95), (10.3, 20.3)]


@pytest.mark.parametrize("name", VIDEO)
def test_video_clips_hold_their_segment_to_the_sample_and_frame(served, tmp_path, name):
    for start, end in OFFSETS:
        res = _download(served, name, start, end, tmp_path / "dl")
        assert res.status == "ok", (name, start, res.message)
        assert res.info.audio[0] <= start + AUDIO_TOLERANCE  # the piece's true start, from its packets
        clip = extract_clip(Path(res.path), tmp_path / "clips", f"{name}_{start}", start=start, end=end, info=res.info)
        offset = audio_offset(Path(clip.audio_path), DURATION)
        assert abs(offset - start) <= AUDIO_TOLERANCE, (name, start, offset)
        expected = min(end, DURATION) - start
        assert abs(clip.duration - expected) <= AUDIO_TOLERANCE, (name, start, clip.duration)
        assert len(clip.frame_paths) == 10
        for t, jpg in zip(clip.frame_times, clip.frame_paths):
            # the frame shown nearest its stated time (t seconds into the clip)
            assert abs(frame_number(Path(jpg)) - (start + t) * FPS) <= 0.5 + 1e-6, (name, start, t)


@pytest.mark.parametrize("name", AUDIO_ONLY)
def test_audio_only_clips_hold_their_segment(served, tmp_path, name):
    for start, end in OFFSETS:
        res = _download(served, name, start, end, tmp_path / "dl")
        assert res.status == "ok", (name, start, res.message)
        clip = extract_clip(
            Path(res.path), tmp_path / "clips", f"{name}_{start}", start=start, end=end, info=res.info, num_frames=0
        )
        assert abs(audio_offset(Path(clip.audio_path), DURATION) - start) <= AUDIO_TOLERANCE, (name, start)
        # and an AudioSet clip needs its frames: an audio-only source is invalid media, said so
        with pytest.raises(MediaError, match="no video track"):
            extract_clip(Path(res.path), tmp_path / "clips", f"{name}_{start}_v", start=start, end=end, info=res.info)


@pytest.mark.parametrize("name", ["gop10_h264_aac_mp4", "opus_webm"])
def test_segments_past_the_end_are_invalid_media_with_the_reason(served, tmp_path, name):
    past = _download(served, name, 40.0, 45.0, tmp_path / "dl")
    assert past.status == "invalid_media" and "past the end" in past.message, past.message
    partly = _download(served, name, 17.0, 27.0, tmp_path / "dl")
    assert partly.status == "invalid_media" and "before the segment's end" in partly.message, partly.message
    assert not list((tmp_path / "dl").iterdir())  # nothing kept, no temporary left


def test_a_download_cannot_be_shifted_by_a_clip_made_elsewhere(served, tmp_path):
    """Two segments of one video, 0-5 s and 1-6 s, never give the same audio."""
    a = _download(served, "kf0_h264_mp3_mp4", 0.0, 5.0, tmp_path / "dl")
    b = _download(served, "kf0_h264_mp3_mp4", 1.0, 6.0, tmp_path / "dl")
    ca = extract_clip(Path(a.path), tmp_path / "c", "a", start=0.0, end=5.0, info=a.info)
    cb = extract_clip(Path(b.path), tmp_path / "c", "b", start=1.0, end=6.0, info=b.info)
    assert Path(ca.audio_path).read_bytes() != Path(cb.audio_path).read_bytes()
    assert abs(audio_offset(Path(cb.audio_path), DURATION) - 1.0) <= AUDIO_TOLERANCE


def test_the_real_chaplin_video_segments(shared_data, tmp_path):
    """The shared chaplin.mp4 (9.64 s, one keyframe at 0): 1-6 s starts 1 s in, 40-45 s is past the end."""
    import shutil

    shutil.copy(shared_data / "video" / "chaplin.mp4", tmp_path / "Chaplin0001.mp4")
    with MediaServer(tmp_path) as server:
        opts = DownloadOptions(url_template=server.url("{ytid}.mp4"), backoff_seconds=0.01)
        first = download_segment("Chaplin0001", 0.0, 5.0, tmp_path / "dl", options=opts)
        second = download_segment("Chaplin0001", 1.0, 6.0, tmp_path / "dl", options=opts)
        past = download_segment("Chaplin0001", 40.0, 45.0, tmp_path / "dl", options=opts)
    assert first.status == second.status == "ok"
    assert past.status == "invalid_media" and "past the end" in past.message
    c1 = extract_clip(Path(first.path), tmp_path / "c", "a", start=0.0, end=5.0, info=first.info)
    c2 = extract_clip(Path(second.path), tmp_path / "c", "b", start=1.0, end=6.0, info=second.info)
    a, _ = sf.read(c1.audio_path, dtype="float32", always_2d=True)
    b, _ = sf.read(c2.audio_path, dtype="float32", always_2d=True)
    # b starts 1 s after a: b[0:4 s] is a[1 s:5 s] (decoded from the same stream; codec edges aside)
    import numpy as np

    lag = int(np.argmax(np.correlate(a[:, 0], b[:44100, 0], mode="valid")))
    assert abs(lag - 44100) <= int(AUDIO_TOLERANCE * 44100), lag


def test_probe_reads_the_extent_on_the_sources_time_line(served, tmp_path):
    res = _download(served, "gop10_h264_aac_mp4", 13.0, 18.0, tmp_path)
    info = probe(Path(res.path))
    # the piece starts at the keyframe at 10 s (before 13 - pre-roll), on the source's clock
    assert 9.8 <= info.video[0] <= 10.01 and info.audio[1] >= 18.0
    assert segment_problem(info, 13.0, 18.0) is None
    assert "past the end" in segment_problem(info, 30.0, 35.0)


def test_environment_faults_are_not_media_faults(tmp_path):
    with pytest.raises(EnvironmentFault, match="No space left on device"):
        from audioclip_core.audio import ffmpeg_exe

        run_ffmpeg(
            [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-f", "wav", "-y", "/dev/full"], "write"
        )
    with pytest.raises(EnvironmentFault, match="longer than"):
        from audioclip_core.audio import ffmpeg_exe

        run_ffmpeg(
            [ffmpeg_exe(), "-v", "error", "-re", "-f", "lavfi", "-i", "sine=d=30", "-f", "null", "-"],
            "slow",
            timeout=0.5,
        )


def test_extraction_on_a_full_disk_is_an_environment_fault(served, tmp_path, monkeypatch):
    import tempfile

    res = _download(served, "gop10_h264_aac_mp4", 2.0, 7.0, tmp_path / "dl")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(EnvironmentFault, match="No space left on device"):
        extract_clip(Path(res.path), tmp_path / "clips", "x", start=2.0, end=7.0, info=res.info)
