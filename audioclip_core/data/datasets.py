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

Where the training augmentations run is `AudioOptions.augment_on`: ``"worker"`` - an item is
the augmented audio and the cropped, normalised frame - or ``"device"``: an item is the clip's
decoded samples, the augmentation parameters drawn for it (`transforms.WaveAugment.draw`),
the frame's JPEG bytes and its drawn crop; `collate` pads and stacks them under ``"raw"``,
and the training loop calls the dataset's `augment_batch` on its device, which gives the
audio of the worker placement exactly (on a CPU) and the image up to the resampler
(`images.clip_preprocess_jpegs`). Evaluation always reads as the worker placement does.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import Dataset

from ..audio import SAMPLE_RATE, resample, to_model_input
from ..images import clip_preprocess_jpegs, draw_crop, jpeg_size, load_clip_image, resized_size
from .transforms import eval_transforms, sample_generator, stack_params, train_transforms

AUGMENT_PLACEMENTS = ("worker", "device")


def load_clip_audio(path, channels: int) -> torch.Tensor:
    """A file's audio as [channels, T] float32 at 44.1 kHz (`path`: a path or a file object)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f"{getattr(path, 'name', path)}: no samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if sr != SAMPLE_RATE:
        wave = resample(wave, sr, SAMPLE_RATE)
    return _to_channels(wave, channels)


def _pcm16_wav(data: bytes) -> Optional[np.ndarray]:
    """The samples `[T, C]` (int16) of a plain PCM 16-bit WAV at 44.1 kHz; None for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and size >= 16:
            fmt = struct.unpack_from("<HHIIHH", data, pos + 8)  # tag, channels, rate, byte rate, align, bits
            if fmt[0] == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag opens its GUID
                fmt = (struct.unpack_from("<H", data, pos + 32)[0] if size >= 26 else 0, *fmt[1:])
        elif chunk == b"data" and fmt is not None:
            tag, channels, rate, _, align, bits = fmt
            if tag != 1 or bits != 16 or rate != SAMPLE_RATE or channels < 1 or align != 2 * channels:
                return None
            end = min(pos + 8 + size, len(data))
            n = (end - pos - 8) // align
            return np.frombuffer(data, dtype="<i2", count=n * channels, offset=pos + 8).reshape(n, channels)
        pos += 8 + size + (size & 1)
    return None


def clip_samples(data: bytes | bytearray, channels: int) -> torch.Tensor:
    """What a worker of the device placement sends for a file's audio: a PCM 16-bit WAV at
    44.1 kHz as its samples, int16 `[T, C]` as stored (no work here; `device_audio` converts
    them on the device; read from a `bytearray`, without a copy), anything else decoded by
    `load_clip_audio`, float32 `[T, channels]`."""
    pcm = _pcm16_wav(data)
    if pcm is None:
        return load_clip_audio(io.BytesIO(data), channels).T.contiguous()
    if pcm.shape[0] == 0:
        raise ValueError("no samples")
    return torch.from_numpy(pcm if pcm.flags.writeable and pcm.flags.aligned else pcm.copy())


def device_audio(samples: torch.Tensor, channels: int) -> torch.Tensor:
    """`clip_samples` output, batched `[B, T, C]` (on any device) -> float32 `[B, channels, T]`:
    int16 scaled by 1/32768 and mixed down as `load_clip_audio` does, so the values are its."""
    wave = samples.transpose(1, 2)
    if wave.dtype == torch.int16:
        wave = wave.float().mul_(1.0 / 32768.0)
    return _to_channels(wave, channels).contiguous()


def _to_channels(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """`[..., C, T]` mixed down (mono: the channels' mean) or repeated to `channels`."""
    have = wave.shape[-2]
    if have > channels:
        wave = wave.mean(-2, keepdim=True) if channels == 1 else wave[..., :channels, :]
    if have < channels:
        reps = [1] * wave.dim()
        reps[-2] = channels // have + 1
        wave = wave.repeat(*reps)[..., :channels, :]
    return wave


@dataclass
class AudioOptions:
    clip_seconds: float = 5.0
    channels: int = 1
    input_scale: str = "int16"
    augment: bool = True
    inversion: str = "time"
    noise_p: float = 0.25
    augment_on: str = "worker"  # training items augmented in the workers, or on the training device

    def __post_init__(self) -> None:
        if self.augment_on not in AUGMENT_PLACEMENTS:
            raise ValueError(f"augment_on must be one of {AUGMENT_PLACEMENTS}, not {self.augment_on!r}")


def clipset_dataset(
    table: pd.DataFrame, classes: list[str], audio: AudioOptions, *, train: bool, seed: int = 0
) -> "ClipSetDataset":
    """An ESC-50 / US8K table as a dataset: its clips, their class among `classes`, read as `audio`
    says (augmented when `train` and `audio.augment`)."""
    return ClipSetDataset(table, train=train, seed=seed, audio=audio, classes=classes)


def _source(store, path):
    """What a decoder reads: the file at `path`, or its bytes from the shards of `store`."""
    return path if store is None else store.open(path)


def _read(store, path) -> bytes | bytearray:
    """The bytes of the file at `path`: from disk into a `bytearray` (its samples can then be
    used in place), or from the shards of `store`."""
    if store is None:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            got = f.readinto(data)
        return data if got == len(data) else data[:got]
    return store.read(path)


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
        self.on_device = train and audio.augment_on == "device"
        self.epoch = 0
        self.bad_items: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.df)

    def _audio(self, path: str, rng: torch.Generator) -> dict:
        """The item's audio: augmented (``"audio"``), or, augmented on the device, the decoded
        clip (``"wave"``) and the drawn parameters (``"augment"``)."""
        if self.on_device:
            samples = clip_samples(_read(self.store, path), self.audio.channels)
            return {
                "wave": samples,
                "channels": self.audio.channels,
                "augment": self.transform.draw(samples.shape[0], rng),
            }
        wave = load_clip_audio(_source(self.store, path), self.audio.channels)
        return {"audio": to_model_input(self.transform(wave, rng), self.audio.input_scale)}

    def _image(self, path: str, rng: Optional[torch.Generator]) -> dict:
        """The item's frame: the CLIP input (``"image"``), or, augmented on the device, the JPEG
        bytes (``"jpeg"``) and the crop drawn for them (``"crop"``: left, top)."""
        if self.on_device:
            data = _read(self.store, path)
            crop = draw_crop(*resized_size(*jpeg_size(data), self.image_size), self.image_size, rng)
            return {"jpeg": data, "crop": tuple(crop)}
        return {"image": load_clip_image(_source(self.store, path), self.image_size, rng)}

    def augment_batch(self, batch: dict, device) -> dict:
        """A collated batch of the device placement with its ``"raw"`` part augmented on `device`:
        ``"audio"`` (and ``"image"``) as the worker placement gives them. A frame that fails to
        decode (the worker read only its header) costs its sample, reported in ``"errors"``, as
        in the worker placement."""
        batch = dict(batch)
        raw = batch.pop("raw")
        keep = list(range(len(batch["index"])))
        if "jpeg" in raw:
            jpegs = list(torch.split(raw["jpeg"], raw["jpeg_sizes"]))
            crops = torch.tensor(raw["crop"])
            try:
                images = clip_preprocess_jpegs(jpegs, crops, self.image_size, device)
            except RuntimeError:  # a frame that is not a whole JPEG: one by one, by its own format
                images, keep = [], []
                batch["errors"] = list(batch["errors"])
                for i, jpeg in enumerate(jpegs):
                    try:
                        one = clip_preprocess_jpegs([jpeg], crops[i : i + 1], self.image_size, device, any_format=True)
                        images.append(one)
                        keep.append(i)
                    except RuntimeError as exc:  # one that cannot be read costs its sample
                        batch["errors"].append(f"item {batch['index'][i]}: frame: {exc}")
                images = torch.cat(images) if images else None
                batch = _subset(batch, keep)
            if images is not None:
                batch["image"] = images
        if not keep:
            return batch
        wave = raw["wave"][keep] if len(keep) < len(raw["augment"]) else raw["wave"]
        wave = device_audio(wave.to(device, non_blocking=True), self.audio.channels)
        params = stack_params([raw["augment"][i] for i in keep])
        batch["audio"] = to_model_input(self.transform.apply(wave, params), self.audio.input_scale)
        return batch


def _subset(batch: dict, keep: list[int]) -> dict:
    """The items `keep` (positions) of a collated batch: its lists and tensors, not its errors."""
    out = dict(batch)
    for key, value in batch.items():
        if key == "errors":
            continue
        if isinstance(value, torch.Tensor):
            out[key] = value[keep]
        elif isinstance(value, list):
            out[key] = [value[i] for i in keep]
    return out


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
            item = {"index": index, **self._audio(row["audio_path"], rng), "text": list(row["label_names"])}
            if self.with_image:
                frames = list(row["frame_paths"])
                pick = int(torch.randint(0, len(frames), (), generator=rng)) if self.train else len(frames) // 2
                item.update(self._image(frames[pick], rng if self.train else None))
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
            **audio,
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
    if "wave" in good[0]:  # the device placement: samples `[T, C]` zero-padded to the longest
        waves = [it["wave"] for it in good]
        if len({(w.dtype, w.shape[1]) for w in waves}) > 1:  # mono beside stereo, PCM beside decoded:
            channels = good[0]["channels"]  # all as decoded, `channels` each
            waves = [device_audio(w[None], channels)[0].T if w.dtype == torch.int16 else w for w in waves]
        padded = _batch_tensor((len(waves), max(w.shape[0] for w in waves), waves[0].shape[1]), waves[0].dtype)
        for i, w in enumerate(waves):
            padded[i, : w.shape[0]] = w
            padded[i, w.shape[0] :] = 0
        # one tensor for the samples and one for every JPEG: each tensor of a batch is a shared-
        # memory segment passed to the main process; the parameters and crops are plain numbers
        batch["raw"] = {"wave": padded, "augment": [it["augment"] for it in good]}
        if "jpeg" in good[0]:
            sizes = [len(it["jpeg"]) for it in good]
            blob = _batch_tensor((sum(sizes),), torch.uint8)
            view, start = blob.numpy(), 0
            for it, size in zip(good, sizes):  # each frame's bytes straight into the shared batch
                view[start : start + size] = np.frombuffer(it["jpeg"], dtype=np.uint8)
                start += size
            batch["raw"].update(jpeg=blob, jpeg_sizes=sizes, crop=[it["crop"] for it in good])
    return batch


def _batch_tensor(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch: in a DataLoader worker, in shared memory at once (as
    torch's default collate does), so it is not copied there again to reach the main process."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)
