"""Process-level settings for large-tensor work on CPUs.

The audio backbone's activations are tens of MB each (a [8, 256, 86, 98] float32 tensor is
69 MB). glibc's malloc serves every block above 32 MB with a fresh `mmap` and returns it
with `munmap` when freed, so each training step or batch page-faults and zeroes gigabytes
that it had a moment ago. `tune_malloc()` makes malloc keep freed memory for reuse instead.
Measured with `make bench` on the paper preset, 2 threads: the full-stage training step
1.12x, the compiled audio encoder 1.2-1.3x, at the same outputs. The cost is resident
memory that stays near its peak (8.1 GB instead of 6.5 GB for a batch-8 training step).
Applied by `training.loop.train`, the evaluation assets, the `audioclip` CLI and
`ESResNeXt.enable_fast_inference`; a library user calls it where the process is theirs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from typing import Optional

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory above this at the top of the heap still goes back


def tune_malloc() -> bool:
    """Keep freed memory in the process for reuse (glibc only). Idempotent: the two mallopt
    calls set process-wide values, so calling again changes nothing.

    Returns True when the setting is in effect. `AUDIOCLIP_MALLOC_TUNING=0` turns it off;
    on a C library other than glibc it does nothing and returns False."""
    applied = False
    if os.environ.get("AUDIOCLIP_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and friends have no mallopt
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return applied


def training_slots() -> int:
    """How many training runs share this machine at once: $AUDIOCLIP_GPU_SLOTS, else one per
    CUDA device, else 2 on a CPU machine (the `gpu` pool's limit, pipelines/instance.py)."""
    if os.environ.get("AUDIOCLIP_GPU_SLOTS"):
        return max(1, int(os.environ["AUDIOCLIP_GPU_SLOTS"]))
    import torch

    return max(1, torch.cuda.device_count() or 2)


def share_cpu_threads() -> int:
    """Give a CPU training run its share of the cores: cores / training slots threads (unless
    OMP_NUM_THREADS says otherwise). Two runs that each start one thread per core put two
    spinning OpenMP threads on every core; measured on 2 cores, a demo US8K fold took 20-57 s
    that way against 5.3 s alone. The count is fixed, not fitted to what else runs: a CPU run's
    float sums depend on it, and a resumed run must reach the same weights as one never
    interrupted (taking every core while alone gained only ~10 % on the demo's solo stages).
    Returns the thread count set."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or torch.cuda.is_available():  # told, or the work is on the GPUs
        return torch.get_num_threads()
    threads = max(1, (os.cpu_count() or 1) // training_slots())
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def timed(into: dict, phase: str):
    """Add the wall seconds of the block to `into[phase]` (the data steps' `seconds_by_phase`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[phase] = into.get(phase, 0.0) + time.perf_counter() - start


def add_seconds(into: Optional[dict], more: dict) -> None:
    """Sum per-phase seconds `more` into `into` (nothing when `into` is None)."""
    if into is not None:
        for k, v in more.items():
            into[k] = into.get(k, 0.0) + v


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory afresh (Linux: /proc/self/clear_refs), so that
    `peak_rss_mb` reports one stage's peak, not the largest of every stage this process ran
    (several stages run in one Dagster run process). False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB since `reset_peak_rss` (Linux's VmHWM), else
    since it started (getrusage: KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
