"""A table's rows as markdown: the fold means pivoted to one line per (model, task), one
column per (dataset, metric), values in % with their chance level in brackets, and the
protocol the figures follow (`render_markdown`: the `.md` file and the Dagster metadata of a
table). `render_tables` lays the four tables out for the terminal (`make demo`): the legend and
the protocol they share once, then each table with what its rows can show and the protocol's
differences."""

from __future__ import annotations

import re
from typing import Mapping

import pandas as pd

FOOTER = (
    "Values in %; [chance]: the metric's expected value for random scores on the same evaluation set "
    "(column `chance`); per-fold figures are in the parquet / DuckDB table."
)
PROTOCOL = "Protocol: "


def protocol_parts(protocol: dict) -> list[str]:
    """The protocol's statements, in the order the `Protocol:` line gives them."""
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
    return parts


def _protocol_line(protocol: dict) -> str:
    parts = protocol_parts(protocol)
    return PROTOCOL + "; ".join(parts) + "." if parts else ""


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
    line = _protocol_line(protocol or {})
    return "\n".join(lines) + "\n\n" + FOOTER + (f"\n{line}" if line else "")


# -- the terminal: four tables, one legend and protocol ------------------------------------------
def split_markdown(md: str) -> tuple[list[str], list[str]]:
    """The table lines of a `render_markdown` text (a `# name` header, the legend and blank
    lines dropped) and the statements of its protocol line."""
    table, parts = [], []
    for line in md.splitlines():
        if line.startswith(PROTOCOL):
            parts = [p.strip() for p in line[len(PROTOCOL) :].rstrip(".").split("; ") if p.strip()]
        elif line.startswith("|"):
            table.append(line)
    return table, parts


def _rows(table: list[str]) -> list[tuple[str, str]]:
    return [tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in table[2:]]


def _columns(table: list[str]) -> list[str]:
    return [c.strip() for c in table[0].strip("|").split("|")[2:]] if table else []


def row_notes(table: list[str]) -> list[str]:
    """What the rows and columns of a table (its markdown lines) can show, one line each."""
    rows, cols = _rows(table), _columns(table)
    models = {m for m, _ in rows}
    tasks = {t for _, t in rows}
    notes = []
    for m in sorted(models):
        hit = re.fullmatch(r"ESResNeXt \((\d+) epochs\)", m)
        if hit:
            notes.append(
                f"{m}: the weights stage 1 kept after {hit.group(1)} of its epochs (`keep_epochs`) - Table 1's "
                "shorter-trained row; set against ESResNeXt (the finished stage) it shows what the later epochs add."
            )
    if "ESResNeXt" in models:
        notes.append("ESResNeXt: the audio head alone, after stage 1 (AudioSet classification).")
    if models & {"AudioCLIP (partial)", "AudioCLIP (full)"}:
        notes.append(
            "AudioCLIP (partial): stage 2, the audio head trained into the frozen image-text space; "
            "(full): stage 3, then all three towers trained together."
        )
    if "fine-tuned" in tasks:
        notes.append(
            "fine-tuned: trained on the other folds, tested on the held-out one; the mean over folds. Where the "
            "profile holds out validation clips (the demo's), each fold keeps its best epoch on them, the start "
            "included (the fold's lineage and MLflow run show the curve)."
        )
    if "zero-shot" in tasks:
        notes.append("zero-shot: the class names as text queries, no training on ESC-50 / US8K.")
    if any("mAP both" in c for c in cols):
        notes.append("mAP both: the mean of the audio-text and image-text cosines (ours; the paper leaves it open).")
    if any("image" in c for c in cols) or tasks & {"image by text", "image by audio", "audio by image"}:
        notes.append(
            "image rows and columns: one frame per clip (the middle one). Each of the demo's frames shows the "
            "clip's class as a colour band beside the band of another class drawn at random, so a frame leaves two "
            "candidates: figures from images sit between chance and their ceiling. mAP both averages the audio and "
            "image cosines; with frames this ambiguous it has sat between the image and audio figures in the "
            "demo's runs, not above both."
        )
    if any(c.endswith("R@1") for c in cols):
        notes.append("R@1: its ceiling is 1 / (relevant items), so a low figure can be the best possible.")
    return notes


def render_tables(tables: Mapping[str, str]) -> str:
    """The tables for the terminal (`tables`: name -> its `render_markdown` text, e.g. the
    `.md` file): the legend and the protocol statements all of them share once, then per
    table its lines, what its rows can show (each note once, under the first table it
    concerns), and the statements only it has."""
    split = {name: split_markdown(md) for name, md in tables.items()}
    every = [parts for _, parts in split.values() if parts]
    common = [p for p in every[0] if all(p in parts for parts in every[1:])] if every else []
    out = [FOOTER]
    if common:
        out.append(f"{PROTOCOL}{'; '.join(common)}." + (" (every table)" if len(every) > 1 else ""))
    said: set[str] = set()
    for name, (table, parts) in split.items():
        out += ["", f"## {name}", ""]
        out += table or ["no rows"]
        notes = [n for n in row_notes(table) if n not in said]
        said.update(notes)
        extra = [p for p in parts if p not in common]
        if notes or extra:
            out.append("")
        out += [f"  {n}" for n in notes]
        if extra:
            out.append(f"  Protocol, in addition: {'; '.join(extra)}.")
    return "\n".join(out)
