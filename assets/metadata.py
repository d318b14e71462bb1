"""What the assets show in the Dagster UI: markdown previews of tables, progress in the run log."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import dagster as dg


def progress_logger(context, label: str):
    """A `progress(done, total)` callback that logs about every tenth of the way."""
    last = [-1]

    def report(done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done // step != last[0]:
            last[0] = done // step
            context.log.info(f"{label}: {done}/{total}")

    return report


def markdown_table(df: pd.DataFrame, max_rows: int = 10) -> str:
    """A small markdown preview (no optional dependency on tabulate)."""
    df = df.head(max_rows)
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = []
        for v in row.tolist():
            text = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            cells.append(text.replace("|", "\\|")[:60])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def each_partition(context, materialize):
    """Run `materialize(partition_key)` for every partition of the run - one, or a range when
    the asset's backfill policy batches partitions into one run (the fold assets and the
    fine-tunings: one process instead of one per fold) - and yield what Dagster records per
    partition: a single partition's result as it is; for a range, each partition's own metadata
    (`add_asset_metadata`), each partition's own check results (evaluations carrying the
    partition, so the UI shows every fold's latest result, and a failed blocking one fails the
    step), and one data version of them all (Dagster takes one per output)."""
    import hashlib

    import dagster as dg

    keys = list(context.partition_keys)
    if len(keys) == 1:
        yield materialize(keys[0])
        return
    results = [materialize(k) for k in keys]
    for key, res in zip(keys, results):
        context.add_asset_metadata(dict(res.metadata or {}), partition_key=key)
    versions = "".join(r.data_version.value if r.data_version else "" for r in results)
    yield dg.MaterializeResult(
        metadata={"run_partitions": dg.MetadataValue.text(f"{len(keys)} in one run: {', '.join(keys)}")},
        data_version=dg.DataVersion(hashlib.sha256(versions.encode()).hexdigest()[:16]),
    )
    specs = {s.name: s for s in context.assets_def.check_specs}
    for key, res in zip(keys, results):
        for c in res.check_results or []:
            spec = specs[c.check_name]
            yield dg.AssetCheckEvaluation(
                asset_key=spec.asset_key,
                check_name=c.check_name,
                passed=c.passed,
                metadata=c.metadata,
                severity=c.severity,
                description=c.description,
                blocking=spec.blocking,
                partition=key,
                target_materialization_data=_materialization_of(context, spec.asset_key, key),
            )
    for spec in specs.values():  # each check's output: its evaluations went out above
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(spec.key))


def _materialization_of(context, asset_key, partition: str):
    """The partition's materialisation just recorded, which its check evaluation is about."""
    import dagster as dg
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    mat = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=mat.event_log_entry.run_id, storage_id=mat.storage_id, timestamp=mat.timestamp
    )


def partitioned_check(name: str, asset: str, partitions_def, **kwargs) -> "dg.AssetCheckSpec":
    """An asset check of a partitioned asset that is evaluated per partition: a result emitted by
    a materialisation of partition P is recorded against P (Dagster attaches the step's partition
    only to checks that declare the asset's `partitions_def`), so the UI shows each partition's
    latest result instead of "Not evaluated". Dagster marks the parameter a preview; its warning
    would repeat in every process that loads the code location."""
    import warnings

    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, **kwargs)


def pct(share: float) -> float:
    """A rate as the percentage people read, rounded to one decimal (0.98361 -> 98.4)."""
    return round(100.0 * float(share), 1)


def status_preview(df: pd.DataFrame, columns: list[str], ok: str = "ok", max_rows: int = 10) -> str:
    """What a person opens a status table for: the count per status, then the rows that did not
    end `ok` (failures first), then ok rows to fill the preview."""
    if not len(df):
        return "no rows"
    counts = df["status"].value_counts()
    head = ", ".join(f"{s}: {n}" for s, n in counts.items())
    bad = df[df["status"] != ok]
    rows = pd.concat([bad, df[df["status"] == ok]]).head(max_rows)
    shown = f"{min(len(bad), max_rows)} of {len(bad)} not-{ok} rows first" if len(bad) else f"all {ok}"
    return f"**{len(df)} rows** - {head} ({shown})\n\n" + markdown_table(rows[columns], max_rows)
