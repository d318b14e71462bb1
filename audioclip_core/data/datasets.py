"""Datasets over the manifests, for training and evaluation alike.

* AudioSet: audio + ONE of the 10 frames (drawn at random in training, the middle one in
  evaluation) + the clip's label names joined with ", " as its text + a multi-hot target.
* ESC-50 / UrbanSound8K: audio + the class name as text + the class id.
* Image-caption pairs (the demo's stand-in for CLIP pre-training): every frame of every
  AudioSet clip, with the clip's caption.

Randomness (augmentations, frame choice) comes from a generator seeded by
(seed, epoch, index), so an item is the same whichever worker or resumed run produces it.
A clip that fails to decode is reported (`bad_items`) and replaced by an empty marker that
the collate function drops, so one bad file costs one sample, not the run.

Files are read from disk, or, given a `store` (`data.shards.ShardStore`), from training
shards by the same paths: the bytes are the same, so the items are too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import Dataset

from ..audio import SAMPLE_RATE, resample, to_model_input
from ..images import load_clip_image
from .transforms import eval_transforms, sample_generator, train_transforms


def load_clip_audio(path, channels: int) -> torch.Tensor:
    """A file's audio as [channels, T] float32 at 44.1 kHz (`path`: a path or a file object)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"{getattr(path, 'name', path)}: no samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if sr != SAMPLE_RATE:
        wave = resample(wave, sr, SAMPLE_RATE)
    if wave.shape[0] > channels:
        wave = wave.mean(0, keepdim=True) if channels == 1 else wave[:channels]
    if wave.shape[0] < channels:
        wave = wave.repeat(channels // wave.shape[0] + 1, 1)[:channels]
    return wave


@dataclass
class AudioOptions:
    clip_seconds: float = 5.0
    channels: int = 1
    input_scale: str = "int16"
    augment: bool = True
    inversion: str = "time"
    noise_p: float = 0.25


def clipset_dataset(
    table: pd.DataFrame, classes: list[str], audio: AudioOptions, *, train: bool, seed: int = 0
) -> "ClipSetDataset":
    """An ESC-50 / US8K table as a dataset: its clips, their class among `classes`, read as `audio`
    says (augmented when `train` and `audio.augment`)."""
    return ClipSetDataset(table, train=train, seed=seed, audio=audio, classes=classes)


def _source(store, path):
    """What a decoder reads: the file at `path`, or its bytes from the shards of `store`."""
    return path if store is None else store.open(path)


class _Base(Dataset):
    store = None  # a data.shards.ShardStore to read files from shards

    def __init__(self, df: pd.DataFrame, *, train: bool, seed: int, audio: AudioOptions):
        self.df = df.reset_index(drop=True)
        self.train, self.seed, self.audio = train, seed, audio
        out_len = int(round(audio.clip_seconds * SAMPLE_RATE))
        self.transform = (
            train_transforms(out_len, inversion=audio.inversion, noise_p=audio.noise_p)
            if train and audio.augment
            else eval_transforms(out_len)
        )
        self.epoch = 0
        self.bad_items: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.df)

    def _audio(self, path: str, rng: torch.Generator) -> torch.Tensor:
        wave = load_clip_audio(_source(self.store, path), self.audio.channels)
        return to_model_input(self.transform(wave, rng), self.audio.input_scale)


class AudioSetDataset(_Base):
    """Rows of an AudioSet manifest with status `ok`."""

    def __init__(
        self,
        df: pd.DataFrame,
        class_ids: list[str],
        *,
        train: bool,
        seed: int = 0,
        audio: Optional[AudioOptions] = None,
        image_size: int = 224,
        with_image: bool = True,
    ):
        super().__init__(df[df["status"] == "ok"], train=train, seed=seed, audio=audio or AudioOptions())
        self.class_index = {m: i for i, m in enumerate(class_ids)}
        self.image_size, self.with_image = image_size, with_image

    def __getitem__(self, index: int):
        row = self.df.iloc[index]
        rng = sample_generator(self.seed, self.epoch if self.train else 0, index)
        try:
            audio = self._audio(row["audio_path"], rng)
            item = {"index": index, "audio": audio, "text": list(row["label_names"])}
            if self.with_image:
                frames = list(row["frame_paths"])
                pick = int(torch.randint(0, len(frames), (), generator=rng)) if self.train else len(frames) // 2
                item["image"] = load_clip_image(
                    _source(self.store, frames[pick]), self.image_size, rng if self.train else None
                )
        except Exception as exc:  # a clip that fails to decode costs one sample, not the run
            return {"index": index, "error": f"{row['segment_id']}: {exc}"}
        target = torch.zeros(len(self.class_index))
        for m in row["label_ids"]:
            if m in self.class_index:
                target[self.class_index[m]] = 1.0
        item["target"] = target
        return item


class ClipSetDataset(_Base):
    """Rows of an ESC-50 / US8K fold table: audio + class name + class id."""

    def __init__(
        self,
        df: pd.DataFrame,
        *,
        train: bool,
        seed: int = 0,
        audio: Optional[AudioOptions] = None,
        classes: Optional[list[str]] = None,
    ):
        super().__init__(
            df[df["status"] == "ok"] if "status" in df else df, train=train, seed=seed, audio=audio or AudioOptions()
        )
        self.classes = classes or [n for _, n in sorted(set(zip(df["class_id"], df["class_name"])))]
        self.class_of = {n: i for i, n in enumerate(self.classes)}

    def __getitem__(self, index: int):
        row = self.df.iloc[index]
        rng = sample_generator(self.seed, self.epoch if self.train else 0, index)
        try:
            audio = self._audio(row["audio_path"], rng)
        except Exception as exc:
            return {"index": index, "error": f"{row['path']}: {exc}"}
        return {
            "index": index,
            "audio": audio,
            "text": [row["class_name"]],
            "target": torch.tensor(self.class_of[row["class_name"]]),
        }


class ImageCaptionDataset(Dataset):
    """Every frame of the usable rows of AudioSet manifests as an image-caption pair: the
    frame (augmented as CLIP's preprocessing does in training) and the clip's label names
    (its caption, joined with ", " as in the audio stages). Item `i` is frame `i` of the
    flattened (clip, frame) list; randomness comes from (seed, epoch, index)."""

    store = None

    def __init__(self, df: pd.DataFrame, *, train: bool, seed: int = 0, image_size: int = 224):
        df = df[df["status"] == "ok"] if "status" in df else df
        self.pairs = [
            (str(f), list(row.label_names), str(row.segment_id)) for row in df.itertuples() for f in row.frame_paths
        ]
        self.train, self.seed, self.image_size, self.epoch = train, seed, image_size, 0
        self.bad_items: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        path, labels, segment = self.pairs[index]
        rng = sample_generator(self.seed, self.epoch if self.train else 0, index)
        try:
            image = load_clip_image(_source(self.store, path), self.image_size, rng if self.train else None)
        except Exception as exc:
            return {"index": index, "error": f"{segment} {path}: {exc}"}
        return {"index": index, "image": image, "text": labels}


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "error" not in it]
    batch = {"errors": [it["error"] for it in items if "error" in it], "index": [it["index"] for it in good]}
    if not good:
        return batch
    batch["text"] = [it["text"] for it in good]
    for key in ("audio", "image", "target"):
        if key in good[0]:
            batch[key] = torch.stack([it[key] for it in good])
    return batch
