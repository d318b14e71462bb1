"""High-level use for people with files: embed audio, images and texts; zero-shot
classification; cross-modal querying over collections.

All embeddings returned here are L2-normalised, so `a @ b.T` is the cosine similarity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .audio import DEFAULT_INPUT_SCALE, SAMPLE_RATE, load_audio, prepare_waveform, windows
from .models.audioclip import AudioCLIP
from .text import apply_template

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
POOLING = ("mean", "max")


def default_input_scale(model: AudioCLIP) -> str:
    """The scale a checkpoint was trained with, if it says; else the released weights' one."""
    meta = getattr(model, "checkpoint_metadata", None) or {}
    return meta.get("input_scale") or DEFAULT_INPUT_SCALE


@dataclass
class AudioEmbedder:
    """Embeds waveforms of any rate, channel count and length.

    Clips up to `window_seconds` are embedded whole; longer ones are cut into windows of
    that length (hop `hop_seconds`) whose normalised embeddings are pooled (`mean` or `max`)
    and normalised again.
    """

    model: AudioCLIP
    input_scale: Optional[str] = None
    window_seconds: float = 10.0
    hop_seconds: float = 5.0
    pooling: str = "mean"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {self.pooling!r}")
        if self.window_seconds <= 0 or self.hop_seconds <= 0:
            raise ValueError("window_seconds and hop_seconds must be positive")
        self.input_scale = self.input_scale or default_input_scale(self.model)

    @torch.no_grad()
    def embed_waveform(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        x = prepare_waveform(wave, sample_rate, input_scale=self.input_scale)
        if x.shape[-1] == 0:
            raise ValueError("empty waveform")
        win = windows(x, int(round(self.window_seconds * SAMPLE_RATE)),
                      int(round(self.hop_seconds * SAMPLE_RATE)))
        parts = [self.model.encode_audio(win[i:i + self.batch_size])
                 for i in range(0, win.shape[0], self.batch_size)]
        emb = F.normalize(torch.cat(parts), dim=-1)
        pooled = emb.mean(0) if self.pooling == "mean" else emb.max(0).values
        return F.normalize(pooled, dim=-1)

    def embed_files(self, paths: Sequence[PathLike], *, progress: bool = True) -> torch.Tensor:
        out = []
        for p in tqdm(list(paths), desc="audio", unit="file", disable=not progress or len(paths) < 2):
            wave, sr = load_audio(p)
            out.append(self.embed_waveform(wave, sr))
        return torch.stack(out) if out else torch.empty(0, self.model.embed_dim)


def image_transform(model: AudioCLIP):
    """CLIP's evaluation transform: bicubic resize of the short side, centre crop, normalise."""
    from open_clip.transform import image_transform as _open_clip_transform

    size = model.visual.image_size
    return _open_clip_transform(size, is_train=False)


@torch.no_grad()
def embed_images(model: AudioCLIP, paths: Sequence[PathLike], *, batch_size: int = 8,
                 progress: bool = True) -> torch.Tensor:
    from PIL import Image

    transform = image_transform(model)
    out = []
    paths = list(paths)
    for i in tqdm(range(0, len(paths), batch_size), desc="images", unit="batch",
                  disable=not progress or len(paths) <= batch_size):
        batch = []
        for p in paths[i:i + batch_size]:
            try:
                with Image.open(p) as im:
                    batch.append(transform(im.convert("RGB")))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{p}: cannot read image: {exc}") from exc
        out.append(model.encode_image(torch.stack(batch), normalize=True))
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


@torch.no_grad()
def embed_texts(model: AudioCLIP, texts: Sequence[Union[str, Sequence[str]]], *,
                template: str = "{}", batch_size: int = 64) -> torch.Tensor:
    prompts = apply_template(list(texts), template)
    parts = [model.encode_text(prompts[i:i + batch_size], normalize=True)
             for i in range(0, len(prompts), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, model.embed_dim)


@torch.no_grad()
def zero_shot_probabilities(model: AudioCLIP, embeddings: torch.Tensor, label_embeddings: torch.Tensor,
                            *, modality: str = "audio") -> torch.Tensor:
    """Softmax over labels of scale * cos, the scale of the modality pair (audio-text or image-text)."""
    s_it, _, s_at = model.logit_scales()
    scale = s_at if modality == "audio" else s_it
    return torch.softmax(scale * embeddings @ label_embeddings.T, dim=-1)


@torch.no_grad()
def rank(queries: torch.Tensor, candidates: torch.Tensor, top_k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores and indices of the `top_k` candidates for each query."""
    scores = queries @ candidates.T
    k = min(top_k, candidates.shape[0])
    top = scores.topk(k, dim=-1)
    return top.values, top.indices


def modality_of(path: PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "audio"


def embed_files(model: AudioCLIP, paths: Iterable[PathLike], **audio_options) -> tuple[torch.Tensor, list[str]]:
    """Embed a mixed list of audio and image files (by extension), in the given order."""
    paths = [str(p) for p in paths]
    kinds = [modality_of(p) for p in paths]
    result = torch.empty(len(paths), model.embed_dim)
    img_idx = [i for i, k in enumerate(kinds) if k == "image"]
    aud_idx = [i for i, k in enumerate(kinds) if k == "audio"]
    if img_idx:
        result[img_idx] = embed_images(model, [paths[i] for i in img_idx])
    if aud_idx:
        result[aud_idx] = AudioEmbedder(model, **audio_options).embed_files([paths[i] for i in aud_idx])
    return result, kinds
