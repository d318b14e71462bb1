"""One training step of the full tri-modal stage (forward + backward + SGD) at batch 8:
samples/s on the paper preset and the tiny preset. CPU fp32, 2 threads.

Layouts/settings, in the order they are measured (malloc tuning is process-wide, so the
rows without it come first):
  original             : the published code (only with --original DIR, see bench/original.py);
  contiguous           : this library, NCHW tensors, default allocator;
  channels_last        : convolutions in channels-last layout;
  channels_last+malloc : plus malloc keeping freed memory - what `training.loop.train` does;
  ...+bf16 autocast    : the opt-in `cpu_bf16` (front end stays float32);
  original+malloc      : the original under the same allocator setting.
Ratios are against the original when it is given, else against contiguous. The first
step's loss of both implementations on the same weights and batch is printed.
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import report, setup, timeit  # noqa: E402
from original import load_original, original_dir  # noqa: E402

import audioclip_core as ac  # noqa: E402
from audioclip_core.perf import tune_malloc  # noqa: E402
from audioclip_core.training.config import TrainConfig  # noqa: E402
from audioclip_core.training.loop import make_optimizer  # noqa: E402

TEXTS = [["Dog", "Bark"], ["Rain"], ["Car horn"], ["Bell"], ["Baby cry"], ["Thunder"], ["Tick"], ["Speech"]]


def ours_step(model, opt, audio, images, bf16=False):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(audio=audio, image=images, text=TEXTS)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def original_step(model, opt, audio, images):
    batch_indices = torch.arange(len(TEXTS))  # its default (a float tensor) cannot index a list

    def step():
        _, loss = model(audio=audio, image=images, text=TEXTS, batch_indices=batch_indices)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    setup()
    odir = original_dir()
    cfg = TrainConfig(stage="audioclip_full", lr=1e-4)
    runs = {}
    for preset, seconds in (("audioclip-rn50", 5.0), ("audioclip-tiny", 4.0)):
        model = ac.build_model(preset).train()
        run = {
            "model": model,
            "audio": torch.randn(8, 1, int(44100 * seconds)) * 3000,
            "images": torch.randn(8, 3, 224, 224),
            "rows": [],
        }
        if odir and preset == "audioclip-rn50":
            orig = load_original(odir, model)
            with torch.no_grad():
                _, loss_orig = orig(
                    audio=run["audio"], image=run["images"], text=TEXTS, batch_indices=torch.arange(len(TEXTS))
                )
                run["first_loss"] = {
                    "original": float(loss_orig),
                    "ours": float(model(audio=run["audio"], image=run["images"], text=TEXTS).loss),
                }
            run["orig"] = (orig, make_optimizer(orig, cfg))
        run["opt"] = make_optimizer(model, cfg)
        runs[preset] = run

    def measure(preset, name, step, repeats=3):
        t = timeit(step, repeats=repeats)
        runs[preset]["rows"].append({"preset": preset, "setting": name, "samples_per_s": 8 / t, "step_s": t})

    def channels_last(run):
        run["model"].to(memory_format=torch.channels_last)
        return run["images"].contiguous(memory_format=torch.channels_last)

    # default allocator
    for preset, run in runs.items():
        if "orig" in run:
            measure(preset, "original", original_step(*run["orig"], run["audio"], run["images"]))
        measure(preset, "contiguous", ours_step(run["model"], run["opt"], run["audio"], run["images"]))
        measure(preset, "channels_last", ours_step(run["model"], run["opt"], run["audio"], channels_last(run)))
    malloc = tune_malloc()
    for preset, run in runs.items():
        images = channels_last(run)
        measure(preset, "channels_last+malloc", ours_step(run["model"], run["opt"], run["audio"], images))
        measure(
            preset,
            "channels_last+malloc+bf16 autocast",
            ours_step(run["model"], run["opt"], run["audio"], images, bf16=True),
        )
        if "orig" in run:
            measure(preset, "original+malloc", original_step(*run["orig"], run["audio"], run["images"]))

    rows = []
    for _preset, run in runs.items():
        base = run["rows"][0]
        for r in run["rows"]:
            r[f"ratio_vs_{base['setting']}"] = base["step_s"] / r["step_s"]
            rows.append(r)
    report(
        "training step, full tri-modal stage, batch 8",
        rows,
        {
            "malloc_tuned": malloc,
            "original": str(odir) if odir else None,
            "first_step_loss": runs["audioclip-rn50"].get("first_loss"),
        },
    )
    if not odir:
        print("(no --original DIR / AUDIOCLIP_ORIGINAL_DIR: ratios are against contiguous)")


if __name__ == "__main__":
    main()
