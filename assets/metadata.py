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


def each_partition(context, materialize) -> "dg.MaterializeResult":
    """Run `materialize(partition_key)` for every partition of the run - one, or a range when
    the asset's backfill policy batches partitions into one run (the fold assets: one process
    instead of one per fold) - and return one result: a single partition's as it is; for a
    range, each partition's metadata under its key, every check passed only when it passed
    for all, and a data version of them all."""
    import hashlib

    import dagster as dg

    keys = list(context.partition_keys)
    results = [materialize(k) for k in keys]
    if len(results) == 1:
        return results[0]

    def plain(meta) -> dict:
        return {k: (v.value if hasattr(v, "value") else v) for k, v in (meta or {}).items()}

    checks: dict[str, list] = {}
    for key, res in zip(keys, results):
        for c in res.check_results or []:
            checks.setdefault(c.check_name, []).append((key, c))
    merged = [
        dg.AssetCheckResult(
            check_name=name,
            passed=all(c.passed for _, c in got),
            metadata={
                f"partition {k}": dg.MetadataValue.json({"passed": c.passed, **plain(c.metadata)}) for k, c in got
            },
        )
        for name, got in checks.items()
    ]
    versions = "".join(r.data_version.value if r.data_version else "" for r in results)
    return dg.MaterializeResult(
        metadata={
            "partitions": keys,
            **{f"partition {k}": dg.MetadataValue.json(plain(r.metadata)) for k, r in zip(keys, results)},
        },
        check_results=merged,
        data_version=dg.DataVersion(hashlib.sha256(versions.encode()).hexdigest()[:16]),
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
