"""The full tri-modal training step (stage 3: audio, image and text, paper preset) on a GPU:
samples/s and model FLOP utilisation, in fp32 and with the training loop's settings - bf16
autocast, channels-last, optionally torch.compile - on batches already on the device (the
model's rate; bench_loader.py measures what feeds it).

MFU = (training FLOPs per sample: the forward counted with torch's FlopCounterMode, x 3 for
forward + backward) x samples/s / the device's peak (`--peak-tflops`; default 989, an H200's
dense bf16). On a machine without CUDA it runs on the CPU (e.g. `--device cpu --preset
audioclip-tiny --steps 2` checks that it works) and the MFU is against the peak given.

    .venv/bin/python bench/bench_gpu.py [--batch-size 64] [--steps 20] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audioclip_core.training.builders import build_audioclip  # noqa: E402
from audioclip_core.training.config import TrainConfig  # noqa: E402
from audioclip_core.training.loop import make_optimizer  # noqa: E402
from audioclip_core.training.steps import audioclip_step  # noqa: E402

CAPTIONS = [["Speech"], ["Dog", "Bark"], ["Music"], ["Siren"], ["Engine"], ["Rain"], ["Guitar"], ["Bird"]]


def batch(n: int, seconds: float, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    audio = (torch.rand(n, 1, int(seconds * 44100), generator=g) * 2 - 1) * 32767
    image = torch.randn(n, 3, size, size, generator=g)
    if device.type == "cuda":
        audio, image = audio.pin_memory(), image.pin_memory()
    return {
        "audio": audio.to(device, non_blocking=True),
        "image": image.to(device, non_blocking=True),
        "text": [CAPTIONS[i % len(CAPTIONS)] for i in range(n)],
    }


def forward_flops(model, b: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()  # one sample: BatchNorm in training mode needs more than one
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(audio=b["audio"][:1], image=b["image"][:1], text=b["text"][:1])
    model.train(was)
    return float(fc.get_total_flops())


def run(mode: str, args, device: torch.device) -> dict:
    cfg = TrainConfig(
        stage="audioclip_full",
        preset=args.preset,
        batch_size=args.batch_size,
        allow_random_init=True,
        compile=mode.endswith("compile"),
    )
    model = build_audioclip(cfg).to(device)
    fast = mode != "fp32"
    if fast:
        model = model.to(memory_format=torch.channels_last)
    b = batch(args.batch_size, args.seconds, model.visual.image_size, device)
    flops = forward_flops(model, b)
    optimizer = make_optimizer(model, cfg)
    step = audioclip_step(use_image=True)
    net = torch.compile(model) if cfg.compile else model
    net.train()
    amp = fast and device.type in ("cuda", "cpu") and not args.no_bf16

    def one():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = step(net, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    rate = args.steps * args.batch_size / dt
    mfu = 3 * flops * rate / (args.peak_tflops * 1e12)
    return {
        "mode": mode,
        "samples_per_s": round(rate, 1),
        "step_ms": round(1000 * dt / args.steps, 1),
        "train_gflop_per_sample": round(3 * flops / 1e9, 1),
        "mfu": round(mfu, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="audioclip-rn50")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0, help="audio crop fed per sample (the paper's 5 s)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    modes = ["fp32", "bf16+channels_last"] + (["bf16+channels_last+compile"] if args.compile else [])
    rows = []
    for mode in modes:
        r = run(mode, args, device)
        rows.append(r)
        print(
            f"{mode:28s} {r['samples_per_s']:8.1f} samples/s  {r['step_ms']:8.1f} ms/step  MFU {r['mfu']:.1%}",
            flush=True,
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "bench": "gpu_full_stage",
                "device": name,
                "preset": args.preset,
                "batch_size": args.batch_size,
                "peak_tflops": args.peak_tflops,
                "rows": rows,
                "speedup": round(rows[-1]["samples_per_s"] / rows[0]["samples_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
