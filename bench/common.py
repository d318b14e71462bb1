"""Shared helpers for the benchmarks: timing (warm-up, then the median of repeats), output."""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

import torch

THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def setup() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a large matmul (fp32 unless told) on this machine and thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = timeit(lambda: a @ b, repeats=repeats)
    return 2 * n**3 / t / 1e9


def report(name: str, rows: list[dict], extra: dict | None = None) -> None:
    """A human table, then one JSON line."""
    print(f"\n== {name} ({THREADS} threads, {torch.__version__}) ==")
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))
    print(json.dumps({"bench": name, "threads": THREADS, "rows": rows, **(extra or {})}))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
