"""Whether a re-trained model (the challenger) replaces the one in use (the champion): the rule,
and the figures it reads.

Figures are the rows of the evaluation tables for one model - `(task, dataset, metric, fold)`
-> value in percent - measured on the same evaluation manifests for both models (the caller
re-evaluates the champion when those changed). The rule, per figure the champion has:

- its fold mean (or its single value) may be worse than the champion's by at most
  `mean_tolerance` percentage points;
- no fold of it may be worse than the champion's same fold by more than `fold_collapse`
  points (one fold falling apart is not averaged away);
- a figure the champion has and the challenger lacks rejects it (nothing is compared on less);
- and on balance it is not worse: the fold means change by at least `min_mean_change` points
  on average (0: a challenger slightly worse on every figure does not replace the champion,
  one as good - re-trained on the same data and seed - does).

The decision names every figure, both values and which limit failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

import pandas as pd

from .verdict import QUERY_DIRECTIONS  # Table 4's tasks

Key = tuple[str, str, str, str]  # (task, dataset, metric, fold)


@dataclass(frozen=True)
class Rule:
    mean_tolerance: float = 1.0  # percentage points a figure's fold mean may lose
    fold_collapse: float = 10.0  # percentage points one fold may lose
    min_mean_change: float = 0.0  # the average change of the fold means, at least

    def describe(self) -> str:
        return (
            f"the challenger's fold mean of every figure at most {self.mean_tolerance:g} points below the "
            f"champion's, no fold more than {self.fold_collapse:g} points below the champion's same fold, "
            f"and the fold means changing by at least {self.min_mean_change:+g} points on average"
        )


@dataclass
class Comparison:
    task: str
    dataset: str
    metric: str
    fold: str
    challenger: Optional[float]
    champion: float
    delta: Optional[float]
    limit: float
    ok: bool


@dataclass
class Decision:
    promote: bool
    reason: str
    rule: str
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "rule": self.rule,
            "comparisons": [asdict(c) for c in self.comparisons],
        }

    def table(self) -> str:
        """The comparisons as a markdown table (the asset's metadata)."""
        lines = [
            "| task | dataset | metric | fold | challenger % | champion % | change | limit | ok |",
            "|---" * 9 + "|",
        ]
        for c in self.comparisons:
            ch = "-" if c.challenger is None else f"{c.challenger:.2f}"
            d = "-" if c.delta is None else f"{c.delta:+.2f}"
            lines.append(
                f"| {c.task} | {c.dataset} | {c.metric} | {c.fold} | {ch} | {c.champion:.2f} | {d} | "
                f"-{c.limit:g} | {'yes' if c.ok else 'NO'} |"
            )
        return "\n".join(lines)


def figures(rows: pd.DataFrame, model: str) -> dict[Key, float]:
    """The finite figures of `model` in table rows (`evaluation.tables`), in percent."""
    out: dict[Key, float] = {}
    for r in rows[rows["model"] == model].itertuples():
        if r.value is None or r.value != r.value:
            continue
        out[(str(r.task), str(r.dataset), str(r.metric), str(r.fold))] = 100.0 * float(r.value)
    return out


def decide(challenger: Mapping[Key, float], champion: Optional[Mapping[Key, float]], rule: Rule = Rule()) -> Decision:
    if champion is None:
        return Decision(True, "no champion yet: the first model becomes champion", rule.describe())
    if not champion:
        return Decision(True, "the champion has no figures on these evaluation data", rule.describe())
    comparisons = []
    for key in sorted(champion):
        task, dataset, metric, fold = key
        limit = rule.mean_tolerance if fold == "mean" else rule.fold_collapse
        mine = challenger.get(key)
        delta = None if mine is None else mine - champion[key]
        ok = delta is not None and delta >= -limit
        comparisons.append(Comparison(task, dataset, metric, fold, mine, champion[key], delta, limit, ok))
    failed = [c for c in comparisons if not c.ok]
    means = [c.delta for c in comparisons if c.fold == "mean" and c.delta is not None]
    balance = sum(means) / len(means) if means else 0.0
    span = (
        f"fold means change by {min(means):+.2f} to {max(means):+.2f} points, {balance:+.2f} on average"
        if means
        else ""
    )
    if not failed:
        if balance < rule.min_mean_change:
            return Decision(
                False,
                f"worse on balance: {span} (below {rule.min_mean_change:+g}), every figure within its limit",
                rule.describe(),
                comparisons,
            )
        return Decision(True, f"all {len(comparisons)} figures within the rule; {span}", rule.describe(), comparisons)
    worst = sorted(failed, key=lambda c: (c.delta is not None, c.delta if c.delta is not None else 0.0))[:3]
    said = "; ".join(
        f"{c.task} {c.dataset} {c.metric} fold {c.fold}: "
        + ("missing" if c.delta is None else f"{c.challenger:.2f} vs {c.champion:.2f} ({c.delta:+.2f} < -{c.limit:g})")
        for c in worst
    )
    return Decision(
        False, f"{len(failed)} of {len(comparisons)} figures outside the rule: {said}", rule.describe(), comparisons
    )


# -- the evaluation data and the figures of a checkpoint on it ----------------------------------
AUDIOSET = "AudioSet"


def evaluation_data(layout, audioset_partition: str = "eval") -> dict[str, dict]:
    """Table dataset name -> {"path", "version", "sha256"} of each manifest the tables read now
    ("ESC50", "US8K", "AudioSet"); a manifest not made yet is left out."""
    from ..data.clipsets import SPECS
    from ..files import verified_version

    paths = {name.upper(): layout.clipset_manifest(name) for name in SPECS}
    paths[AUDIOSET] = layout.audioset_manifest(audioset_partition)
    out = {}
    for name, path in paths.items():
        if path.is_file():
            sha, version = verified_version(path)
            out[name] = {"path": str(path), "version": str(version), "sha256": sha}
    return out


# what a registered model is judged by: the tables that hold its figures, its rows' model name
# there, and the tasks that count (`audioclip`: zero-shot and querying; `esresnext`: AudioSet
# classification - not Table 1's fine-tuned rows, which are figures of the fold models)
JUDGED_BY = {
    "audioclip": (("table3_zero_shot", "table4_querying"), "AudioCLIP (full)", ("zero-shot", *QUERY_DIRECTIONS)),
    "esresnext": (("table1_esresnext",), "ESResNeXt", ("classification",)),
}


def evaluate_checkpoint(registered: str, checkpoint, layout, labels, settings=None, audioset_partition: str = "eval"):
    """The table rows of `checkpoint` as the model `registered` is judged (`JUDGED_BY`) on the
    data root's evaluation manifests now: the champion re-evaluated when they changed. `labels`:
    the AudioSet label index (`data.manifests.label_index_for`)."""
    from . import tables as t

    settings = settings or t.Settings()
    audioset = t.audioset_table(layout, audioset_partition)
    if registered == "audioclip":
        models = {"full": checkpoint}
        clipsets = {name: t.clipset_table(layout, name) for name in t.CLIPSETS}
        parts = [
            t.table3_zero_shot(models, clipsets, settings).rows,
            t.table4_querying(models, audioset, labels, clipsets, settings, audioset_partition=audioset_partition).rows,
        ]
        return pd.concat(parts, ignore_index=True)
    if registered == "esresnext":
        return t.table1_esresnext({"ESResNeXt": checkpoint}, audioset, labels.mids, [], settings).rows
    raise ValueError(f"no evaluation for registered model {registered!r}; one of {sorted(JUDGED_BY)}")
