"""Peak memory of `audioclip embed` against the length of the audio file.

Each row is one fresh CLI process embedding one 48 kHz stereo 16-bit WAV of that length
(so the 44.1 kHz resampling runs too), measured as the process's peak resident set size.
`model-only` is the same process on a 10-second file: the model, torch and one window;
`above model` is what the length of the file adds. Windows are read, embedded and pooled a
batch at a time (`AudioEmbedder`), so that column should not grow with the length.

    python bench/bench_long_audio.py                      # tiny: 1, 20, 180 min; rn50: 20 min
    python bench/bench_long_audio.py --preset audioclip-rn50 --minutes 1,20,180
"""

from __future__ import annotations

import argparse
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

RATE = 48000
# a child process that runs the CLI and prints its own peak RSS (ru_maxrss is in KiB on Linux)
CHILD = (
    "import resource, sys; from audioclip_core.cli import main; rc = main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)"
)


def write_wav(path: Path, minutes: float) -> None:
    """A tone sweep with noise, written a minute at a time (this script stays small too)."""
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as f:
        for start in range(0, total, 60 * RATE):
            n = min(60 * RATE, total - start)
            t = (start + np.arange(n)) / RATE
            tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 7)) * t)
            f.write(np.stack([tone, tone[::-1]], 1) + 0.01 * rng.standard_normal((n, 2)))


def measure(checkpoint: Path, audio: Path, batch_size: int) -> tuple[float, float]:
    out = audio.with_suffix(".json")
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            "embed",
            "-c",
            str(checkpoint),
            str(audio),
            "-o",
            str(out),
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    seconds = time.perf_counter() - start
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")]
    if proc.returncode != 0 or not line or line[0].split()[2] != "0":
        raise SystemExit(f"embedding {audio} failed:\n{proc.stdout}\n{proc.stderr}")
    return int(line[0].split()[1]) / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help="preset(s) to measure (default: tiny and rn50)")
    ap.add_argument("--minutes", default=None, help="comma-separated lengths (default 1,20,180 tiny; 20 rn50)")
    ap.add_argument("--batch-size", type=int, default=2, help="the CLI's --batch-size (its default: 2)")
    ap.add_argument("--original", help="ignored (make bench passes it to every benchmark)")
    args = ap.parse_args()
    import torch

    import audioclip_core as ac

    presets = args.preset or ["audioclip-tiny", "audioclip-rn50"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-long-audio-") as tmp:
        tmp = Path(tmp)
        files: dict[float, Path] = {}
        for preset in presets:
            default = "1,20,180" if preset == "audioclip-tiny" else "20"
            lengths = [float(m) for m in (args.minutes or default).split(",")]
            torch.manual_seed(0)
            ckpt = tmp / f"{preset}.safetensors"
            ac.save_checkpoint(ac.build_model(preset), ckpt)
            wav = files.setdefault(1 / 6, tmp / "ten_seconds.wav")
            if not wav.exists():
                write_wav(wav, 1 / 6)
            base, _ = measure(ckpt, wav, args.batch_size)
            for minutes in lengths:
                wav = files.get(minutes) or tmp / f"{minutes:g}min.wav"
                if not wav.exists():
                    write_wav(wav, minutes)
                    files[minutes] = wav
                peak, seconds = measure(ckpt, wav, args.batch_size)
                rows.append(
                    {
                        "preset": preset,
                        "minutes": minutes,
                        "file_MB": round(wav.stat().st_size / 2**20),
                        "peak_RSS_MB": round(peak),
                        "model_only_MB": round(base),
                        "above_model_MB": round(peak - base),
                        "seconds": round(seconds, 1),
                        "audio_x_realtime": round(minutes * 60 / seconds, 1),
                    }
                )
                print(rows[-1], flush=True)
            ckpt.unlink()
    report(
        "long audio: peak RSS of `audioclip embed` vs file length",
        rows,
        {"batch_size": args.batch_size, "rate": RATE, "channels": 2},
    )


if __name__ == "__main__":
    main()
