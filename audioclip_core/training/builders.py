"""The models a training stage starts from: a stand-alone ESResNeXt (from a checkpoint's
backbone or ImageNet's ResNeXt), AudioCLIP (from a checkpoint, or CLIP's towers and an audio
head), built in the training dtype before anything is loaded so float64 stays exact; and the
audio options of a stage's training data."""

from __future__ import annotations

from typing import Optional

import torch

from ..checkpoints import CheckpointError, build_model, load_model, load_strict, read_checkpoint
from ..data.datasets import AudioOptions
from ..models.audioclip import AudioCLIP
from ..models.esresnext import AudioConfig, ESResNeXt
from ..models.presets import get_preset
from .config import TrainConfig


def audio_options(cfg: TrainConfig) -> AudioOptions:
    """How a stage's clips are cropped, mixed down, scaled and augmented (`cfg`'s values)."""
    return AudioOptions(
        clip_seconds=cfg.clip_seconds,
        channels=cfg.channels,
        input_scale=cfg.input_scale,
        augment=cfg.augment,
        inversion=cfg.inversion,
        noise_p=cfg.noise_p,
        augment_on=cfg.augment_on,
    )


def load_imagenet_resnext(head: ESResNeXt, path: str) -> list[str]:
    """Copy a torchvision `resnext50_32x4d` state dict into the backbone (what matches by name
    and shape; the classifier is not copied), then reset the attention gates. Returns the keys
    left at their initialisation."""
    sd, _ = read_checkpoint(path)
    own = head.state_dict()
    copied = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape and not k.startswith("fc.")}
    if not copied:
        raise CheckpointError(
            f"{path}: no tensor matches the ESResNeXt backbone; expected a torchvision resnext50_32x4d state dict"
        )
    head.load_state_dict({**own, **copied}, strict=True)
    head.reset_attention()
    return sorted(set(own) - set(copied))


def build_classifier(
    cfg: TrainConfig, num_classes: int, *, init: Optional[str] = None, imagenet: Optional[str] = None
) -> ESResNeXt:
    """A stand-alone ESResNeXt with `num_classes` outputs, from a checkpoint's backbone if given."""
    audio_cfg = AudioConfig.from_dict({**get_preset(cfg.preset)["audio_cfg"], "num_classes": num_classes})
    torch.manual_seed(cfg.seed)
    head = ESResNeXt(audio_cfg).to(dtype=getattr(torch, cfg.dtype))  # before loading: float64 stays exact
    if init:
        sd, meta = read_checkpoint(init)
        if any(k.startswith("audio.") for k in sd):
            sd = {k[len("audio.") :]: v for k, v in sd.items() if k.startswith("audio.")}
        own = head.state_dict()
        sd = {**sd, "fc.weight": own["fc.weight"], "fc.bias": own["fc.bias"]}  # a new classifier
        load_strict(head, sd, what=f"{init} (backbone for {cfg.stage})")
    elif imagenet:
        load_imagenet_resnext(head, imagenet)
    head.preset = cfg.preset
    return head


def build_audioclip(
    cfg: TrainConfig,
    *,
    init: Optional[str] = None,
    audio_head: Optional[str] = None,
    clip_weights: Optional[str] = None,
) -> AudioCLIP:
    torch.manual_seed(cfg.seed)
    if init:  # in the training dtype before loading: a float64 parent stays exact
        model = load_model(init, preset=cfg.preset, dtype=getattr(torch, cfg.dtype))
    else:
        model = build_model(
            cfg.preset, clip_weights=clip_weights, audio_weights=audio_head, dtype=getattr(torch, cfg.dtype)
        )  # before loading: float64 towers stay exact
    return model


def verify_clip_weights(path: str, preset: str) -> None:
    """Load `path` into the towers of `preset` strictly: a wrong or truncated file fails here,
    before any stage trains from it."""
    build_model(preset, clip_weights=path)
