"""Cross-modal querying: P@1, R@1 and mAP (`metrics.retrieval_metrics`).

Every candidate of the other modality is ranked by cosine. On AudioSet, which clips count
as relevant follows one of two rules (`QUERY_RULES`):

* ``same_labels`` (the paper's, the default): the queries are the unique samples of the
  query modality - for text, the unique label sets of the evaluated clips, each written as
  its class names joined by ", " (as the training captions are); for audio or images, every
  clip - and a candidate is relevant when its set of labels EQUALS the query's.
* ``any_label``: text queries are the single class names present, and a candidate is
  relevant when it carries that label (clip queries: when the two clips share a label).
  Looser: R@1 of a frequent class then sits near 0, as one result can retrieve only one of
  its many relevant clips.

ESC-50 / UrbanSound8K clips have one label each, where the two rules coincide: each class
name present queries the clips of that class.
"""

from __future__ import annotations

import numpy as np
import torch

from .embeddings import AudioSetEmbeddings, ClipSetEmbeddings, unique_label_sets
from .metrics import chance_retrieval, retrieval_metrics

DIRECTIONS = ("image by text", "audio by text", "audio by image", "image by audio")
QUERY_RULES = ("same_labels", "any_label")


def _check(rule: str) -> None:
    if rule not in QUERY_RULES:
        raise ValueError(f"unknown query rule {rule!r}; one of {QUERY_RULES}")


def text_queries(emb: AudioSetEmbeddings, rule: str = "same_labels") -> tuple[torch.Tensor, torch.Tensor]:
    """(text query embeddings, relevance [queries, clips]) under `rule`."""
    _check(rule)
    if rule == "any_label":
        present = emb.targets.sum(0) > 0
        return emb.text[present], emb.targets[:, present].T.bool()
    if emb.set_text is None:
        raise ValueError("these embeddings have no label-set captions (embed_audioset makes them)")
    _, set_of_clip = unique_label_sets(emb.targets)
    return emb.set_text, set_of_clip[None, :] == torch.arange(len(emb.set_text))[:, None]


def clip_relevance(emb: AudioSetEmbeddings, rule: str = "same_labels") -> torch.Tensor:
    """[clips, clips]: which clip is relevant to which under `rule`."""
    _check(rule)
    if rule == "any_label":
        return (emb.targets @ emb.targets.T) > 0
    _, set_of_clip = unique_label_sets(emb.targets)  # equal label sets: equal ids (no clips x clips x classes)
    return set_of_clip[:, None] == set_of_clip[None, :]


def audioset_querying(emb: AudioSetEmbeddings, rule: str = "same_labels") -> dict[str, dict[str, float]]:
    """The four AudioSet querying directions -> {"P@1", "R@1", "mAP"}."""
    text, by_text = text_queries(emb, rule)
    clips = clip_relevance(emb, rule)
    return {
        "image by text": retrieval_metrics(text @ emb.image.T, by_text),
        "audio by text": retrieval_metrics(text @ emb.audio.T, by_text),
        "audio by image": retrieval_metrics(emb.image @ emb.audio.T, clips),
        "image by audio": retrieval_metrics(emb.audio @ emb.image.T, clips),
    }


def audioset_querying_chance(emb: AudioSetEmbeddings, rule: str = "same_labels") -> dict[str, dict[str, float]]:
    """What `audioset_querying` gives, in expectation, for random scores (`metrics.chance_retrieval`)."""
    _, by_text = text_queries(emb, rule)
    by_text = chance_retrieval(by_text)
    clips = chance_retrieval(clip_relevance(emb, rule))
    return {"image by text": by_text, "audio by text": by_text, "audio by image": clips, "image by audio": clips}


def audio_by_text_scores(emb: AudioSetEmbeddings, rule: str = "same_labels") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, relevance) of AudioSet audio-by-text querying, for a PR curve."""
    text, relevant = text_queries(emb, rule)
    return text @ emb.audio.T, relevant


def clipset_relevance(emb: ClipSetEmbeddings) -> torch.Tensor:
    """[classes present, clips]: the clips of each class name present."""
    return torch.stack([emb.class_ids == c for c in sorted(set(emb.class_ids.tolist()))])


def clipset_audio_by_text(emb: ClipSetEmbeddings) -> dict[str, float]:
    """Audio by text on ESC-50 / US8K: each class name present queries the clips."""
    present = sorted(set(emb.class_ids.tolist()))
    return retrieval_metrics(emb.text[present] @ emb.audio.T, clipset_relevance(emb))


def pr_curve(scores: torch.Tensor, relevant: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged precision-recall curve over all (query, candidate) pairs: (recall, precision)."""
    s = scores.flatten().double()
    r = relevant.flatten().double()
    order = torch.argsort(s, descending=True)
    tp = torch.cumsum(r[order], 0)
    prec = tp / torch.arange(1, len(s) + 1, dtype=torch.double)
    rec = tp / max(float(r.sum()), 1.0)
    return rec.numpy(), prec.numpy()
