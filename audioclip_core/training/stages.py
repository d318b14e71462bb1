"""The paper's training stages: what each one builds, trains and freezes.

1. ``esresnext_audioset`` - the stand-alone ESResNeXt, multi-label BCE over AudioSet classes,
   from an ImageNet ResNeXt-50 32x4d state dict when given (attention gates reset as the
   original does), else random.
2. ``audioclip_partial`` - AudioCLIP whose audio head comes from stage 1 with a fresh
   projection; image and text towers from CLIP weights when given, frozen as teachers;
   trains the audio head and the two audio logit scales.
3. ``audioclip_full`` - all three heads on AudioSet, from the partial checkpoint.
4. fine-tuning per fold: ``esresnext_finetune`` (stand-alone, new classifier sized to the
   classes, CE) and ``audioclip_finetune`` (cooperative: only the audio head and the audio
   scales update; one class name per clip as text).
"""
from __future__ import annotations

from typing import Optional

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError, build_model, load_model, read_checkpoint
from ..models.audioclip import AudioCLIP
from ..models.esresnext import AudioConfig, ESResNeXt
from ..models.presets import get_preset
from .config import TrainConfig
from .data import AudioOptions, AudioSetDataset, ClipSetDataset


def audio_options(cfg: TrainConfig) -> AudioOptions:
    return AudioOptions(clip_seconds=cfg.clip_seconds, channels=cfg.channels, input_scale=cfg.input_scale,
                        augment=cfg.augment, inversion=cfg.inversion, noise_p=cfg.noise_p)


# -- initialisation ----------------------------------------------------------------------------
def load_imagenet_resnext(head: ESResNeXt, path: str) -> list[str]:
    """Copy a torchvision `resnext50_32x4d` state dict into the backbone (what matches by name
    and shape; the classifier is not copied), then reset the attention gates. Returns the keys
    left at their initialisation."""
    sd, _ = read_checkpoint(path)
    own = head.state_dict()
    copied = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape and not k.startswith("fc.")}
    if not copied:
        raise CheckpointError(f"{path}: no tensor matches the ESResNeXt backbone; expected a torchvision "
                              "resnext50_32x4d state dict")
    head.load_state_dict({**own, **copied}, strict=True)
    head.reset_attention()
    return sorted(set(own) - set(copied))


def build_classifier(cfg: TrainConfig, num_classes: int, *, init: Optional[str] = None,
                     imagenet: Optional[str] = None) -> ESResNeXt:
    """A stand-alone ESResNeXt with `num_classes` outputs, from a checkpoint's backbone if given."""
    audio_cfg = AudioConfig.from_dict({**get_preset(cfg.preset)["audio_cfg"], "num_classes": num_classes})
    torch.manual_seed(cfg.seed)
    head = ESResNeXt(audio_cfg).to(dtype=getattr(torch, cfg.dtype))  # before loading: float64 stays exact
    if init:
        sd, meta = read_checkpoint(init)
        if any(k.startswith("audio.") for k in sd):
            sd = {k[len("audio."):]: v for k, v in sd.items() if k.startswith("audio.")}
        own = head.state_dict()
        sd = {**sd, "fc.weight": own["fc.weight"], "fc.bias": own["fc.bias"]}  # a new classifier
        from ..checkpoints import load_strict

        load_strict(head, sd, what=f"{init} (backbone for {cfg.stage})")
    elif imagenet:
        load_imagenet_resnext(head, imagenet)
    head.preset = cfg.preset
    return head


def build_audioclip(cfg: TrainConfig, *, init: Optional[str] = None, audio_head: Optional[str] = None,
                    clip_weights: Optional[str] = None) -> AudioCLIP:
    torch.manual_seed(cfg.seed)
    if init:  # in the training dtype before loading: a float64 parent stays exact
        model = load_model(init, preset=cfg.preset, dtype=getattr(torch, cfg.dtype))
    else:
        model = build_model(cfg.preset, clip_weights=clip_weights, audio_weights=audio_head)
    return model


# -- steps -----------------------------------------------------------------------------------
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
            keys = [", ".join(t) if not isinstance(t, str) else t for t in batch["text"]]
            keys = gather_objects(keys) if w > 1 else keys
            ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
            class_ids = torch.tensor([ids[k] for k in keys], device=batch["audio"].device)
        out = model(audio=batch["audio"], image=batch.get("image") if use_image else None, text=batch["text"],
                    loss_variant=loss_variant, class_ids=class_ids, gather=gather_features if w > 1 else None,
                    scale_grad=1.0 / w)
        ttf = _head(model).loss_ttf()
        n = out.logits.audio_text.shape[0] if out.logits.audio_text is not None else out.logits.audio_image.shape[0]
        target = torch.arange(n, device=batch["audio"].device)
        terms = {"loss": float(out.loss.detach()), "loss_ttf": float(ttf.detach())}
        for name, lg in zip(("loss_audio_image", "loss_audio_text", "loss_image_text"), out.logits):
            if lg is not None:
                terms[name] = float((F.cross_entropy(lg, target) + F.cross_entropy(lg.T, target)).detach())
        # every rank holds the global loss but back-propagates only through its own slice;
        # scaled by W, DDP's averaging gives the single-process gradient
        return (out.loss - ttf) * w + ttf, terms

    return step


def freeze_teachers(model: AudioCLIP) -> None:
    """Image and text towers frozen as teachers; the image tower's BatchNorm kept in eval mode."""
    model.freeze(image=True, text=True)


def keep_frozen_in_eval(model: nn.Module) -> None:
    model = _head(model)
    if isinstance(model, AudioCLIP) and not any(p.requires_grad for p in model.visual.parameters()):
        model.visual.eval()


# -- datasets --------------------------------------------------------------------------------
def audioset_dataset(manifests: list[pd.DataFrame], class_ids: list[str], cfg: TrainConfig, *,
                     with_image: bool, image_size: int = 224) -> AudioSetDataset:
    df = pd.concat(manifests, ignore_index=True) if manifests else pd.DataFrame()
    return AudioSetDataset(df, class_ids, train=True, seed=cfg.seed, audio=audio_options(cfg),
                           image_size=image_size, with_image=with_image)


def clipset_dataset(train_df: pd.DataFrame, cfg: TrainConfig, classes: list[str]) -> ClipSetDataset:
    return ClipSetDataset(train_df, train=True, seed=cfg.seed, audio=audio_options(cfg), classes=classes)
