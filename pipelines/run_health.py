"""The local run launcher: Dagster's default one, plus a health check that run monitoring uses.

Runs launched on this machine record the pid of their process (an engine event). A run whose
process is gone - killed with SIGKILL, or lost with the machine - while the instance still
says STARTED is reported dead, so the monitoring daemon marks it failed and its concurrency
pool slots (`youtube`, `gpu`) are freed. `stale_runs` / `fail_stale_runs` do the same once
at start-up, for runs left behind while no daemon was running (`python -m pipelines.instance`).
"""

from __future__ import annotations

import os
from typing import Optional

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher

IN_FLIGHT = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]


def run_pid(instance: DagsterInstance, run_id: str) -> Optional[int]:
    """The pid of the run's process, from its last 'Started process for run' engine event."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None:
            return int(getattr(pid, "value", pid))
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_runs(instance: DagsterInstance) -> list[tuple[str, Optional[int]]]:
    """(run id, pid) of the runs the instance thinks are in flight whose process is gone (or that
    never recorded one)."""
    out = []
    for run in instance.get_runs(RunsFilter(statuses=IN_FLIGHT)):
        pid = run_pid(instance, run.run_id)
        if pid is None or not alive(pid):
            out.append((run.run_id, pid))
    return out


def fail_stale_runs(instance: DagsterInstance) -> list[str]:
    """Mark the stale runs failed and free their pool slots; returns their ids."""
    failed = []
    for run_id, pid in stale_runs(instance):
        run = instance.get_run_by_id(run_id)
        if run is None:
            continue
        why = f"its process (pid {pid}) is gone" if pid else "it never started a process"
        instance.report_run_failed(run, f"Marked failed at start-up: {why}.")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        failed.append(run_id)
    return failed


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers can be health-checked by their pid."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        pid = run_pid(self._instance, run.run_id)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no process recorded yet")
        if alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"pid {pid}")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's process (pid {pid}) is gone")
