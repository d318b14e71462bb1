"""Downloads against a server that misbehaves: a page linking to other media, a body cut short,
a body that stalls, a WebM without a duration header. Each ends in bounded time with the right
status, and nothing short is recorded `ok`."""

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from audioclip_core.acquisition.media import probe, segment_problem
from audioclip_core.acquisition.youtube import DownloadOptions, download_segment
from audioclip_core.audio import ffmpeg_exe


class Faults(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}  # name -> bytes sent before the connection closes
    stall: dict[str, int] = {}  # name -> bytes sent before the body stalls
    drip: dict[str, int] = {}  # name -> bytes/s sent to ffmpeg (a range download), as YouTube throttles ranges
    seen: list[dict] = []  # path and headers of every request

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        name = self.path.lstrip("/").split("?")[0]
        self.seen.append({"path": name, **{k.lower(): v for k, v in self.headers.items()}})
        if name.endswith(".html"):
            page = b'<html><body><video src="/Chaplin0001.mp4"></video></body></html>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)
            return
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a or 0), int(b) if b else len(data) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/webm" if name.endswith(".webm") else "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if not body:
            return
        chunk = data[start : end + 1]
        if name in self.cut:
            self.wfile.write(chunk[: max(0, self.cut[name] - start)])
            self.wfile.flush()
            self.close_connection = True
            return
        if name in self.drip and self.headers.get("Icy-MetaData"):  # ffmpeg's http client asks for it
            step = max(1, self.drip[name] // 10)
            for i in range(0, len(chunk), step):
                self.wfile.write(chunk[i : i + step])
                self.wfile.flush()
                time.sleep(0.1)
            return
        if name in self.stall:
            self.wfile.write(chunk[: max(0, self.stall[name] - start)])
            self.wfile.flush()
            time.sleep(60)
            return
        self.wfile.write(chunk)


@pytest.fixture(scope="module")
def server(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    chaplin = (shared_data / "video" / "chaplin.mp4").read_bytes()
    # a WebM as a browser's MediaRecorder writes it: live, without a duration in its header
    live = tmp / "live.webm"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(shared_data / "video" / "big_buck_bunny_0_30.webm"),
            "-t",
            "8",
            "-c",
            "copy",
            "-live",
            "1",
            "-f",
            "webm",
            str(live),
        ],
        check=True,
    )
    Faults.files = {
        "Chaplin0001.mp4": chaplin,
        "Truncated01.mp4": chaplin,
        "Stalled0001.mp4": chaplin,
        "LiveWebm001.webm": live.read_bytes(),
        # a WebM (VP8 + Vorbis) at a URL ending .mp4: ffmpeg cannot write its range as MP4
        "WebmAsMp401.mp4": (shared_data / "video" / "big_buck_bunny_0_30.webm").read_bytes(),
        "Dripping001.mp4": chaplin,
    }
    Faults.drip = {"Dripping001.mp4": 8 * 1024}
    Faults.cut = {"Truncated01.mp4": int(len(chaplin) * 0.4)}
    Faults.stall = {"Stalled0001.mp4": int(len(chaplin) * 0.4)}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Faults)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _get(server, ytid, ext, dest, **kw):
    opts = DownloadOptions(
        url_template=f"{server}/{{ytid}}.{ext}", backoff_seconds=0.01, max_attempts=2, socket_timeout=2.0, **kw
    )
    t = time.monotonic()
    res = download_segment(ytid, 1.0, 6.0, dest, options=opts)
    return res, time.monotonic() - t


def test_a_page_linking_to_media_is_not_followed(server, tmp_path):
    res, _ = _get(server, "PageLinks01", "html", tmp_path)
    assert res.status == "unavailable" and "not media" in res.message and res.attempts == 1
    assert list(tmp_path.iterdir()) == []


def test_a_body_cut_short_is_never_ok(server, tmp_path):
    res, _ = _get(server, "Truncated01", "mp4", tmp_path)
    if res.status == "ok":  # what arrived must then hold the whole range
        assert segment_problem(probe(Path(res.path)), 1.0, 6.0, tail_tolerance=0.0) is None
    else:
        assert res.status == "error" and res.attempts == 2
        assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_stalled_body_costs_a_bounded_time(server, tmp_path):
    res, seconds = _get(server, "Stalled0001", "mp4", tmp_path)
    assert res.status != "ok" or segment_problem(probe(Path(res.path)), 1.0, 6.0, tail_tolerance=0.0) is None
    assert res.status in ("ok", "error")
    if res.status == "error":  # a stall is not retried in the same run: a later run retries it
        assert "stalled" in res.message and res.attempts == 1, (res.message, res.attempts)
    # one attempt, stopped once no data has come for the read timeout (2 s); ffmpeg's own reconnects
    # after its read timeout had made it ~5 timeouts (10 s here, 61 s at the default 15 s)
    assert seconds < 3 * 2.0 + 2, seconds
    assert "no data for 2 s" in res.message, res.message


def test_a_range_that_comes_back_without_duration_is_fetched_whole_and_cut_here(server, tmp_path, monkeypatch):
    """A range piece that does not hold the segment (here: made to look so once) is not
    recorded: the next attempt takes the whole file and cuts the piece here, the same way."""
    import audioclip_core.acquisition.youtube as yt

    real, calls = yt.segment_problem, []

    def short_once(info, start, end, **kw):
        calls.append(info)
        return "out of range: made up" if len(calls) == 1 else real(info, start, end, **kw)

    monkeypatch.setattr(yt, "segment_problem", short_once)
    res, _ = _get(server, "LiveWebm001", "webm", tmp_path)
    assert res.status == "ok" and res.attempts == 2, res.message
    _holds_the_piece_not_the_file(res)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _holds_the_piece_not_the_file(res):
    """The piece kept holds 1-6 s (with its pre- and post-roll, from a keyframe), not all 8 s."""
    info = probe(Path(res.path))
    assert segment_problem(info, 1.0, 6.0, tail_tolerance=0.0) is None and info.channels >= 1
    assert info.audio == res.info.audio and info.audio[1] <= 6.0 + 0.5 + 0.1


def test_a_range_ffmpeg_cannot_write_is_fetched_whole_and_cut_to_the_frame(server, tmp_path):
    res, _ = _get(server, "WebmAsMp401", "mp4", tmp_path)
    assert res.status == "ok" and res.attempts == 2, res.message
    _holds_the_piece_not_the_file(res)
    assert probe(Path(res.path)).channels == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_throttled_range_falls_back_to_the_whole_file_in_bounded_time(server, tmp_path):
    """The host drips the range download (ffmpeg) at 8 KiB/s and serves whole files at full
    speed, as YouTube does for ranges of long videos: after the grace period the range is
    stopped and the whole file fetched and cut here, far sooner than the drip would end."""
    size = len(Faults.files["Dripping001.mp4"])
    res, seconds = _get(server, "Dripping001", "mp4", tmp_path, min_range_rate=32 * 1024, range_grace_seconds=2.0)
    assert res.status == "ok" and res.attempts == 2, res.message
    assert "range download throttled" in res.message and "whole file" in res.message, res.message
    assert "(1 ffmpeg stopped)" in res.message, res.message  # the range's own ffmpeg, found and stopped
    _holds_the_piece_not_the_file(res)
    drip_alone = size / (8 * 1024)  # what waiting for the dripped transfer could cost, at most
    assert seconds < 2.0 + 20, (seconds, drip_alone)  # the grace, the whole file, the cut
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    from audioclip_core.acquisition.youtube import _ffmpeg_writing_into

    assert not _ffmpeg_writing_into(tmp_path)  # the stopped range's ffmpeg is gone


class _Proxy(BaseHTTPRequestHandler):
    """A forwarding HTTP proxy that counts what passes through it."""

    through: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        import http.client
        from urllib.parse import urlsplit

        self.through.append(self.path)
        url = urlsplit(self.path)  # a proxy is sent the absolute URL
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        conn.request("GET", url.path + (f"?{url.query}" if url.query else ""), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_proxy_and_cookies_reach_the_host(server, tmp_path):
    """Every request goes through the configured proxy, and the cookies file's cookies are sent."""
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSESSION\tsecret-cookie\n")
    Faults.seen.clear()
    _Proxy.through.clear()
    try:
        res, _ = _get(
            server,
            "Chaplin0001",
            "mp4",
            tmp_path / "out",
            proxy=f"http://127.0.0.1:{proxy.server_address[1]}",
            cookies_file=str(cookies),
        )
    finally:
        proxy.shutdown()
    assert res.status == "ok", res.message
    media = [r for r in Faults.seen if r["path"] == "Chaplin0001.mp4"]
    assert media and len(_Proxy.through) == len(Faults.seen)  # nothing went around the proxy
    assert all(p.endswith("/Chaplin0001.mp4") for p in _Proxy.through)
    assert any("SESSION=secret-cookie" in r.get("cookie", "") for r in media)


def test_youtube_settings_reach_yt_dlp_as_its_own_options(tmp_path, monkeypatch):
    """Player clients, proof-of-origin tokens, a token provider, extractor arguments, sleeps
    and the JavaScript runtime are handed to yt-dlp under its own names, and its YouTube
    extractor reads them back as configured."""
    import yt_dlp

    from audioclip_core.acquisition.youtube import ydl_network_options

    opts = DownloadOptions(
        player_client=("web_safari", "mweb"),
        po_token=("mweb.gvs+TOKEN",),
        pot_provider_url="http://127.0.0.1:4416",
        extractor_args={"youtube": {"lang": ["en"]}, "generic": {"impersonate": ["chrome"]}},
        sleep_interval=2.0,
        max_sleep_interval=5.0,
        sleep_requests=0.5,
        js_runtime="node",
        proxy="socks5://127.0.0.1:1080",
    )
    params = ydl_network_options(opts)
    assert params["sleep_interval"] == 2.0 and params["max_sleep_interval"] == 5.0
    assert params["sleep_interval_requests"] == 0.5 and params["proxy"] == "socks5://127.0.0.1:1080"
    assert params["js_runtimes"] == {"node": {}}
    with yt_dlp.YoutubeDL({**params, "quiet": True}) as ydl:
        youtube = ydl.get_info_extractor("Youtube")
        assert youtube._configuration_arg("player_client") == ["web_safari", "mweb"]
        assert youtube._configuration_arg("po_token", casesense=True) == ["mweb.gvs+TOKEN"]
        assert youtube._configuration_arg("lang") == ["en"]
        assert ydl.params["extractor_args"]["youtubepot-bgutilhttp"] == {"base_url": ["http://127.0.0.1:4416"]}
        assert ydl.params["extractor_args"]["generic"] == {"impersonate": ["chrome"]}

    # and a download hands yt-dlp exactly these
    seen = []

    class Recording(yt_dlp.YoutubeDL):
        def __init__(self, params=None, *a, **kw):
            seen.append(dict(params or {}))
            super().__init__(params, *a, **kw)

    monkeypatch.setattr(yt_dlp, "YoutubeDL", Recording)
    download_segment(
        "abcdefghijk",
        0.0,
        1.0,
        tmp_path,
        options=DownloadOptions(
            url_template="http://127.0.0.1:9/{ytid}.mp4",
            max_attempts=1,
            **{
                k: getattr(opts, k)
                for k in (
                    "player_client",
                    "po_token",
                    "pot_provider_url",
                    "extractor_args",
                    "sleep_interval",
                    "max_sleep_interval",
                )
            },
        ),
    )
    assert seen and all(seen[0][k] == v for k, v in ydl_network_options(opts).items() if k in seen[0])
    assert seen[0]["extractor_args"] == params["extractor_args"] and seen[0]["sleep_interval"] == 2.0


def test_a_bot_check_is_its_own_transient_status_with_backoff(tmp_path, monkeypatch):
    """YouTube's "Sign in to confirm you're not a bot" is not the video's fault: `bot_check`,
    retried with backoff in the run and by later runs, never `unavailable`."""
    import yt_dlp
    from yt_dlp.utils import DownloadError

    def refuse(self, url, *a, **kw):
        raise DownloadError(
            "ERROR: [youtube] abcdefghijk: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser "
            "or --cookies for the authentication."
        )

    monkeypatch.setattr(yt_dlp.YoutubeDL, "extract_info", refuse)
    delays = []
    opts = DownloadOptions(max_attempts=3, backoff_seconds=1.0)
    res = download_segment("abcdefghijk", 0.0, 5.0, tmp_path, options=opts, sleep=delays.append)
    assert res.status == "bot_check" and res.attempts == 3 and "not a bot" in res.message
    assert len(delays) == 2 and delays[1] > delays[0] * 0.6  # exponential, with jitter

    import pandas as pd

    from audioclip_core.acquisition.audioset import run_downloads

    segments = pd.DataFrame([{"segment_id": "abcdefghijk_0", "ytid": "abcdefghijk", "start": 0.0, "end": 5.0}])
    table = run_downloads(
        segments, tmp_path / "dl", None, DownloadOptions(max_attempts=1), retry_after=600.0, max_workers=1
    )
    row = table.iloc[0]
    assert row["status"] == "bot_check" and row["failed_runs"] == 1 and row["next_attempt_at"] > time.time() + 500


def test_a_per_host_request_budget_spaces_the_starts():
    """`per_host_per_minute`: starts to one host are 60 / budget seconds apart; another host
    has its own budget."""
    from audioclip_core.acquisition.audioset import _HostLimit

    now = [100.0]
    starts = []

    def sleep(s):
        now[0] += s

    limit = _HostLimit(8, per_minute=30.0, clock=lambda: now[0], sleep=sleep)
    for url in ["http://a.test/1", "http://a.test/2", "http://b.test/1", "http://a.test/3"]:
        with limit(url):
            starts.append((url.split("/")[2], now[0]))
    assert starts == [("a.test", 100.0), ("a.test", 102.0), ("b.test", 102.0), ("a.test", 104.0)]
    waits = []
    unlimited = _HostLimit(8, clock=lambda: now[0], sleep=waits.append)
    with unlimited("http://a.test/1"), unlimited("http://a.test/2"):
        assert unlimited._sems["a.test"]._value == 6  # no budget: two in flight at once
    assert waits == []  # and no wait
