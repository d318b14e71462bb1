"""A table's rows as markdown: the fold means pivoted to one line per (model, task), one
column per (dataset, metric), values in % with their chance level in brackets, and the
protocol the figures follow."""

from __future__ import annotations

import pandas as pd


def _protocol_line(protocol: dict) -> str:
    parts = []
    if "template" in protocol:
        parts.append(f"prompt template `{protocol['template']}`")
    scale = protocol.get("input_scale")
    if isinstance(scale, str):
        parts.append(f"input scale {scale}")
    elif isinstance(scale, dict):
        parts.append(
            "input scale " + ", ".join(f"{k.upper() if k in ('esc50', 'us8k') else k}: {v}" for k, v in scale.items())
        )
    secs, chans = protocol.get("clip_seconds") or {}, protocol.get("channels") or {}
    folds = protocol.get("folds") or {}
    for name in secs:
        parts.append(
            f"{name.upper()} {secs[name]:g} s x {chans.get(name, '?')} ch"
            + (f", {folds[name]} official folds" if name in folds else "")
        )
    if "audioset_partition" in protocol:
        parts.append(f"AudioSet partition {protocol['audioset_partition']}")
    if "query_rule" in protocol:
        parts.append(f"AudioSet query relevance: {protocol['query_rule']} (audioclip_core/evaluation/retrieval.py)")
    if "imagenet" in protocol:
        parts.append(f"ImageNet: {protocol['imagenet']}")
    return "Protocol: " + "; ".join(parts) + "." if parts else ""


def render_markdown(df: pd.DataFrame, protocol: dict | None = None) -> str:
    if df.empty:
        return "no rows"
    main = df[df["fold"] == "mean"].copy()

    def pct(v) -> str:
        return ("%.2f" % (100 * v)) if v is not None and v == v else ""

    chance = main["chance"] if "chance" in main else [None] * len(main)
    main["cell"] = [
        (pct(v) or "—") + (f" [{pct(c)}]" if pct(v) and pct(c) else "") + (f" ({n})" if n else "")
        for v, c, n in zip(main["value"], chance, main["note"].fillna(""))
    ]
    pivot = main.pivot_table(index=["model", "task"], columns=["dataset", "metric"], values="cell", aggfunc="first")
    cols = [" ".join(c) for c in pivot.columns]
    lines = ["| model | task | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (model, task), r in pivot.iterrows():
        lines.append(f"| {model} | {task} | " + " | ".join(str(v) if isinstance(v, str) else "—" for v in r) + " |")
    footer = (
        "Values in %; [chance]: the metric's expected value for random scores on the same evaluation set "
        "(column `chance`); per-fold figures are in the parquet / DuckDB table."
    )
    line = _protocol_line(protocol or {})
    return "\n".join(lines) + "\n\n" + footer + (f"\n{line}" if line else "")
