"""yt-dlp downloads from a local server (the stand-in for YouTube) and one-pass extraction."""

import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from audioclip_core.acquisition.media import MediaError, extract_clip
from audioclip_core.acquisition.media_server import MediaServer
from audioclip_core.acquisition.youtube import DownloadOptions, classify_error, download_segment
from audioclip_core.audio import ffmpeg_exe


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("youtube")
    shutil.copy(shared_data / "video" / "chaplin.mp4", root / "Chaplin0001.mp4")
    shutil.copy(shared_data / "video" / "big_buck_bunny_0_30.webm", root / "BigBuckBun0.webm")
    data = (root / "Chaplin0001.mp4").read_bytes()
    (root / "Truncated01.mp4").write_bytes(data[: len(data) // 3])
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(root / "Chaplin0001.mp4"),
            "-an",
            "-c:v",
            "copy",
            str(root / "NoAudio0001.mp4"),
        ],
        check=True,
    )
    with MediaServer(root) as server:
        yield server


def _opts(server, ext="mp4", **kw):
    return DownloadOptions(url_template=server.url("{ytid}." + ext), backoff_seconds=0.01, **kw)


def test_real_videos_download_and_cut(served, tmp_path):
    for ytid, ext in (("Chaplin0001", "mp4"), ("BigBuckBun0", "webm")):
        res = download_segment(ytid, 1.0, 6.0, tmp_path / "downloads", options=_opts(served, ext))
        assert res.status == "ok", res.message
        assert Path(res.path).name.startswith(f"{ytid}_1000") and res.bytes > 10000 and len(res.sha256) == 64
        clip = extract_clip(Path(res.path), tmp_path / "clips", f"{ytid}_1000", start=1.0, end=6.0, info=res.info)
        info = sf.info(clip.audio_path)
        assert info.samplerate == 44100 and abs(info.frames / 44100 - 5.0) <= 0.04
        assert len(clip.frame_paths) == 10 and all(Path(p).exists() for p in clip.frame_paths)
    assert not [p for p in (tmp_path / "downloads").iterdir() if p.name.startswith(".")]


def test_missing_video_is_unavailable_not_retried(served, tmp_path):
    res = download_segment("Missing0001", 0.0, 5.0, tmp_path, options=_opts(served))
    assert res.status == "unavailable" and res.attempts == 1 and "404" in res.message
    assert list(tmp_path.iterdir()) == []  # no file, no leftover temporary folder


def test_bad_id_never_touches_the_filesystem(tmp_path):
    res = download_segment("../../etc/x", 0.0, 5.0, tmp_path / "d")
    assert res.status == "error" and "not a YouTube id" in res.message and not (tmp_path / "d").exists()


def test_error_classification():
    class Inner(Exception):
        pass

    class Wrapped(Exception):
        def __init__(self, inner):
            super().__init__(str(inner))
            self.exc_info = (type(inner), inner, None)

    cases = {
        "Video unavailable. This video has been removed": "unavailable",
        "Private video": "private",
        "Sign in to confirm your age": "age_restricted",
        "The uploader has not made this video available in your country": "geo_blocked",
        "rate-limited by YouTube for up to an hour": "throttled",
        "Connection reset": "error",
    }
    for msg, status in cases.items():
        assert classify_error(Wrapped(Inner(msg)))[0] == status, msg


def test_transient_errors_back_off_and_retry(served, tmp_path):
    delays = []
    opts = DownloadOptions(
        url_template="http://127.0.0.1:9/{ytid}.mp4", max_attempts=3, backoff_seconds=1.0, socket_timeout=2
    )
    res = download_segment("Chaplin0001", 0.0, 5.0, tmp_path, options=opts, sleep=delays.append)
    assert res.status == "error" and res.attempts == 3
    assert len(delays) == 2 and 0.5 <= delays[0] <= 1.5 and 1.0 <= delays[1] <= 3.0


def test_bad_media_is_quarantined_with_reason(served, tmp_path):
    root = Path(served.root)
    with pytest.raises(MediaError, match="no audio track"):
        extract_clip(root / "NoAudio0001.mp4", tmp_path, "NoAudio0001_0", start=0.0, end=5.0)
    with pytest.raises(MediaError):
        extract_clip(root / "Truncated01.mp4", tmp_path, "Truncated01_0", start=0.0, end=5.0)
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind


def test_a_download_without_audio_or_empty_is_final_invalid_media(served, tmp_path):
    (Path(served.root) / "ZeroBytes01.mp4").write_bytes(b"")
    for ytid, reason in (("NoAudio0001", "no audio track"), ("ZeroBytes01", "empty")):
        res = download_segment(ytid, 0.0, 5.0, tmp_path / "d", options=_opts(served))
        assert res.status == "invalid_media" and reason in res.message, res.message
    assert list((tmp_path / "d").iterdir()) == []


def test_many_channels_are_downmixed_to_two(tmp_path):
    import numpy as np

    wav = tmp_path / "c64.wav"
    rng = np.random.default_rng(0)
    sf.write(wav, (0.1 * rng.standard_normal((44100 * 3, 64))).astype("float32"), 44100, subtype="FLOAT")
    media = tmp_path / "c64.mkv"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=s=320x240:r=25:d=3",
            "-i",
            str(wav),
            "-c:v",
            "libx264",
            "-c:a",
            "pcm_f32le",
            str(media),
        ],
        check=True,
    )
    clip = extract_clip(media, tmp_path / "out", "c64", start=0.5, end=2.5)
    assert clip.channels == 2 and abs(clip.duration - 2.0) <= 0.001
