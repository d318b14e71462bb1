"""The paper's training stages, one definition each: what a stage starts from, what it
freezes, what it reads and how it steps. `STAGES` is the one list of them.

0. ``clip_standin`` - the demo's stand-in for CLIP's pre-training (the paper starts from
   OpenAI's CLIP, which the demo cannot download): AudioCLIP's image and text towers trained
   contrastively from random weights on image-caption pairs - every frame of the AudioSet
   training clips with the clip's label names - so that stage 2 distils the audio head into
   an aligned image-text space, as in the paper. Its checkpoint is stage 2's `clip_weights`.
1. ``esresnext_audioset`` - the stand-alone ESResNeXt, multi-label BCE over the AudioSet
   classes, from an ImageNet ResNeXt-50 32x4d state dict when given (attention gates reset
   as the original does), else random.
2. ``audioclip_partial`` - AudioCLIP whose audio head comes from stage 1 with a fresh
   projection; image and text towers from CLIP weights when given, frozen as teachers;
   trains the audio head and the two audio logit scales.
3. ``audioclip_full`` - all three heads on AudioSet, from the partial checkpoint.
4. fine-tuning per fold of ESC-50 / UrbanSound8K: ``esresnext_finetune`` (stand-alone, a new
   classifier sized to the classes, CE) and ``audioclip_finetune`` (cooperative: only the
   audio head and the audio scales update; the class name of each clip is its text).

`stage` always names one of these steps; `name` names the asset (and checkpoint) that runs
it, e.g. stage ``audioclip_finetune`` for the assets ``audioclip_esc50`` / ``audioclip_us8k``.
A `StageSpec` (JSON) describes one run of a stage, so the same definition runs in-process or
in every worker that torchrun starts.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError, build_model, load_model, load_strict, read_checkpoint
from ..data.datasets import AudioOptions, AudioSetDataset, ClipSetDataset, ImageCaptionDataset
from ..data.manifests import read_manifest
from ..lineage import MISMATCH, verify_checkpoint
from ..models.audioclip import AudioCLIP
from ..models.esresnext import AudioConfig, ESResNeXt
from ..models.presets import get_preset
from .config import TrainConfig


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
        model = build_model(cfg.preset, clip_weights=clip_weights, audio_weights=audio_head,
                            dtype=getattr(torch, cfg.dtype))   # before loading: float64 towers stay exact
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
            keys = [caption_key(t) for t in batch["text"]]
            class_ids = caption_ids(gather_objects(keys) if w > 1 else keys, batch["audio"].device)
        out = model(audio=batch["audio"], image=batch.get("image") if use_image else None, text=batch["text"],
                    loss_variant=loss_variant, class_ids=class_ids, gather=gather_features if w > 1 else None,
                    scale_grad=1.0 / w)
        ttf = _head(model).loss_ttf()
        n = out.logits.audio_text.shape[0] if out.logits.audio_text is not None else out.logits.audio_image.shape[0]
        target = torch.arange(n, device=batch["audio"].device)
        terms = {"loss": float(out.loss.detach()), "loss_ttf": float(ttf.detach()),
                 "loss_uniform": 2 * math.log(n)}  # what each pair term is at uniform logits (health.py)
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
        terms = {"loss": float(out.loss.detach()), "loss_uniform": 2 * math.log(n),
                 "loss_image_text": float((F.cross_entropy(lg, target) + F.cross_entropy(lg.T, target)).detach())}
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


def caption_retrieval(logits: Optional[torch.Tensor], texts: list, world: int = 1,
                      key: str = "acc_audio_text") -> dict:
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


def keep_frozen_in_eval(model: nn.Module) -> None:
    """A frozen image tower keeps its BatchNorm statistics: in eval mode during training."""
    model = _head(model)
    if isinstance(model, AudioCLIP) and not any(p.requires_grad for p in model.visual.parameters()):
        model.visual.eval()


# -- one run of a stage, as data --------------------------------------------------------------
@dataclass
class StageSpec:
    name: str                                  # the asset, e.g. "audioclip_esc50"
    stage: str                                 # the paper's step, one of STAGES
    config: dict                               # TrainConfig fields
    workdir: str
    tables: list[str]                          # parquet files to train on (manifest versions)
    manifests: dict                            # name -> {"path", "sha256", "rows"}
    class_ids: list[str] = field(default_factory=list)   # AudioSet mids (AudioSet stages)
    classes: list[str] = field(default_factory=list)     # class names (fine-tuning)
    init: Optional[str] = None                 # checkpoint to start from (upstream or released)
    parent: Optional[dict] = None
    clip_weights: Optional[str] = None
    imagenet_weights: Optional[str] = None
    dagster: dict = field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    extra_lineage: dict = field(default_factory=dict)
    data_root: Optional[str] = None            # relative file paths in `tables` are under it
    shards: list[str] = field(default_factory=list)      # shard sets holding the tables' files (data.shards):
                                                         # read from them, not from the files

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; one of {tuple(STAGES)}")

    def to_json(self, path: Path) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> "StageSpec":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


Built = tuple[nn.Module, object, Callable]     # model, dataset, step


# -- the stages ------------------------------------------------------------------------------
def _tables(spec: StageSpec) -> list[pd.DataFrame]:
    root = Path(spec.data_root) if spec.data_root else Path.cwd()
    return [read_manifest(Path(p), root) for p in spec.tables]


def _read_from(spec: StageSpec, dataset):
    """`dataset` reading its files from the spec's shard sets, when it names any."""
    if spec.shards:
        from ..data.shards import ShardStore

        dataset.store = ShardStore([Path(s) for s in spec.shards], Path(spec.data_root) if spec.data_root else Path.cwd())
    return dataset


def _audioset_data(spec: StageSpec, cfg: TrainConfig, *, with_image: bool, image_size: int = 224) -> AudioSetDataset:
    tables = _tables(spec)
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return _read_from(spec, AudioSetDataset(df, spec.class_ids, train=True, seed=cfg.seed, audio=audio_options(cfg),
                                            image_size=image_size, with_image=with_image))


def clipset_dataset(train_df: pd.DataFrame, cfg: TrainConfig, classes: list[str]) -> ClipSetDataset:
    """An ESC-50 / US8K train split, augmented as `cfg` says."""
    return ClipSetDataset(train_df, train=True, seed=cfg.seed, audio=audio_options(cfg), classes=classes)


def _clipset_data(spec: StageSpec, cfg: TrainConfig) -> ClipSetDataset:
    return _read_from(spec, clipset_dataset(pd.concat(_tables(spec), ignore_index=True), cfg, spec.classes))


IMAGENET_SOURCE = ("imagenet_weights", "a torchvision resnext50_32x4d ImageNet state dict "
                   "(resnext50_32x4d-7cdf4587.pth)", "torchvision: https://download.pytorch.org/models/"
                   "resnext50_32x4d-7cdf4587.pth")
CLIP_SOURCE = ("clip_weights", "CLIP's ResNet-50 weights (CLIP.pt of the AudioCLIP release, or OpenAI's RN50.pt)",
               "https://github.com/AndreyGuzhov/AudioCLIP/releases (CLIP.pt) or OpenAI's CLIP repository (RN50)")


class InitialisationError(ValueError):
    """A paper stage would start from random weights where the paper starts from trained ones."""


def require_initialisation(spec: StageSpec, cfg: TrainConfig) -> None:
    """Stage 1 starts from ImageNet weights and stage 2 from CLIP's, as in the paper: without
    them (and without a checkpoint to start from) a stage refuses to start, naming the config
    key, the file it wants and where it is published - unless `allow_random_init` is set."""
    if cfg.allow_random_init:
        return
    need = None
    if spec.stage == "esresnext_audioset" and not (spec.init or spec.imagenet_weights):
        need = IMAGENET_SOURCE
    elif spec.stage == "audioclip_partial" and not spec.clip_weights:
        need = CLIP_SOURCE
    if need:
        raise missing_weights(spec.name, need)


def missing_weights(name: str, source: tuple[str, str, str]) -> InitialisationError:
    """The error of `name` starting without the trained weights `source` (IMAGENET_SOURCE,
    CLIP_SOURCE) names: the config key, the file and where it is published."""
    key, what, where = source
    return InitialisationError(
        f"{name}: the paper starts this stage from {what}, and `{key}` is not set. Set `{key}` in the stage's run "
        f"config to that file (published at {where}), or set `allow_random_init: true` to train from random "
        f"weights (what the demo profile does).")


class ChangedParentError(ValueError):
    """A stage's parent checkpoint differs from its own lineage record."""


def require_unchanged_parent(spec: StageSpec, cfg: TrainConfig):
    """A stage starts from its parent as the parent's lineage records it: a parent file whose
    sha256 (`spec.parent`'s, taken once when the spec was made; not hashed again) differs from
    the digest in `<parent>.lineage.json` is refused, naming the file and both digests, unless
    `allow_changed_parent` - then it trains from the file as it is, and its lineage records
    both. A parent without a record (a released checkpoint) starts as it is. Returns the
    `lineage.Verification`, or None without a parent."""
    if not spec.parent:
        return None
    check = verify_checkpoint(Path(spec.parent["path"]), sha256=spec.parent["sha256"])
    if check.state == MISMATCH and not cfg.allow_changed_parent:
        raise ChangedParentError(
            f"{spec.name}: the parent checkpoint {check.path} has sha256 {check.actual}, but its lineage record "
            f"says {check.recorded}: it changed after {spec.parent.get('name') or 'its stage'} wrote it (damaged or "
            "replaced). Materialise that stage again (or restore the file), or set `allow_changed_parent: true` "
            "to train from it as it is")
    return check


def _clip_standin(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg)               # random towers: the demo's CLIP is trained here
    model.freeze(audio=True)                   # no audio: the audio head and its scales stay as built
    model.logit_scale_ai.requires_grad_(False)
    model.logit_scale_at.requires_grad_(False)
    tables = _tables(spec)
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    data = _read_from(spec, ImageCaptionDataset(df, train=True, seed=cfg.seed, image_size=model.visual.image_size))
    return model, data, image_text_step(cfg.loss_variant)


# -- the towers stage 2 distils into ----------------------------------------------------------
TOWERS_RECORD = "towers.json"   # in the clip_towers checkpoint folder (layout.checkpoint_dir("clip_towers"))


def towers_record(kind: str, path: Optional[str] = None, sha256: Optional[str] = None, **more) -> dict:
    """What stage 2's image and text towers are: ``clip_weights`` (a CLIP file - OpenAI's RN50 or
    the release's CLIP.pt, the paper), ``standin`` (the demo's `clip_standin` checkpoint) or
    ``random`` (neither; only with `allow_random_init`), with the file's sha256 (computed unless
    given)."""
    from ..files import sha256_file

    if kind not in ("clip_weights", "standin", "random"):
        raise ValueError(f"unknown kind of towers {kind!r}")
    if kind != "random" and not path:
        raise ValueError(f"towers of kind {kind!r} need a file")
    return {"kind": kind, "path": str(path) if path else None,
            "sha256": sha256 or (sha256_file(Path(path)) if path else None), **more}


def publish_towers(layout, record: dict) -> None:
    """Write `record` where stage 2 finds it (`layout.checkpoint_dir("clip_towers")`); a file
    under the data root is named relative to it, so the root can move."""
    from ..files import write_json

    path = Path(record["path"]) if record.get("path") else None
    if path is not None and path.is_relative_to(layout.root):
        record = {**record, "path": str(path.relative_to(layout.root))}
    write_json(record, layout.checkpoint_dir("clip_towers") / TOWERS_RECORD)


def published_towers(layout) -> dict:
    """The towers record `publish_towers` wrote, with an absolute path; a clear error when
    there is none or its file is gone."""
    path = layout.checkpoint_dir("clip_towers") / TOWERS_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialise clip_towers first (or set clip_weights)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("path") and not Path(record["path"]).is_absolute():
        record["path"] = str(layout.root / record["path"])
    if record.get("path") and not Path(record["path"]).is_file():
        raise FileNotFoundError(f"clip_towers names {record['path']}, which is gone: materialise clip_towers again")
    return record


def verify_clip_weights(path: str, preset: str) -> None:
    """Load `path` into the towers of `preset` strictly: a wrong or truncated file fails here,
    before any stage trains from it."""
    build_model(preset, clip_weights=path)


def _esresnext_audioset(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_classifier(cfg, len(spec.class_ids), init=spec.init, imagenet=spec.imagenet_weights)
    return model, _audioset_data(spec, cfg, with_image=False), classifier_step


def _audioclip_partial(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, audio_head=spec.init, clip_weights=spec.clip_weights)
    model.freeze(image=True, text=True)        # CLIP's towers are the teachers
    data = _audioset_data(spec, cfg, with_image=True, image_size=model.visual.image_size)
    return model, data, audioclip_step(use_image=True, loss_variant=cfg.loss_variant)


def _audioclip_full(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, init=spec.init)
    data = _audioset_data(spec, cfg, with_image=True, image_size=model.visual.image_size)
    return model, data, audioclip_step(use_image=True, loss_variant=cfg.loss_variant)


def _esresnext_finetune(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_classifier(cfg, len(spec.classes), init=spec.init)
    return model, _clipset_data(spec, cfg), classifier_step


def _audioclip_finetune(spec: StageSpec, cfg: TrainConfig) -> Built:
    model = build_audioclip(cfg, init=spec.init)
    model.freeze(image=True, text=True)        # cooperative: only the audio head ...
    model.logit_scale.requires_grad_(False)    # ... and the two audio scales update
    return model, _clipset_data(spec, cfg), audioclip_step(use_image=False, loss_variant=cfg.loss_variant)


@dataclass(frozen=True)
class Stage:
    """One step of the paper's training. `data` is what it reads ("audioset" manifests or an
    ESC-50 / US8K fold's "clipset" train split); `build` makes its model (loaded and frozen
    as the step requires), dataset and step function from a `StageSpec`."""

    name: str
    data: str
    summary: str
    build: Callable[[StageSpec, TrainConfig], Built]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("clip_standin", "audioset", "the demo's stand-in for CLIP pre-training: image and text towers trained "
          "contrastively on frame-caption pairs", _clip_standin),
    Stage("esresnext_audioset", "audioset", "stand-alone ESResNeXt, multi-label BCE over the AudioSet classes",
          _esresnext_audioset),
    Stage("audioclip_partial", "audioset", "the audio head trained under frozen CLIP teachers", _audioclip_partial),
    Stage("audioclip_full", "audioset", "all three heads trained jointly on AudioSet", _audioclip_full),
    Stage("esresnext_finetune", "clipset", "stand-alone ESResNeXt fine-tuned on a fold, new classifier",
          _esresnext_finetune),
    Stage("audioclip_finetune", "clipset", "cooperative fine-tuning on a fold: the audio head only",
          _audioclip_finetune),
)}


def build_stage(spec: StageSpec):
    """The `StageRun` of `spec`: its stage's model, dataset and step, ready for `run_stage`."""
    from .run import StageRun

    cfg = TrainConfig(**spec.config)
    if cfg.stage != spec.stage:
        raise ValueError(f"{spec.name}: the spec is for stage {spec.stage!r}, its config for {cfg.stage!r}")
    require_initialisation(spec, cfg)
    parent = require_unchanged_parent(spec, cfg)
    changed = ({"parent_changed": {"recorded_sha256": parent.recorded, "sha256": parent.actual}}
               if parent is not None and parent.state == MISMATCH else {})
    model, dataset, step = STAGES[spec.stage].build(spec, cfg)
    return StageRun(spec.name, cfg, model, dataset, step, Path(spec.workdir), spec.manifests, parent=spec.parent,
                    prepare=keep_frozen_in_eval, dagster=spec.dagster,
                    extra_lineage={**spec.extra_lineage, "clip_weights": spec.clip_weights,
                                   "imagenet_weights": spec.imagenet_weights, **changed})
