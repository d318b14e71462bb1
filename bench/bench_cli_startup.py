"""Where the time of one `audioclip classify` goes: each row is a fresh Python process, the
median of `--repeats` runs.

    python bench/bench_cli_startup.py                 # the demo preset, 1 and 40 files
    python bench/bench_cli_startup.py --preset audioclip-rn50

Rows, each one step more than the one before: the interpreter alone; `import torch`;
`import torch, open_clip` (open_clip brings torchvision, and torchvision.ops brings
torch._dynamo); the CLI's own module (its heavy imports are deferred to the command); then
`classify` of 1 file and of `--files` files with a freshly saved checkpoint of `--preset`
(random weights: the time does not depend on the values). The difference between the last
two rows over the extra files is the time per file once the process is up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import report  # noqa: E402

CLASSES = ["Sine wave", "White noise", "Pink noise", "Chirp tone", "Clicking", "Siren", "Buzz", "Drum", "Whistle"]


def run(argv: list[str], repeats: int) -> float:
    """Median wall seconds of `argv` in a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="audioclip-demo")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import audioclip_core as ac

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / f"{args.preset}.safetensors"
        ac.save_checkpoint(ac.build_model(args.preset), ckpt)
        rng = np.random.default_rng(0)
        wavs = []
        for i in range(args.files):
            wavs.append(tmp / f"clip{i:03d}.wav")
            sf.write(str(wavs[-1]), 0.1 * rng.standard_normal(4 * 44100), 44100, subtype="PCM_16")
        labels = tmp / "labels.txt"
        labels.write_text("\n".join(CLASSES) + "\n")
        classify = [py, "-m", "audioclip_core.cli", "classify", "-c", str(ckpt), "--labels-file", str(labels)]
        steps = [
            ("python", [py, "-c", "pass"]),
            ("+ import torch", [py, "-c", "import torch"]),
            ("+ import open_clip", [py, "-c", "import torch, open_clip"]),
            ("+ CLI module", [py, "-c", "import torch, open_clip, audioclip_core.cli"]),
            ("classify 1 file", classify + [str(wavs[0]), "-o", str(tmp / "one.json")]),
            (f"classify {args.files} files", classify + [*map(str, wavs), "-o", str(tmp / "all.json")]),
        ]
        rows, before = [], 0.0
        for name, argv in steps:
            seconds = run(argv, args.repeats)
            rows.append({"step": name, "seconds": round(seconds, 3), "added_s": round(seconds - before, 3)})
            before = seconds
        one, many = rows[-2]["seconds"], rows[-1]["seconds"]
        start_up = rows[3]["seconds"]
    per_file_ms = 1000 * (many - one) / (args.files - 1)
    report(
        f"classify start-up ({args.preset})",
        rows,
        {
            "preset": args.preset,
            "imports_share_of_one_file": round(start_up / one, 3),
            "per_extra_file_ms": round(per_file_ms, 1),
        },
    )
    print(
        f"imports (torch, open_clip, the CLI) are {100 * start_up / one:.0f} % of classifying one file; "
        f"each further file in the same call adds {per_file_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
