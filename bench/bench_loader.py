"""What the training loader delivers per worker, and how many CPU cores a GPU would need.

Clips as the pipeline makes them (10 s, 44.1 kHz stereo 16-bit WAV, 10 JPEG frames with a
256-pixel short side) are read by the AudioSet training dataset - decode, the paper's
augmentations (time scaling, inversion, crop to `--clip-seconds`: 10 s as the paper profile's
AudioSet stages train, or 5 s), one frame decoded, cropped and resized to 224 - with 1, 2 and N
DataLoader workers, from the files, from the shards
(positioned reads), and as the shard stream. Printed: clips/s and clips/s per worker for
each (steady state: workers started, one epoch read first), then the cores one GPU step needs:
the model's FLOPs per training sample (counted
here, paper preset, the crop's audio + one image + its caption, forward x 3 for a training step)
against a stated GPU throughput (H200 bf16 dense peak 989 TFLOP/s at 40 % utilisation, both
`--gpu-tflops` / `--mfu`), times the CPU time a clip costs. One JSON line at the end.

Both placements of the augmentations (`AudioOptions.augment_on`) are read: ``worker`` - the
workers decode, augment, decode and crop the frame - and ``device`` - the workers only read
the files' bytes (the WAV's samples, the JPEG's header) and draw the parameters, and the
batch is augmented on the training device (`augment_batch`). That device work is timed
apart, on this CPU, one thread, per sample; on a GPU it leaves the CPU, so the device
placement's cores per GPU count the CPU time of the workers and of the main process, which
unpacks the batches they send (measured from /proc over the timed epochs, one worker, the
cheapest source).

    .venv/bin/python bench/bench_loader.py [--clips 48] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("files", "shards", "shard_stream")
sys.path.insert(0, str(REPO))

from audioclip_core.data.datasets import AudioOptions, AudioSetDataset, collate  # noqa: E402
from audioclip_core.data.shards import ShardStore, ShardStream, write_shards  # noqa: E402
from audioclip_core.files import sha256_file  # noqa: E402


def make_clips(root: Path, n: int) -> pd.DataFrame:
    folder = root / "audioset" / "clips" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    base_img = rng.integers(0, 255, (256, 456, 3), dtype=np.uint8)
    for i in range(n):
        sid = f"Bench{i:06d}_0"
        t = np.arange(441000) / 44100.0
        tone = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)[:, None] + rng.normal(0, 0.05, (441000, 2))
        sf.write(folder / f"{sid}.wav", tone.astype(np.float32), 44100, subtype="PCM_16")
        frames = []
        for k in range(10):
            Image.fromarray(np.roll(base_img, 7 * (i + k), axis=1)).save(folder / f"{sid}_f{k:02d}.jpg", quality=85)
            frames.append(str(folder / f"{sid}_f{k:02d}.jpg"))
        rows.append(
            {
                "segment_id": sid,
                "status": "ok",
                "audio_path": str(folder / f"{sid}.wav"),
                "frame_paths": frames,
                "label_ids": ["/m/09x0r"],
                "label_names": ["Speech"],
                "sha256": sha256_file(folder / f"{sid}.wav"),
            }
        )
    return pd.DataFrame(rows)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(loader, epochs: int) -> tuple[float, float]:
    """Steady-state clips/s and CPU ms per clip - the worker processes' and this (main)
    process's CPU time together, which unpacks the batches: one epoch to start the persistent
    workers, then `epochs` timed."""
    for _ in loader:
        pass
    pids = [os.getpid()] + [w.pid for w in loader._iterator._workers]
    n, t, cpu = 0, time.perf_counter(), sum(map(_cpu_seconds, pids))
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["index"])
    wall, cpu = time.perf_counter() - t, sum(map(_cpu_seconds, pids)) - cpu
    return n / wall, 1e3 * cpu / n


def device_work_ms(ds, batch_size: int, batches: int = 4) -> float:
    """CPU milliseconds per sample of `augment_batch` (the device placement's batched work) here."""
    items = [ds[i % len(ds)] for i in range(batch_size * batches)]
    collated = [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    ds.augment_batch(collated[0], "cpu")  # first call: allocations
    t = time.perf_counter()
    for batch in collated:
        ds.augment_batch(batch, "cpu")
    return (time.perf_counter() - t) * 1e3 / len(items)


def flops_per_sample(seconds: float) -> float:
    """Forward FLOPs of the paper preset for one sample (`seconds` of audio, 224 px image, a caption)."""
    from torch.utils.flop_counter import FlopCounterMode

    import audioclip_core as ac

    model = ac.build_model("audioclip-rn50").eval()
    audio = torch.randn(1, 1, int(seconds * 44100))
    image = torch.randn(1, 3, 224, 224)
    text = [["Speech"]]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(audio=audio, image=image, text=text)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 2])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--clip-seconds",
        type=float,
        default=10.0,
        help="training crop: 10 (the paper profile's AudioSet stages, default) or 5 (ESC-50's length)",
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU peak, dense bf16 (H200: 989)")
    ap.add_argument("--mfu", type=float, default=0.40, help="share of the peak a training step reaches")
    args = ap.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        df = make_clips(work, args.clips)
        shards_dir = work / "shards"
        write_shards(df, work, shards_dir, target_bytes=64 * 1024**2)

        def dataset(store=None, placement="worker"):
            opts = AudioOptions(clip_seconds=args.clip_seconds, channels=1, augment=True, augment_on=placement)
            ds = AudioSetDataset(df, ["/m/09x0r"], train=True, seed=0, audio=opts, image_size=224)
            ds.store = store
            return ds

        rows = []
        for placement, workers, source in itertools.product(("worker", "device"), sorted(set(args.workers)), SOURCES):
            store = ShardStore(shards_dir, work) if source != "files" else None
            ds = dataset(store, placement)
            if source == "shard_stream":
                stream = ShardStream(
                    ds, [store.shard_of(p) for p in ds.df["audio_path"]], batch_size=args.batch_size, seed=0
                )
                loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=True)
            else:
                loader = DataLoader(
                    ds,
                    batch_size=args.batch_size,
                    shuffle=True,
                    collate_fn=collate,
                    num_workers=workers,
                    persistent_workers=True,
                )
            r, cpu_ms = rate(loader, args.epochs)
            rows.append(
                {
                    "placement": placement,
                    "source": source,
                    "workers": workers,
                    "clips_per_s": round(r, 1),
                    "clips_per_s_per_worker": round(r / workers, 1),
                    "cpu_ms_per_clip": round(cpu_ms, 2),
                }
            )
            print(
                f"{placement:6s} {source:13s} {workers} worker(s): {r:7.1f} clips/s, {r / workers:6.1f} per worker, "
                f"{cpu_ms:5.2f} CPU ms per clip (workers + main process)",
                flush=True,
            )
        device_ms = device_work_ms(dataset(placement="device"), args.batch_size)
        print(f"device work, measured on this CPU (on a GPU it leaves the CPU): {device_ms:.2f} ms per sample")

        flops = flops_per_sample(args.clip_seconds)
        step_flops = 3 * flops
        gpu_rate = args.gpu_tflops * 1e12 * args.mfu / step_flops
        placements = {}
        for placement in ("worker", "device"):
            mine = [r for r in rows if r["workers"] == 1 and r["placement"] == placement]
            cpu_ms = min(r["cpu_ms_per_clip"] for r in mine)  # the cheapest source
            placements[placement] = {
                "clips_per_s_per_worker": max(r["clips_per_s_per_worker"] for r in mine),
                "cpu_ms_per_sample": cpu_ms,
                "cpu_cores_per_gpu": round(gpu_rate * cpu_ms / 1e3, 1),
            }
        placements["device"]["device_work_ms_per_sample_on_this_cpu"] = round(device_ms, 2)
        single = {
            r["source"]: r["clips_per_s_per_worker"] for r in rows if r["workers"] == 1 and r["placement"] == "worker"
        }
        out = {
            "bench": "loader",
            "clips": args.clips,
            "clip_seconds": args.clip_seconds,
            "cpus": os.cpu_count(),
            "rows": rows,
            "clips_per_s_per_worker": single,
            "forward_gflop_per_sample": round(flops / 1e9, 2),
            "assumed_gpu": {"tflops_bf16": args.gpu_tflops, "mfu": args.mfu},
            "gpu_samples_per_s": round(gpu_rate),
            "cpu_cores_per_gpu": placements["worker"]["cpu_cores_per_gpu"],
            "placements": placements,
        }
        print(
            f"\nforward {flops / 1e9:.1f} GFLOP per sample (paper preset, {args.clip_seconds:g} s), training step "
            f"x3 -> one GPU at {args.gpu_tflops:g} TFLOP/s x {args.mfu:.0%} takes {gpu_rate:.0f} samples/s"
        )
        for placement, v in placements.items():
            extra = (
                f" (+ {device_ms:.2f} ms of device work, measured on this CPU; on a GPU it leaves the CPU)"
                if placement == "device"
                else ""
            )
            print(
                f"{placement} placement: {v['cpu_ms_per_sample']:.2f} CPU ms per sample{extra} -> "
                f"{v['cpu_cores_per_gpu']:.1f} CPU cores per GPU"
            )
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
