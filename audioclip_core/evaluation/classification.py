"""Classification: accuracy on ESC-50 / US8K (by class-name text, i.e. zero-shot or after
cooperative fine-tuning; or by a stand-alone classifier's outputs) and AudioSet mAP.

* A clip's class is the class name whose text embedding is most similar to its audio
  embedding (names formatted with the prompt template, bare by default as in the original);
  accuracy is top-1 over the test clips.
* AudioSet mAP: scores = cosine of each clip's audio (and/or middle-frame image) embedding
  with each class-name text embedding; "both" averages the audio and image cosines (a
  choice made here: the paper does not define the combination); the stand-alone ESResNeXt
  uses its sigmoid outputs. mAP = mean over the classes that have a positive clip of the AP
  of that class's ranking of all clips (`metrics.classification_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..models.audioclip import AudioCLIP
from ..models.esresnext import ESResNeXt
from .embeddings import (
    AudioSetEmbeddings,
    ClipSetEmbeddings,
    audioset_dataset,
    embed_clipset,
    loadable_batches,
    multi_hot,
    protocol_dataset,
)
from .metrics import accuracy, chance_classification_map, classification_map


@dataclass
class ClassificationResult:
    accuracy: float
    n: int
    confusion: np.ndarray  # [true, predicted]
    classes: list[str]
    predictions: list[int]
    targets: list[int]
    index: list[int]  # the table rows classified (clips that failed to load are left out)

    def subset(self, rows: Sequence[int]) -> tuple[float, int]:
        """(accuracy, clips) over the table rows `rows` that were classified."""
        keep = set(int(r) for r in rows)
        sel = [i for i, r in enumerate(self.index) if r in keep]
        if not sel:
            return float("nan"), 0
        return sum(self.predictions[i] == self.targets[i] for i in sel) / len(sel), len(sel)


def confusion_matrix(pred: Sequence[int], target: Sequence[int], n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    for p, t in zip(pred, target):
        m[t, p] += 1
    return m


def _result(scores: torch.Tensor, targets: torch.Tensor, classes: list[str], index: list[int]) -> ClassificationResult:
    pred = scores.argmax(-1).tolist() if len(targets) else []
    t = targets.tolist()
    return ClassificationResult(
        accuracy(scores, targets) if len(t) else float("nan"),
        len(t),
        confusion_matrix(pred, t, len(classes)),
        list(classes),
        pred,
        t,
        list(index),
    )


def by_text(emb: ClipSetEmbeddings, classes: list[str]) -> ClassificationResult:
    """Each clip classified by the most similar class-name text."""
    return _result(emb.audio @ emb.text.T, emb.class_ids, classes, emb.index)


def audioclip_classification(
    model: AudioCLIP,
    table: pd.DataFrame,
    dataset: str,
    classes: list[str],
    *,
    template: str = "{}",
    input_scale: str = "int16",
) -> ClassificationResult:
    """Zero-shot (or cooperatively fine-tuned) classification of an ESC-50 / US8K table."""
    return by_text(embed_clipset(model, table, dataset, classes, template=template, input_scale=input_scale), classes)


@torch.no_grad()
def classifier_classification(
    model: ESResNeXt, table: pd.DataFrame, dataset: str, classes: list[str], *, input_scale: str = "int16"
) -> ClassificationResult:
    """A stand-alone (fine-tuned) ESResNeXt on an ESC-50 / US8K table."""
    model.eval()
    ds = protocol_dataset(table, dataset, classes, input_scale)
    logits, targets, index = [], [], []
    for items in loadable_batches(ds):
        if items:
            logits.append(model(torch.stack([it["audio"] for it in items])))
            targets += [int(it["target"]) for it in items]
            index += [it["index"] for it in items]
    scores = torch.cat(logits) if logits else torch.empty(0, len(classes))
    return _result(scores, torch.tensor(targets, dtype=torch.long), classes, index)


@torch.no_grad()
def classifier_audioset_map(
    model: ESResNeXt, manifest: pd.DataFrame, class_ids: list[str], *, clip_seconds: float, input_scale: str
) -> tuple[float, float]:
    """(mAP, its chance level) of a stand-alone ESResNeXt over an AudioSet manifest."""
    model.eval()
    ds = audioset_dataset(manifest, class_ids, clip_seconds=clip_seconds, input_scale=input_scale, image=False)
    scores, index = [], []
    for items in loadable_batches(ds):
        if items:
            scores.append(torch.sigmoid(model(torch.stack([it["audio"] for it in items]))))
            index += [it["index"] for it in items]
    targets = multi_hot(ds, index)
    return classification_map(torch.cat(scores), targets), chance_classification_map(targets)


def audioset_map(emb: AudioSetEmbeddings) -> dict[str, float]:
    """mAP of AudioSet classification by text with the audio, the image, and both."""
    s_audio, s_image = emb.audio @ emb.text.T, emb.image @ emb.text.T
    return {
        "audio": classification_map(s_audio, emb.targets),
        "image": classification_map(s_image, emb.targets),
        "both": classification_map((s_audio + s_image) / 2, emb.targets),
    }
