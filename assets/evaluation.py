"""The paper's four evaluation tables, from the trained checkpoints or from released weights."""
import os
import re
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from .audioset import audioset_manifest
from .clipsets import esc50_manifest, us8k_manifest
from .resources import DataRoot, DatasetSources, MlflowTracking
from .training import (audioclip_esc50, audioclip_full, audioclip_partial, audioclip_us8k, esresnext_audioset,
                       esresnext_esc50, esresnext_us8k)

GROUP = "evaluation"
CLIP_SECONDS = {"esc50": 5.0, "us8k": 4.0}
CHANNELS = {"esc50": 1, "us8k": 2}
COLUMNS = ["table", "model", "task", "dataset", "metric", "fold", "value", "n", "note"]


class EvalConfig(dg.Config):
    """Which checkpoints to evaluate and how. Empty checkpoint paths mean the trained assets."""

    partial_checkpoint: str = Field(default="", description="e.g. AudioCLIP-Partial-Training.pt")
    full_checkpoint: str = Field(default="", description="e.g. AudioCLIP-Full-Training.pt")
    preset: str = Field(default="", description="architecture of checkpoint files without metadata "
                                               "(default audioclip-rn50, the released weights')")
    template: str = Field(default="{}", description="prompt template for class names ('{}' = bare, as the original)")
    input_scale: str = Field(default="int16", description="audio scale of the evaluation loaders (the published "
                                                          "ESC-50/US8K protocols feed x32768)")
    audioset_partition: str = "eval"
    audioset_clip_seconds: Optional[float] = None
    imagenet_dir: str = Field(default="", description="ImageNet-layout folder; AUDIOCLIP_IMAGENET_DIR")
    imagenet_per_class: Optional[int] = None
    fast_inference: bool = Field(default=False, description="compile the audio backbone of the AudioSet-evaluated "
                                                           "models (ESResNeXt, AudioCLIP partial/full) with frozen "
                                                           "weights: about 2x the clips/s on a CPU after a ~40 s "
                                                           "compilation per model. Fine-tuned fold models stay eager.")


def _row(table, model, task, dataset, metric, value, fold="mean", n=None, note=""):
    return {"table": table, "model": model, "task": task, "dataset": dataset, "metric": metric, "fold": str(fold),
            "value": None if value is None else float(value), "n": None if n is None else int(n), "note": note}


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "no rows"
    main = df[df["fold"] == "mean"].copy()
    main["value"] = [("%.2f" % (100 * v)) if v is not None and v == v else "—" for v in main["value"]]
    main["cell"] = main["value"] + [f" ({n})" if n else "" for n in main["note"].fillna("")]
    pivot = main.pivot_table(index=["model", "task"], columns=["dataset", "metric"], values="cell", aggfunc="first")
    cols = [" ".join(c) for c in pivot.columns]
    lines = ["| model | task | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (model, task), row in pivot.iterrows():
        lines.append(f"| {model} | {task} | " + " | ".join(str(v) if isinstance(v, str) else "—" for v in row) + " |")
    return "\n".join(lines) + "\n\nValues in %; per-fold figures are in the parquet / DuckDB table."


def _checkpoint(data_root: DataRoot, name: str, fold: Optional[str] = None) -> Optional[Path]:
    base = data_root.path / "checkpoints" / name
    path = (base / f"fold{fold}" / f"{name}.safetensors") if fold else base / f"{name}.safetensors"
    return path if path.is_file() else None


def _clip_seconds(model, default: float) -> float:
    cfg = (getattr(model, "checkpoint_metadata", None) or {}).get("config") or {}
    return float(cfg.get("clip_seconds") or default)


def _prepared(model, config: EvalConfig):
    """`model` with its audio head compiled when `config.fast_inference` (for the models that
    embed a whole AudioSet partition; one compilation per fine-tuned fold would cost more
    than it saves on a fold's few hundred clips). The step's process keeps freed
    activations for reuse either way (audioclip_core.perf)."""
    from audioclip_core.perf import tune_malloc

    tune_malloc()
    if config.fast_inference:
        head = getattr(model, "audio", model)
        head.enable_fast_inference()
    return model


def _audioclip_models(config: EvalConfig, data_root: DataRoot):
    import audioclip_core as ac

    out = {}
    for label, path, asset in (("partial", config.partial_checkpoint, "audioclip_partial"),
                               ("full", config.full_checkpoint, "audioclip_full")):
        p = Path(path) if path else _checkpoint(data_root, asset)
        out[label] = ((_prepared(ac.load_model(p, preset=config.preset or None), config), p)
                      if p is not None else (None, None))
    return out


def _clipset(data_root: DataRoot, name: str):
    path = data_root.path / name / "manifest.parquet"
    if not path.is_file():
        return None, []
    df = pd.read_parquet(path)
    df = df[df["status"] == "ok"]
    classes = [n for _, n in sorted(set(zip(df["class_id"], df["class_name"])))]
    return df, classes


def _fold_tables(data_root: DataRoot, name: str) -> dict[str, pd.DataFrame]:
    folder = data_root.path / name / "folds"
    return {d.name: pd.read_parquet(d / "test.parquet") for d in sorted(folder.iterdir(), key=lambda p: int(p.name))
            if (d / "test.parquet").is_file()} if folder.is_dir() else {}


def _publish(context, name: str, rows: list[dict], data_root: DataRoot, tracking: MlflowTracking,
             images: list[Path], extra_meta: dict) -> dg.MaterializeResult:
    import duckdb

    from audioclip_core.data.io import file_lock, write_parquet

    df = pd.DataFrame(rows, columns=COLUMNS)
    out = data_root.sub("tables") / f"{name}.parquet"
    digest = write_parquet(df, out)
    with file_lock(data_root.catalog.with_suffix(".lock")):
        con = duckdb.connect(str(data_root.catalog))
        try:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet('{out}')")
        finally:
            con.close()
    md = _markdown(df)
    (out.with_suffix(".md")).write_text(f"# {name}\n\n{md}\n", encoding="utf-8")
    with tracking.start_run(data_root.path, name, {"dagster.run_id": context.run_id, "dagster.asset_key": name,
                                                   "kind": "evaluation"}) as run:
        import mlflow

        for r in df[df["fold"] == "mean"].itertuples():
            if r.value is not None and r.value == r.value:
                key = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{r.model}.{r.task}.{r.dataset}.{r.metric}").strip("_")
                mlflow.log_metric(key.replace("@", "_at_")[:250], r.value)
        for art in [out, out.with_suffix(".md"), *images]:
            mlflow.log_artifact(str(art))
        link = tracking.run_link(run)
    meta = {"table": dg.MetadataValue.md(md), "rows": len(df), "path": dg.MetadataValue.path(str(out)),
            "duckdb_table": name, "sha256": digest, "mlflow_run": dg.MetadataValue.url(link), **extra_meta}
    for i, img in enumerate(images[:6]):
        meta[f"plot_{i}"] = dg.MetadataValue.md(f"![{img.stem}]({img.as_uri()})")
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(digest[:16]))


def _finetuned_rows(table: str, model_name: str, prefix: str, data_root: DataRoot, config: EvalConfig,
                    evaluate) -> tuple[list[dict], list[Path]]:
    """Accuracy of every trained fold of `<prefix>_esc50` / `<prefix>_us8k` on its test split, and the mean.
    `evaluate(path, test, classes, ds_name)` returns a ClassificationResult."""
    import numpy as np

    from audioclip_core.evaluation.plots import plot_confusion

    rows, images = [], []
    for ds_name in ("esc50", "us8k"):
        asset = f"{prefix}_{ds_name}"
        _, classes = _clipset(data_root, ds_name)
        accs = []
        for fold, test in _fold_tables(data_root, ds_name).items():
            path = _checkpoint(data_root, asset, fold)
            if path is None:
                continue
            res = evaluate(path, test, classes, ds_name)
            accs.append(res.accuracy)
            rows.append(_row(table, model_name, "fine-tuned", ds_name.upper(), "accuracy", res.accuracy, fold, res.n))
            images.append(plot_confusion(res.confusion, classes, data_root.sub("tables", "plots") /
                                         f"confusion_{asset}_fold{fold}.png", f"{model_name} {ds_name} fold {fold}"))
        rows.append(_row(table, model_name, "fine-tuned", ds_name.upper(), "accuracy",
                         float(np.mean(accs)) if accs else None, n=len(accs), note="" if accs else "not trained"))
    return rows, images


def _audioset_eval_manifest(data_root: DataRoot, config: EvalConfig) -> Optional[pd.DataFrame]:
    path = data_root.path / "audioset" / "manifests" / f"{config.audioset_partition}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


@dg.asset(group_name=GROUP, deps=[esresnext_audioset, esresnext_esc50, esresnext_us8k, audioset_manifest],
          kinds={"parquet", "duckdb", "mlflow"},
          description="Table 1: ESResNeXt alone - AudioSet mAP; fine-tuned ESC-50 and US8K accuracy per fold and mean.")
def table1_esresnext(context: dg.AssetExecutionContext, config: EvalConfig, data_root: DataRoot,
                     sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    import audioclip_core as ac
    from audioclip_core.data.audioset_steps import label_index_for
    from audioclip_core.evaluation import core

    rows, images = [], []
    ckpt = _checkpoint(data_root, "esresnext_audioset")
    manifest = _audioset_eval_manifest(data_root, config)
    if ckpt is not None and manifest is not None:
        model = _prepared(ac.load_audio_classifier(ckpt), config)
        labels = label_index_for(sources.audioset(data_root.path))
        m = core.classifier_audioset_map(model, manifest, list(labels.mids),
                                         clip_seconds=config.audioset_clip_seconds or _clip_seconds(model, 10.0),
                                         input_scale=config.input_scale)
        rows.append(_row("table1", "ESResNeXt", "classification", "AudioSet", "mAP", m, n=(manifest["status"] == "ok").sum()))
    else:
        rows.append(_row("table1", "ESResNeXt", "classification", "AudioSet", "mAP", None, note="not trained"))
    def evaluate(path, test, classes, ds_name):
        return core.classifier_classification(ac.load_audio_classifier(path), test, classes,
                                              clip_seconds=CLIP_SECONDS[ds_name], channels=CHANNELS[ds_name],
                                              input_scale=config.input_scale)

    more, images = _finetuned_rows("table1", "ESResNeXt", "esresnext", data_root, config, evaluate)
    rows += more
    return _publish(context, "table1_esresnext", rows, data_root, tracking, images, {})


@dg.asset(group_name=GROUP, deps=[audioclip_partial, audioclip_full, audioclip_esc50, audioclip_us8k, audioset_manifest],
          kinds={"parquet", "duckdb", "mlflow"},
          description="Table 2: AudioCLIP after partial and full training - AudioSet mAP (audio, image, both); "
                      "fine-tuned ESC-50 / US8K accuracy.")
def table2_audioclip(context: dg.AssetExecutionContext, config: EvalConfig, data_root: DataRoot,
                     sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    import audioclip_core as ac
    from audioclip_core.data.audioset_steps import label_index_for
    from audioclip_core.evaluation import core

    rows, images = [], []
    manifest = _audioset_eval_manifest(data_root, config)
    labels = label_index_for(sources.audioset(data_root.path))
    for label, (model, path) in _audioclip_models(config, data_root).items():
        name = f"AudioCLIP ({label})"
        if model is None or manifest is None:
            rows.append(_row("table2", name, "classification", "AudioSet", "mAP audio", None, note="not available"))
            continue
        res = core.audioclip_audioset(model, manifest, list(labels.mids), list(labels.names),
                                      clip_seconds=config.audioset_clip_seconds or _clip_seconds(model, 10.0),
                                      input_scale=config.input_scale, template=config.template)
        for key, metric in (("map_audio", "mAP audio"), ("map_image", "mAP image"), ("map_both", "mAP both")):
            rows.append(_row("table2", name, "classification", "AudioSet", metric, res[key], n=res["clips"]))
    def evaluate(path, test, classes, ds_name):
        model = ac.load_model(path, preset=config.preset or None)
        return core.audioclip_classification(model, test, classes,
                                             template=config.template, clip_seconds=CLIP_SECONDS[ds_name],
                                             channels=CHANNELS[ds_name], input_scale=config.input_scale)

    more, images = _finetuned_rows("table2", "AudioCLIP (full)", "audioclip", data_root, config, evaluate)
    rows += more
    return _publish(context, "table2_audioclip", rows, data_root, tracking, images, {})


@dg.asset(group_name=GROUP, deps=[audioclip_partial, audioclip_full, esc50_manifest, us8k_manifest],
          kinds={"parquet", "duckdb", "mlflow"},
          description="Table 3: zero-shot ESC-50 and US8K accuracy without training on them (all clips, and per fold).")
def table3_zero_shot(context: dg.AssetExecutionContext, config: EvalConfig, data_root: DataRoot,
                     tracking: MlflowTracking) -> dg.MaterializeResult:
    from audioclip_core.evaluation import core

    rows = []
    models = _audioclip_models(config, data_root)
    for ds_name in ("esc50", "us8k"):
        df, classes = _clipset(data_root, ds_name)
        for label, (model, path) in models.items():
            name = f"AudioCLIP ({label})"
            if model is None or df is None or df.empty:
                rows.append(_row("table3", name, "zero-shot", ds_name.upper(), "accuracy", None, note="not available"))
                continue
            res = core.audioclip_classification(model, df, classes, template=config.template,
                                                clip_seconds=CLIP_SECONDS[ds_name], channels=CHANNELS[ds_name],
                                                input_scale=config.input_scale)
            rows.append(_row("table3", name, "zero-shot", ds_name.upper(), "accuracy", res.accuracy, n=res.n))
            folds = df["fold"].to_numpy()
            for fold in sorted(set(folds)):
                sel = [i for i, t in enumerate(res.targets) if folds[i] == fold] if len(res.targets) == len(df) else []
                if sel:
                    acc = sum(res.predictions[i] == res.targets[i] for i in sel) / len(sel)
                    rows.append(_row("table3", name, "zero-shot", ds_name.upper(), "accuracy", acc, fold, len(sel)))
    return _publish(context, "table3_zero_shot", rows, data_root, tracking, [], {"template": config.template})


@dg.asset(group_name=GROUP, deps=[audioclip_partial, audioclip_full, audioset_manifest, esc50_manifest, us8k_manifest],
          kinds={"parquet", "duckdb", "mlflow"},
          description="Table 4: querying - P@1, R@1, mAP for image by text (ImageNet, AudioSet), audio by text "
                      "(AudioSet, US8K, ESC-50), audio by image and image by audio (AudioSet).")
def table4_querying(context: dg.AssetExecutionContext, config: EvalConfig, data_root: DataRoot,
                    sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    from audioclip_core.data.audioset_steps import label_index_for
    from audioclip_core.evaluation import core
    from audioclip_core.evaluation.plots import plot_embedding_map, plot_pr_curves

    rows, images, curves = [], [], {}
    manifest = _audioset_eval_manifest(data_root, config)
    labels = label_index_for(sources.audioset(data_root.path))
    imagenet = config.imagenet_dir or os.environ.get("AUDIOCLIP_IMAGENET_DIR", "")
    plots = data_root.sub("tables", "plots")

    def add(name, task, dataset, metrics, n=None):
        for metric in ("P@1", "R@1", "mAP"):
            rows.append(_row("table4", name, task, dataset, metric, metrics[metric] if metrics else None, n=n,
                             note="" if metrics else "not available"))

    for label, (model, path) in _audioclip_models(config, data_root).items():
        name = f"AudioCLIP ({label})"
        if model is None:
            for task, ds in (("image by text", "AudioSet"), ("audio by text", "AudioSet"), ("audio by image", "AudioSet"),
                             ("image by audio", "AudioSet"), ("audio by text", "ESC50"), ("audio by text", "US8K")):
                add(name, task, ds, None)
            continue
        if imagenet:
            res = core.imagenet_eval(model, imagenet, template=config.template, per_class=config.imagenet_per_class)
            add(name, "image by text", "ImageNet", res["image_by_text"], res["images"])
            rows.append(_row("table4", name, "zero-shot", "ImageNet", "accuracy", res["accuracy"], n=res["images"]))
        else:
            for metric in ("P@1", "R@1", "mAP"):
                rows.append(_row("table4", name, "image by text", "ImageNet", metric, None,
                                 note="not configured: set AUDIOCLIP_IMAGENET_DIR"))
        if manifest is not None:
            res = core.audioclip_audioset(model, manifest, list(labels.mids), list(labels.names),
                                          clip_seconds=config.audioset_clip_seconds or _clip_seconds(model, 10.0),
                                          input_scale=config.input_scale, template=config.template)
            for task in ("image by text", "audio by text", "audio by image", "image by audio"):
                add(name, task, "AudioSet", res[task.replace(" ", "_")], res["clips"])
            curves[f"{label}: audio by text (AudioSet)"] = core.pr_curve(*res["_scores"]["audio_by_text"])
            e = res["_embeddings"]
            present = e["targets"].sum(0) > 0
            names_present = [n for n, keep in zip(labels.names, present.tolist()) if keep]
            first = [labels.names[int(t.argmax())] for t in e["targets"]]
            images.append(plot_embedding_map(
                {"audio": e["audio"].numpy(), "image": e["image"].numpy(), "text": e["text"][present].numpy()},
                {"audio": first, "image": first, "text": names_present},
                plots / f"embeddings_{label}.png", f"AudioCLIP ({label}) on AudioSet {config.audioset_partition}"))
        for ds_name in ("esc50", "us8k"):
            df, classes = _clipset(data_root, ds_name)
            if df is None or df.empty:
                add(name, "audio by text", ds_name.upper(), None)
                continue
            res = core.audio_by_text_clipset(model, df, classes, template=config.template,
                                             clip_seconds=CLIP_SECONDS[ds_name], channels=CHANNELS[ds_name],
                                             input_scale=config.input_scale)
            add(name, "audio by text", ds_name.upper(), res, len(df))
    if curves:
        images.insert(0, plot_pr_curves(curves, plots / "pr_audio_by_text.png", "audio by text, AudioSet"))
    return _publish(context, "table4_querying", rows, data_root, tracking, images, {"template": config.template})
