"""Chance levels (the tables' `chance` column) against brute force over every ranking, and
the verdict that `make demo` prints, on tables made by hand."""

import itertools
from fractions import Fraction

import pandas as pd
import pytest
import torch

from audioclip_core.evaluation import verdict
from audioclip_core.evaluation.metrics import (
    accuracy,
    average_precision,
    chance_accuracy,
    chance_classification_map,
    chance_retrieval,
    expected_average_precision,
    precision_at_1,
    recall_at_1,
)


def _rankings(n: int):
    """Scores for every ordering of n candidates (distinct values: no ties)."""
    for perm in itertools.permutations(range(n)):
        yield torch.tensor([float(n - perm.index(i)) for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("n,relevant", [(1, 1), (2, 1), (4, 1), (5, 2), (6, 3), (6, 6), (7, 4)])
def test_expected_average_precision_is_the_mean_over_all_rankings(n, relevant):
    rel = torch.zeros(n, dtype=torch.bool)
    rel[:relevant] = True
    aps = [average_precision(s, rel) for s in _rankings(n)]
    assert expected_average_precision(relevant, n) == pytest.approx(sum(aps) / len(aps), abs=1e-12)


def test_expected_average_precision_in_exact_arithmetic():
    # R = 2 of N = 3: the relevant pair sits at ranks (1,2), (1,3) or (2,3): AP 1, (1 + 2/3)/2, (1/2 + 2/3)/2
    exact = (Fraction(1) + Fraction(5, 6) + Fraction(7, 12)) / 3
    assert expected_average_precision(2, 3) == pytest.approx(float(exact), abs=1e-15)
    with pytest.raises(ValueError):
        expected_average_precision(0, 3)


def test_chance_retrieval_is_the_mean_over_all_rankings():
    # three queries over five candidates, with 1, 2 and 0 relevant ones
    rel = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = chance_retrieval(rel)
    p1, r1 = [], []
    for s in _rankings(5):
        scores = s.repeat(3, 1)
        p1.append(precision_at_1(scores, rel))
        r1.append(recall_at_1(scores, rel))
    assert got["P@1"] == pytest.approx(sum(p1) / len(p1), abs=1e-12)  # (1/5 + 2/5 + 0) / 3
    assert got["R@1"] == pytest.approx(sum(r1) / len(r1), abs=1e-12)  # 1/5
    assert got["mAP"] == pytest.approx((expected_average_precision(1, 5) + expected_average_precision(2, 5)) / 2)
    targets = rel.T.float()  # the same as a multi-label classification: classes are the rankings
    assert chance_classification_map(targets) == pytest.approx(got["mAP"])


def test_chance_accuracy_is_the_mean_over_all_score_orders():
    target = torch.tensor([0, 1, 2, 2])
    # every clip gets the same random order of the 4 classes: the share of orders ranking its class first
    orders = list(_rankings(4))
    accs = [accuracy(o.repeat(4, 1), target) for o in orders]
    assert chance_accuracy(4) == pytest.approx(sum(accs) / len(accs))


def _row(table, model, task, dataset, metric, value, chance, fold="mean"):
    return {
        "table": table,
        "model": model,
        "task": task,
        "dataset": dataset,
        "metric": metric,
        "fold": fold,
        "value": value,
        "chance": chance,
        "n": 10,
        "note": "",
    }


def _tables(zero_shot_partial=0.5, fine_tuned=0.6, r_at_1=0.1):
    t1 = pd.DataFrame([_row("table1", "ESResNeXt", "classification", "AudioSet", "mAP", 0.7, 0.2)])
    t2 = pd.DataFrame(
        [
            _row("table2", f"AudioCLIP ({m})", "fine-tuned", "ESC50", "accuracy", fine_tuned, 0.1)
            for m in ("partial", "full")
        ]
    )
    t3 = pd.DataFrame(
        [
            _row("table3", "AudioCLIP (partial)", "zero-shot", "ESC50", "accuracy", zero_shot_partial, 0.1),
            _row("table3", "AudioCLIP (full)", "zero-shot", "ESC50", "accuracy", 0.5, 0.1),
        ]
    )
    t4 = pd.DataFrame(
        [
            _row(
                "table4",
                "AudioCLIP (full)",
                task,
                "AudioSet",
                metric,
                r_at_1 if metric == "R@1" else 0.5,
                0.04 if metric == "R@1" else 0.2,
            )
            for task in verdict.QUERY_DIRECTIONS
            for metric in ("P@1", "R@1", "mAP")
        ]
    )
    return {"table1_esresnext": t1, "table2_audioclip": t2, "table3_zero_shot": t3, "table4_querying": t4}


def test_the_verdict_holds_on_tables_that_show_the_claims():
    claims = verdict.judge(_tables())
    assert [c.holds for c in claims] == [True] * 5, verdict.render(claims)
    assert "[holds] fine-tuning beats zero-shot" in verdict.render(claims)


def test_the_verdict_names_what_fails():
    # partial zero-shot 15 % against chance 10 %: above chance, but not by the 10-point margin
    claims = {c.text: c for c in verdict.judge(_tables(zero_shot_partial=0.15))}
    assert not claims["cooperative training gives above-chance zero-shot"].holds
    assert not next(c for t, c in claims.items() if t.startswith("every figure")).holds
    assert claims["full training keeps it"].holds
    # fine-tuned below zero-shot; R@1 at 0.07 is under twice its chance of 0.04
    claims = {c.text: c for c in verdict.judge(_tables(fine_tuned=0.45, r_at_1=0.07))}
    assert not claims["fine-tuning beats zero-shot"].holds
    assert not claims["all four querying directions beat chance"].holds
    assert "R@1: 7.0 (bar 8.0: -1.0)" in "\n".join(claims["all four querying directions beat chance"].evidence)


def test_fine_tuning_is_judged_paired_per_fold_with_its_margin():
    """Fine-tuned against zero-shot on the same test folds: the mean per-fold difference must be
    positive, and the evidence says how many folds improved and the worst fold's change."""

    def tables(fine):
        t = _tables()
        rows = []
        for model in ("partial", "full"):
            for fold, (ft, zs) in enumerate(fine, start=1):
                rows.append(
                    _row("table2", f"AudioCLIP ({model})", "fine-tuned", "ESC50", "accuracy", ft, 0.1, str(fold))
                )
                rows.append(
                    _row("table3", f"AudioCLIP ({model})", "zero-shot", "ESC50", "accuracy", zs, 0.1, str(fold))
                )
        extra = pd.DataFrame(rows)
        t["table2_audioclip"] = pd.concat([t["table2_audioclip"], extra[extra["table"] == "table2"]])
        t["table3_zero_shot"] = pd.concat([t["table3_zero_shot"], extra[extra["table"] == "table3"]])
        return {c.text: c for c in verdict.judge(t)}["fine-tuning beats zero-shot"]

    claim = tables([(0.7, 0.5), (0.6, 0.6), (0.4, 0.5)])  # +20, 0, -10 points: +3.3 on average
    assert claim.holds and abs(claim.margin - 0.1 / 3) < 1e-12
    assert "paired over 3 folds (1 better, 1 equal, 1 worse; worst fold -10.0)" in claim.evidence[0]
    claim = tables([(0.7, 0.5), (0.3, 0.6)])  # +20, -30: -5 on average, although one fold gained
    assert not claim.holds and abs(claim.margin + 0.05) < 1e-12
    rendered = verdict.render([claim])
    assert "[FAILS] fine-tuning beats zero-shot  (margin -5.0)" in rendered


def test_above_chance_rule():
    assert verdict.above_chance(0.30, 0.20, "mAP") and not verdict.above_chance(0.29, 0.20, "mAP")
    assert verdict.above_chance(0.08, 0.04, "R@1") and not verdict.above_chance(0.079, 0.04, "R@1")
    assert not verdict.above_chance(None, 0.1, "P@1") and not verdict.above_chance(0.5, float("nan"), "P@1")
