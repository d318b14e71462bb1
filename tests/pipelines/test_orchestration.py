"""The instance's side of running the lineage: dead runs found and failed with their pool
slots freed, AudioSet partitions registered from the lists that exist, the stand-in for
YouTube served only while a download step runs, one partition locked per run."""

import subprocess
import urllib.request

import dagster as dg
import pytest

from assets import sources as source_assets
from assets.resources import DataRoot, DatasetSources, YoutubeDownloader
from audioclip_core.files import Busy, exclusive
from audioclip_core.layout import DataLayout
from pipelines.run_health import LocalRunLauncher, fail_stale_runs, stale_runs

HEADER = "# Segments csv\n# num_ytids=1\n# YTID, start_seconds, end_seconds, positive_labels\n"


@dg.op
def _noop():
    pass


@dg.job
def _job():
    _noop()


def _started_run(instance, pid):
    from dagster._core.events import EngineEventData

    run = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.STARTED)
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
    return run


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_run_whose_process_is_gone_is_failed_and_frees_its_pool_slot(tmp_path):
    import os

    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("youtube", 1)
        dead = _started_run(instance, _dead_pid())
        alive = _started_run(instance, os.getpid())
        storage.claim_concurrency_slot("youtube", dead.run_id, "audioset_downloads")
        assert storage.get_concurrency_info("youtube").active_slot_count == 1

        launcher = LocalRunLauncher()
        launcher.register_instance(instance)
        assert launcher.check_run_worker_health(dead).status.value == "FAILED"
        assert launcher.check_run_worker_health(alive).status.value == "RUNNING"
        assert [r for r, _ in stale_runs(instance)] == [dead.run_id]

        assert fail_stale_runs(instance) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        assert storage.get_concurrency_info("youtube").active_slot_count == 0
        assert fail_stale_runs(instance) == []


def test_partitions_follow_the_segment_lists(tmp_path):
    folder = tmp_path / "audioset"
    folder.mkdir()
    (folder / "eval_segments.csv").write_text(HEADER)
    resources = {
        "data_root": DataRoot(root=str(tmp_path / "data")),
        "sources": DatasetSources(audioset_dir=str(folder)),
    }
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        result = source_assets.audioset_partitions_from_sources(ctx)
        if isinstance(result, dg.SensorResult):
            for req in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result

    assert isinstance(tick(), dg.SensorResult)
    assert instance.get_dynamic_partitions("audioset_partition") == ["eval"]
    assert isinstance(tick(), dg.SkipReason)  # nothing new: nothing requested
    rows = "".join(f'abcdefghij{i % 10}, 0.000, 10.000, "/m/09x0r"\n' for i in range(60_000))
    (folder / "unbalanced_train_segments.csv").write_text(HEADER + rows)
    tick()
    assert instance.get_dynamic_partitions("audioset_partition") == ["eval", "unbalanced_00", "unbalanced_01"]


def test_the_demo_lists_are_known_before_the_demo_is_generated(tmp_path):
    from audioclip_core.data import demo_dataset

    sources, layout = DatasetSources(), DataLayout.at(tmp_path / "data")
    assert sources.audioset_is_demo()
    assert sources.audioset_partitions(layout) == list(demo_dataset.PARTITIONS)
    assert not layout.demo_source.exists()


def test_the_stand_in_serves_only_while_a_step_downloads(tmp_path):
    layout = DataLayout.at(tmp_path / "data")
    videos = layout.demo_source / "audioset" / "videos"
    videos.mkdir(parents=True)
    (videos / "abcdefghij0.mp4").write_bytes(b"\x00" * 64)
    (layout.demo_source / ".complete").write_text("ok\n")  # the demo counts as generated
    yt = YoutubeDownloader()
    with yt.serving(layout, DatasetSources()) as options:
        url = options.url_template.format(ytid="abcdefghij0")
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == b"\x00" * 64
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    # a configured source or URL template: no stand-in
    with YoutubeDownloader(url_template="http://example.invalid/{ytid}").serving(layout, DatasetSources()) as options:
        assert options.url_template == "http://example.invalid/{ytid}"
    with yt.serving(layout, DatasetSources(audioset_dir=str(tmp_path))) as options:
        assert "youtube.com" in options.url_template


def test_one_holder_per_partition_lock(tmp_path):
    lock = tmp_path / "p.lock"
    with exclusive(lock, "partition 'eval'"):
        with pytest.raises(Busy, match=r"partition 'eval' is being processed by another process \(pid \d+\)"):
            with exclusive(lock, "partition 'eval'"):
                pass
    with exclusive(lock, "partition 'eval'"):  # released: free again
        pass
