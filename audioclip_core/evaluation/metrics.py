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
    return {"P@1": precision_at_1(scores, relevance), "R@1": recall_at_1(scores, relevance),
            "mAP": mean_average_precision(scores, relevance)}
