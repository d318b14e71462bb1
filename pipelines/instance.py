"""Prepare the local Dagster instance: concurrency pool limits that dagster.yaml cannot hold.

    python -m pipelines.instance        # youtube: 3 concurrent downloads steps, gpu: 1 trainer
"""
import os
import sys
from pathlib import Path

POOL_LIMITS = {"youtube": 3, "gpu": 1}


def configure(limits: dict[str, int] | None = None) -> dict[str, int]:
    from dagster import DagsterInstance

    os.environ.setdefault("DAGSTER_HOME", str(Path(__file__).resolve().parents[1] / "dagster_home"))
    limits = limits or POOL_LIMITS
    with DagsterInstance.get() as instance:
        for pool, n in limits.items():
            instance.event_log_storage.set_concurrency_slots(pool, n)
    return limits


if __name__ == "__main__":
    print("concurrency pools:", configure(), file=sys.stderr)
