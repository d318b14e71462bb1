"""Contrastive losses of AudioCLIP.

Reference semantics (the default, what the released weights were trained with): for each
available modality pair, symmetric cross entropy CE(L, arange) + CE(L^T, arange), the sum
divided by (number of pairs)! - so a bimodal call is not halved while a trimodal call is
divided by 6 - and every other clip in the batch is a negative, even one of the same class.

The ``"corrected"`` variant averages the 2 * pairs directional terms (one scale for any
number of modalities) and, when ``class_ids`` are given, treats same-class items as
positives (soft targets spread over them) instead of false negatives.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

VARIANTS = ("reference", "corrected")


def _soft_targets(class_ids: torch.Tensor) -> torch.Tensor:
    same = (class_ids.view(-1, 1) == class_ids.view(1, -1)).to(torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(
    logits: Sequence[Optional[torch.Tensor]],
    *,
    sample_weights: Optional[torch.Tensor] = None,
    variant: str = "reference",
    class_ids: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """Loss over the given logit matrices (None entries are skipped); None if none given."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r}; choose one of {VARIANTS}")
    present = [lg for lg in logits if lg is not None]
    if not present:
        return None
    batch = present[0].shape[0]
    device = present[0].device
    target = torch.arange(batch, device=device)
    total = torch.zeros((), dtype=present[0].dtype, device=device)
    for lg in present:
        for direction in (lg, lg.t()):
            if variant == "corrected" and class_ids is not None:
                soft = _soft_targets(class_ids.to(device)).to(direction.dtype)
                term = -(soft * F.log_softmax(direction, dim=-1)).sum(-1)
                if sample_weights is not None:
                    term = term * sample_weights
                    total = total + term.sum() / sample_weights.sum()
                else:
                    total = total + term.mean()
            else:
                total = total + F.cross_entropy(direction, target, weight=sample_weights)
    if variant == "reference":
        return total / math.factorial(len(present))
    return total / (2 * len(present))
