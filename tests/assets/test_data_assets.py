"""The data lineage materialised through Dagster on real videos served from 127.0.0.1."""

import os
import shutil
import subprocess
from functools import partial
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from assets import audioset, clipsets
from assets.resources import DataRoot, DatasetSources, YoutubeDownloader
from audioclip_core.acquisition.media_server import MediaServer, _RangeHandler
from audioclip_core.audio import ffmpeg_exe
from audioclip_core.data.demo_dataset import generate_esc50, generate_us8k
from audioclip_core.data.manifests import read_manifest
from audioclip_core.layout import DataLayout

AUDIOSET_ASSETS = [
    audioset.audioset_segments,
    audioset.audioset_downloads,
    audioset.audioset_clips,
    audioset.audioset_manifest,
]
IDS = {"Chaplin0001": "chaplin.mp4", "BigBuckBun0": "big_buck_bunny_0_30.webm"}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, shared_data):
    """A folder in the official format whose ids map to real videos on a local server, some missing."""
    root = tmp_path_factory.mktemp("heldout")
    src, videos = root / "audioset", root / "videos"
    src.mkdir()
    videos.mkdir()
    for ytid, name in IDS.items():
        shutil.copy(shared_data / "video" / name, videos / f"{ytid}.media")
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(videos / "Chaplin0001.media"),
            "-an",
            "-c:v",
            "copy",
            "-f",
            "mp4",
            str(videos / "NoAudio0001.media"),
        ],
        check=True,
    )
    data = (videos / "Chaplin0001.media").read_bytes()
    (videos / "Truncated01.media").write_bytes(data[: len(data) // 4])
    (src / "eval_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n# num_ytids=7\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'Chaplin0001, 1.000, 6.000, "/m/09x0r,/m/04rlf"\n'
        'BigBuckBun0, 10.000, 15.000, "/m/0jbk"\n'
        'Chaplin0001, 4.000, 9.000, "/m/09x0r"\n'
        'BigBuckBun0, 1.000, 6.000, "/m/0jbk"\n'
        'BigBuckBun0, 20.000, 25.000, "/m/0jbk"\n'
        'BigBuckBun0, 24.000, 29.000, "/m/0jbk"\n'
        'Chaplin0001, 40.000, 45.000, "/m/09x0r"\n'
        'Flaky000001, 0.000, 5.000, "/m/09x0r"\n'
        'Missing0001, 0.000, 10.000, "/m/09x0r"\n'
        'NoAudio0001, 0.000, 5.000, "/m/09x0r"\n'
        'Truncated01, 0.000, 5.000, "/m/09x0r"\n'
        "broken row without fields\n"
        '../../etc/x, 0.000, 10.000, "/m/09x0r"\n'
    )
    server = MediaServer(videos)
    server._httpd.RequestHandlerClass = partial(_Flaky, directory=str(videos))
    with server:
        yield src, server


class _Flaky(_RangeHandler):
    """The stand-in for YouTube, with one id that always answers 503 (a transient failure)."""

    def send_head(self):
        if "Flaky" in self.path:
            self.send_error(503)
            return None
        return super().send_head()


def _resources(tmp_path, src, server=None, retry_after=0.0, **paths):
    yt = YoutubeDownloader(
        url_template=server.url("{ytid}.media") if server else "http://127.0.0.1:9/{ytid}",
        backoff_seconds=0.01,
        max_attempts=2,
        retry_after_seconds=retry_after,
    )
    return {
        "data_root": DataRoot(root=str(tmp_path / "data")),
        "sources": DatasetSources(audioset_dir=str(src), **paths),
        "youtube": yt,
    }


def _mat(assets, resources, partition=None, instance=None, success=True):
    instance = instance or dg.DagsterInstance.ephemeral()
    if partition is not None and any(a.partitions_def == audioset.audioset_partitions for a in assets):
        instance.add_dynamic_partitions(audioset.audioset_partitions.name, [partition])
    result = dg.materialize(
        assets, resources=resources, partition_key=partition, instance=instance, raise_on_error=False
    )
    assert result.success is success
    return result


def _meta(result, key):
    mats = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mats[-1].metadata.items()}


def test_audioset_lineage_statuses_frames_and_catalog(held_out, tmp_path):
    src, server = held_out
    res = _resources(tmp_path, src, server)
    result = _mat(AUDIOSET_ASSETS, res, "eval")
    seg = _meta(result, "audioset_segments")
    assert seg["segments"] == 11 and seg["malformed_rows"] == 2
    data = tmp_path / "data"
    con = duckdb.connect(str(data / "catalog.duckdb"), read_only=True)
    df = con.sql(
        "SELECT segment_id, status, reason, audio_path, frame_paths, duration, channels "
        "FROM audioset_eval ORDER BY segment_id"
    ).df()
    status = dict(zip(df["segment_id"], df["status"]))
    assert status == {
        "Chaplin0001_1000": "ok",
        "BigBuckBun0_10000": "ok",
        "Chaplin0001_4000": "ok",
        "BigBuckBun0_1000": "ok",
        "BigBuckBun0_20000": "ok",
        "BigBuckBun0_24000": "ok",
        "Chaplin0001_40000": "invalid_media",
        "Missing0001_0": "unavailable",
        "NoAudio0001_0": "invalid_media",
        "Truncated01_0": "invalid_media",
        "Flaky000001_0": "error",
    }
    reasons = dict(zip(df["segment_id"], df["reason"]))
    assert "no audio track" in reasons["NoAudio0001_0"] and "404" in reasons["Missing0001_0"]
    assert "past the end of the media" in reasons["Chaplin0001_40000"]  # chaplin.mp4 is 9.64 s long
    assert "corrupt" in reasons["Truncated01_0"] or "ffmpeg" in reasons["Truncated01_0"], reasons["Truncated01_0"]
    assert "503" in reasons["Flaky000001_0"]
    for row in df[df["status"] == "ok"].itertuples():
        assert Path(row.audio_path).is_file() and len(row.frame_paths) == 10
        assert all(Path(p).is_file() for p in row.frame_paths) and abs(row.duration - 5.0) <= 0.04
        assert Path(row.audio_path).name == f"{row.segment_id}.wav"
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["no_empty_or_silent_clips"] and checks["ten_frames_per_clip"]
    assert checks["download_success_rate"] is False  # 5 of 7 segments: a warning, not a block
    # each check recorded against the partition it checked, so the UI shows it per partition
    assert {c.partition for c in result.get_asset_check_evaluations()} == {"eval"}
    downloads = _meta(result, "audioset_downloads")
    assert downloads["success_rate_pct"] == 54.5  # 6 ok of 11 segments, a rate read as a percentage
    # the preview a person opens: the counts per status, then the failures, before any ok row
    preview = downloads["preview"].splitlines()
    assert preview[0].startswith("**11 rows** - ok: 6") and "unavailable: 1" in preview[0]
    statuses = [line.split(" | ")[1] for line in preview[4:]]
    assert statuses[:3] and "ok" not in statuses[:3] and statuses[-1] == "ok"
    # everything written lies under the data root
    assert not list(tmp_path.glob("*.part")) and {p.name for p in tmp_path.iterdir()} == {"data"}


def test_rematerialising_does_no_work_twice(held_out, tmp_path):
    src, server = held_out
    res = _resources(tmp_path, src, server, retry_after=600.0)
    _mat(AUDIOSET_ASSETS, res, "eval")
    clip = tmp_path / "data" / "audioset" / "clips" / "eval" / "Chaplin0001_1000.wav"
    before = clip.stat().st_mtime_ns
    again = _mat(AUDIOSET_ASSETS, res, "eval")
    # nothing is tried again: ok and final failures never, the transient one (the corrupt source)
    # not before its back-off has passed
    meta = _meta(again, "audioset_downloads")
    assert meta["attempted_now"] == 0 and meta["deferred"] == 1 and meta["next_retry_after"].endswith("UTC")
    table = pd.read_parquet(tmp_path / "data" / "audioset" / "downloads" / "eval.parquet").set_index("segment_id")
    assert "retried by a run after" in table.loc["Flaky000001_0", "message"]
    assert _meta(again, "audioset_clips")["extracted_now"] == 0
    assert clip.stat().st_mtime_ns == before
    # with no back-off, the next run tries the transient failure (only it) again
    third = _mat(AUDIOSET_ASSETS, _resources(tmp_path, src, server), "eval")
    assert _meta(third, "audioset_downloads")["attempted_now"] == 1
    assert _meta(third, "audioset_clips")["extracted_now"] == 0


def test_killed_download_and_extraction_resume(held_out, tmp_path):
    src, server = held_out
    res = _resources(tmp_path, src, server)
    _mat(AUDIOSET_ASSETS[:1], res, "eval")
    data = tmp_path / "data" / "audioset"
    # a run killed mid-way: one download finished (renamed into place) but not recorded,
    # another one half-written in its temporary folder; a clip half-extracted
    dl = data / "downloads" / "eval"
    dl.mkdir(parents=True)
    # a whole file is a piece on the source's time line too
    shutil.copy(Path(server.root) / "BigBuckBun0.media", dl / "BigBuckBun0_10000.cut.mkv")
    # a download of an earlier kind (its time line from the cut, not from the source) is fetched again
    shutil.copy(Path(server.root) / "BigBuckBun0.media", dl / "BigBuckBun0_1000.webm")
    (dl / ".Chaplin0001_1000.abc").mkdir()
    (dl / ".Chaplin0001_1000.abc" / "Chaplin0001_1000.mp4.part").write_bytes(b"partial")
    clips = data / "clips" / "eval"
    clips.mkdir(parents=True)
    (clips / ".BigBuckBun0_10000.xyz").mkdir()
    (clips / ".BigBuckBun0_10000.xyz" / "BigBuckBun0_10000_f00.jpg").write_bytes(b"half")
    result = _mat(AUDIOSET_ASSETS[1:], res, "eval")
    table = pd.read_parquet(data / "downloads" / "eval.parquet").set_index("segment_id")
    assert table.loc["BigBuckBun0_10000", "status"] == "ok" and table.loc["BigBuckBun0_10000", "attempts"] == 0
    assert table.loc["Chaplin0001_1000", "status"] == "ok" and table.loc["Chaplin0001_1000", "attempts"] == 1
    assert table.loc["BigBuckBun0_1000", "attempts"] == 1 and not (dl / "BigBuckBun0_1000.webm").exists()
    assert not [p for p in dl.iterdir() if p.name.startswith(".")]
    assert not [p for p in clips.iterdir() if p.name.startswith(".")]
    assert _meta(result, "audioset_manifest")["ok"] == 6


def test_esc50_us8k_manifests_and_folds(tmp_path):
    esc, us = tmp_path / "esc", tmp_path / "us"
    n_esc = generate_esc50(esc, per_fold_class=1)
    n_us = generate_us8k(us)
    res = _resources(tmp_path, tmp_path, esc50_dir=str(esc), us8k_dir=str(us))
    assets = [clipsets.esc50_manifest, clipsets.us8k_manifest, clipsets.esc50_folds, clipsets.us8k_folds]
    result = _mat(assets[:2], res)
    m = _meta(result, "esc50_manifest")
    assert m["clips"] == n_esc == 50 and m["ok"] == 50  # 10 classes x 5 folds x 1
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    assert checks[("esc50_manifest", "every_row_has_its_file")].passed
    assert not checks[("esc50_manifest", "published_counts")].passed  # a small set: a warning
    for k in range(1, 6):
        r = _mat([clipsets.esc50_folds], res, str(k))
        assert _meta(r, "esc50_folds")["test"] == 10 and _meta(r, "esc50_folds")["train"] == 40
        assert all(c.passed for c in r.get_asset_check_evaluations())
    # a backfill writes all folds of a set in one run (backfill policy): each fold's own figures
    # and its own check result, recorded against the fold; each fold's files written
    assert clipsets.us8k_folds.backfill_policy == dg.BackfillPolicy.single_run()
    r = dg.materialize(
        [clipsets.us8k_folds],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "10"},
    )
    assert r.success
    events = r.asset_materializations_for_node("us8k_folds")
    mats = {e.partition: {k: v.value for k, v in e.metadata.items()} for e in events}
    assert set(mats) == {str(k) for k in range(1, 11)}
    # 2 per class in each test fold
    assert all(m["fold"] == int(k) and m["test"] == 20 and m["train"] == n_us - 20 for k, m in mats.items())
    assert mats["3"]["run_partitions"] == "10 in one run: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"
    evals = r.get_asset_check_evaluations()
    assert sorted((e.partition, e.check_name, e.passed) for e in evals) == sorted(
        (str(k), "disjoint_and_covering", True) for k in range(1, 11)
    )
    assert all(e.metadata["test"].value == 20 and e.target_materialization_data for e in evals)
    layout = res["data_root"].layout
    assert all(layout.fold("us8k", k, "test").is_file() for k in range(1, 11))
    con = duckdb.connect(str(tmp_path / "data" / "catalog.duckdb"), read_only=True)
    assert con.sql("SELECT count(*) FROM esc50_fold3_test").fetchall()[0][0] == 10
    assert con.sql("SELECT count(DISTINCT sample_rate) FROM us8k").fetchall()[0][0] >= 2


def test_real_esc50_metadata_with_missing_files(shared_data, tmp_path):
    res = _resources(tmp_path, tmp_path, esc50_dir=str(shared_data / "esc50"))
    result = _mat([clipsets.esc50_manifest], res)
    m = _meta(result, "esc50_manifest")
    assert m["clips"] == 2000 and m["ok"] == 20 and m["classes"] == 50
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not check["every_row_has_its_file"].passed and check["published_counts"].passed


def test_official_archive_fetched_once_from_a_url(tmp_path):
    import zipfile

    esc = tmp_path / "ESC-50-master"
    generate_esc50(esc, per_fold_class=1)
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "esc50.zip", "w") as zf:
        for p in esc.rglob("*"):
            zf.write(p, p.relative_to(tmp_path))
    with MediaServer(served) as server:
        sources = DatasetSources(esc50_archive_url=server.url("esc50.zip"))
        root = sources.esc50(DataLayout.at(tmp_path / "data"))
        assert (root / "meta" / "esc50.csv").is_file() and str(root).startswith(str(tmp_path / "data"))
    # the server is gone: a second call uses what was unpacked
    assert (
        DatasetSources(esc50_archive_url="http://127.0.0.1:9/esc50.zip").esc50(DataLayout.at(tmp_path / "data")) == root
    )


def test_clip_problems_reads_new_clips_in_full_and_kept_clips_by_header(tmp_path):
    import numpy as np
    import soundfile as sf

    from audioclip_core.data.manifests import clip_problems

    frames = []
    for i in range(10):
        f = tmp_path / f"f{i}.jpg"
        f.write_bytes(b"\xff\xd8")
        frames.append(str(f))

    def clip(name, samples, skipped):
        path = tmp_path / f"{name}.wav"
        if samples is not None:
            sf.write(path, samples, 44100, subtype="PCM_16")
        return {"segment_id": name, "status": "ok", "audio_path": str(path), "frame_paths": frames, "skipped": skipped}

    loud = (np.sin(np.arange(4410) / 5) * 0.5).astype(np.float32)
    quiet = np.zeros(4410, dtype=np.float32)
    clips = pd.DataFrame(
        [
            clip("new_ok", loud, False),
            clip("new_silent", quiet, False),
            clip("kept_silent", quiet, True),
            clip("kept_empty", np.zeros(0, np.float32), True),
            clip("kept_gone", None, True),
        ]
    )
    problems = clip_problems(clips)
    assert problems == {"empty": ["kept_empty"], "silent": ["new_silent"], "missing": ["kept_gone"], "frames": []}
    # a kept clip was read in full when it was extracted; a full re-read is on request
    assert clip_problems(clips, reread_all=True)["silent"] == ["new_silent", "kept_silent"]


def _step_errors(result) -> str:
    return " ".join(
        str(e.event_specific_data.error.cause or e.event_specific_data.error)
        for e in result.all_events
        if e.is_step_failure
    )


def test_download_gate_blocks_clips_and_downstream(held_out, tmp_path):
    """Every download fails (the source is unreachable): the success-rate check fails with ERROR
    severity and, being blocking, stops the clips and the manifest from being built."""
    src, _ = held_out
    res = _resources(tmp_path, src)  # no server: every request is refused
    result = _mat(AUDIOSET_ASSETS, res, "eval", success=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["download_success_rate"].passed is False
    assert checks["download_success_rate"].severity == dg.AssetCheckSeverity.ERROR
    done = {
        m.asset_key.to_user_string()
        for m in result.get_asset_materialization_events()
        and [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    }
    assert "audioset_clips" not in done and "audioset_manifest" not in done
    assert not (tmp_path / "data" / "audioset" / "manifests" / "eval.parquet").exists()


def test_intact_clips_are_never_demoted_by_a_failed_redownload(held_out, tmp_path):
    """The download files go away and the source becomes unreachable: the clips made from them
    are intact, so the segments stay `ok` and nothing is fetched again."""
    src, server = held_out
    instance = dg.DagsterInstance.ephemeral()
    first = _mat(AUDIOSET_ASSETS, _resources(tmp_path, src, server), "eval", instance)
    ok_before = _meta(first, "audioset_manifest")["ok"]
    for f in (tmp_path / "data" / "audioset" / "downloads" / "eval").iterdir():
        f.unlink()
    again = _mat(AUDIOSET_ASSETS, _resources(tmp_path, src), "eval", instance)
    table = read_manifest(tmp_path / "data" / "audioset" / "manifests" / "eval.parquet", tmp_path / "data").set_index(
        "segment_id"
    )
    assert _meta(again, "audioset_manifest")["ok"] == ok_before == 6
    assert (
        table.loc["Chaplin0001_1000", "status"] == "ok" and Path(table.loc["Chaplin0001_1000", "audio_path"]).is_file()
    )
    downloads = pd.read_parquet(tmp_path / "data" / "audioset" / "downloads" / "eval.parquet").set_index("segment_id")
    assert "intact and kept" in downloads.loc["Chaplin0001_1000", "message"]
    # tried again: the transient failure only (the media's own failures are final)
    assert _meta(again, "audioset_downloads")["attempted_now"] == 1


def test_a_partition_is_worked_on_by_one_run_at_a_time(held_out, tmp_path):
    from audioclip_core.files import exclusive

    src, server = held_out
    res = _resources(tmp_path, src, server)
    instance = dg.DagsterInstance.ephemeral()
    _mat(AUDIOSET_ASSETS[:1], res, "eval", instance)
    with exclusive(DataLayout.at(tmp_path / "data").partition_lock("eval"), "test"):
        result = _mat(AUDIOSET_ASSETS[1:2], res, "eval", instance, success=False)
    assert "AudioSet partition 'eval' is being processed by another process" in _step_errors(result)
    assert not (tmp_path / "data" / "audioset" / "downloads" / "eval").exists()


def test_a_moved_data_root_keeps_its_download_history(held_out, tmp_path):
    src, server = held_out
    _mat(AUDIOSET_ASSETS, _resources(tmp_path / "a", src, server), "eval")
    before = pd.read_parquet(tmp_path / "a" / "data" / "audioset" / "downloads" / "eval.parquet").set_index(
        "segment_id"
    )
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    again = _mat(AUDIOSET_ASSETS, _resources(tmp_path / "b", src, server), "eval")
    after = pd.read_parquet(tmp_path / "b" / "data" / "audioset" / "downloads" / "eval.parquet").set_index("segment_id")
    row_a, row_b = before.loc["Chaplin0001_1000"], after.loc["Chaplin0001_1000"]
    assert (row_b["attempts"], row_b["started_at"], row_b["finished_at"]) == (
        row_a["attempts"],
        row_a["started_at"],
        row_a["finished_at"],
    )
    # relative to the data root: a copied root reads only itself
    assert row_b["path"] == "audioset/downloads/eval/Chaplin0001_1000.cut.mkv"
    clips_b = pd.read_parquet(tmp_path / "b" / "data" / "audioset" / "clips" / "eval.parquet")
    assert all(not os.path.isabs(p) for p in clips_b["audio_path"].dropna())
    assert _meta(again, "audioset_clips")["extracted_now"] == 0
    pointer = tmp_path / "b" / "data" / "audioset" / "manifests" / "eval.parquet"
    raw = pd.read_parquet(pointer)
    ok = raw[raw["status"] == "ok"]
    assert len(ok) and all(p == f"audioset/clips/eval/{s}.wav" for p, s in zip(ok["audio_path"], ok["segment_id"]))
    resolved = read_manifest(pointer, tmp_path / "b" / "data")
    assert all(
        Path(p).is_file() and p.startswith(str(tmp_path / "b"))
        for p in resolved[resolved["status"] == "ok"]["audio_path"]
    )
    # the pointer is a relative link to an immutable version, so it survived the move
    assert pointer.is_symlink() and not os.path.isabs(os.readlink(pointer))
    version = pointer.resolve()
    assert version.parent == (tmp_path / "b" / "data" / "versions").resolve()
    assert version.stem == _meta(again, "audioset_manifest")["sha256"] and version.stat().st_mode & 0o222 == 0


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 3 MB (root and mount(8) needed; skipped where they are not)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_fails_the_run_and_quarantines_nothing(held_out, small_disk):
    """The data root fills up during downloads and extraction: the run is red, nothing is
    recorded as bad media; once the disk is larger, a re-run completes every clip the media allow."""
    src, server = held_out
    res = _resources(small_disk, src, server)
    instance = dg.DagsterInstance.ephemeral()
    first = _mat(AUDIOSET_ASSETS, res, "eval", instance, success=False)
    assert "No space left on device" in _step_errors(first), _step_errors(first)
    for name in ("downloads", "clips"):
        table = small_disk / "data" / "audioset" / f"{name}" / "eval.parquet"
        if table.is_file():
            df = pd.read_parquet(table)
            wrongly = df[
                (df["status"] == "invalid_media") & df["segment_id"].str.startswith(("Chaplin0001_1", "BigBuck"))
            ]
            assert wrongly.empty, wrongly
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = _mat(AUDIOSET_ASSETS, res, "eval", instance)
    assert _meta(again, "audioset_manifest")["ok"] == 6
