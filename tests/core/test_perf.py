import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = "from audioclip_core.perf import tune_malloc; print(tune_malloc(), tune_malloc())"


def _run(env_value):
    env = dict(os.environ)
    env.pop("AUDIOCLIP_MALLOC_TUNING", None)
    if env_value is not None:
        env["AUDIOCLIP_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_malloc_tuning_applies_on_glibc_and_is_idempotent():
    assert _run(None) == ["True", "True"]


def test_malloc_tuning_can_be_turned_off():
    assert _run("0") == ["False", "False"]


PEAK_PROBE = """
import numpy as np
from audioclip_core.perf import peak_rss_mb, reset_peak_rss
reset_peak_rss()
before = peak_rss_mb()
block = np.ones(256 * 1024 * 1024 // 8)  # 256 MiB, touched
during = peak_rss_mb()
del block  # above malloc's mmap threshold: given back at once (no malloc tuning in this process)
print(reset_peak_rss(), before, during, peak_rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's /proc peak-memory reset")
def test_peak_rss_is_one_stages_after_a_reset():
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, check=True)
    reset, before, during, after = out.stdout.split()
    assert reset == "True"
    assert float(during) - float(before) >= 250  # the block counts while it lives
    assert float(after) <= float(during) - 250  # and not in the count started after it was freed
