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
    assert run_lineage("test", say=lines.append, selection=DATA_ASSETS), "\n".join(lines)

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
    for partition in ("balanced_train", "eval", "demo"):
        assert (tmp_path / "data" / "audioset" / "manifests" / f"{partition}.parquet").is_file()
    assert sum("ok     audioset_clips, audioset_downloads" in line for line in lines) == 3
