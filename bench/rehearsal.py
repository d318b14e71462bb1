"""The paper profile at its real size, rehearsed end to end through Dagster on real media.

Nothing here is a stand-in for the pipeline: the whole lineage runs as `make demo` runs it
(`python -m pipelines.backfill`: one asset backfill, the daemon, the run queue, the gates),
with the `paper` profile and the `audioclip-rn50` preset. What differs is the input, made here:

* weights in the official layouts, with random values (no download): OpenAI's CLIP RN50
  (`RN50.pt`, a TorchScript archive of half-precision tensors with its three scalars) and
  torchvision's ImageNet `resnext50_32x4d` (a state dict), given to `clip_towers` and stage 1
  through the backfill's run config, as a user gives the real files;
* AudioSet: official-format segment lists (`balanced_train`, `eval`) whose ids are served on
  127.0.0.1 from real footage as YouTube serves it (720p H.264, 480p VP9, 360p H.264 with their
  own audio; `bench_audioset_path.py --real`), through the production yt-dlp path;
* ESC-50: the 20 real clips of ../shared/data/esc50 (2 per ESC-10 class), four per fold so that
  all five folds have test clips (renamed to their fold; the rest of each row as published);
* UrbanSound8K: two real metadata rows per fold, their audio cut from the real footage's
  soundtracks (44.1 kHz stereo, the rows' lengths): the sounds do not match the labels, which
  no figure here depends on.

Every stage trains one short epoch (`--batch-size` x `--steps` samples) on the CPU, with
`quality_gates: record` (untrained weights cannot pass `above_chance`: the failure is recorded
as a warning instead of setting the stage aside); the evaluation assets then make the four
tables. Printed per training stage: seconds per sample,
peak RSS, checkpoint size and the run's wall time (Dagster's step stats); then a capacity plan:
the FLOPs of one training sample of each stage (counted on a forward and backward pass at the
paper's clip lengths) and the hours one epoch of the full AudioSet takes on 1 and 8 GPUs at a
stated throughput (`--gpu-tflops`, `--mfu`). One JSON line at the end.

    .venv/bin/python bench/rehearsal.py [--workdir DIR] [--batch-size 4] [--steps 2]    # make rehearsal

Not in `make test`: about 20 minutes on 2 cores, and ~25 GB of disk (30 GB free are asked for).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_audioset_path import LABELS, make_real_media, serve, ytid_of  # noqa: E402

PRESET = "audioclip-rn50"
TRAINING = (
    "clip_towers",
    "esresnext_audioset",
    "audioclip_partial",
    "audioclip_full",
    "esresnext_esc50",
    "esresnext_us8k",
    "audioclip_partial_esc50",
    "audioclip_partial_us8k",
    "audioclip_esc50",
    "audioclip_us8k",
)
TABLES = ("table1_esresnext", "table2_audioclip", "table3_zero_shot", "table4_querying")
NEEDS_GB = 30  # free disk: the data root of one rehearsal is ~25 GB (45 fine-tuned folds at full size)
# one epoch of "the full AudioSet" below: the paper's ~1.8M training clips
FULL_AUDIOSET = 1_800_000


# -- inputs -----------------------------------------------------------------------------------
def write_weights(folder: Path) -> dict[str, Path]:
    """RN50.pt (OpenAI's layout) and resnext50_32x4d.pth (torchvision's), random values."""
    import torch
    import torchvision

    from audioclip_core.checkpoints import official_state_dict
    from audioclip_core.models import build_from_preset
    from audioclip_core.torchscript import write_torchscript_state

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = official_state_dict(build_from_preset(PRESET), "clip")
    clip.update(
        {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    )
    rn50 = write_torchscript_state(clip, folder / "RN50.pt")
    resnext = folder / "resnext50_32x4d.pth"
    torch.save(torchvision.models.resnext50_32x4d().state_dict(), resnext)
    return {"clip_weights": rn50, "imagenet_weights": resnext}


def write_audioset(folder: Path, media: list[Path], train: int, evaluation: int, seconds: float) -> dict[str, Path]:
    """`balanced_train_segments.csv` and `eval_segments.csv` in the official format; returns
    the media each id is served from."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    served: dict[str, Path] = {}
    for name, n, offset in (("balanced_train", train, 0), ("eval", evaluation, train)):
        lines = [
            f"# Segments csv created by bench/rehearsal.py ({name})",
            f"# num_ytids={n}, num_segs={n}",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ]
        for i in range(offset, offset + n):
            y = ytid_of(i)
            start = float(rng.choice([0.0, 2.5, 5.0, 7.5])) if seconds >= 20 else 0.0
            labels = ",".join(sorted({LABELS[i % len(LABELS)], LABELS[(i * 7 + 3) % len(LABELS)]}))
            lines.append(f'{y}, {start:.3f}, {start + 10:.3f}, "{labels}"')
            served[y] = media[i % len(media)]
        (folder / f"{name}_segments.csv").write_text("\n".join(lines) + "\n")
    resources = REPO / "audioclip_core" / "resources" / "audioset"
    for name in ("class_labels_indices.csv", "ontology.json"):
        shutil.copy(resources / name, folder / name)
    return served


def write_esc50(folder: Path, shared: Path) -> int:
    """The real clips, four per fold (a class's two clips in different folds)."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    have = {p.name for p in (shared / "esc50" / "audio").glob("*.wav")}
    with open(shared / "esc50" / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = sorted((r for r in reader if r["filename"] in have), key=lambda r: (int(r["target"]), r["filename"]))
    out = []
    for i, row in enumerate(rows):
        fold = i % 5 + 1
        name = f"{fold}-" + row["filename"].split("-", 1)[1]
        shutil.copy(shared / "esc50" / "audio" / row["filename"], folder / "audio" / name)
        out.append({**row, "filename": name, "fold": str(fold)})
    with open(folder / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out)
    shutil.copy(shared / "esc50" / "LICENSE", folder / "LICENSE")
    return len(out)


def write_us8k(folder: Path, shared: Path, media: list[Path], per_fold: int = 2) -> int:
    """`per_fold` real metadata rows of each fold (distinct classes), their audio cut from `media`."""
    from audioclip_core.audio import ffmpeg_exe

    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    with open(shared / "urbansound8k" / "metadata" / "UrbanSound8K.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = list(reader)
    picked = []
    for fold in range(1, 11):
        classes = set()
        for row in rows:
            long_enough = float(row["end"]) - float(row["start"]) > 1
            if int(row["fold"]) == fold and row["classID"] not in classes and long_enough:
                classes.add(row["classID"])
                picked.append(row)
                if len(classes) == per_fold:
                    break
    for i, row in enumerate(picked):
        out = folder / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        out.parent.mkdir(parents=True, exist_ok=True)
        length = min(4.0, float(row["end"]) - float(row["start"]))
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-y", "-ss", f"{2.0 + 1.5 * i:.2f}", "-t", f"{length:.3f}"]
            + ["-i", str(media[i % len(media)]), "-vn", "-ac", "2", "-ar", "44100", "-c:a", "pcm_s16le", str(out)],
            check=True,
        )
    with open(folder / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(picked)
    return len(picked)


def run_config(weights: dict[str, Path], batch_size: int, steps: int) -> dict:
    """The backfill's run config: every training asset on the paper profile, one short epoch."""
    short = {
        "profile": "paper",
        "epochs": 1,
        "batch_size": batch_size,
        "max_steps_per_epoch": steps,
        "keep_epochs": [],
        "device": "cpu",
        # random weights and one short epoch cannot beat chance: recorded as a warning, not blocking
        "quality_gates": "record",
    }
    ops = {name: {"config": dict(short)} for name in TRAINING}
    ops["clip_towers"]["config"]["clip_weights"] = str(weights["clip_weights"])
    ops["esresnext_audioset"]["config"]["imagenet_weights"] = str(weights["imagenet_weights"])
    return {"ops": ops}


# -- figures ----------------------------------------------------------------------------------
def stage_figures(home: Path) -> dict[str, dict]:
    """Per training asset: its materialisations' seconds per sample, peak RSS, checkpoint sizes
    and its runs' wall time (from the Dagster instance)."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    out: dict[str, dict] = {}
    with dg.DagsterInstance.get() as instance:
        for name in (*TRAINING, *TABLES):
            records = instance.fetch_materializations(dg.AssetKey(name), limit=100).records
            if not records:
                out[name] = {"materialised": 0}
                continue
            metas = [r.asset_materialization.metadata for r in records]
            runs = {r.run_id for r in records}
            wall = 0.0
            for run_id in runs:
                for s in instance.get_run_step_stats(run_id):
                    if s.step_key == name and s.end_time and s.start_time:
                        wall += s.end_time - s.start_time
            row: dict = {"materialised": len(records), "runs": len(runs), "step_seconds": round(wall, 1)}
            sps = [m["seconds_per_sample"].value for m in metas if "seconds_per_sample" in m]
            rss = [m["peak_rss_mb"].value for m in metas if "peak_rss_mb" in m]
            sizes = [
                Path(m["checkpoint"].value).stat().st_size
                for m in metas
                if "checkpoint" in m and Path(m["checkpoint"].value).is_file()
            ]
            if sps:
                row["seconds_per_sample"] = round(float(np.median(sps)), 2)
            if rss:
                row["peak_rss_mb"] = round(max(rss))
            if sizes:
                row["checkpoint_mb"] = round(float(np.median(sizes)) / 1e6, 1)
                row["checkpoints_mb_total"] = round(sum(sizes) / 1e6, 1)
            out[name] = row
    return out


def storage(root: Path) -> dict[str, float]:
    """GB on disk under the data root, its checkpoints and MLflow; a file with several hard
    links (MLflow's copy of a checkpoint) counted once."""
    seen: set[tuple[int, int]] = set()

    def size(folder: Path) -> float:
        total = 0
        for path in folder.rglob("*"):
            st = path.lstat()
            if path.is_file() and not path.is_symlink() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        return total / 1e9

    checkpoints = size(root / "checkpoints")
    mlflow = size(root / "mlflow")
    rest = size(root)
    return {
        "data_root_gb": round(checkpoints + mlflow + rest, 2),
        "checkpoints_gb": round(checkpoints, 2),
        "mlflow_gb": round(mlflow, 2),
    }


def training_flops() -> dict[str, float]:
    """FLOPs of one training sample (forward and backward, counted) of each AudioSet stage and
    of fine-tuning, at the paper's clip lengths (AudioSet 10 s, ESC-50 5 s)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from audioclip_core.models import AudioConfig, ESResNeXt, build_from_preset, get_preset
    from audioclip_core.training.steps import audioclip_step, classifier_step

    torch.manual_seed(0)
    b = 2

    def count(model, step, batch) -> float:
        with FlopCounterMode(display=False) as fc:
            loss, _ = step(model, batch)
            loss.backward()
        return float(fc.get_total_flops()) / b

    def batch(seconds: float, classes: int = 0) -> dict:
        out = {
            "audio": torch.randn(b, 1, int(seconds * 44100)) * 3000,
            "image": torch.randn(b, 3, 224, 224),
            "text": [["Speech"], ["Music", "Guitar"]],
        }
        if classes:
            out["target"] = torch.zeros(b, classes)
        return out

    model = build_from_preset(PRESET)
    head = ESResNeXt(AudioConfig.from_dict({**get_preset(PRESET)["audio_cfg"], "num_classes": 527}))
    figures = {"esresnext_audioset": count(head.train(), classifier_step, batch(10.0, 527))}
    model.train().freeze(image=True, text=True)
    figures["audioclip_partial"] = count(model, audioclip_step(use_image=True), batch(10.0))
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)  # stage 3 trains all three heads
    figures["audioclip_full"] = count(model, audioclip_step(use_image=True), batch(10.0))
    model.zero_grad(set_to_none=True)
    model.freeze(image=True, text=True)
    figures["audioclip_finetune (ESC-50, 5 s)"] = count(model, audioclip_step(use_image=False), batch(5.0))
    return figures


def capacity(flops: dict[str, float], tflops: float, mfu: float, gpus: list[int], samples: int) -> list[dict]:
    rate = tflops * 1e12 * mfu
    rows = []
    for stage, f in flops.items():
        if "finetune" in stage:
            continue
        rows.append(
            {
                "stage": stage,
                "gflop_per_sample": round(f / 1e9, 1),
                "samples_per_s_per_gpu": round(rate / f),
                **{f"hours_per_epoch_{g}_gpu": round(samples * f / (g * rate) / 3600, 3) for g in gpus},
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    ap.add_argument("--train-segments", type=int, default=24)
    ap.add_argument("--eval-segments", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="training steps per epoch (max_steps_per_epoch)")
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="GPU peak, dense bf16 (H200: 989)")
    ap.add_argument("--mfu", type=float, default=0.40, help="share of the peak a training step reaches")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--audioset-samples", type=int, default=FULL_AUDIOSET)
    args = ap.parse_args()

    shared = Path(os.environ.get("AUDIOCLIP_SHARED_DIR", REPO.parent / "shared")) / "data"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free / 1e9
    if free < NEEDS_GB:  # a full disk mid-run fails the stages that write then, not at the start
        raise SystemExit(f"{work}: {free:.0f} GB free; the rehearsal's data root takes about 25 GB (need {NEEDS_GB})")
    for sub in ("audioset", "esc50", "us8k", "data", "dagster_home"):
        shutil.rmtree(work / sub, ignore_errors=True)
    t0 = time.perf_counter()
    media = make_real_media(Path(tempfile.gettempdir()) / "bench-audioset-real", shared / "video")
    weights = write_weights(work / "weights")
    served = write_audioset(work / "audioset", media, args.train_segments, args.eval_segments, 28.0)
    n_esc = write_esc50(work / "esc50", shared)
    n_us8k = write_us8k(work / "us8k", shared, media)
    config = work / "run_config.json"
    config.write_text(json.dumps(run_config(weights, args.batch_size, args.steps), indent=2))
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    print(
        f"inputs ({time.perf_counter() - t0:.0f} s): {len(served)} AudioSet segments served from {len(media)} real "
        f"videos, {n_esc} ESC-50 clips, {n_us8k} UrbanSound8K clips, random {PRESET} weights in {work / 'weights'}",
        flush=True,
    )

    httpd, url = serve(served)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AUDIOCLIP_DATA_ROOT": str(work / "data"),
        "AUDIOCLIP_AUDIOSET_DIR": str(work / "audioset"),
        "AUDIOCLIP_ESC50_DIR": str(work / "esc50"),
        "AUDIOCLIP_US8K_DIR": str(work / "us8k"),
        "AUDIOCLIP_TRAIN_PROFILE": "paper",
        "AUDIOCLIP_YOUTUBE_URL_TEMPLATE": url,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(REPO),
    }
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", "--label", "rehearsal", "--config", str(config)], cwd=REPO, env=env
    )
    lineage_s = time.perf_counter() - t
    httpd.shutdown()
    stages = stage_figures(home)
    sizes = storage(work / "data")
    flops = training_flops()
    plan = capacity(flops, args.gpu_tflops, args.mfu, args.gpus, args.audioset_samples)

    minutes = lineage_s / 60
    print(f"\n== Paper profile ({PRESET}) rehearsal: the lineage in {minutes:.1f} min, exit {proc.returncode} ==")
    print(f"{'asset':26s} {'runs':>4s} {'s/sample':>9s} {'peak RSS':>9s} {'checkpoint':>11s} {'step wall':>10s}")
    for name, row in stages.items():
        if not row.get("materialised"):
            print(f"{name:26s} not materialised")
            continue
        sps = f"{row['seconds_per_sample']:.2f}" if "seconds_per_sample" in row else "-"
        rss = f"{row['peak_rss_mb'] / 1024:.1f} GiB" if "peak_rss_mb" in row else "-"
        ckpt = f"{row['checkpoint_mb']:.0f} MB" if "checkpoint_mb" in row else "-"
        print(f"{name:26s} {row['runs']:4d} {sps:>9s} {rss:>9s} {ckpt:>11s} {row['step_seconds']:9.0f}s")
    print(
        f"\nCapacity plan: one epoch of {args.audioset_samples:,} AudioSet segments, FLOPs counted per training "
        f"sample (forward + backward), at {args.gpu_tflops:g} TFLOP/s x {args.mfu:.0%} per GPU"
    )
    for row in plan:
        hours = ", ".join(f"{60 * row[f'hours_per_epoch_{g}_gpu']:.0f} min on {g}" for g in args.gpus)
        print(
            f"  {row['stage']:20s} {row['gflop_per_sample']:6.1f} GFLOP/sample, {row['samples_per_s_per_gpu']:,} "
            f"samples/s per GPU; an epoch: {hours} GPU(s) (linear scaling assumed)"
        )
    print("  30 epochs per stage (the paper): x30. The loader must keep up: see bench/bench_loader.py's cores per GPU.")
    print(
        f"Storage: the data root {sizes['data_root_gb']:.2f} GB, of it checkpoints {sizes['checkpoints_gb']:.2f} GB "
        f"and MLflow {sizes['mlflow_gb']:.2f} GB (hard links counted once)"
    )
    out = {
        "bench": "rehearsal",
        "preset": PRESET,
        "cpus": os.cpu_count(),
        "lineage_s": round(lineage_s, 1),
        "exit": proc.returncode,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps,
        "stages": stages,
        "flops_per_sample": {k: round(v / 1e9, 1) for k, v in flops.items()},
        "assumed_gpu": {"tflops_bf16": args.gpu_tflops, "mfu": args.mfu},
        "capacity": plan,
        "storage": sizes,
    }
    print(json.dumps(out))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
