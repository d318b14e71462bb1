"""Evaluation on manifests: embeddings, zero-shot and fine-tuned classification, AudioSet
mAP, and cross-modal querying.

Definitions (see also `audioclip_core.metrics`):

* zero-shot / AudioCLIP classification: a clip's class is the class name whose text
  embedding is most similar to its audio embedding (names formatted with the prompt
  template, bare by default as in the original); accuracy is top-1 over the test clips.
* AudioSet classification mAP: scores = cosine of each clip's audio (and/or middle-frame
  image) embedding with each class-name text embedding; "both" averages the audio and image
  cosines; the stand-alone ESResNeXt uses its sigmoid outputs. mAP = mean over classes that
  have a positive clip of the AP of that class's ranking of all clips.
* querying: the queries are the unique items of the query modality (class names for text;
  clips for audio/image); every candidate of the other modality is ranked by cosine; a
  candidate is relevant when it shares a label with the query. P@1, R@1 and mAP as in
  `audioclip_core.metrics`.
* folds: per-fold figures are kept and the reported number is their mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..metrics import accuracy, classification_map, retrieval_metrics
from ..models.audioclip import AudioCLIP
from ..models.esresnext import ESResNeXt
from ..text import apply_template
from ..training.data import AudioOptions, AudioSetDataset, ClipSetDataset


def _batched(dataset, batch_size: int = 16):
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        good = [it for it in items if "error" not in it]
        yield good


@torch.no_grad()
def embed_dataset(model: AudioCLIP, dataset, *, image: bool = False, batch_size: int = 16) -> dict:
    """Normalised audio (and image) embeddings of every loadable item, with its index."""
    model.eval()
    audio, images, index = [], [], []
    for items in _batched(dataset, batch_size):
        if not items:
            continue
        index += [it["index"] for it in items]
        audio.append(F.normalize(model.encode_audio(torch.stack([it["audio"] for it in items])), dim=-1))
        if image:
            images.append(F.normalize(model.encode_image(torch.stack([it["image"] for it in items])), dim=-1))
    out = {"index": index, "audio": torch.cat(audio) if audio else torch.empty(0, model.embed_dim)}
    if image:
        out["image"] = torch.cat(images) if images else torch.empty(0, model.embed_dim)
    return out


@torch.no_grad()
def text_embeddings(model: AudioCLIP, names: Sequence[str], template: str = "{}") -> torch.Tensor:
    model.eval()
    prompts = apply_template(list(names), template)
    return torch.cat([F.normalize(model.encode_text(prompts[i:i + 64]), dim=-1) for i in range(0, len(prompts), 64)])


def _eval_audio(clip_seconds: float, channels: int, input_scale: str) -> AudioOptions:
    return AudioOptions(clip_seconds=clip_seconds, channels=channels, input_scale=input_scale, augment=False)


def _clipset_embeddings(model: AudioCLIP, table: pd.DataFrame, classes: list[str], *, template: str,
                        clip_seconds: float, channels: int,
                        input_scale: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised audio embeddings of the loadable clips of an ESC-50 / US8K table, the class
    names' text embeddings, and each embedded clip's class id."""
    ds = ClipSetDataset(table, train=False, audio=_eval_audio(clip_seconds, channels, input_scale), classes=classes)
    emb = embed_dataset(model, ds)
    ids = torch.tensor([ds.class_of[ds.df.iloc[i]["class_name"]] for i in emb["index"]], dtype=torch.long)
    return emb["audio"], text_embeddings(model, classes, template), ids


@dataclass
class ClassificationResult:
    accuracy: float
    n: int
    confusion: np.ndarray
    classes: list[str]
    predictions: list[int]
    targets: list[int]


def _confusion(pred: Sequence[int], target: Sequence[int], n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    for p, t in zip(pred, target):
        m[t, p] += 1
    return m


def audioclip_classification(model: AudioCLIP, table: pd.DataFrame, classes: list[str], *, template: str = "{}",
                             clip_seconds: float = 5.0, channels: int = 1, input_scale: str = "int16") -> ClassificationResult:
    """Zero-shot (or cooperatively fine-tuned) classification of an ESC-50 / US8K table."""
    audio, text, ids = _clipset_embeddings(model, table, classes, template=template, clip_seconds=clip_seconds,
                                           channels=channels, input_scale=input_scale)
    scores = audio @ text.T
    targets = ids.tolist()
    pred = scores.argmax(-1).tolist()
    return ClassificationResult(accuracy(scores, ids), len(targets), _confusion(pred, targets, len(classes)),
                                list(classes), pred, targets)


@torch.no_grad()
def classifier_classification(model: ESResNeXt, table: pd.DataFrame, classes: list[str], *, clip_seconds: float = 5.0,
                              channels: int = 1, input_scale: str = "int16") -> ClassificationResult:
    """A stand-alone (fine-tuned) ESResNeXt on an ESC-50 / US8K table."""
    model.eval()
    ds = ClipSetDataset(table, train=False, audio=_eval_audio(clip_seconds, channels, input_scale), classes=classes)
    logits, targets = [], []
    for items in _batched(ds):
        if items:
            logits.append(model(torch.stack([it["audio"] for it in items])))
            targets += [int(it["target"]) for it in items]
    scores = torch.cat(logits)
    pred = scores.argmax(-1).tolist()
    return ClassificationResult(accuracy(scores, torch.tensor(targets)), len(targets),
                                _confusion(pred, targets, len(classes)), list(classes), pred, targets)


def audioset_eval_dataset(manifest: pd.DataFrame, class_ids: list[str], *, clip_seconds: float, input_scale: str,
                          image: bool, image_size: int = 224) -> AudioSetDataset:
    return AudioSetDataset(manifest, class_ids, train=False, audio=_eval_audio(clip_seconds, 1, input_scale),
                           image_size=image_size, with_image=image)


def _targets(ds: AudioSetDataset, index: list[int]) -> torch.Tensor:
    out = torch.zeros(len(index), len(ds.class_index))
    for row, i in enumerate(index):
        for m in ds.df.iloc[i]["label_ids"]:
            if m in ds.class_index:
                out[row, ds.class_index[m]] = 1.0
    return out


@torch.no_grad()
def classifier_audioset_map(model: ESResNeXt, manifest: pd.DataFrame, class_ids: list[str], *,
                            clip_seconds: float, input_scale: str) -> float:
    model.eval()
    ds = audioset_eval_dataset(manifest, class_ids, clip_seconds=clip_seconds, input_scale=input_scale, image=False)
    scores, index = [], []
    for items in _batched(ds):
        if items:
            scores.append(torch.sigmoid(model(torch.stack([it["audio"] for it in items]))))
            index += [it["index"] for it in items]
    return classification_map(torch.cat(scores), _targets(ds, index))


def audioclip_audioset(model: AudioCLIP, manifest: pd.DataFrame, class_ids: list[str], class_names: list[str], *,
                       clip_seconds: float, input_scale: str, template: str = "{}") -> dict:
    """mAP with audio, image and both, plus the querying rows of AudioSet, from one pass."""
    ds = audioset_eval_dataset(manifest, class_ids, clip_seconds=clip_seconds, input_scale=input_scale, image=True,
                               image_size=model.visual.image_size)
    emb = embed_dataset(model, ds, image=True)
    targets = _targets(ds, emb["index"])
    present = targets.sum(0) > 0
    text = text_embeddings(model, class_names, template)
    s_audio, s_image = emb["audio"] @ text.T, emb["image"] @ text.T
    out = {"map_audio": classification_map(s_audio, targets), "map_image": classification_map(s_image, targets),
           "map_both": classification_map((s_audio + s_image) / 2, targets), "clips": len(emb["index"])}
    # querying: text queries = the classes present; clip queries = every clip
    t_present = text[present]
    rel_text = targets[:, present].T.bool()                       # [classes, clips]
    shared = (targets @ targets.T) > 0                             # clips sharing a label
    out["image_by_text"] = retrieval_metrics(t_present @ emb["image"].T, rel_text)
    out["audio_by_text"] = retrieval_metrics(t_present @ emb["audio"].T, rel_text)
    out["audio_by_image"] = retrieval_metrics(emb["image"] @ emb["audio"].T, shared)
    out["image_by_audio"] = retrieval_metrics(emb["audio"] @ emb["image"].T, shared)
    out["_scores"] = {"audio_by_text": (t_present @ emb["audio"].T, rel_text)}
    out["_embeddings"] = {"audio": emb["audio"], "image": emb["image"], "targets": targets, "text": text}
    return out


def audio_by_text_clipset(model: AudioCLIP, table: pd.DataFrame, classes: list[str], *, template: str = "{}",
                          clip_seconds: float = 5.0, channels: int = 1, input_scale: str = "int16") -> dict:
    audio, text, ids = _clipset_embeddings(model, table, classes, template=template, clip_seconds=clip_seconds,
                                           channels=channels, input_scale=input_scale)
    present = sorted(set(ids.tolist()))
    rel = torch.stack([ids == c for c in present])
    return retrieval_metrics(text[present] @ audio.T, rel)


def pr_curve(scores: torch.Tensor, relevant: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged precision-recall curve over all (query, candidate) pairs."""
    s = scores.flatten().double()
    r = relevant.flatten().double()
    order = torch.argsort(s, descending=True)
    tp = torch.cumsum(r[order], 0)
    prec = tp / torch.arange(1, len(s) + 1, dtype=torch.double)
    rec = tp / max(float(r.sum()), 1.0)
    return rec.numpy(), prec.numpy()


def imagenet_classnames() -> list[str]:
    from importlib.resources import files

    return (files("audioclip_core") / "resources" / "imagenet" / "classnames.txt").read_text().splitlines()


@torch.no_grad()
def imagenet_eval(model: AudioCLIP, root, *, template: str = "{}", per_class: Optional[int] = None) -> dict:
    """Zero-shot top-1 and image-by-text querying over an ImageNet-layout folder
    (`<root>/<wnid>/*.JPEG`, e.g. the validation set sorted into class folders)."""
    import json
    from importlib.resources import files
    from pathlib import Path

    from ..inference import embed_images

    index = json.loads((files("audioclip_core") / "resources" / "imagenet" / "class_index.json").read_text())
    wnid_to_idx = {v[0]: int(k) for k, v in index.items()}
    names = imagenet_classnames()
    paths, labels = [], []
    for d in sorted(Path(root).iterdir()):
        if d.is_dir() and d.name in wnid_to_idx:
            files_ = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
            files_ = files_[:per_class] if per_class else files_
            paths += files_
            labels += [wnid_to_idx[d.name]] * len(files_)
    if not paths:
        raise FileNotFoundError(f"{root}: no ImageNet class folders (<wnid>/*.JPEG) found")
    img = embed_images(model, paths, progress=False)
    text = text_embeddings(model, names, template)
    y = torch.tensor(labels)
    scores = img @ text.T
    present = sorted(set(labels))
    rel = torch.stack([y == c for c in present])
    return {"accuracy": accuracy(scores, y), "images": len(paths), "classes": len(present),
            "image_by_text": retrieval_metrics(text[present] @ img.T, rel)}
