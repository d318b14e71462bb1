"""The paper's four evaluation tables, as functions: models (or checkpoint paths) and
manifests in, a `TableResult` out - the rows as a DataFrame, the protocol they follow, and
the data of their figures (confusion matrices, PR curves, embedding maps).

* Table 1 - ESResNeXt alone: AudioSet mAP of each ESResNeXt checkpoint given (the trained
  stage, a shorter-trained one, the released ESRNXFBSP.pt); fine-tuned ESC-50 / US8K
  accuracy per fold + mean.
* Table 2 - AudioCLIP after partial and full training: AudioSet mAP with audio, image and
  both (both: the mean of the audio-text and image-text cosines, a choice of ours - the
  paper does not define it); accuracy after cooperative fine-tuning on ESC-50 / US8K from
  the partial and from the full model, per fold + mean.
* Table 3 - zero-shot ESC-50 / US8K accuracy (no training on them): all clips, and per fold.
* Table 4 - querying, P@1 / R@1 / mAP: image by text (ImageNet, AudioSet), audio by text
  (AudioSet, ESC-50, US8K), audio by image and image by audio (AudioSet).

Each row: table, model, task, dataset, metric, fold ("mean" or the fold), value (a
fraction, None when not available), chance (the metric's expected value for random scores
on that evaluation set, computed exactly: `metrics.chance_*`), n (clips, or folds for a
mean), note. ImageNet rows appear only when an ImageNet folder is configured (the protocol
says so otherwise). Every ESC-50 /
US8K figure follows `audioclip_core.data.clipsets.protocol` (clip length, channels, folds,
input scale), and every table states its protocol (`TableResult.protocol`, the markdown's
header). Nothing here imports Dagster:

    from audioclip_core.evaluation import tables
    from audioclip_core.layout import DataLayout
    layout = DataLayout.at("data")
    t3 = tables.table3_zero_shot({"full": layout.checkpoint("audioclip_full")},
                                 {n: tables.clipset_table(layout, n) for n in ("esc50", "us8k")})
    t3.rows
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from torch import nn

from ..audio import DEFAULT_INPUT_SCALE
from ..data.audioset import LabelIndex
from ..data.clipsets import SPECS, class_names, protocol
from ..data.manifests import read_manifest
from ..layout import DataLayout
from .classification import (
    ClassificationResult,
    audioclip_classification,
    audioset_map,
    classifier_audioset_map,
    classifier_classification,
)
from .embeddings import embed_audioset, embed_clipset
from .metrics import chance_accuracy, chance_classification_map, chance_retrieval
from .retrieval import (
    DIRECTIONS,
    audio_by_text_scores,
    audioset_querying,
    audioset_querying_chance,
    clipset_audio_by_text,
    clipset_relevance,
    pr_curve,
)

Model = Union[str, os.PathLike, nn.Module]
COLUMNS = ["table", "model", "task", "dataset", "metric", "fold", "value", "chance", "n", "note"]
CLIPSETS = tuple(SPECS)  # every clip set gets fine-tuned, zero-shot and querying rows
QUERY_METRICS = ("P@1", "R@1", "mAP")


@dataclass
class Settings:
    """How the tables evaluate. `template` formats class names ('{}' = bare, as the original);
    `input_scale` is how [-1, 1] audio is fed (the published ESC-50/US8K protocols feed
    x32768: 'int16'); `preset` is the architecture of checkpoint files without metadata;
    `fast_inference` compiles the audio head of the models that embed a whole AudioSet
    partition; `imagenet_dir` (an ImageNet-layout folder) adds Table 4's ImageNet rows."""

    template: str = "{}"
    input_scale: Optional[str] = None  # None: the rule of audioclip_core.audio (checkpoint, else dataset protocol)
    query_rule: str = "same_labels"  # AudioSet querying relevance (evaluation/retrieval.py)
    preset: Optional[str] = None
    audioset_clip_seconds: Optional[float] = None
    fast_inference: bool = False
    imagenet_dir: Optional[str] = None
    imagenet_per_class: Optional[int] = None


@dataclass
class FineTuned:
    """One clip set's fine-tuned fold checkpoints with the fold test splits they are scored on."""

    dataset: str  # a clip set of SPECS: "esc50", "us8k"
    classes: list[str]
    tests: dict[str, pd.DataFrame]  # fold -> test split
    checkpoints: dict[str, Model]  # fold -> checkpoint; folds without one are not trained
    start: str = "full"  # what fine-tuning started from (AudioCLIP: "partial" / "full")


@dataclass
class Confusion:
    name: str
    title: str
    matrix: np.ndarray
    classes: list[str]


@dataclass
class PRCurves:
    name: str
    title: str
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (recall, precision)


@dataclass
class EmbeddingMap:
    name: str
    title: str
    points: dict[str, np.ndarray]  # modality -> [n, d]
    labels: dict[str, list[str]]


Figure = Union[Confusion, PRCurves, EmbeddingMap]


@dataclass
class TableResult:
    name: str
    rows: pd.DataFrame
    protocol: dict
    figures: list[Figure] = field(default_factory=list)


# -- inputs from a data root -----------------------------------------------------------------
def existing(path: Path) -> Optional[Path]:
    return path if path.is_file() else None


def clipset_table(layout: DataLayout, name: str) -> Optional[pd.DataFrame]:
    """The usable (status ok) rows of an ESC-50 / US8K manifest, or None before it exists."""
    path = layout.clipset_manifest(name)
    if not path.is_file():
        return None
    df = read_manifest(path, layout.root)
    return df[df["status"] == "ok"].reset_index(drop=True)


def finetuned_from_layout(layout: DataLayout, asset: str, dataset: str, start: str = "full") -> FineTuned:
    """The fold checkpoints of fine-tuning asset `asset` (e.g. "audioclip_esc50") on `dataset`;
    `start` names what it fine-tuned from."""
    table = clipset_table(layout, dataset)
    tests = {k: read_manifest(p, layout.root) for k, p in layout.fold_tests(dataset).items()}
    ckpts = {k: p for k in tests if (p := existing(layout.checkpoint(asset, k))) is not None}
    return FineTuned(dataset, class_names(table) if table is not None else [], tests, ckpts, start)


def finetune_asset(start: str, dataset: str) -> str:
    """The cooperative fine-tuning asset of `dataset` that starts from AudioCLIP `start`
    ("partial" or "full"): audioclip_partial_esc50, audioclip_esc50 (from full), ..."""
    if start not in ("partial", "full"):
        raise ValueError(f"cooperative fine-tuning starts from 'partial' or 'full', not {start!r}")
    return f"audioclip_{dataset}" if start == "full" else f"audioclip_partial_{dataset}"


def audioset_table(layout: DataLayout, partition: str = "eval") -> Optional[pd.DataFrame]:
    path = layout.audioset_manifest(partition)
    return read_manifest(path, layout.root) if path.is_file() else None


# -- helpers ---------------------------------------------------------------------------------
def _number(value) -> Optional[float]:
    return None if value is None or value != value else float(value)


def row(
    table: str, model: str, task: str, dataset: str, metric: str, value, fold="mean", n=None, note="", chance=None
) -> dict:
    return {
        "table": table,
        "model": model,
        "task": task,
        "dataset": dataset,
        "metric": metric,
        "fold": str(fold),
        "value": _number(value),
        "chance": _number(chance),
        "n": None if n is None else int(n),
        "note": note,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _protocol(settings: Settings, **more) -> dict:
    scale = settings.input_scale or {
        **{n: protocol(n).input_scale for n in CLIPSETS},
        "audioset": f"the checkpoint's, else {DEFAULT_INPUT_SCALE}",
        "rule": "a checkpoint that records its scale is fed with it",
    }
    return {
        "template": settings.template,
        "input_scale": scale,
        "clip_seconds": {n: protocol(n).clip_seconds for n in CLIPSETS},
        "channels": {n: protocol(n).channels for n in CLIPSETS},
        "folds": {n: len(protocol(n).folds) for n in CLIPSETS},
        **more,
    }


def _scale(model: nn.Module, settings: Settings, dataset: Optional[str] = None) -> str:
    """The input scale of `model` on `dataset` (None: AudioSet), by the one rule of
    `audioclip_core.audio` (`inference.resolve_input_scale`), which the CLI applies too."""
    from ..inference import resolve_input_scale

    return resolve_input_scale(model, dataset, settings.input_scale)


def _audioclip(model: Model, settings: Settings, *, fast: bool = False):
    from ..checkpoints import load_model

    m = model if isinstance(model, nn.Module) else load_model(model, preset=settings.preset)
    if fast and settings.fast_inference:
        m.audio.enable_fast_inference()
    return m.eval()


def _classifier(model: Model, settings: Settings, *, fast: bool = False):
    from ..checkpoints import load_audio_classifier

    m = model if isinstance(model, nn.Module) else load_audio_classifier(model, preset=settings.preset)
    if fast and settings.fast_inference:
        m.enable_fast_inference()
    return m.eval()


def _audioset_seconds(model: nn.Module, settings: Settings) -> float:
    if settings.audioset_clip_seconds:
        return float(settings.audioset_clip_seconds)
    cfg = (getattr(model, "checkpoint_metadata", None) or {}).get("config") or {}
    return float(cfg.get("clip_seconds") or 10.0)


def _finetuned_rows(
    table: str, model_name: str, prefix: str, ft: FineTuned, evaluate
) -> tuple[list[dict], list[Figure]]:
    """Accuracy of every trained fold on its test split, and the mean over folds;
    `evaluate(checkpoint, test split, ft)` scores one fold."""
    rows, figures, accs = [], [], []
    dataset = ft.dataset.upper()
    chance = chance_accuracy(len(ft.classes)) if ft.classes else None
    for fold, test in ft.tests.items():
        if fold not in ft.checkpoints:
            continue
        res: ClassificationResult = evaluate(ft.checkpoints[fold], test, ft)
        accs.append(res.accuracy)
        rows.append(row(table, model_name, "fine-tuned", dataset, "accuracy", res.accuracy, fold, res.n, chance=chance))
        figures.append(
            Confusion(
                f"confusion_{prefix}_{ft.dataset}_fold{fold}",
                f"{model_name} {ft.dataset} fold {fold}",
                res.confusion,
                ft.classes,
            )
        )
    rows.append(
        row(
            table,
            model_name,
            "fine-tuned",
            dataset,
            "accuracy",
            float(np.mean(accs)) if accs else None,
            n=len(accs),
            note="" if accs else "not trained",
            chance=chance,
        )
    )
    return rows, figures


# -- the tables --------------------------------------------------------------------------------
def table1_esresnext(
    audioset_models: Union[Mapping[str, Optional[Model]], Model, None],
    audioset_manifest: Optional[pd.DataFrame],
    class_ids: Sequence[str],
    finetuned: Sequence[FineTuned],
    settings: Settings = Settings(),
) -> TableResult:
    """ESResNeXt alone: AudioSet mAP of each of `audioset_models` (label -> an AudioSet
    classifier: the stage-1 checkpoint as "ESResNeXt", and any other given - a shorter-trained
    one, the released ESRNXFBSP.pt - under its own label) over `audioset_manifest` (class order
    `class_ids`), and fine-tuned accuracy of each `FineTuned`."""
    if not isinstance(audioset_models, Mapping):
        audioset_models = {"ESResNeXt": audioset_models}
    rows: list[dict] = []
    for label, src in audioset_models.items():
        if src is not None and audioset_manifest is not None:
            model = _classifier(src, settings, fast=True)
            m, chance = classifier_audioset_map(
                model,
                audioset_manifest,
                list(class_ids),
                clip_seconds=_audioset_seconds(model, settings),
                input_scale=_scale(model, settings),
            )
            rows.append(
                row(
                    "table1",
                    label,
                    "classification",
                    "AudioSet",
                    "mAP",
                    m,
                    n=(audioset_manifest["status"] == "ok").sum(),
                    chance=chance,
                )
            )
        else:
            rows.append(row("table1", label, "classification", "AudioSet", "mAP", None, note="not trained"))
    figures: list[Figure] = []

    def fine_tuned(src, test, ft):
        model = _classifier(src, settings)
        return classifier_classification(
            model, test, ft.dataset, ft.classes, input_scale=_scale(model, settings, ft.dataset)
        )

    for ft in finetuned:
        more, figs = _finetuned_rows("table1", "ESResNeXt", "esresnext", ft, fine_tuned)
        rows += more
        figures += figs
    return TableResult("table1_esresnext", _frame(rows), _protocol(settings), figures)


def table2_audioclip(
    models: Mapping[str, Optional[Model]],
    audioset_manifest: Optional[pd.DataFrame],
    labels: LabelIndex,
    finetuned: Sequence[FineTuned],
    settings: Settings = Settings(),
) -> TableResult:
    """AudioCLIP: AudioSet mAP by text with audio, image and both for each of `models`
    ({"partial": ..., "full": ...}), and accuracy after cooperative fine-tuning (`finetuned`:
    per clip set, fine-tuned from the partial and from the full model, each `FineTuned.start`)."""
    rows: list[dict] = []
    for label, src in models.items():
        name = f"AudioCLIP ({label})"
        if src is None or audioset_manifest is None:
            rows.append(row("table2", name, "classification", "AudioSet", "mAP audio", None, note="not available"))
            continue
        model = _audioclip(src, settings, fast=True)
        emb = embed_audioset(
            model,
            audioset_manifest,
            list(labels.mids),
            list(labels.names),
            clip_seconds=_audioset_seconds(model, settings),
            input_scale=_scale(model, settings),
            template=settings.template,
        )
        chance = chance_classification_map(emb.targets)
        for key, value in audioset_map(emb).items():
            rows.append(
                row("table2", name, "classification", "AudioSet", f"mAP {key}", value, n=emb.clips, chance=chance)
            )
    figures: list[Figure] = []

    def fine_tuned(src, test, ft):
        model = _audioclip(src, settings)
        return audioclip_classification(
            model,
            test,
            ft.dataset,
            ft.classes,
            template=settings.template,
            input_scale=_scale(model, settings, ft.dataset),
        )

    for ft in finetuned:
        more, figs = _finetuned_rows("table2", f"AudioCLIP ({ft.start})", f"audioclip_{ft.start}", ft, fine_tuned)
        rows += more
        figures += figs
    return TableResult("table2_audioclip", _frame(rows), _protocol(settings), figures)


def table3_zero_shot(
    models: Mapping[str, Optional[Model]],
    clipsets: Mapping[str, Optional[pd.DataFrame]],
    settings: Settings = Settings(),
) -> TableResult:
    """Zero-shot accuracy of each of `models` on each clip set (`clipsets`: "esc50"/"us8k" ->
    its usable manifest rows), over all clips and per official fold."""
    rows: list[dict] = []
    loaded = {
        label: (_audioclip(src, settings, fast=True) if src is not None else None) for label, src in models.items()
    }
    for ds_name, df in clipsets.items():
        for label, model in loaded.items():
            name = f"AudioCLIP ({label})"
            if model is None or df is None or df.empty:
                rows.append(row("table3", name, "zero-shot", ds_name.upper(), "accuracy", None, note="not available"))
                continue
            df = df.reset_index(drop=True)
            classes = class_names(df)
            chance = chance_accuracy(len(classes))
            res = audioclip_classification(
                model, df, ds_name, classes, template=settings.template, input_scale=_scale(model, settings, ds_name)
            )
            rows.append(
                row("table3", name, "zero-shot", ds_name.upper(), "accuracy", res.accuracy, n=res.n, chance=chance)
            )
            for fold in sorted(set(df["fold"].tolist())):
                acc, n = res.subset(np.flatnonzero(df["fold"].to_numpy() == fold))
                if n:
                    rows.append(
                        row("table3", name, "zero-shot", ds_name.upper(), "accuracy", acc, fold, n, chance=chance)
                    )
    return TableResult("table3_zero_shot", _frame(rows), _protocol(settings))


def table4_querying(
    models: Mapping[str, Optional[Model]],
    audioset_manifest: Optional[pd.DataFrame],
    labels: LabelIndex,
    clipsets: Mapping[str, Optional[pd.DataFrame]],
    settings: Settings = Settings(),
    *,
    audioset_partition: str = "eval",
) -> TableResult:
    """Querying with each of `models`: ImageNet image by text (with `settings.imagenet_dir`),
    the four AudioSet directions, and audio by text on each clip set."""
    rows: list[dict] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    figures: list[Figure] = []

    def add(name, task, dataset, metrics, n=None, note="not available", chance=None):
        for metric in QUERY_METRICS:
            rows.append(
                row(
                    "table4",
                    name,
                    task,
                    dataset,
                    metric,
                    metrics[metric] if metrics else None,
                    n=n,
                    note="" if metrics else note,
                    chance=chance[metric] if chance else None,
                )
            )

    for label, src in models.items():
        name = f"AudioCLIP ({label})"
        if src is None:
            for task in DIRECTIONS:
                add(name, task, "AudioSet", None)
            for ds_name in clipsets:
                add(name, "audio by text", ds_name.upper(), None)
            continue
        model = _audioclip(src, settings, fast=True)
        if settings.imagenet_dir:
            from .imagenet import imagenet_eval

            res = imagenet_eval(
                model, settings.imagenet_dir, template=settings.template, per_class=settings.imagenet_per_class
            )
            add(name, "image by text", "ImageNet", res["image_by_text"], res["images"], chance=res["chance"])
            rows.append(
                row(
                    "table4",
                    name,
                    "zero-shot",
                    "ImageNet",
                    "accuracy",
                    res["accuracy"],
                    n=res["images"],
                    chance=res["chance_accuracy"],
                )
            )
        if audioset_manifest is not None:
            emb = embed_audioset(
                model,
                audioset_manifest,
                list(labels.mids),
                list(labels.names),
                clip_seconds=_audioset_seconds(model, settings),
                input_scale=_scale(model, settings),
                template=settings.template,
            )
            chance = audioset_querying_chance(emb, settings.query_rule)
            for task, metrics in audioset_querying(emb, settings.query_rule).items():
                add(name, task, "AudioSet", metrics, emb.clips, chance=chance[task])
            curves[f"{label}: audio by text (AudioSet)"] = pr_curve(*audio_by_text_scores(emb, settings.query_rule))
            present = emb.targets.sum(0) > 0
            first = [labels.names[int(t.argmax())] for t in emb.targets]
            figures.append(
                EmbeddingMap(
                    f"embeddings_{label}",
                    f"AudioCLIP ({label}) on AudioSet {audioset_partition}",
                    {"audio": emb.audio.numpy(), "image": emb.image.numpy(), "text": emb.text[present].numpy()},
                    {
                        "audio": first,
                        "image": first,
                        "text": [n for n, keep in zip(labels.names, present.tolist()) if keep],
                    },
                )
            )
        else:
            for task in DIRECTIONS:
                add(name, task, "AudioSet", None)
        for ds_name, df in clipsets.items():
            if df is None or df.empty:
                add(name, "audio by text", ds_name.upper(), None)
                continue
            df = df.reset_index(drop=True)
            emb = embed_clipset(
                model,
                df,
                ds_name,
                class_names(df),
                template=settings.template,
                input_scale=_scale(model, settings, ds_name),
            )
            add(
                name,
                "audio by text",
                ds_name.upper(),
                clipset_audio_by_text(emb),
                len(df),
                chance=chance_retrieval(clipset_relevance(emb)),
            )
    if curves:
        figures.insert(0, PRCurves("pr_audio_by_text", "audio by text, AudioSet", curves))
    imagenet = settings.imagenet_dir or "not configured: set AUDIOCLIP_IMAGENET_DIR (an ImageNet-layout folder)"
    return TableResult(
        "table4_querying",
        _frame(rows),
        _protocol(settings, audioset_partition=audioset_partition, query_rule=settings.query_rule, imagenet=imagenet),
        figures,
    )
