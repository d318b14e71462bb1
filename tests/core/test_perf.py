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
