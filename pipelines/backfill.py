"""Launch the whole lineage as ONE asset backfill through the Dagster instance, and follow it.

What the UI does on "Materialize all" with "all partitions", from the command line: a local
webserver (and, unless one is already running for this instance, the daemon - `dagster dev`)
is started on 127.0.0.1, the backfill of every asset and all of its partitions is launched
through its GraphQL API, and the daemon runs it - one run per partition, in dependency order,
through the run queue, pools and quality gates. The terminal gets one line per finished run
and a progress count; Dagster's own log goes to `<data root>/logs/dagster.log`. The runs are
named job runs of the code location, so the UI can re-execute any of them.

    python -m pipelines.backfill            # launch, wait, exit 0 when every run succeeded
    python -m pipelines.backfill --no-wait  # launch and leave it to a running `make ui`
    python -m pipelines.backfill --config run.yaml  # every run with this run config

An earlier backfill of this command that a killed process left unfinished is cancelled first;
runs whose process is gone are marked failed at start-up (pipelines/instance.py), so their
pool slots come back. Completed work is kept: downloads, clips and epochs already on disk are
not redone.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from audioclip_core.net import free_port

REPO = Path(__file__).resolve().parents[1]
TAG = "audioclip/lineage"

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on NoModeProvidedError { message }
    ... on InvalidSubsetError { message }
  }
}"""
CANCEL = """
mutation Cancel($id: String!) {
  cancelPartitionBackfill(backfillId: $id) { __typename ... on PythonError { message } }
}"""
SUCCESS, FAILURE = "SUCCESS", ("FAILURE", "CANCELED")
# `dagster dev` warns at start-up that `dg dev` supersedes it; `dg` (dagster-dg-cli) is not
# installed here, and the warning is none of the user's concern: ignored by its message only
QUIET_DEV = "ignore:Function `dev_command` is superseded"


def ui_url() -> str:
    """The Dagster UI that outlives this command: `make ui`'s address (DAGSTER_PORT, else 3000)."""
    return f"http://127.0.0.1:{os.environ.get('DAGSTER_PORT') or 3000}"


def env() -> dict:
    """The environment of the Dagster processes: this checkout importable (the run launcher
    lives in pipelines/), the instance in DAGSTER_HOME, no telemetry."""
    out = dict(os.environ)
    out.setdefault("DAGSTER_HOME", str(REPO / "dagster_home"))
    out["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p])
    out.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    out.setdefault("HF_HUB_OFFLINE", "1")
    return out


def _die_with_parent() -> None:
    """In the child before exec: Dagster stops when this process dies, even by SIGKILL.
    `dagster dev` maps SIGTERM to SIGINT's handler; a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and both would then be ignored. Default
    dispositions first, then SIGTERM on the parent's death (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class LocalDagster:
    """`dagster dev` (or only the webserver, when a daemon already serves this instance) on
    127.0.0.1, its output in `log`; stopped with its whole process group."""

    def __init__(self, log: Path, port: Optional[int] = None, daemon: bool = True):
        self.port = port or free_port()
        self.log, self.daemon = log, daemon
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalDagster":
        bindir = Path(sys.executable).parent
        cmd = [str(bindir / "dagster"), "dev"] if self.daemon else [str(bindir / "dagster-webserver")]
        cmd += ["-h", "127.0.0.1", "-p", str(self.port), "-w", str(REPO / "workspace.yaml")]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        penv = env()
        penv["PYTHONWARNINGS"] = ",".join(w for w in (penv.get("PYTHONWARNINGS"), QUIET_DEV) if w)
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=penv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Dagster exited with status {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return self
            except OSError:
                time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"Dagster did not answer on {self.url} within 180 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def graphql(self, query: str, variables: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = json.loads(resp.read())
        if body.get("errors"):
            raise RuntimeError(f"GraphQL error: {body['errors']}")
        return body["data"]


def daemon_running(instance, interval: float = 20.0) -> bool:
    """Whether a dagster-daemon serves this instance now (e.g. `make ui` is up): its heartbeat
    (sent every 20 s) is recent and advances; a killed daemon's last one does not."""

    def newest() -> float:
        beats = instance.get_daemon_heartbeats()
        return max((b.timestamp for b in beats.values()), default=0.0)

    last = newest()
    if time.time() - last > interval * 1.5:
        return False
    deadline = time.time() + interval * 1.5
    while time.time() < deadline:
        time.sleep(2)
        if newest() > last:
            return True
    return False


def asset_keys() -> list[list[str]]:
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    return [
        list(k.path)
        for k in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
        if graph.get(k).is_materializable
    ]


def cancel_unfinished(instance, dagster: LocalDagster, say: Callable[[str], None]) -> None:
    """Cancel the backfills of this command that a killed process left running, and their queued runs."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.execution.backfill import BulkActionStatus

    for b in instance.get_backfills(status=BulkActionStatus.REQUESTED):
        if b.tags.get(TAG):
            dagster.graphql(CANCEL, {"id": b.backfill_id})
            queued = instance.get_runs(
                RunsFilter(
                    tags={"dagster/backfill": b.backfill_id},
                    statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED],
                )
            )
            for run in queued:
                instance.report_run_canceled(run, "its backfill was cancelled: an earlier lineage command stopped")
            say(f"cancelled the unfinished backfill {b.backfill_id} of an earlier run ({len(queued)} queued runs)")


def launch(
    dagster: LocalDagster,
    label: str,
    selection: Optional[list[str]] = None,
    tags: Optional[dict] = None,
    run_config: Optional[dict] = None,
) -> str:
    keys = [[k] for k in selection] if selection else asset_keys()
    params = {
        "assetSelection": [{"path": p} for p in keys],
        "allPartitions": True,
        "title": f"AudioCLIP lineage ({label})",
        "tags": [{"key": TAG, "value": label}] + [{"key": k, "value": v} for k, v in (tags or {}).items()],
    }
    if run_config:  # every run of the backfill gets it; each takes the entries of its own assets
        params["runConfigData"] = run_config
    res = dagster.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    if res["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"the backfill was not launched: {res}")
    return res["backfillId"]


def _run_label(run) -> str:
    keys = sorted(k.to_user_string() for k in (run.asset_selection or []))
    part = run.tags.get("dagster/partition")
    first, last = run.tags.get("dagster/asset_partition_range_start"), run.tags.get("dagster/asset_partition_range_end")
    if not part and first:  # several partitions in one run (a backfill policy)
        part = first if first == last else f"{first}...{last}"
    return (", ".join(keys) or run.job_name) + (f" [{part}]" if part else "")


def _materialized(instance, run_id: str, keys) -> set[tuple[str, Optional[str]]]:
    """The asset partitions (asset, partition or None) of `keys` that the run materialised,
    from its event log - written before the run finishes, unlike the backfill's own count,
    which the daemon updates on its next evaluation."""
    from dagster import DagsterEventType

    out = set()
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        ev = entry.dagster_event
        if ev is not None and ev.asset_key is not None and (keys is None or ev.asset_key in keys):
            out.add((ev.asset_key.to_user_string(), ev.partition))
    return out


def _failure(instance, run_id: str) -> str:
    from dagster import DagsterEventType

    for etype in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
        recs = instance.get_records_for_run(run_id, of_type=etype, ascending=False, limit=1).records
        if recs:
            ev = recs[0].event_log_entry.dagster_event
            err = getattr(ev.event_specific_data, "error", None)
            while err is not None and err.cause is not None:  # the user code's error, not Dagster's wrapper
                err = err.cause
            return (err.message.strip().splitlines()[-1] if err else ev.message or "")[:400]
    return ""


class _Bar:
    """A progress bar of materialised asset partitions, with the runs in progress, on a
    terminal (nothing when the output is a file or a pipe: the lines are enough there)."""

    def __init__(self):
        self._bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=1,
                unit="asset partition",
                dynamic_ncols=True,
                leave=False,
                bar_format="{n}/{total} {bar} {elapsed} {postfix}",
            )

    @property
    def active(self) -> bool:
        return self._bar is not None

    def wrap(self, say: Callable[[str], None]) -> Callable[[str], None]:
        if self._bar is None:
            return say
        return lambda line: self._bar.write(line)

    def show(self, done: int, total: Optional[int], running: list[str]) -> None:
        if self._bar is None:
            return
        self._bar.total = total or max(done, 1)
        self._bar.n = done
        self._bar.set_postfix_str(("running: " + "; ".join(running))[:120] if running else "", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def follow(
    instance, backfill_id: str, say: Callable[[str], None], poll: float = 3.0, failures: Optional[list] = None
) -> bool:
    """Print a line per finished run until the backfill is done; True when Dagster says it
    completed (every asset partition materialised; a run retried successfully counts as done).
    `failures` gets the label of each failed run."""
    from dagster import RunsFilter
    from dagster._core.execution.backfill import BulkActionStatus

    seen: set[str] = set()
    failed = 0
    start = time.time()
    target, keys = None, None
    done: set[tuple[str, Optional[str]]] = set()  # asset partitions the finished runs materialised
    bar = _Bar()
    say = bar.wrap(say)
    while True:
        backfill = instance.get_backfill(backfill_id)
        if target is None and backfill.asset_backfill_data is not None:
            subset = backfill.asset_backfill_data.target_subset
            target, keys = subset.num_partitions_and_non_partitioned_assets, set(subset.asset_keys)
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        started = [r for r in runs if r.status.value == "STARTED"]
        if bar.active:
            now = done.union(*(_materialized(instance, r.run_id, keys) for r in started))
            bar.show(len(now), target, [_run_label(r) for r in started])
        for run in sorted(runs, key=lambda r: r.run_id):
            if run.run_id in seen or not run.is_finished:
                continue
            seen.add(run.run_id)
            ok = run.status.value == SUCCESS
            failed += not ok
            if not ok and failures is not None:
                failures.append(_run_label(run))
            done |= _materialized(instance, run.run_id, keys)
            line = (
                f"[{time.time() - start:6.0f} s] {'ok    ' if ok else 'FAILED'} {_run_label(run)}"
                f"   ({len(done)}/{target or '?'} asset partitions)"
            )
            say(line + ("" if ok else f"\n          {_failure(instance, run.run_id)}"))
        if backfill.status not in (
            BulkActionStatus.REQUESTED,
            BulkActionStatus.CANCELING,
            BulkActionStatus.FAILING,
        ) and all(r.is_finished for r in runs):
            break
        time.sleep(poll)
    bar.close()
    final = instance.get_backfill(backfill_id)
    say(
        f"backfill {backfill_id}: {final.status.value}, {len(seen)} runs, {failed} failed"
        f"{' (a failed run that Dagster retried successfully does not fail the backfill)' if failed else ''}, "
        f"{len(done)}/{target or '?'} asset partitions materialised, {(time.time() - start) / 60:.1f} min"
    )
    # Dagster's verdict: every asset partition materialised, failed runs retried successfully included
    return final.status == BulkActionStatus.COMPLETED_SUCCESS


def backfill_links(backfill_id: str, live: str, running: bool) -> str:
    """Where to follow the backfill: `make ui`'s address, which stays valid, and the address
    of this command's own server when it differs (it stops with the command)."""
    page, ui = f"/runs/b/{backfill_id}", ui_url()
    if running:  # `make ui` serves this instance now
        return f"  its page: {ui}{page} (make ui)"
    if live == ui:
        return f"  its page: {ui}{page} (after this command: make ui)"
    return f"  its page: {live}{page} while this command runs; after it: make ui -> {ui}{page}"


def run_lineage(
    label: str,
    wait: bool = True,
    say: Callable[[str], None] = print,
    selection: Optional[list[str]] = None,
    tags: Optional[dict] = None,
    failures: Optional[list] = None,
    run_config: Optional[dict] = None,
) -> bool:
    """Prepare the instance, launch the backfill of every asset (or of `selection`, asset
    names) through a local Dagster, and (with `wait`) follow it to the end. `tags` go on the
    backfill and its runs (the demo's seed: `audioclip/seed`); `run_config` is every run's
    config (`{"ops": {asset: {"config": ...}}}`: a run takes its own assets' entries);
    `failures` gets the label of each run that failed."""
    os.environ.setdefault("DAGSTER_HOME", env()["DAGSTER_HOME"])  # this process opens the same instance
    import dagster as dg

    from audioclip_core.layout import DataLayout

    from .instance import configure

    prepared = configure()
    for run_id in prepared["stale_runs_failed"]:
        say(f"marked failed: run {run_id}, whose process is gone")
    layout = DataLayout.at(None)
    log = layout.logs_dir / "dagster.log"
    with dg.DagsterInstance.get() as instance:
        running = daemon_running(instance)
        if not wait and not running:
            raise SystemExit("--no-wait needs a running daemon for this instance (start `make ui` first)")
        port = int(os.environ["DAGSTER_PORT"]) if os.environ.get("DAGSTER_PORT") and not running else None
        with LocalDagster(log, port=port, daemon=not running) as dagster:
            if running:
                say(f"Dagster: the running daemon (make ui); launched through a webserver on {dagster.url}")
            else:
                say(f"Dagster: `dagster dev` on {dagster.url} while this command runs (log: {log})")
            if running and os.environ.get("AUDIOCLIP_SEED", "0") != "0":
                say(
                    "note: a running daemon (make ui) launches these runs with its own environment: the seed "
                    "it was started with applies (stop it to use this one)"
                )
            cancel_unfinished(instance, dagster, say)
            backfill_id = launch(dagster, label, selection, tags, run_config)
            say(f"backfill {backfill_id}: every asset, all partitions")
            say(backfill_links(backfill_id, dagster.url, running))
            if not wait:
                return True
            return follow(instance, backfill_id, say, failures=failures)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-wait", action="store_true", help="launch the backfill and return")
    p.add_argument("--label", default="cli")
    p.add_argument("--select", nargs="+", metavar="ASSET", help="only these assets (all their partitions)")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="run config (YAML or JSON) for every run, e.g. the weights files of the paper profile: "
        "ops: {esresnext_audioset: {config: {imagenet_weights: ...}}, clip_towers: {config: {clip_weights: ...}}}",
    )
    a = p.parse_args(argv)
    run_config = read_run_config(a.config) if a.config else None
    return 0 if run_lineage(a.label, wait=not a.no_wait, selection=a.select, run_config=run_config) else 1


def read_run_config(path: Path) -> dict:
    """A run config file (YAML, of which JSON is a part) as a mapping, checked against every
    asset's config before anything is launched (a misspelt key is an error now, not when the
    run that reads it starts, hours later); a clear error otherwise."""
    import dagster as dg
    import yaml

    from pipelines.definitions import defs

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SystemExit(f"--config {path}: cannot be read as YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: a run config is a mapping (ops: {{asset: {{config: ...}}}}), got {data!r}")
    try:
        dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), data)
    except dg.DagsterInvalidConfigError as exc:
        problems = "; ".join(e.message.splitlines()[0] for e in exc.errors)
        raise SystemExit(f"--config {path}: {problems}") from exc
    return data
