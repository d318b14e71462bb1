"""Classification and retrieval metrics, with their definitions.

* accuracy: fraction of items whose highest-scoring class is the true class (top-1).
* average precision (AP) of one ranking: sum over distinct score thresholds t (descending)
  of (R_t - R_{t-1}) * P_t, with P_t / R_t the precision / recall of the items scoring >= t.
  Without ties this is the mean of the precision at the rank of each relevant item; tied
  scores are one threshold (the same definition as scikit-learn's
  `average_precision_score`). A ranking with no relevant item has no AP and is skipped.
* mAP: mean AP over queries (retrieval) or over classes (multi-label classification,
  `classification_map`: one ranking of all clips per class).
* P@1: fraction of queries whose top-ranked candidate is relevant.
* R@1: mean over queries of (relevant items at rank 1) / (relevant items), i.e. the share of
  a query's relevant items that the first result retrieves.

Chance: the expected value of each metric when the scores are random (continuous, i.i.d.,
so every ranking is equally likely and there are no ties) on the same evaluation set - what
the tables print beside each value (`chance_*`). Exact, not sampled:

* accuracy over C classes: 1 / C (the top class is uniform whatever the true one).
* P@1 of a query with R relevant among N candidates: R / N; averaged over all queries.
* R@1: (R / N) / R = 1 / N per query with R > 0.
* AP: the relevant item at rank r has precision (1 + E[relevant among the r - 1 above]) / r,
  where the r - 1 items above hold (r - 1)(R - 1)/(N - 1) relevant ones on average, and r is
  uniform on 1..N. Summing, E[AP] = (R - 1)/(N - 1) + (H_N / N)(N - R)/(N - 1), H_N the N-th
  harmonic number (1 when N = 1); mAP: its mean over the rankings with R > 0.
"""

from __future__ import annotations

import torch


def accuracy(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy; `scores` `[N, C]`, `target` class ids `[N]` (or one-hot `[N, C]`)."""
    if target.dim() == 2:
        target = target.argmax(-1)
    if scores.shape[0] == 0:
        raise ValueError("accuracy of an empty set")
    return float((scores.argmax(-1) == target).float().mean())


def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """AP of one ranking (`scores` `[N]`, `relevant` bool `[N]`); NaN if nothing is relevant."""
    scores = scores.detach().double().flatten()
    relevant = relevant.detach().bool().flatten()
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    r = relevant[order].double()
    tp = torch.cumsum(r, 0)
    # last index of each group of tied scores = one threshold
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp_t = tp[last]
    n_t = torch.arange(1, len(s) + 1, dtype=torch.double)[last]
    precision = tp_t / n_t
    recall = tp_t / n_rel
    prev_recall = torch.cat([torch.zeros(1, dtype=torch.double), recall[:-1]])
    return float(((recall - prev_recall) * precision).sum())


def mean_average_precision(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """Mean AP over the rows of `scores` `[Q, N]` with `relevance` `[Q, N]`; rows without a
    relevant item are skipped."""
    aps = [average_precision(scores[q], relevance[q]) for q in range(scores.shape[0])]
    aps = [a for a in aps if a == a]
    if not aps:
        raise ValueError("no query has a relevant item")
    return float(sum(aps) / len(aps))


def classification_map(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label mAP: `scores`, `targets` `[N, C]`; AP per class over the N clips, averaged
    over the classes that have at least one positive clip (AudioSet's metric)."""
    return mean_average_precision(scores.T, targets.T.bool())


def precision_at_1(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    top = scores.argmax(-1)
    return float(relevance.bool()[torch.arange(scores.shape[0]), top].double().mean())


def recall_at_1(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    relevance = relevance.bool()
    n_rel = relevance.sum(-1).double()
    keep = n_rel > 0
    hit = relevance[torch.arange(scores.shape[0]), scores.argmax(-1)].double()
    return float((hit[keep] / n_rel[keep]).mean())


def retrieval_metrics(scores: torch.Tensor, relevance: torch.Tensor) -> dict[str, float]:
    """P@1, R@1 and mAP of queries (rows) against candidates (columns)."""
    return {
        "P@1": precision_at_1(scores, relevance),
        "R@1": recall_at_1(scores, relevance),
        "mAP": mean_average_precision(scores, relevance),
    }


# -- chance: the metrics' expected values for random scores -----------------------------------
def expected_average_precision(n_relevant: int, n: int) -> float:
    """E[AP] of a uniformly random ranking of `n` items of which `n_relevant` are relevant."""
    if not 0 < n_relevant <= n:
        raise ValueError(f"expected AP needs 0 < relevant <= items, got {n_relevant} of {n}")
    if n == 1:
        return 1.0
    harmonic = sum(1.0 / k for k in range(1, n + 1))
    return (n_relevant - 1) / (n - 1) + harmonic / n * (n - n_relevant) / (n - 1)


def chance_accuracy(n_classes: int) -> float:
    """Expected top-1 accuracy over `n_classes` classes for random scores."""
    if n_classes < 1:
        raise ValueError("accuracy over no class")
    return 1.0 / n_classes


def chance_retrieval(relevance: torch.Tensor) -> dict[str, float]:
    """Expected P@1, R@1 and mAP (as `retrieval_metrics` computes them) of the queries of
    `relevance` `[Q, N]` for random scores."""
    relevance = relevance.bool()
    n = relevance.shape[1]
    n_rel = relevance.sum(-1).tolist()
    with_rel = [r for r in n_rel if r > 0]
    if not with_rel:
        raise ValueError("no query has a relevant item")
    return {
        "P@1": sum(n_rel) / (len(n_rel) * n),
        "R@1": 1.0 / n,
        "mAP": sum(expected_average_precision(r, n) for r in with_rel) / len(with_rel),
    }


def chance_classification_map(targets: torch.Tensor) -> float:
    """Expected `classification_map` of multi-label `targets` `[N, C]` for random scores."""
    return chance_retrieval(targets.T.bool())["mAP"]
