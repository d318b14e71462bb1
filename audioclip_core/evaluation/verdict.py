"""Whether the tables show the paper's qualitative claims, judged against chance.

A figure is *above chance* when it clears the metric's chance level (the tables' `chance`
column: its expected value for random scores on the same evaluation set) by `MARGIN`
(10 points) - or, for R@1, whose ceiling is 1 / (relevant items), when it is at least twice
its chance level. The claims, each from the fold means of the tables:

1. cooperative training gives above-chance zero-shot (Table 3, AudioCLIP (partial));
2. full training keeps it (Table 3, AudioCLIP (full));
3. fine-tuning beats zero-shot (Table 2's fine-tuned accuracy above Table 3's zero-shot, per
   model and dataset);
4. all four querying directions beat chance (Table 4, AudioSet, every model and metric);

and, the demo's bar, every figure of every table is above chance. `make demo` prints the
verdict under the tables; `bench/seed_study.py` applies it to several seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

MARGIN = 0.10
QUERY_DIRECTIONS = ("image by text", "audio by text", "audio by image", "image by audio")


def above_chance(value, chance, metric: str) -> bool:
    if value is None or chance is None or value != value or chance != chance:
        return False
    bar = 2 * chance if metric == "R@1" else chance + MARGIN
    return value >= bar - 1e-9  # "at least": 0.2 + 0.1 is 0.30000000000000004 in floating point


@dataclass
class Claim:
    text: str
    holds: bool
    evidence: list[str] = field(default_factory=list)  # the figures it rests on


def _means(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["fold"] == "mean"]


def _figure(r) -> str:
    value = "—" if r.value is None or r.value != r.value else f"{100 * r.value:.1f}"
    chance = "—" if r.chance is None or r.chance != r.chance else f"{100 * r.chance:.1f}"
    return f"{r.model} {r.task} {r.dataset} {r.metric}: {value} (chance {chance})"


def _rows_above(df: pd.DataFrame, text: str) -> Claim:
    rows = list(df.itertuples())
    return Claim(
        text,
        bool(rows) and all(above_chance(r.value, r.chance, r.metric) for r in rows),
        [_figure(r) for r in rows] or ["no figures"],
    )


def judge(tables: Mapping[str, pd.DataFrame]) -> list[Claim]:
    """The claims above, from the tables' rows (`table1_esresnext` ... `table4_querying`)."""
    t2, t3, t4 = (_means(tables[k]) for k in ("table2_audioclip", "table3_zero_shot", "table4_querying"))
    claims = [
        _rows_above(t3[t3["model"] == "AudioCLIP (partial)"], "cooperative training gives above-chance zero-shot"),
        _rows_above(t3[t3["model"] == "AudioCLIP (full)"], "full training keeps it"),
    ]
    fine = t2[t2["task"] == "fine-tuned"]
    evidence, holds = [], bool(len(fine))
    for r in fine.itertuples():
        zs = t3[(t3["model"] == r.model) & (t3["dataset"] == r.dataset)]
        z = float(zs["value"].iloc[0]) if len(zs) and zs["value"].iloc[0] == zs["value"].iloc[0] else None
        ok = r.value is not None and r.value == r.value and z is not None and r.value > z
        holds = holds and ok
        evidence.append(
            f"{r.model} {r.dataset}: fine-tuned {100 * r.value:.1f} vs zero-shot "
            + ("—" if z is None else f"{100 * z:.1f}")
        )
    claims.append(Claim("fine-tuning beats zero-shot", holds, evidence))
    claims.append(
        _rows_above(
            t4[(t4["dataset"] == "AudioSet") & t4["task"].isin(QUERY_DIRECTIONS)],
            "all four querying directions beat chance",
        )
    )
    every = pd.concat([_means(df) for df in tables.values()], ignore_index=True)
    every = every[every["value"].notna()]
    below = every[[not above_chance(r.value, r.chance, r.metric) for r in every.itertuples()]]
    claims.append(
        Claim(
            f"every figure is above chance (+{100 * MARGIN:.0f} points; R@1: twice chance)",
            bool(len(every)) and below.empty,
            [_figure(r) for r in below.itertuples()] or [f"{len(every)} figures"],
        )
    )
    return claims


def render(claims: list[Claim]) -> str:
    lines = ["Verdict (fold means against chance; audioclip_core/evaluation/verdict.py):"]
    for c in claims:
        lines.append(f"  [{'holds' if c.holds else 'FAILS'}] {c.text}")
        if not c.holds or len(c.evidence) <= 2:
            lines += [f"      {e}" for e in c.evidence[:12]]
    return "\n".join(lines)
