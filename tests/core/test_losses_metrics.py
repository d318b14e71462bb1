import math

import pytest
import torch

from audioclip_core.evaluation.metrics import (
    accuracy,
    average_precision,
    classification_map,
    mean_average_precision,
    precision_at_1,
    recall_at_1,
    retrieval_metrics,
)
from audioclip_core.losses import contrastive_loss


def test_reference_normalisation_by_pairs_factorial():
    torch.manual_seed(0)
    lg = [torch.randn(4, 4) for _ in range(3)]
    ce = torch.nn.functional.cross_entropy
    t = torch.arange(4)
    sym = [ce(x, t) + ce(x.T, t) for x in lg]
    assert torch.allclose(contrastive_loss(lg), sum(sym) / 6)
    assert torch.allclose(contrastive_loss([lg[0], None, None]), sym[0])
    assert torch.allclose(contrastive_loss([lg[0], lg[1], None]), (sym[0] + sym[1]) / 2)
    assert contrastive_loss([None, None, None]) is None


def test_corrected_variant_means_and_same_class_positives():
    lg = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    ce = torch.nn.functional.cross_entropy
    t = torch.arange(3)
    assert torch.allclose(contrastive_loss([lg], variant="corrected"), (ce(lg, t) + ce(lg.T, t)) / 2)
    # items 0 and 1 share a class: with class ids each is a positive of the other (half the target mass)
    ids = torch.tensor([7, 7, 3])
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = sum(-(soft * torch.log_softmax(m, -1)).sum(-1).mean() for m in (lg, lg.T)) / 2
    assert torch.allclose(contrastive_loss([lg], variant="corrected", class_ids=ids), expected)
    # scoring both same-class items equally is optimal under soft targets (no push apart),
    # while the reference targets push the same-class "negative" down
    tied = torch.tensor([[9.0, 9.0, 0.0], [9.0, 9.0, 0.0], [0.0, 0.0, 9.0]], requires_grad=True)
    contrastive_loss([tied], variant="corrected", class_ids=ids).backward()
    assert abs(float(tied.grad[0, 1])) < 1e-4
    tied.grad = None
    contrastive_loss([tied], variant="corrected").backward()
    assert float(tied.grad[0, 1]) > 0.1
    with pytest.raises(ValueError):
        contrastive_loss([lg], variant="nope")


def test_average_precision_against_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        n = 5 + trial
        scores = torch.rand(n, generator=g)
        if trial % 3 == 0:
            scores = (scores * 4).round() / 4  # ties
        rel = torch.rand(n, generator=g) < 0.3
        rel[trial % n] = True
        ours = average_precision(scores, rel)
        theirs = sklearn_metrics.average_precision_score(rel.numpy(), scores.numpy())
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12), (trial, ours, theirs)
    scores = torch.rand(20, 6, generator=g)
    targets = torch.rand(20, 6, generator=g) < 0.4
    targets[0] = True
    ours = classification_map(scores, targets)
    theirs = sklearn_metrics.average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert math.isclose(ours, theirs, rel_tol=1e-9)


def test_ap_by_hand_and_retrieval_metrics():
    # ranking: rel, not, rel -> AP = (1/1 + 2/3) / 2
    assert math.isclose(average_precision(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 0, 1])), (1 + 2 / 3) / 2)
    assert math.isnan(average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    rel = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert precision_at_1(scores, rel) == 0.5
    assert recall_at_1(scores, rel) == 0.25  # query 0: 1 of 2 relevant at rank 1; query 1: miss
    m = retrieval_metrics(scores, rel)
    assert math.isclose(m["mAP"], ((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert mean_average_precision(scores, rel) == m["mAP"]
    assert accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5
