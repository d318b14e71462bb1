import os
import subprocess
import sys

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


def test_core_share_takes_every_core_only_while_no_other_run_is_in_progress(monkeypatch):
    """A CPU training run takes all cores while nothing else runs and its slot's share as soon
    as another run is in progress (looked up at most every `every` seconds)."""
    import torch

    from audioclip_core import perf

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("AUDIOCLIP_GPU_SLOTS", "2")
    monkeypatch.setattr(perf.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: set_to[-1] if set_to else 1)
    others, said, clock = [0], [], [100.0]
    monkeypatch.setattr(perf.time, "monotonic", lambda: clock[0])
    share = perf.CoreShare(lambda: others[0], every=2.0, log=said.append)
    share()
    assert set_to == [4] and "no other run in progress" in said[-1]
    others[0] = 1
    clock[0] += 1.0
    share()  # within `every`: not looked up again
    assert set_to == [4]
    clock[0] += 1.5
    share()
    assert set_to == [4, 2] and said[-1] == "2 CPU thread(s)"

    def broken():
        raise RuntimeError("instance unavailable")

    share = perf.CoreShare(broken)
    share()  # cannot tell: shares, as if another run were in progress
    assert set_to[-1] == 2
