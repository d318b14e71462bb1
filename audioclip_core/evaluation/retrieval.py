"""Cross-modal querying: P@1, R@1 and mAP (`metrics.retrieval_metrics`).

The queries are the unique items of the query modality: the class names present (text
queries) or every clip (audio / image queries). Every candidate of the other modality is
ranked by cosine. A candidate is relevant to a text query when the clip carries that
label, and to a clip query when the two clips share a label.
"""
from __future__ import annotations

import numpy as np
import torch

from .embeddings import AudioSetEmbeddings, ClipSetEmbeddings
from .metrics import retrieval_metrics

DIRECTIONS = ("image by text", "audio by text", "audio by image", "image by audio")


def audioset_querying(emb: AudioSetEmbeddings) -> dict[str, dict[str, float]]:
    """The four AudioSet querying directions -> {"P@1", "R@1", "mAP"}."""
    present = emb.targets.sum(0) > 0
    text = emb.text[present]
    by_label = emb.targets[:, present].T.bool()                 # [classes present, clips]
    shared = (emb.targets @ emb.targets.T) > 0                  # clips sharing a label
    return {"image by text": retrieval_metrics(text @ emb.image.T, by_label),
            "audio by text": retrieval_metrics(text @ emb.audio.T, by_label),
            "audio by image": retrieval_metrics(emb.image @ emb.audio.T, shared),
            "image by audio": retrieval_metrics(emb.audio @ emb.image.T, shared)}


def audio_by_text_scores(emb: AudioSetEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, relevance) of AudioSet audio-by-text querying, for a PR curve."""
    present = emb.targets.sum(0) > 0
    return emb.text[present] @ emb.audio.T, emb.targets[:, present].T.bool()


def clipset_audio_by_text(emb: ClipSetEmbeddings) -> dict[str, float]:
    """Audio by text on ESC-50 / US8K: each class name present queries the clips."""
    present = sorted(set(emb.class_ids.tolist()))
    rel = torch.stack([emb.class_ids == c for c in present])
    return retrieval_metrics(emb.text[present] @ emb.audio.T, rel)


def pr_curve(scores: torch.Tensor, relevant: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged precision-recall curve over all (query, candidate) pairs: (recall, precision)."""
    s = scores.flatten().double()
    r = relevant.flatten().double()
    order = torch.argsort(s, descending=True)
    tp = torch.cumsum(r[order], 0)
    prec = tp / torch.arange(1, len(s) + 1, dtype=torch.double)
    rec = tp / max(float(r.sum()), 1.0)
    return rec.numpy(), prec.numpy()
