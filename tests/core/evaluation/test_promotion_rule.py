"""The promotion rule: a challenger replaces the champion only when no figure's fold mean falls
more than the tolerance below the champion's and no fold collapses."""

import pandas as pd

from audioclip_core.evaluation.promotion import Rule, decide, figures


def fig(mean, folds, dataset="ESC50", task="zero-shot", metric="accuracy"):
    out = {(task, dataset, metric, "mean"): mean}
    out.update({(task, dataset, metric, str(i + 1)): v for i, v in enumerate(folds)})
    return out


CHAMPION = fig(80.0, [78.0, 80.0, 82.0])


def test_the_first_model_becomes_champion():
    d = decide(fig(10.0, [10.0]), None)
    assert d.promote and "first model" in d.reason


def test_a_challenger_within_the_limits_and_not_worse_on_balance_is_promoted():
    champion = {**CHAMPION, **fig(60.0, [60.0, 60.0], dataset="US8K")}
    challenger = {**fig(79.5, [77.0, 79.0, 82.5]), **fig(61.5, [61.0, 62.0], dataset="US8K")}
    d = decide(challenger, champion, Rule(mean_tolerance=1.0, fold_collapse=10.0))
    assert d.promote, d.reason
    assert "-0.50 to +1.50 points, +0.50 on average" in d.reason
    mean = next(c for c in d.comparisons if c.fold == "mean" and c.dataset == "ESC50")
    assert mean.delta == -0.5 and mean.ok


def test_the_same_figures_are_promoted():
    assert decide(dict(CHAMPION), CHAMPION).promote


def test_slightly_worse_everywhere_is_worse_on_balance():
    d = decide(fig(79.5, [77.5, 79.5, 81.5]), CHAMPION, Rule(mean_tolerance=1.0))
    assert not d.promote and d.reason.startswith("worse on balance")
    assert all(c.ok for c in d.comparisons)


def test_a_worse_fold_mean_is_rejected_and_named():
    d = decide(fig(77.9, [77.0, 78.0, 78.7]), CHAMPION, Rule(mean_tolerance=2.0))
    assert not d.promote
    assert "zero-shot ESC50 accuracy fold mean: 77.90 vs 80.00 (-2.10 < -2)" in d.reason
    assert [c.fold for c in d.comparisons if not c.ok] == ["mean"]
    assert "| zero-shot | ESC50 | accuracy | mean | 77.90 | 80.00 | -2.10 | -2 | NO |" in d.table()


def test_one_collapsing_fold_is_not_averaged_away():
    # the mean even improves, but fold 2 lost 30 points
    d = decide(fig(81.0, [93.0, 50.0, 100.0]), CHAMPION, Rule(mean_tolerance=2.0, fold_collapse=10.0))
    assert not d.promote
    assert [c.fold for c in d.comparisons if not c.ok] == ["2"]
    assert "fold 2: 50.00 vs 80.00 (-30.00 < -10)" in d.reason


def test_a_missing_figure_rejects():
    challenger = fig(90.0, [90.0, 90.0, 90.0])
    champion = {**CHAMPION, ("audio by text", "US8K", "mAP", "mean"): 40.0}
    d = decide(challenger, champion)
    assert not d.promote and "audio by text US8K mAP fold mean: missing" in d.reason


def test_figures_are_read_from_table_rows_in_percent():
    rows = pd.DataFrame(
        [
            {
                "model": "AudioCLIP (full)",
                "task": "zero-shot",
                "dataset": "ESC50",
                "metric": "accuracy",
                "fold": "mean",
                "value": 0.675,
            },
            {
                "model": "AudioCLIP (full)",
                "task": "zero-shot",
                "dataset": "ESC50",
                "metric": "accuracy",
                "fold": "1",
                "value": 0.5,
            },
            {
                "model": "AudioCLIP (full)",
                "task": "zero-shot",
                "dataset": "US8K",
                "metric": "accuracy",
                "fold": "mean",
                "value": None,
            },
            {
                "model": "AudioCLIP (partial)",
                "task": "zero-shot",
                "dataset": "ESC50",
                "metric": "accuracy",
                "fold": "mean",
                "value": 0.9,
            },
        ]
    )
    assert figures(rows, "AudioCLIP (full)") == {
        ("zero-shot", "ESC50", "accuracy", "mean"): 67.5,
        ("zero-shot", "ESC50", "accuracy", "1"): 50.0,
    }
