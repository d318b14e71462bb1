"""Prepare the local Dagster instance before its processes start (`make ui`, `make demo`):

* concurrency pool limits that dagster.yaml cannot hold: youtube: 3 download steps; gpu: one
  trainer per CUDA device, or 2 on a machine without one (a run's start-up and evaluation
  overlap with the other's training), AUDIOCLIP_GPU_SLOTS overrides;
* the AudioSet partitions of the segment lists that exist (the sensor
  `audioset_partitions_from_sources` adds later ones while the daemon runs);
* runs left STARTED by a process that is gone (a killed `make demo`) marked failed, their
  pool slots freed (pipelines/run_health.py).

    python -m pipelines.instance
"""

import os
import sys
from pathlib import Path


def pool_limits() -> dict[str, int]:
    from audioclip_core.perf import training_slots

    return {"youtube": 3, "gpu": training_slots()}


def configure(limits: dict[str, int] | None = None) -> dict:
    from dagster import DagsterInstance

    from assets.resources import DataRoot, DatasetSources
    from assets.sources import register_audioset_partitions

    from .run_health import fail_stale_runs

    os.environ.setdefault("DAGSTER_HOME", str(Path(__file__).resolve().parents[1] / "dagster_home"))
    limits = limits or pool_limits()
    with DagsterInstance.get() as instance:
        for pool, n in limits.items():
            instance.event_log_storage.set_concurrency_slots(pool, n)
        stale = fail_stale_runs(instance)
        added = register_audioset_partitions(instance, DatasetSources(), DataRoot())
    return {"pools": limits, "stale_runs_failed": stale, "audioset_partitions_added": added}


if __name__ == "__main__":
    print("instance:", configure(), file=sys.stderr)
