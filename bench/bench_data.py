"""Data path: clip extraction (audio + 10 frames, one ffmpeg pass) per segment against
ffmpeg's decode-only time of the same file, and the training loader's samples/s against
what a training step consumes (tiny preset, demo data). CPU, 2 threads."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import report, setup, timeit  # noqa: E402

from audioclip_core.acquisition.media import extract_clip  # noqa: E402
from audioclip_core.audio import ffmpeg_exe  # noqa: E402
from audioclip_core.data.demo_dataset import CLASSES, write_video  # noqa: E402
from audioclip_core.perf import tune_malloc  # noqa: E402


def main() -> None:
    setup()
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    rng = np.random.default_rng(0)
    video = work / "clip.mp4"
    write_video(video, [CLASSES[0]], 10.0, rng, size=(360, 640), fps=25)
    n = 0

    def extract():
        nonlocal n
        n += 1
        extract_clip(video, work / "out", f"seg{n}", start=0.0, end=10.0)

    def decode_only():
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(video), "-f", "null", "-"], check=True)

    t_ex, t_dec = timeit(extract, repeats=5), timeit(decode_only, repeats=5)
    rows = [
        {"item": "extract audio + 10 frames (10 s, 640x360)", "seconds": t_ex, "ratio_vs_decode_only": t_ex / t_dec},
        {"item": "ffmpeg decode only", "seconds": t_dec},
    ]

    # loader vs step, on clips like the demo's
    from audioclip_core.data.datasets import clipset_dataset, collate
    from audioclip_core.data.demo_dataset import generate_esc50
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import make_optimizer

    generate_esc50(work / "esc50", per_fold_class=1)
    meta = pd.read_csv(work / "esc50" / "meta" / "esc50.csv")
    df = pd.DataFrame(
        {
            "audio_path": [str(work / "esc50" / "audio" / f) for f in meta["filename"]],
            "class_name": meta["category"].str.replace("_", " "),
            "class_id": meta["target"],
            "path": meta["filename"],
            "status": "ok",
        }
    )
    cfg = TrainConfig(stage="audioclip_finetune", preset="audioclip-tiny", batch_size=12, clip_seconds=4.0)
    classes = sorted(df["class_name"].unique())
    ds = clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed)
    batch_idx = list(range(12))
    t_load = timeit(lambda: collate([ds[i] for i in batch_idx]), repeats=5)
    model = builders.build_classifier(cfg, len(classes))
    model.to(memory_format=torch.channels_last)  # the step as training.loop.train runs it
    tune_malloc()
    opt = make_optimizer(model, cfg)
    batch = collate([ds[i] for i in batch_idx])

    def step():
        loss, _ = steps.classifier_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_step = timeit(step, repeats=3)
    rows.append(
        {
            "item": "loader, 1 process (tiny preset, 4 s clips)",
            "samples_per_s": 12 / t_load,
            "ratio_vs_step": t_step / t_load,
        }
    )
    rows.append({"item": "training step consumes", "samples_per_s": 12 / t_step})
    report("data path", rows)


if __name__ == "__main__":
    main()
