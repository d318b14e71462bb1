"""What the assets show in the Dagster UI: markdown previews of tables, progress in the run log."""
from __future__ import annotations

import pandas as pd


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
