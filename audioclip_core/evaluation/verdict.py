"""Whether the tables show the paper's qualitative claims, judged against chance.

A figure is *above chance* when it clears the metric's chance level (the tables' `chance`
column: its expected value for random scores on the same evaluation set) by `MARGIN`
(10 points) - or, for R@1, whose ceiling is 1 / (relevant items), when it is at least twice
its chance level. The claims, each from the fold means of the tables:

1. cooperative training gives above-chance zero-shot (Table 3, AudioCLIP (partial));
2. full training keeps it (Table 3, AudioCLIP (full));
3. fine-tuning beats zero-shot (Table 2's fine-tuned accuracy against Table 3's zero-shot on
   the same test folds, per model and dataset: the mean of the per-fold differences positive);
4. all four querying directions beat chance (Table 4, AudioSet, every model and metric);

and, the demo's bar, every figure of every table is above chance. Each claim is printed with
its margin - the smallest, over its figures, of (figure - bar) or of the mean paired
difference - and its folds. `make demo` prints the verdict under the tables (`make demo
STRICT=1` exits non-zero when a claim fails); `bench/seed_study.py` applies it to several seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import pandas as pd

MARGIN = 0.10
QUERY_DIRECTIONS = ("image by text", "audio by text", "audio by image", "image by audio")


def bar(chance, metric: str) -> float:
    """The level a figure must reach to count as above chance."""
    return 2 * chance if metric == "R@1" else chance + MARGIN


def above_chance(value, chance, metric: str) -> bool:
    if value is None or chance is None or value != value or chance != chance:
        return False
    return value >= bar(chance, metric) - 1e-9  # "at least": 0.2 + 0.1 is 0.30000000000000004 in floating point


@dataclass
class Claim:
    text: str
    holds: bool
    evidence: list[str] = field(default_factory=list)  # the figures it rests on, each with its margin
    margin: Optional[float] = None  # the smallest margin (points) by which it holds (negative: fails)


def _means(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["fold"] == "mean"]


def _folds(df: pd.DataFrame, r) -> pd.DataFrame:
    """The per-fold rows behind mean row `r` (empty where the figure has no folds)."""
    same = (df["model"] == r.model) & (df["task"] == r.task) & (df["dataset"] == r.dataset) & (df["metric"] == r.metric)
    return df[same & (df["fold"] != "mean")]


def _pts(x: Optional[float]) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _valid(x) -> bool:
    return x is not None and x == x


def _above(all_rows: pd.DataFrame, rows: pd.DataFrame, text: str) -> Claim:
    """Every mean row of `rows` at or above its bar; the evidence gives each figure's margin
    over the bar and, where it has folds, how many folds clear the bar and the worst fold."""
    evidence, margins = [], []
    for r in rows.itertuples():
        if not (_valid(r.value) and _valid(r.chance)):
            evidence.append((float("-inf"), f"{r.model} {r.task} {r.dataset} {r.metric}: no figure"))
            margins.append(float("-inf"))
            continue
        b = bar(r.chance, r.metric)
        margins.append(r.value - b)
        line = f"{r.model} {r.task} {r.dataset} {r.metric}: {_pts(r.value)} (bar {_pts(b)}: {_signed(r.value - b)})"
        folds = _folds(all_rows, r)
        folds = folds[folds["value"].notna()]
        if len(folds):
            above = sum(above_chance(v, c, r.metric) for v, c in zip(folds["value"], folds["chance"]))
            line += f"; folds above the bar {above}/{len(folds)}, worst {_pts(folds['value'].min())}"
        evidence.append((r.value - b, line))
    holds = bool(margins) and min(margins) >= -1e-9
    ordered = [line for _, line in sorted(evidence, key=lambda e: e[0])]  # the closest first
    return Claim(text, holds, ordered or ["no figures"], min(margins) if margins else None)


def _beats(t2: pd.DataFrame, t3: pd.DataFrame) -> Claim:
    """Fine-tuning beats zero-shot, per model and dataset, paired per fold (the same test fold
    before and after fine-tuning): the mean of the per-fold differences must be positive; the
    evidence says how many folds improved and the worst fold's change."""
    fine = _means(t2[t2["task"] == "fine-tuned"])
    evidence, margins = [], []
    for r in fine.itertuples():
        zs = t3[(t3["model"] == r.model) & (t3["dataset"] == r.dataset) & (t3["task"] == "zero-shot")]
        ft = _folds(t2, r)
        pairs = [
            (float(a), float(b))
            for fold, a in zip(ft["fold"], ft["value"])
            for b in zs[zs["fold"] == fold]["value"]
            if _valid(a) and _valid(b)
        ]
        basis = f"paired over {len(pairs)} folds"
        if not pairs:  # figures without folds: the means
            z = [float(v) for v in zs[zs["fold"] == "mean"]["value"] if _valid(v)]
            if not (z and _valid(r.value)):
                evidence.append(f"{r.model} {r.dataset}: no zero-shot figure to compare (fine-tuned {_pts(r.value)})")
                margins.append(float("-inf"))
                continue
            pairs, basis = [(float(r.value), z[0])], "means (no folds)"
        diffs = [a - b for a, b in pairs]
        mean = sum(diffs) / len(diffs)
        margins.append(mean)
        # figures are shares of a fold's clips stored in float32: closer than 1e-6 is equal
        better, worse = sum(d > 1e-6 for d in diffs), sum(d < -1e-6 for d in diffs)
        worst = min(diffs) if abs(min(diffs)) > 1e-6 else 0.0
        evidence.append(
            f"{r.model} {r.dataset}: fine-tuned {_pts(sum(a for a, _ in pairs) / len(pairs))} vs zero-shot "
            f"{_pts(sum(b for _, b in pairs) / len(pairs))}: {_signed(mean)} points, {basis} "
            f"({better} better, {len(pairs) - better - worse} equal, {worse} worse; worst fold {_signed(worst)})"
        )
    holds = bool(margins) and min(margins) > 1e-12
    return Claim(
        "fine-tuning beats zero-shot", holds, evidence or ["no fine-tuned figures"], min(margins) if margins else None
    )


def judge(tables: Mapping[str, pd.DataFrame]) -> list[Claim]:
    """The claims above, from the tables' rows (`table1_esresnext` ... `table4_querying`)."""
    t2, t3, t4 = (tables[k] for k in ("table2_audioclip", "table3_zero_shot", "table4_querying"))
    m3, m4 = _means(t3), _means(t4)
    claims = [
        _above(t3, m3[m3["model"] == "AudioCLIP (partial)"], "cooperative training gives above-chance zero-shot"),
        _above(t3, m3[m3["model"] == "AudioCLIP (full)"], "full training keeps it"),
        _beats(t2, t3),
        _above(
            t4,
            m4[(m4["dataset"] == "AudioSet") & m4["task"].isin(QUERY_DIRECTIONS)],
            "all four querying directions beat chance",
        ),
    ]
    every = pd.concat([_means(df) for df in tables.values()], ignore_index=True)
    every = every[every["value"].notna()]
    gaps = [(r.value - bar(r.chance, r.metric), r) for r in every.itertuples() if _valid(r.chance)]
    below = [r for gap, r in gaps if gap < -1e-9]
    if below:
        evidence = [
            f"{r.model} {r.task} {r.dataset} {r.metric}: {_pts(r.value)} (bar {_pts(bar(r.chance, r.metric))})"
            for r in below
        ]
    elif gaps:
        gap, r = min(gaps, key=lambda g: g[0])
        evidence = [
            f"{len(every)} figures; the closest: {r.model} {r.task} {r.dataset} {r.metric} {_pts(r.value)} "
            f"(bar {_pts(bar(r.chance, r.metric))}: {_signed(gap)})"
        ]
    else:
        evidence = ["no figures"]
    claims.append(
        Claim(
            f"every figure is above chance (+{100 * MARGIN:.0f} points; R@1: twice chance)",
            bool(len(every)) and not below,
            evidence,
            min(g for g, _ in gaps) if gaps else None,
        )
    )
    return claims


def render(claims: list[Claim]) -> str:
    lines = [
        "Verdict (fold means against chance, fine-tuning paired per fold, margins in points; "
        "audioclip_core/evaluation/verdict.py):"
    ]
    for c in claims:
        margin = (
            ""
            if c.margin is None or c.margin != c.margin or abs(c.margin) == float("inf")
            else f"  (margin {_signed(c.margin)})"
        )
        lines.append(f"  [{'holds' if c.holds else 'FAILS'}] {c.text}{margin}")
        shown = 4 if c.holds else 12  # the closest figures first
        lines += [f"      {e}" for e in c.evidence[:shown]]
        if len(c.evidence) > shown:
            lines.append(f"      ... and {len(c.evidence) - shown} more, each further above its bar")
    return "\n".join(lines)
