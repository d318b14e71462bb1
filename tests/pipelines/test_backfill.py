"""The lineage run by Dagster itself: a backfill launched through a local webserver's GraphQL
API and run by the daemon, on a fresh instance and data root - the path of `make demo` and of
"Materialize all" in the UI."""

import shutil

import dagster as dg
import pytest
from conftest import REPO

DATA_ASSETS = ["dataset_sources", "audioset_segments", "audioset_downloads", "audioset_clips", "audioset_manifest"]


@pytest.mark.slow
def test_the_daemon_runs_the_audioset_lineage_as_named_runs(tmp_path, monkeypatch):
    from pipelines.backfill import run_lineage

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(tmp_path / "data"))
    for var in ("AUDIOCLIP_AUDIOSET_DIR", "AUDIOCLIP_YOUTUBE_URL_TEMPLATE", "DAGSTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    lines = []
    # a run config for every run (`--config`): each run takes its own assets' entries
    config = {"ops": {"audioset_manifest": {"config": {"min_usable_share": 0.25}}}}
    assert run_lineage("test", say=lines.append, selection=DATA_ASSETS, run_config=config), "\n".join(lines)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # named runs of the code location (re-executable from the UI), not in-process ephemeral ones
        assert all(r.job_name != "__ephemeral_asset_job__" and r.remote_job_origin is not None for r in runs)
        assert instance.get_dynamic_partitions("audioset_partition") == ["balanced_train", "eval", "demo"]
        by_partition = {r.tags.get("dagster/partition") for r in runs}
        assert {"balanced_train", "eval", "demo"} <= by_partition
        # dependency order: the root ran before every partition's run
        first = min(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).start_time)
        assert {k.to_user_string() for k in first.asset_selection} == {"dataset_sources"}
        done = instance.get_materialized_partitions(dg.AssetKey("audioset_manifest"))
        assert done == {"balanced_train", "eval", "demo"}
        assert all(r.run_config == config for r in runs)  # the root's run too, which has no manifest
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("audioset_manifest"), "usable_share"), limit=10
        )
        evaluations = [c.event.dagster_event.event_specific_data for c in checks]
        assert len(evaluations) == 3 and all(e.metadata["min_usable_pct"].value == 25.0 for e in evaluations)
    for partition in ("balanced_train", "eval", "demo"):
        assert (tmp_path / "data" / "audioset" / "manifests" / f"{partition}.parquet").is_file()
    assert sum("ok     audioset_clips, audioset_downloads" in line for line in lines) == 3


class _Instance:
    """A Dagster instance as `follow` reads it, step by step: `steps` of (runs, backfill
    status); the backfill's own count (`materialized_subset`) stays behind at 0, as the
    daemon's does until its next evaluation."""

    def __init__(self, target, steps):
        from types import SimpleNamespace as NS

        self._ns, self.steps, self.i = NS, steps, -1
        keys = {dg.AssetKey(k) for k, _ in target}
        self.data = NS(
            target_subset=NS(num_partitions_and_non_partitioned_assets=len(target), asset_keys=keys),
            materialized_subset=NS(num_partitions_and_non_partitioned_assets=0),
        )

    def get_backfill(self, backfill_id):
        self.i = min(self.i + 1, len(self.steps) - 1)
        return self._ns(asset_backfill_data=self.data, status=self.steps[self.i][1])

    def get_runs(self, filters):
        return [
            self._ns(
                run_id=run_id,
                status=self._ns(value=status),
                is_finished=status in ("SUCCESS", "FAILURE"),
                asset_selection=[dg.AssetKey(k) for k, _ in made],
                tags={},
                job_name="j",
                made=made,
            )
            for run_id, status, made in self.steps[self.i][0]
        ]

    def all_logs(self, run_id, of_type=None):
        run = next(r for r in self.get_runs(None) if r.run_id == run_id)
        return [
            self._ns(dagster_event=self._ns(asset_key=dg.AssetKey(k), partition=p))
            for k, p in run.made
            if run.is_finished or run.status.value == "STARTED"
        ]


def test_the_progress_count_follows_the_runs_and_ends_exact():
    """The count is of the asset partitions the finished runs materialised (their event logs),
    not the backfill's own count, which lags the runs; the last line says N/N."""
    from dagster._core.execution.backfill import BulkActionStatus

    from pipelines.backfill import follow

    a = [("sources", None)]
    b = [("folds", "1"), ("folds", "2")]
    c = [("table", None)]
    target = a + b + c
    steps = [
        ([("r1", "SUCCESS", a), ("r2", "STARTED", b)], BulkActionStatus.REQUESTED),
        ([("r1", "SUCCESS", a), ("r2", "SUCCESS", b), ("r3", "STARTED", c)], BulkActionStatus.REQUESTED),
        ([("r1", "SUCCESS", a), ("r2", "SUCCESS", b), ("r3", "SUCCESS", c)], BulkActionStatus.COMPLETED_SUCCESS),
    ]
    lines = []
    assert follow(_Instance(target, steps), "b1", lines.append, poll=0)
    counts = [line.rsplit("(", 1)[1] for line in lines if line.startswith("[")]
    assert counts == ["1/4 asset partitions)", "3/4 asset partitions)", "4/4 asset partitions)"]
    assert "4/4 asset partitions materialised" in lines[-1] and "3 runs, 0 failed" in lines[-1]


def test_the_backfill_link_outlives_the_command(monkeypatch):
    from pipelines.backfill import backfill_links

    monkeypatch.delenv("DAGSTER_PORT", raising=False)
    line = backfill_links("abc", "http://127.0.0.1:41125", running=False)
    assert "make ui -> http://127.0.0.1:3000/runs/b/abc" in line
    assert "http://127.0.0.1:41125/runs/b/abc while this command runs" in line
    assert backfill_links("abc", "http://127.0.0.1:45000", running=True) == (
        "  its page: http://127.0.0.1:3000/runs/b/abc (make ui)"
    )
    monkeypatch.setenv("DAGSTER_PORT", "3111")
    assert "41125" not in backfill_links("abc", "http://127.0.0.1:3111", running=False)


def test_a_run_config_file_is_checked_before_anything_is_launched(tmp_path):
    from pipelines.backfill import read_run_config

    good = tmp_path / "good.yaml"
    good.write_text("ops:\n  clip_towers: {config: {clip_weights: /w/RN50.pt, epochs: 1}}\n")
    assert read_run_config(good)["ops"]["clip_towers"]["config"]["clip_weights"] == "/w/RN50.pt"
    cases = {
        "typo.yaml": ("ops:\n  clip_towers: {config: {clip_weigths: x}}\n", 'unexpected config entry "clip_weigths"'),
        "list.yaml": ("- ops\n", "a run config is a mapping"),
        "bad.yaml": ("ops: {clip_towers: [\n", "cannot be read as YAML or JSON"),
        "latin1.yaml": (None, "cannot be read as YAML or JSON"),
        "missing.yaml": (False, "cannot be read as YAML or JSON"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes("ops: {clip_towers: {config: {clip_weights: caf\xe9}}}".encode("latin-1"))
        elif text:
            path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            read_run_config(path)
