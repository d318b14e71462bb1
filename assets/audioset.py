"""AudioSet lineage: segments -> downloads -> clips -> manifest, one partition per segment list
that exists (registered by `dataset_sources`). One run works on a partition at a time (a lock
under the data root); a second fails at once and says so."""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from audioclip_core.acquisition.audioset import environment_faults, run_downloads, run_extraction
from audioclip_core.acquisition.youtube import TRANSIENT
from audioclip_core.data.catalog import publish_manifests
from audioclip_core.data.manifests import (
    MANIFEST_COLUMNS,
    build_manifest,
    clip_problems,
    read_partition,
    relative_paths,
)
from audioclip_core.files import exclusive, write_parquet

from .metadata import markdown_table, partitioned_check, pct, progress_logger, status_preview
from .resources import DataRoot, DatasetSources, YoutubeDownloader
from .sources import audioset_partitions, dataset_sources

GROUP = "audioset"
SUCCESS_WARN, SUCCESS_ERROR = 0.8, 0.5
USABLE_DEFAULT = 0.5


class ManifestConfig(dg.Config):
    min_usable_share: float = Field(
        default=USABLE_DEFAULT,
        ge=0,
        le=1,
        description="the blocking check `usable_share` fails below this share of the "
        "partition's segments with an ok clip",
    )


def _when(t) -> str:
    import time

    return "none" if t is None or pd.isna(t) else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))


def _read(path: Path):
    return pd.read_parquet(path) if path.is_file() else None


def _fail_on_environment(table: pd.DataFrame, step: str, partition: str) -> None:
    """Fail the step when this machine (not the media or its source) failed some segments: the
    table is written, nothing is quarantined, and the next run tries them again."""
    faults = environment_faults(table)
    if faults:
        raise dg.Failure(
            description=f"{step} {partition}: {len(faults)} segment(s) failed through a fault of this machine, not of "
            f"their media; fix it and re-run (nothing was quarantined). First: {faults[0]}",
            metadata={"environment_faults": len(faults), "first": faults[:10]},
        )


def _lock(layout, partition: str):
    return exclusive(layout.partition_lock(partition), f"AudioSet partition {partition!r}")


@dg.asset(
    partitions_def=audioset_partitions,
    group_name=GROUP,
    kinds={"parquet"},
    deps=[dataset_sources],
    description="The official segment list of the partition, parsed; malformed rows reported and skipped.",
)
def audioset_segments(
    context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources
) -> dg.MaterializeResult:
    partition, layout = context.partition_key, data_root.layout
    source = sources.audioset(layout)
    df, issues, source_sha = read_partition(source, partition)
    for issue in issues[:20]:
        context.log.warning(f"line {issue.line}: {issue.reason}: {issue.text[:120]!r}")
    out = layout.segments(partition)
    write_parquet(df, out)
    issues_df = pd.DataFrame([vars(i) for i in issues], columns=["line", "reason", "text"])
    write_parquet(issues_df, layout.segment_issues(partition))
    return dg.MaterializeResult(
        metadata={
            "segments": len(df),
            "malformed_rows": len(issues),
            "source": str(source),
            "source_sha256": source_sha,
            "path": dg.MetadataValue.path(str(out)),
            "preview": dg.MetadataValue.md(markdown_table(df.drop(columns=["line"]))),
            "malformed_preview": dg.MetadataValue.md(markdown_table(issues_df)) if len(issues_df) else "none",
        },
        data_version=dg.DataVersion(f"{source_sha[:16]}:{partition}"),
    )


@dg.asset(
    partitions_def=audioset_partitions,
    group_name=GROUP,
    deps=[audioset_segments],
    pool="youtube",
    kinds={"parquet"},
    check_specs=[
        partitioned_check(
            "download_success_rate",
            "audioset_downloads",
            audioset_partitions,
            blocking=True,
            description=f"Share of segments downloaded: a warning below {SUCCESS_WARN:.0%}; "
            f"below {SUCCESS_ERROR:.0%} it fails and blocks the clips and "
            "everything downstream",
        )
    ],
    description="yt-dlp downloads of each segment's time range, with a status per segment. "
    "Re-materialising skips `ok` and final failures; transient ones (throttled, error, stalled) "
    "are retried once their back-off (resource `youtube.retry_after_seconds`) has passed.",
)
def audioset_downloads(
    context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources, youtube: YoutubeDownloader
) -> dg.MaterializeResult:
    from audioclip_core.acquisition.audioset import intact_clips

    partition, layout = context.partition_key, data_root.layout
    segments = pd.read_parquet(layout.segments(partition))
    status_path = layout.downloads(partition)
    dest = layout.download_dir(partition)
    with _lock(layout, partition), youtube.serving(layout, sources, context.log.info) as options:
        seconds: dict = {}
        table = run_downloads(
            segments,
            dest,
            _read(status_path),
            options,
            max_workers=youtube.max_workers or None,
            per_host=youtube.per_host,
            per_host_per_minute=youtube.per_host_per_minute,
            retry_after=youtube.retry_after_seconds,
            keep=intact_clips(_read(layout.clips(partition)), layout.root),
            progress=progress_logger(context, f"downloads {partition}"),
            seconds=seconds,
            root=layout.root,
        )
        digest = write_parquet(table, status_path)
    _fail_on_environment(table, "downloads", partition)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    rate = counts.get("ok", 0) / len(table) if len(table) else 0.0
    deferred = table[table["skipped"].astype(bool) & table["status"].isin(TRANSIENT)] if len(table) else table
    severity = dg.AssetCheckSeverity.ERROR if rate < SUCCESS_ERROR else dg.AssetCheckSeverity.WARN
    check = dg.AssetCheckResult(
        check_name="download_success_rate",
        passed=rate >= SUCCESS_WARN,
        severity=severity,
        metadata={
            "success_rate_pct": pct(rate),
            "warn_below_pct": pct(SUCCESS_WARN),
            "fail_below_pct": pct(SUCCESS_ERROR),
            "ok": int(counts.get("ok", 0)),
            "segments": len(table),
            "by_status": counts,
        },
    )
    return dg.MaterializeResult(
        metadata={
            "segments": len(table),
            "success_rate_pct": pct(rate),
            "by_status": counts,
            "attempted_now": int((~table["skipped"].astype(bool)).sum()) if len(table) else 0,
            "deferred": len(deferred),
            "next_retry_after": _when(deferred["next_attempt_at"].min()) if len(deferred) else "none",
            "seconds_by_phase": {k: round(v, 2) for k, v in seconds.items()},
            "bytes": int(table["bytes"].fillna(0).sum()) if len(table) else 0,
            "path": dg.MetadataValue.path(str(status_path)),
            "preview": dg.MetadataValue.md(status_preview(table, ["segment_id", "status", "message", "attempts"])),
        },
        data_version=dg.DataVersion(digest[:16]),
        check_results=[check],
    )


@dg.asset(
    partitions_def=audioset_partitions,
    group_name=GROUP,
    deps=[audioset_downloads],
    kinds={"parquet"},
    check_specs=[
        partitioned_check(
            "no_empty_or_silent_clips",
            "audioset_clips",
            audioset_partitions,
            blocking=True,
            description="Every clip recorded ok has its WAV, and it is neither empty "
            "nor silent (bad media is quarantined, not kept); blocks the "
            "manifest when it fails",
        ),
        partitioned_check(
            "ten_frames_per_clip",
            "audioset_clips",
            audioset_partitions,
            blocking=True,
            description="Every clip recorded ok has its 10 JPEG frames; blocks the manifest when it fails",
        ),
    ],
    description="One ffmpeg pass per segment: 44.1 kHz WAV + 10 equally spaced JPEG frames; "
    "bad media quarantined with the reason.",
)
def audioset_clips(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    partition, layout = context.partition_key, data_root.layout
    downloads = pd.read_parquet(layout.downloads(partition))
    out = layout.clips(partition)
    with _lock(layout, partition):
        seconds: dict = {}
        clips = run_extraction(
            downloads,
            layout.clip_dir(partition),
            _read(out),
            seconds=seconds,
            progress=progress_logger(context, f"clips {partition}"),
            root=layout.root,
        )
        digest = write_parquet(clips, out)
    _fail_on_environment(clips, "clips", partition)
    problems = clip_problems(clips, root=layout.root)
    checks = [
        dg.AssetCheckResult(
            check_name="no_empty_or_silent_clips",
            passed=not (problems["empty"] or problems["silent"] or problems["missing"]),
            metadata={k: problems[k][:20] for k in ("empty", "silent", "missing")},
        ),
        dg.AssetCheckResult(
            check_name="ten_frames_per_clip",
            passed=not problems["frames"],
            metadata={"wrong_frame_count": problems["frames"][:20]},
        ),
    ]
    counts = clips["status"].value_counts().to_dict() if len(clips) else {}
    return dg.MaterializeResult(
        metadata={
            "clips": int(counts.get("ok", 0)),
            "by_status": counts,
            "extracted_now": int((~clips["skipped"].astype(bool)).sum()) if len(clips) else 0,
            "seconds_by_phase": {k: round(v, 2) for k, v in seconds.items()},
            "path": dg.MetadataValue.path(str(out)),
            "quarantined": dg.MetadataValue.md(markdown_table(clips[clips["status"] != "ok"][["segment_id", "reason"]]))
            if (clips["status"] != "ok").any()
            else "none",
        },
        data_version=dg.DataVersion(digest[:16]),
        check_results=checks,
    )


@dg.asset(
    partitions_def=audioset_partitions,
    group_name=GROUP,
    deps=[audioset_segments, audioset_downloads, audioset_clips],
    kinds={"parquet", "duckdb"},
    check_specs=[
        partitioned_check(
            "usable_share",
            "audioset_manifest",
            audioset_partitions,
            blocking=True,
            description="Share of the partition's segments whose clip is ok (config "
            "`min_usable_share`, default "
            f"{USABLE_DEFAULT:.0%}): below it the check fails and blocks "
            "shards and training",
        )
    ],
    description="The partition's manifest (parquet, one row per segment) and its view in the DuckDB "
    "catalog of the data root. Columns: " + "; ".join(f"{k}: {v}" for k, v in MANIFEST_COLUMNS.items()),
)
def audioset_manifest(
    context: dg.AssetExecutionContext, config: ManifestConfig, data_root: DataRoot
) -> dg.MaterializeResult:
    partition, layout = context.partition_key, data_root.layout
    manifest = build_manifest(
        pd.read_parquet(layout.segments(partition)),
        pd.read_parquet(layout.downloads(partition)),
        pd.read_parquet(layout.clips(partition)),
        partition,
    )
    out = layout.audioset_manifest(partition)
    manifest = relative_paths(manifest, layout.root)
    ((digest, version),) = publish_manifests(layout, {f"audioset_{partition}": (manifest, out)}).values()
    counts = manifest["status"].value_counts().to_dict()
    share = counts.get("ok", 0) / len(manifest) if len(manifest) else 0.0
    check = dg.AssetCheckResult(
        check_name="usable_share",
        passed=share >= config.min_usable_share,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "usable_pct": pct(share),
            "min_usable_pct": pct(config.min_usable_share),
            "usable": int(counts.get("ok", 0)),
            "segments": len(manifest),
            "by_status": counts,
        },
    )
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "segments": len(manifest),
            "ok": int(counts.get("ok", 0)),
            "by_status": counts,
            "usable_pct": pct(share),
            "sha256": digest,
            "path": dg.MetadataValue.path(str(out)),
            "version": dg.MetadataValue.path(str(version)),
            "catalog": dg.MetadataValue.path(str(layout.catalog)),
            "duckdb_view": f"audioset_{partition}",
            "preview": dg.MetadataValue.md(
                status_preview(manifest, ["segment_id", "label_names", "status", "duration"])
            ),
        },
        data_version=dg.DataVersion(digest[:16]),
    )
