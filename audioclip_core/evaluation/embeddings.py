"""Embeddings of evaluation sets: every loadable clip of a manifest, once, with its labels.

Clips are read with the evaluation pipeline of `audioclip_core.data.datasets` (no
augmentation; the middle one of the 10 AudioSet frames; ESC-50 / US8K padded or cropped to
their protocol's length and channels). A clip that fails to load is left out; `index`
says which manifest rows were embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..data.clipsets import protocol
from ..data.datasets import AudioOptions, AudioSetDataset, ClipSetDataset, clipset_dataset
from ..models.audioclip import AudioCLIP
from ..text import apply_template

BATCH = 16


def loadable_batches(dataset, batch_size: int = BATCH):
    """Lists of the items of `dataset` that loaded, `batch_size` items at a time."""
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        yield [it for it in items if "error" not in it]


def protocol_dataset(table: pd.DataFrame, dataset: str, classes: list[str], input_scale: str) -> ClipSetDataset:
    """An ESC-50 / US8K table under its dataset's protocol (clip length, channels), unaugmented."""
    spec = protocol(dataset)
    audio = AudioOptions(clip_seconds=spec.clip_seconds, channels=spec.channels, input_scale=input_scale, augment=False)
    return clipset_dataset(table, classes, audio, train=False)


@torch.no_grad()
def embed_dataset(model: AudioCLIP, dataset, *, image: bool = False, batch_size: int = BATCH) -> dict:
    """Normalised audio (and image) embeddings of every loadable item, with its index."""
    model.eval()
    audio, images, index = [], [], []
    for items in loadable_batches(dataset, batch_size):
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
    return torch.cat([F.normalize(model.encode_text(prompts[i : i + 64]), dim=-1) for i in range(0, len(prompts), 64)])


@dataclass
class ClipSetEmbeddings:
    """An ESC-50 / US8K table embedded: clips (rows `index` of the table), class names, class ids."""

    audio: torch.Tensor  # [clips, d], normalised
    text: torch.Tensor  # [classes, d], normalised
    class_ids: torch.Tensor  # [clips]
    index: list[int]  # the table rows embedded


def embed_clipset(
    model: AudioCLIP, table: pd.DataFrame, dataset: str, classes: list[str], *, template: str, input_scale: str
) -> ClipSetEmbeddings:
    ds = protocol_dataset(table, dataset, classes, input_scale)
    emb = embed_dataset(model, ds)
    ids = torch.tensor([ds.class_of[ds.df.iloc[i]["class_name"]] for i in emb["index"]], dtype=torch.long)
    return ClipSetEmbeddings(emb["audio"], text_embeddings(model, classes, template), ids, emb["index"])


def audioset_dataset(
    manifest: pd.DataFrame,
    class_ids: list[str],
    *,
    clip_seconds: float,
    input_scale: str,
    image: bool,
    image_size: int = 224,
) -> AudioSetDataset:
    audio = AudioOptions(clip_seconds=clip_seconds, channels=1, input_scale=input_scale, augment=False)
    return AudioSetDataset(manifest, class_ids, train=False, audio=audio, image_size=image_size, with_image=image)


def multi_hot(ds: AudioSetDataset, index: list[int]) -> torch.Tensor:
    out = torch.zeros(len(index), len(ds.class_index))
    for row, i in enumerate(index):
        for m in ds.df.iloc[i]["label_ids"]:
            if m in ds.class_index:
                out[row, ds.class_index[m]] = 1.0
    return out


@dataclass
class AudioSetEmbeddings:
    """An AudioSet manifest embedded: audio and middle-frame image per clip, class-name texts,
    and the clips' multi-hot labels."""

    audio: torch.Tensor  # [clips, d]
    image: torch.Tensor  # [clips, d]
    text: torch.Tensor  # [classes, d]
    targets: torch.Tensor  # [clips, classes]
    class_names: list[str]
    set_text: Optional[torch.Tensor] = None  # [unique label sets, d]: each set of `unique_label_sets(targets)`
    # as a caption (its names joined)

    @property
    def clips(self) -> int:
        return int(self.audio.shape[0])


def unique_label_sets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct rows of a multi-hot `[clips, classes]` matrix in order of first appearance,
    the index of each clip's row among them `[clips]`)."""
    t = targets.bool()
    if t.shape[0] == 0:
        return targets[:0], torch.zeros(0, dtype=torch.long)
    sets, inverse = torch.unique(t, dim=0, return_inverse=True)
    first = torch.full((len(sets),), t.shape[0], dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(t.shape[0]), reduce="amin"
    )
    order = first.argsort()
    rank = order.argsort()
    return sets[order].to(targets.dtype), rank[inverse]


def set_captions(label_sets: torch.Tensor, class_names: Sequence[str]) -> list[str]:
    """Each label set as a text: its class names (in class order) joined by ", ", as the
    AudioSet training captions join a clip's labels."""
    return [", ".join(class_names[i] for i in row.nonzero().flatten().tolist()) for row in label_sets]


def embed_audioset(
    model: AudioCLIP,
    manifest: pd.DataFrame,
    class_ids: list[str],
    class_names: list[str],
    *,
    clip_seconds: float,
    input_scale: str,
    template: str = "{}",
    batch_size: Optional[int] = None,
) -> AudioSetEmbeddings:
    ds = audioset_dataset(
        manifest,
        class_ids,
        clip_seconds=clip_seconds,
        input_scale=input_scale,
        image=True,
        image_size=model.visual.image_size,
    )
    emb = embed_dataset(model, ds, image=True, batch_size=batch_size or BATCH)
    targets = multi_hot(ds, emb["index"])
    sets, _ = unique_label_sets(targets)
    return AudioSetEmbeddings(
        emb["audio"],
        emb["image"],
        text_embeddings(model, class_names, template),
        targets,
        list(class_names),
        text_embeddings(model, set_captions(sets, class_names), template) if len(sets) else None,
    )
