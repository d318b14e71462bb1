"""Encoder throughput on the paper preset, CPU fp32 (and bf16), 2 threads.

Modes of the audio encoder, all on the same weights and the same 8 mono 5 s clips:
  original       : the published code (only with --original DIR, see bench/original.py);
  reference-path : this library run the way the original runs - fbsp kernel recomputed on
                   every call, eager, contiguous tensors, the default allocator;
  default        : the library's default (kernel cached while the weights do not change);
  --- from here on malloc keeps freed memory (audioclip_core.perf.tune_malloc) ---
  default+malloc : the default path with that allocator setting;
  fast-fp32      : enable_fast_inference(): channels-last, backbone compiled with frozen
                   weights (BatchNorm folded, oneDNN-packed weights);
  fast-bf16      : the same with bfloat16 autocast for the backbone (front end fp32);
  original+malloc: the original again, under the same allocator setting.
Ratios are against the original when it is given, else against reference-path; max|d| and
cosine against the original (else reference-path). GFLOP per clip is counted with torch's
FlopCounterMode; the matmul peaks (fp32, bf16) are measured here, so the distance to the
limit is printed (the bf16 row against the bf16 peak).
"""

import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import matmul_peak, report, setup, timeit  # noqa: E402
from original import load_original, original_dir  # noqa: E402

import audioclip_core as ac  # noqa: E402
from audioclip_core.perf import tune_malloc  # noqa: E402

TEXTS = [
    "a dog barking",
    "rain on a roof",
    "a car horn",
    "church bells",
    "a crying baby",
    "thunder",
    "a clock ticking",
    "people talking in a cafe",
]


def main() -> None:
    setup()
    model = ac.build_model("audioclip-rn50").eval()
    odir = original_dir()
    orig = load_original(odir, model) if odir else None
    clips = torch.randn(8, 1, 220500) * 3000
    images = torch.randn(8, 3, 224, 224)
    head = model.audio
    modes = []  # (name, seconds, output)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            head(clips[:1])
        gflop_clip = counter.get_total_flops() / 1e9
        peak = matmul_peak()
        peak_bf16 = matmul_peak(dtype=torch.bfloat16)

        def measure(name, fn, repeats=3):
            out = fn()  # warm-up (and compilation where there is one)
            modes.append((name, timeit(fn, repeats=repeats, warmup=0), out))

        if orig is not None:
            measure("original", lambda: orig.encode_audio(clips))

        def reference_path():
            head.fbsp._kernel_cache = None  # the original recomputes the kernel on every call
            return model.encode_audio(clips)

        measure("reference-path", reference_path)
        measure("default", lambda: model.encode_audio(clips))
        malloc = tune_malloc()
        measure("default+malloc", lambda: model.encode_audio(clips))
        for name, bf16 in (("fast-fp32", False), ("fast-bf16", True)):
            head.enable_fast_inference(bf16=bf16)
            measure(name, lambda: model.encode_audio(clips))
            head.disable_fast_inference()
        if orig is not None:
            measure("original+malloc", lambda: orig.encode_audio(clips))

        base_name, t_base, base = modes[0]
        rows = []
        for name, t, out in modes:
            # against the peak of the dtype the backbone computes in
            row_peak = peak_bf16 if name.endswith("bf16") else peak
            rows.append(
                {
                    "item": f"encode_audio[{name}]",
                    "items_per_s": 8 / t,
                    f"ratio_vs_{base_name}": t_base / t,
                    "gflop_per_s": 8 * gflop_clip / t,
                    "share_of_matmul_peak": 8 * gflop_clip / t / row_peak,
                    "max_abs_diff": float((out - base).abs().max()),
                    "min_cosine": float(F.cosine_similarity(out, base).min()),
                }
            )

        tokens = model.tokenize(TEXTS)
        encoders = [
            ("encode_image", lambda: model.encode_image(images)),
            ("encode_text", lambda: model.encode_text(TEXTS)),
        ]
        if orig is not None:
            encoders += [
                ("encode_image[original]", lambda: orig.encode_image(images)),
                ("encode_text[original]", lambda: orig.encode_text([[t] for t in TEXTS])),
            ]
        for name, fn in encoders:
            t = timeit(fn, repeats=3)
            rows.append({"item": name, "items_per_s": 8 / t})
        if orig is not None:
            d_img = float((model.encode_image(images) - orig.encode_image(images)).abs().max())
            d_txt = float((model.encode_text(tokens) - orig.encode_text([[t] for t in TEXTS])).abs().max())
        else:
            d_img = d_txt = None
    report(
        "encoders (paper preset, 8 items)",
        rows,
        {
            "audio_gflop_per_clip": gflop_clip,
            "matmul_peak_gflops": peak,
            "bf16_matmul_peak_gflops": peak_bf16,
            "malloc_tuned": malloc,
            "original": str(odir) if odir else None,
            "image_max_abs_diff_vs_original": d_img,
            "text_max_abs_diff_vs_original": d_txt,
        },
    )
    if orig is None:
        print("(no --original DIR / AUDIOCLIP_ORIGINAL_DIR: ratios are against reference-path)")


if __name__ == "__main__":
    main()
