"""`make bench`: every benchmark, one after the other (each prints a table and a JSON line).
Arguments (`--original DIR`) are passed on to the scripts that compare with the original code.
The AudioSet data path, the loader and - on a CUDA machine - the GPU step follow."""

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
for script in ("bench_encoders.py", "bench_train.py", "bench_data.py", "bench_long_audio.py"):
    print(f"\n### {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=True)
for script, args in [
    ("bench_audioset_path.py", ["--segments", "300"]),
    ("bench_loader.py", []),
    ("bench_cli_startup.py", []),
] + ([("bench_gpu.py", ["--compile"])] if torch.cuda.is_available() else []):
    print(f"\n### {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
