"""One training step of the full tri-modal stage (forward + backward + SGD) at batch 8:
samples/s on the paper preset and the tiny preset, plus the same step with the audio
backbone in channels-last layout. CPU fp32, 2 threads."""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import report, setup, timeit  # noqa: E402

import audioclip_core as ac  # noqa: E402
from audioclip_core.training.config import TrainConfig  # noqa: E402
from audioclip_core.training.loop import make_optimizer  # noqa: E402


def step_fn(model, opt, audio, images, texts, bf16=False):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(audio=audio, image=images, text=texts)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return step


def main() -> None:
    setup()
    rows = []
    for preset, seconds in (("audioclip-rn50", 5.0), ("audioclip-tiny", 4.0)):
        model = ac.build_model(preset).train()
        opt = make_optimizer(model, TrainConfig(stage="audioclip_full", lr=1e-4))
        audio = torch.randn(8, 1, int(44100 * seconds)) * 3000
        images = torch.randn(8, 3, 224, 224)
        texts = [["Dog", "Bark"], ["Rain"], ["Car horn"], ["Bell"], ["Baby cry"], ["Thunder"], ["Tick"], ["Speech"]]
        t = timeit(step_fn(model, opt, audio, images, texts), repeats=3)
        rows.append({"preset": preset, "layout": "contiguous", "samples_per_s": 8 / t, "step_s": t})
        model.audio.to(memory_format=torch.channels_last)
        model.visual.to(memory_format=torch.channels_last)
        t2 = timeit(step_fn(model, opt, audio, images.contiguous(memory_format=torch.channels_last), texts), repeats=3)
        rows.append({"preset": preset, "layout": "channels_last", "samples_per_s": 8 / t2, "step_s": t2,
                     "ratio": t / t2})
        t3 = timeit(step_fn(model, opt, audio, images.contiguous(memory_format=torch.channels_last), texts, True),
                    repeats=3)
        rows.append({"preset": preset, "layout": "channels_last + bf16 autocast", "samples_per_s": 8 / t3,
                     "step_s": t3, "ratio": t / t3})
    report("training step, full tri-modal stage, batch 8", rows)


if __name__ == "__main__":
    main()
