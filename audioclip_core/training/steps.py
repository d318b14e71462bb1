"""One optimisation step of each kind of stage: a function (model, batch) -> (loss, figures).
Classification (BCE / CE), AudioCLIP's tri-modal contrastive step, and the CLIP-style
image-text step of the demo's stand-in; plus the in-batch caption retrieval that the health
gates read."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.audioclip import AudioCLIP, clamp_scale
from ..models.esresnext import ESResNeXt


def _head(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # unwrap DistributedDataParallel


def classifier_step(model: ESResNeXt, batch: dict):
    logits = model(batch["audio"])
    # per-sample losses averaged over the local batch: DDP's gradient averaging over equal
    # shards gives the global batch's mean, as one process would
    loss = _head(model).classification_loss(logits, batch["target"])
    return loss, {"loss": float(loss.detach()), "loss_ttf": float(_head(model).loss_ttf().detach())}


def audioclip_step(use_image: bool, loss_variant: str = "reference"):
    def step(model: AudioCLIP, batch: dict):
        from .distributed import gather_features, gather_objects, world_size

        w = world_size()
        class_ids = None
        if loss_variant == "corrected":
            # identical captions are the same class: positives of each other, not negatives;
            # over the global batch (all ranks' captions, in the order features are gathered)
            keys = [caption_key(t) for t in batch["text"]]
            class_ids = caption_ids(gather_objects(keys) if w > 1 else keys, batch["audio"].device)
        out = model(
            audio=batch["audio"],
            image=batch.get("image") if use_image else None,
            text=batch["text"],
            loss_variant=loss_variant,
            class_ids=class_ids,
            gather=gather_features if w > 1 else None,
            scale_grad=1.0 / w,
        )
        ttf = _head(model).loss_ttf()
        n = out.logits.audio_text.shape[0] if out.logits.audio_text is not None else out.logits.audio_image.shape[0]
        target = torch.arange(n, device=batch["audio"].device)
        terms = {
            "loss": float(out.loss.detach()),
            "loss_ttf": float(ttf.detach()),
            "loss_uniform": 2 * math.log(n),
        }  # what each pair term is at uniform logits (health.py)
        for name, lg in zip(("loss_audio_image", "loss_audio_text", "loss_image_text"), out.logits):
            if lg is not None:
                terms[name] = float((F.cross_entropy(lg, target) + F.cross_entropy(lg.T, target)).detach())
        terms.update(caption_retrieval(out.logits.audio_text, batch["text"], w))
        # every rank holds the global loss but back-propagates only through its own slice;
        # scaled by W, DDP's averaging gives the single-process gradient
        return (out.loss - ttf) * w + ttf, terms

    return step


def image_text_step(loss_variant: str = "reference"):
    """One step of CLIP-style image-text training (the demo's `clip_standin`): the
    symmetric contrastive loss of images against their captions, and the in-batch
    image-to-caption retrieval that the above-chance gate reads."""

    def step(model: AudioCLIP, batch: dict):
        keys = [caption_key(t) for t in batch["text"]]
        class_ids = caption_ids(keys, batch["image"].device) if loss_variant == "corrected" else None
        out = model(image=batch["image"], text=batch["text"], loss_variant=loss_variant, class_ids=class_ids)
        lg = out.logits.image_text
        n = lg.shape[0]
        target = torch.arange(n, device=lg.device)
        terms = {
            "loss": float(out.loss.detach()),
            "loss_uniform": 2 * math.log(n),
            "loss_image_text": float((F.cross_entropy(lg, target) + F.cross_entropy(lg.T, target)).detach()),
        }
        terms.update(caption_retrieval(lg, batch["text"], key="acc_image_text"))
        return out.loss, terms

    return step


def caption_key(text) -> str:
    """A clip's caption as one string (an AudioSet clip's labels joined by ", ")."""
    return text if isinstance(text, str) else ", ".join(text)


def caption_ids(keys: list[str], device=None) -> torch.Tensor:
    """One id per distinct caption, in order of first appearance: identical captions, one class."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([ids[k] for k in keys], device=device)


def caption_retrieval(logits: Optional[torch.Tensor], texts: list, world: int = 1, key: str = "acc_audio_text") -> dict:
    """In-batch audio-to-caption retrieval: `acc_audio_text` (or `key`), the share of clips
    whose best scoring caption is their own (or an identical one), and `acc_chance`, its
    expected value when scores are random (the mean share of identical captions per clip).
    Empty when the batch has no such logits, or in a process group (the captions are per rank)."""
    if logits is None or world > 1:
        return {}
    if logits.shape[0] != len(texts) or logits.shape[1] != len(texts):
        return {}
    cls = caption_ids([caption_key(t) for t in texts], logits.device)
    same = cls[:, None] == cls[None, :]
    hit = same[torch.arange(len(texts), device=cls.device), logits.detach().argmax(1)]
    return {key: float(hit.float().mean()), "acc_chance": float(same.float().mean())}


def classifier_logits(model: ESResNeXt, batch: dict) -> torch.Tensor:
    """A fine-tuned ESResNeXt's class scores (validation)."""
    return _head(model)(batch["audio"])


def class_name_logits(classes: list[str]):
    """Cooperative fine-tuning's class scores (validation): each clip's audio embedding against
    the class names' text embeddings, at the model's audio-text scale - the zero-shot rule the
    evaluation applies to the fine-tuned model."""

    def logits(model: AudioCLIP, batch: dict) -> torch.Tensor:
        head = _head(model)
        audio = F.normalize(head.encode_audio(batch["audio"]), dim=-1)
        text = F.normalize(head.encode_text(list(classes)), dim=-1).to(audio.dtype)
        return clamp_scale(head.logit_scale_at) * audio @ text.T

    return logits


def keep_frozen_in_eval(model: nn.Module) -> None:
    """A frozen image tower keeps its BatchNorm statistics: in eval mode during training."""
    model = _head(model)
    if isinstance(model, AudioCLIP) and not any(p.requires_grad for p in model.visual.parameters()):
        model.visual.eval()
