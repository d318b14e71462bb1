"""`make bench`: every benchmark, one after the other (each prints a table and a JSON line).
Arguments (`--original DIR`) are passed on to each script."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in ("bench_encoders.py", "bench_train.py", "bench_data.py", "bench_long_audio.py"):
    print(f"\n### {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=True)
