"""Encoder throughput on the paper preset, CPU fp32 (and bf16), 2 threads.

Modes of the audio encoder, all on the same weights and the same 8 mono 5 s clips:
  reference-path : the published algorithm as the original runs it - fbsp kernel
                   recomputed on every call, eager, contiguous tensors;
  default        : the library's default (kernel cached while the weights do not change);
  fast-fp32      : enable_fast_inference(): channels-last + torch.compile of the backbone;
  fast-bf16      : the same with bfloat16 autocast for the backbone (front end fp32).
Ratios are against reference-path measured in the same run; cosine against reference-path.
GFLOP per clip is counted with torch's FlopCounterMode; the matmul peak is measured here.
"""
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import matmul_peak, report, setup, timeit  # noqa: E402

import audioclip_core as ac  # noqa: E402


def main() -> None:
    setup()
    model = ac.build_model("audioclip-rn50").eval()
    clips = torch.randn(8, 1, 220500) * 3000
    images = torch.randn(8, 3, 224, 224)
    texts = ["a dog barking", "rain on a roof", "a car horn", "church bells", "a crying baby", "thunder",
             "a clock ticking", "people talking in a cafe"]
    head = model.audio
    rows = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            head(clips[:1])
        gflop_clip = counter.get_total_flops() / 1e9
        peak = matmul_peak()

        def reference_path():
            head.fbsp._kernel_cache = None  # the original recomputes the kernel on every call
            return model.encode_audio(clips)

        ref = reference_path()
        t_ref = timeit(reference_path, repeats=3)
        modes = [("reference-path", reference_path, t_ref, ref)]
        t = timeit(lambda: model.encode_audio(clips), repeats=3)
        modes.append(("default", None, t, model.encode_audio(clips)))
        for name, bf16 in (("fast-fp32", False), ("fast-bf16", True)):
            head.enable_fast_inference(compile=True, channels_last=True, bf16=bf16)
            out = model.encode_audio(clips)  # compiles
            t = timeit(lambda: model.encode_audio(clips), repeats=3)
            modes.append((name, None, t, out))
            head.disable_fast_inference()
        for name, _, t, out in modes:
            rows.append({"item": f"encode_audio[{name}]", "items_per_s": 8 / t, "ratio_vs_reference": t_ref / t,
                         "gflop_per_s": 8 * gflop_clip / t, "share_of_matmul_peak": 8 * gflop_clip / t / peak,
                         "min_cosine": float(F.cosine_similarity(out, ref).min())})
        t = timeit(lambda: model.encode_image(images), repeats=3)
        rows.append({"item": "encode_image", "items_per_s": 8 / t})
        t = timeit(lambda: model.encode_text(texts), repeats=3)
        rows.append({"item": "encode_text", "items_per_s": 8 / t})
    report("encoders (paper preset, 8 items)", rows, {"audio_gflop_per_clip": gflop_clip, "matmul_peak_gflops": peak})


if __name__ == "__main__":
    main()
