"""The AudioSet data path at scale, through the Dagster CLI as a data engineer runs it.

An official-format segment list of N ten-second segments (file `eval_segments.csv`, so the
partition is `eval`) is written into a fresh AudioSet folder; its ids are served on 127.0.0.1
from real encoded media, a share of them missing (404) and some stalled (the body stops after
40 %). The media are `--media DIR` (e.g. ../shared/data/video), or generated once and encoded
as YouTube serves 360p (H.264 High at ~500 kb/s, a keyframe every 2 s, AAC stereo 128 kb/s):
what a segment costs to decode depends on the bitrate, so the profile is part of the figure. Then:

    python -m pipelines.instance
    dagster asset materialize -m pipelines.definitions \
        --select audioset_segments,audioset_downloads,audioset_clips,audioset_manifest --partition eval

twice: the first run, then the re-run with nothing new. Printed: segments/s, wall time per
asset (Dagster's step stats), the seconds each phase took summed over workers (probe,
download, extract, verify - the assets' `seconds_by_phase` metadata), HTTP requests per
segment, media fetched twice, peak memory of the CLI process tree, and the no-op re-run time.

    .venv/bin/python bench/bench_audioset_path.py --segments 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audioclip_core.acquisition.media_server import _RangeHandler  # noqa: E402
from audioclip_core.data.demo_dataset import CLASSES, write_video  # noqa: E402

ASSETS = "audioset_segments,audioset_downloads,audioset_clips,audioset_manifest"
LABELS = ["/m/09x0r", "/m/04rlf", "/m/0jbk", "/m/07yv9", "/m/015p6"]


class _Served(_RangeHandler):
    """`/<ytid>` -> one of the media files (with its own Content-Type); missing ids 404; stalled ids
    stop mid-body."""

    media: dict[str, Path] = {}
    stalled: set[str] = set()
    requests: Counter = Counter()
    bytes_sent: Counter = Counter()
    lock = threading.Lock()

    def translate_path(self, path):
        ytid = path.lstrip("/").split("?")[0].rsplit(".", 1)[0]
        target = self.media.get(ytid)
        return str(target) if target else "/nonexistent"

    def _count(self):
        ytid = self.path.lstrip("/").split("?")[0].rsplit(".", 1)[0]
        with self.lock:
            self.requests[ytid] += 1
        return ytid

    def do_HEAD(self):
        self._count()
        super().do_HEAD()

    def do_GET(self):
        ytid = self._count()
        if ytid in self.stalled:
            size = self.media[ytid].stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(self.media[ytid].read_bytes()[: int(size * 0.4)])
            self.wfile.flush()
            time.sleep(600)
            return
        super().do_GET()

    def copyfile(self, source, outputfile):
        ytid = self.path.lstrip("/").split("?")[0].rsplit(".", 1)[0]
        pos = source.tell()
        super().copyfile(source, outputfile)
        with self.lock:
            self.bytes_sent[ytid] += source.tell() - pos


class MediaServer(ThreadingHTTPServer):
    """The stand-in host: a client that hangs up mid-body (a range read that has what it needs,
    a stopped download) is no error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def serve(media: dict[str, Path], stalled=()) -> tuple[MediaServer, str]:
    """Serve `media` (id -> file; `stalled` ids stop mid-body) on 127.0.0.1 in a thread; returns
    the server and the URL template the `youtube` resource takes (AUDIOCLIP_YOUTUBE_URL_TEMPLATE)."""
    _Served.media, _Served.stalled = media, set(stalled)
    httpd = MediaServer(("127.0.0.1", 0), _Served)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/{{ytid}}"


YOUTUBE_360P = [
    "-c:v",
    "libx264",
    "-profile:v",
    "high",
    "-preset",
    "fast",
    "-b:v",
    "500k",
    "-maxrate",
    "600k",
    "-bufsize",
    "1200k",
    "-g",
    "50",
    "-c:a",
    "aac",
    "-b:a",
    "128k",
    "-ac",
    "2",
    "-movflags",
    "+faststart",
]


def make_media(folder: Path, n: int, seconds: float) -> list[Path]:
    from audioclip_core.audio import ffmpeg_exe

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    raw = [folder / f"raw{i:02d}.mp4" for i in range(n)]
    paths = [folder / f"yt360p{i:02d}.mp4" for i in range(n)]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        futs = [
            write_video(r, [CLASSES[i % len(CLASSES)]], seconds, rng, fps=25, size=(360, 640), encoder=pool)
            for i, (r, p) in enumerate(zip(raw, paths))
            if not p.is_file()
        ]
        for f in futs:
            f.result()
        todo = [(r, p) for r, p in zip(raw, paths) if not p.is_file()]
        list(
            pool.map(
                lambda rp: subprocess.run(
                    [ffmpeg_exe(), "-v", "error", "-y", "-i", str(rp[0]), *YOUTUBE_360P, str(rp[1])], check=True
                ),
                todo,
            )
        )
    for r in raw:
        r.unlink(missing_ok=True)
    return paths


# real footage as YouTube serves it: (source in ../shared/data/video, loops, height, codec args, container)
REAL = [
    ("big_buck_bunny_0_30.webm", 1, 720, ["-c:v", "libx264", "-profile:v", "high", "-b:v", "1500k", "-g", "60"], "mp4"),
    (
        "big_buck_bunny_0_30.webm",
        1,
        480,
        ["-c:v", "libvpx-vp9", "-b:v", "750k", "-g", "60", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"],
        "webm",
    ),
    ("chaplin.mp4", 3, 360, ["-c:v", "libx264", "-profile:v", "high", "-b:v", "500k", "-g", "50"], "mp4"),
]


def make_real_media(folder: Path, shared: Path) -> list[Path]:
    """Three files of real footage (an animated film, a filmed one) at 720p H.264, 480p VP9 and
    360p H.264 with their own audio (AAC in MP4, Opus in WebM), each at least 28 s long so that
    every 10 s segment at a start of 0 - 7.5 s lies inside it; made once, cached."""
    from audioclip_core.audio import ffmpeg_exe

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source, loops, height, video, container in REAL:
        path = folder / f"real{height}p.{container}"
        if not path.is_file():
            audio = ["-c:a", "aac", "-b:a", "128k"] if container == "mp4" else ["-c:a", "libopus", "-b:a", "128k"]
            cmd = [ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(shared / source)]
            cmd += ["-vf", f"scale=-2:{height}", "-r", "25", *video, *audio, "-ac", "2", "-ar", "48000"]
            cmd += ["-movflags", "+faststart"] if container == "mp4" else []
            subprocess.run([*cmd, str(path)], check=True)
        out.append(path)
    return out


def decode_only(pieces: list[Path]) -> float:
    """Wall seconds for ffmpeg to decode every piece's audio and video to nothing, one process
    per core as the extraction runs: the floor the extraction can approach on this machine."""
    from audioclip_core.audio import ffmpeg_exe

    def one(p: Path) -> None:
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-threads", "1", "-i", str(p), "-map", "0", "-f", "null", "-"], check=True
        )

    t = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, pieces))
    return time.perf_counter() - t


def ytid_of(i: int) -> str:
    return ("B" + hashlib.sha256(str(i).encode()).hexdigest())[:11]


def write_partition(folder: Path, n: int, media: list[Path], missing: float, stalled: int, seconds: float):
    rng = np.random.default_rng(1)
    ids = [ytid_of(i) for i in range(n)]
    n_missing = int(round(n * missing))
    missing_ids = set(ids[1 : 1 + n_missing])
    stalled_ids = set(ids[1 + n_missing : 1 + n_missing + stalled])
    lines = [
        "# Segments csv created by bench_audioset_path",
        f"# num_ytids={n}, num_segs={n}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    served = {}
    for i, y in enumerate(ids):
        start = float(rng.choice([0.0, 2.5, 5.0, 7.5])) if seconds >= 20 else 0.0
        lines.append(f'{y}, {start:.3f}, {start + 10:.3f}, "{LABELS[i % len(LABELS)]}"')
        if y not in missing_ids:
            served[y] = media[i % len(media)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_segments.csv").write_text("\n".join(lines) + "\n")
    res = REPO / "audioclip_core" / "resources" / "audioset"
    for name in ("class_labels_indices.csv", "ontology.json"):
        shutil.copy(res / name, folder / name)
    return served, missing_ids, stalled_ids


def _duration(path: Path) -> float:
    from audioclip_core.acquisition.media import probe

    info = probe(path)
    return (info.audio[1] - info.audio[0]) if info.audio else 1.0


def run_cli(env: dict) -> tuple[float, str]:
    py = sys.executable
    dagster = str(Path(py).parent / "dagster")
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [dagster, "asset", "materialize", "-m", "pipelines.definitions", "--select", ASSETS, "--partition", "eval"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-4000:])
            raise SystemExit(f"dagster asset materialize failed ({proc.returncode})")
    return wall, usage.ru_maxrss / 1024


def run_stats(home: Path) -> dict:
    """Per-asset step wall time and metadata of the latest run."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        steps = {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(run.run_id)}
        meta = {}
        for rec in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            mat = rec.event_log_entry.asset_materialization
            meta[mat.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {"steps": steps, "meta": meta}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=300)
    ap.add_argument("--missing", type=float, default=0.05, help="share of ids the server does not have")
    ap.add_argument("--stalled", type=int, default=1, help="ids whose body stalls")
    ap.add_argument("--media", type=Path, help="folder of media files to serve (default: generated 20 s videos)")
    ap.add_argument(
        "--real",
        action="store_true",
        help="serve real footage from ../shared/data/video (AUDIOCLIP_SHARED_DIR) as 720p H.264, 480p VP9 and "
        "360p H.264 (made once, cached)",
    )
    ap.add_argument("--media-seconds", type=float, default=20.0)
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-audioset-"))
    cache = Path(tempfile.gettempdir()) / "bench-audioset-media"
    if args.real:
        shared = Path(os.environ.get("AUDIOCLIP_SHARED_DIR", REPO.parent / "shared")) / "data" / "video"
        t = time.perf_counter()
        media = make_real_media(cache.with_name("bench-audioset-real"), shared)
        args.media_seconds = min(_duration(p) for p in media)
        print(f"media: {len(media)} real files ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    elif args.media:
        media = sorted(p for p in args.media.iterdir() if p.is_file())
    else:
        t = time.perf_counter()
        media = make_media(cache, 12, args.media_seconds)
        print(f"media: {len(media)} files in {cache} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    for sub in ("audioset", "data", "dagster_home"):
        shutil.rmtree(work / sub, ignore_errors=True)
    served, missing, stalled = write_partition(
        work / "audioset", args.segments, media, args.missing, args.stalled, args.media_seconds
    )
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")

    httpd, url = serve(served, stalled)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AUDIOCLIP_DATA_ROOT": str(work / "data"),
        "AUDIOCLIP_AUDIOSET_DIR": str(work / "audioset"),
        "PYTHONPATH": str(REPO),
        "AUDIOCLIP_YOUTUBE_URL_TEMPLATE": url,
    }  # type from the header
    subprocess.run([sys.executable, "-m", "pipelines.instance"], cwd=REPO, env=env, check=True, capture_output=True)

    first, peak_mb = run_cli(env)
    stats1 = run_stats(home)
    requests1, bytes1 = Counter(_Served.requests), Counter(_Served.bytes_sent)
    pieces = sorted((work / "data" / "audioset" / "downloads" / "eval").glob("*.cut.mkv"))
    decode_s = decode_only(pieces)
    second, _ = run_cli(env)
    stats2 = run_stats(home)
    requests2 = _Served.requests - requests1
    bytes2 = _Served.bytes_sent - bytes1
    httpd.shutdown()

    n = args.segments
    m = stats1["meta"]
    kbps = sum(p.stat().st_size for p in media) * 8 / 1000 / sum(_duration(p) for p in media)
    ok = m.get("audioset_manifest", {}).get("ok")
    phases = {}
    for key in ("audioset_downloads", "audioset_clips"):
        phases.update(
            {f"{key.split('_')[1]}.{k}": v for k, v in (m.get(key, {}).get("seconds_by_phase", {}) or {}).items()}
        )
    fetched_twice = sorted(y for y in bytes2 if bytes2[y] > 0 and y not in stalled)
    out = {
        "bench": "audioset_path",
        "segments": n,
        "cpus": os.cpu_count(),
        "media_kbps": round(kbps),
        "served_missing": len(missing),
        "stalled": len(stalled),
        "ok": ok,
        "first_run_s": round(first, 1),
        "segments_per_s": round(n / first, 2),
        "step_s": {k: round(v, 1) for k, v in stats1["steps"].items()},
        "seconds_by_phase": {k: round(float(v), 1) for k, v in phases.items()},
        "requests_per_segment": round(sum(requests1.values()) / n, 2),
        "peak_rss_mb": round(peak_mb),
        "decode_only_s": round(decode_s, 1),
        "clips_step_vs_decode_only": round(stats1["steps"].get("audioset_clips", 0.0) / decode_s, 2)
        if decode_s
        else None,
        "noop_rerun_s": round(second, 1),
        "noop_step_s": {k: round(v, 1) for k, v in stats2["steps"].items()},
        "noop_requests": sum(requests2.values()),
        "fetched_twice": len(fetched_twice),
    }
    print(f"\n== AudioSet data path, {n} segments of 10 s, {os.cpu_count()} CPUs, media at {kbps:.0f} kb/s ==")
    print(f"first run     {first:7.1f} s   {n / first:5.2f} segments/s   {ok} ok clips")
    for k, v in out["step_s"].items():
        print(f"  step {k:<22} {v:7.1f} s")
    for k, v in out["seconds_by_phase"].items():
        print(f"  phase {k:<21} {v:7.1f} s (summed over workers)")
    print(f"requests/seg  {out['requests_per_segment']}   peak RSS {out['peak_rss_mb']} MB")
    print(
        f"ffmpeg decode-only of the same {len(pieces)} downloaded pieces, one process per core: {decode_s:.1f} s "
        f"(the clips step took {out['clips_step_vs_decode_only']}x that)"
    )
    print(f"no-op re-run  {second:7.1f} s   requests {out['noop_requests']}   media fetched twice {len(fetched_twice)}")
    print(json.dumps(out))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
