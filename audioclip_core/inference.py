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

from .audio import DEFAULT_INPUT_SCALE, INPUT_SCALES, SAMPLE_RATE, AudioStream, to_model_input
from .errors import InputError, check_input_file
from .images import clip_preprocess
from .models.audioclip import AudioCLIP
from .text import apply_template, tokenize

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
POOLING = ("mean", "max")


def resolve_input_scale(model, dataset: Optional[str] = None, requested: Optional[str] = None) -> str:
    """The input scale of `model` on audio of `dataset` ("esc50", "us8k" or None), by the one
    rule of `audioclip_core.audio`: `requested`; else the scale the checkpoint records; else
    the dataset protocol's (ESC-50 int16, UrbanSound8K minmax); else DEFAULT_INPUT_SCALE."""
    if requested:
        if requested not in INPUT_SCALES:
            raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {requested!r}")
        return requested
    meta = getattr(model, "checkpoint_metadata", None) or {}
    if meta.get("input_scale"):
        return meta["input_scale"]
    if dataset:
        from .data.clipsets import protocol

        return protocol(dataset).input_scale
    return DEFAULT_INPUT_SCALE


def default_input_scale(model: AudioCLIP) -> str:
    """The scale a checkpoint was trained with, if it says; else DEFAULT_INPUT_SCALE."""
    return resolve_input_scale(model)


@dataclass
class AudioEmbedder:
    """Embeds waveforms and audio files of any rate, channel count and length.

    Clips up to `window_seconds` are embedded whole; longer ones are cut into windows of
    that length (hop `hop_seconds`, the last one aligned to the end) whose normalised
    embeddings are pooled (`mean` or `max`) and normalised again. Windows are read from the
    file, embedded and pooled `batch_size` at a time, so memory does not grow with the length
    of the file (`bench/bench_long_audio.py` prints peak RSS against length).
    """

    model: AudioCLIP
    input_scale: Optional[str] = None
    window_seconds: float = 10.0
    hop_seconds: float = 5.0
    pooling: str = "mean"
    batch_size: int = 2  # windows at once: memory is the model plus this many windows' activations

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {self.pooling!r}")
        if self.window_seconds <= 0 or self.hop_seconds <= 0:
            raise ValueError("window_seconds and hop_seconds must be positive")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.input_scale = self.input_scale or default_input_scale(self.model)

    @torch.no_grad()
    def embed_stream(self, stream: AudioStream, *, progress: bool = False) -> torch.Tensor:
        spans = stream.window_starts(
            int(round(self.window_seconds * SAMPLE_RATE)), int(round(self.hop_seconds * SAMPLE_RATE))
        )
        pooled = None
        with tqdm(
            total=len(spans),
            desc=Path(stream.name).name,
            unit="window",
            leave=False,
            disable=not progress or len(spans) <= 4 * self.batch_size,
        ) as bar:
            for i in range(0, len(spans), self.batch_size):
                chunk = torch.stack(
                    [to_model_input(stream.read(a, b), self.input_scale) for a, b in spans[i : i + self.batch_size]]
                )
                emb = F.normalize(self.model.encode_audio(chunk), dim=-1)
                if not torch.isfinite(emb).all():
                    raise InputError(
                        f"{stream.name}: the model's audio embedding is not finite "
                        "(non-finite weights, or input far outside the audio range)"
                    )
                if self.pooling == "mean":  # the mean's scale goes in the final normalisation
                    part = emb.sum(0)
                    pooled = part if pooled is None else pooled + part
                else:
                    part = emb.max(0).values
                    pooled = part if pooled is None else torch.maximum(pooled, part)
                bar.update(chunk.shape[0])
        return F.normalize(pooled, dim=-1)

    def embed_waveform(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """A `[T]` or `[C, T]` waveform in [-1, 1] at `sample_rate` -> `[embed_dim]`."""
        return self.embed_stream(AudioStream(wave=wave, sample_rate=sample_rate))

    def embed_file(self, path: PathLike, *, progress: bool = False) -> torch.Tensor:
        with AudioStream(path) as stream:
            return self.embed_stream(stream, progress=progress)

    def embed_files(self, paths: Sequence[PathLike], *, progress: bool = True) -> torch.Tensor:
        out = [
            self.embed_file(p, progress=progress)
            for p in tqdm(list(paths), desc="audio", unit="file", disable=not progress or len(paths) < 2)
        ]
        return torch.stack(out) if out else torch.empty(0, self.model.embed_dim)


def load_image(path: PathLike, size: int) -> torch.Tensor:
    """One image file -> the model's input tensor; `InputError` naming the file and the reason."""
    import numpy as np
    from PIL import Image

    check_input_file(path, "image file")
    try:
        with Image.open(path) as im:
            if im.mode in ("F", "I", "I;16") and not np.isfinite(np.asarray(im, dtype=np.float64)).all():
                raise InputError(f"{path}: image has non-finite (NaN/Inf) pixel values")
            x = clip_preprocess(im, size)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read image: {exc}") from exc
    if not torch.isfinite(x).all():
        raise InputError(f"{path}: image has non-finite pixel values")
    return x


@torch.no_grad()
def embed_images(
    model: AudioCLIP, paths: Sequence[PathLike], *, batch_size: int = 8, progress: bool = True
) -> torch.Tensor:
    """`[N, embed_dim]` for N image files; the first unreadable one raises `InputError`."""
    out = []
    paths = list(paths)
    for i in tqdm(
        range(0, len(paths), batch_size), desc="images", unit="batch", disable=not progress or len(paths) <= batch_size
    ):
        batch = [load_image(p, model.visual.image_size) for p in paths[i : i + batch_size]]
        out.append(model.encode_image(torch.stack(batch), normalize=True))
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


@torch.no_grad()
def embed_texts(
    model: AudioCLIP,
    texts: Sequence[Union[str, Sequence[str]]],
    *,
    template: str = "{}",
    batch_size: int = 64,
    truncate: bool = False,
) -> torch.Tensor:
    """Normalised text embeddings. A text over the context length raises `TextTooLongError`
    (naming it and its token count) unless `truncate`, which cuts it, keeping end-of-text."""
    prompts = apply_template(list(texts), template)
    parts = [
        model.encode_text(
            tokenize(prompts[i : i + batch_size], context_length=model.context_length, truncate=truncate),
            normalize=True,
        )
        for i in range(0, len(prompts), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.embed_dim)


@torch.no_grad()
def zero_shot_probabilities(
    model: AudioCLIP, embeddings: torch.Tensor, label_embeddings: torch.Tensor, *, modality: str = "audio"
) -> torch.Tensor:
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


# the scaled median absolute deviation estimates a normal spread's standard deviation
MAD_TO_STD = 1.4826


@torch.no_grad()
def score_reference(scores: torch.Tensor, index: int) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(median, spread, z) of the cosine score `scores[index]` of one query against the query's
    scores on every OTHER candidate - the score of a random pairing in this collection. The
    reference is robust: the median of the other scores and their median absolute deviation
    scaled to a standard deviation, so that the other matches of a query (a collection holds
    several clips of a class) neither raise the reference nor widen it, as they did a mean and a
    standard deviation (on the demo's AudioSet eval clips, the four whistles of 40 scored z 2.3-2.9
    against the mean, under the bar; 6.2-7.4 against the median, the best non-match 4.5). z is how
    many spreads the candidate stands above a random pairing: around 0 it is no more a match than
    any other candidate; 3 or more, it stands out. None with under 3 other candidates (no spread
    to measure) or when they all score the same. Leave-one-out: a candidate is not its own
    reference."""
    s = scores.detach().double().flatten()
    others = torch.cat([s[:index], s[index + 1 :]])
    if others.numel() < 3:
        return None, None, None
    median = float(others.median())
    spread = MAD_TO_STD * float((others - median).abs().median())
    z = (float(s[index]) - median) / spread if spread > 0 else None
    return median, spread, z


def modality_of(path: PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "audio"


@dataclass
class FileEmbeddings:
    """What `try_embed_files` gives: a row per input path, in order. Rows of inputs that
    failed are zeros, with the reason in `errors` (None for the rows that worked)."""

    paths: list[str]
    kinds: list[str]
    embeddings: torch.Tensor
    errors: list[Optional[str]]

    @property
    def ok(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is None]

    @property
    def failed(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is not None]


@torch.no_grad()
def try_embed_files(
    model: AudioCLIP, paths: Iterable[PathLike], *, progress: bool = True, **audio_options
) -> FileEmbeddings:
    """Embed a mixed list of audio and image files (by extension), in the given order. A file
    that cannot be used (missing, a directory, unreadable, corrupt, non-finite samples or
    pixels, a non-finite embedding) gets its reason in `errors`; every other file is answered."""
    paths = [str(p) for p in paths]
    kinds = [modality_of(p) for p in paths]
    result = torch.zeros(len(paths), model.embed_dim)
    errors: list[Optional[str]] = [None] * len(paths)
    img_idx = [i for i, k in enumerate(kinds) if k == "image"]
    if img_idx:
        batch_size = int(audio_options.get("batch_size", 8))  # images: 8 at once unless told
        for start in tqdm(
            range(0, len(img_idx), batch_size),
            desc="images",
            unit="batch",
            disable=not progress or len(img_idx) <= batch_size,
        ):
            good, tensors = [], []
            for i in img_idx[start : start + batch_size]:
                try:
                    tensors.append(load_image(paths[i], model.visual.image_size))
                    good.append(i)
                except InputError as exc:
                    errors[i] = str(exc)
            if good:
                emb = model.encode_image(torch.stack(tensors), normalize=True)
                for i, e in zip(good, emb):
                    if torch.isfinite(e).all():
                        result[i] = e
                    else:
                        errors[i] = f"{paths[i]}: the model's image embedding is not finite (non-finite weights?)"
    aud_idx = [i for i, k in enumerate(kinds) if k == "audio"]
    if aud_idx:
        embedder = AudioEmbedder(model, **audio_options)
        for i in tqdm(aud_idx, desc="audio", unit="file", disable=not progress or len(aud_idx) < 2):
            try:
                result[i] = embedder.embed_file(paths[i], progress=progress)
            except InputError as exc:
                errors[i] = str(exc)
    return FileEmbeddings(paths, kinds, result, errors)


def embed_files(model: AudioCLIP, paths: Iterable[PathLike], **audio_options) -> tuple[torch.Tensor, list[str]]:
    """Embed a mixed list of audio and image files (by extension), in the given order; raises
    `InputError` naming every file that failed (`try_embed_files` answers the others)."""
    res = try_embed_files(model, paths, **audio_options)
    if res.failed:
        raise InputError("; ".join(res.errors[i] for i in res.failed))
    return res.embeddings, res.kinds
