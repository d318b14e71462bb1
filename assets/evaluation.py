"""The paper's four evaluation tables (audioclip_core.evaluation.tables), from the trained
checkpoints or from released weights, published as parquet, DuckDB, markdown and MLflow."""

import os
import re
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from audioclip_core.layout import DataLayout
from audioclip_core.versions import evaluation_code_version

from .audioset import audioset_manifest
from .clipsets import MANIFESTS
from .resources import DataRoot, DatasetSources, MlflowTracking
from .training import (
    audioclip_esc50,
    audioclip_full,
    audioclip_partial,
    audioclip_partial_esc50,
    audioclip_partial_us8k,
    audioclip_us8k,
    esresnext_audioset,
    esresnext_esc50,
    esresnext_us8k,
)

GROUP = "evaluation"
KINDS = {"parquet", "duckdb", "mlflow"}


def _tables():
    """audioclip_core.evaluation.tables, imported when a table is built: it brings torch and
    open_clip, which every other run of the code location does not need to load."""
    from audioclip_core.evaluation import tables

    return tables


class EvalConfig(dg.Config):
    """Which checkpoints to evaluate and how. Empty checkpoint paths mean the trained assets."""

    partial_checkpoint: str = Field(default="", description="e.g. AudioCLIP-Partial-Training.pt")
    full_checkpoint: str = Field(default="", description="e.g. AudioCLIP-Full-Training.pt")
    preset: str = Field(
        default="",
        description="architecture of checkpoint files without metadata (default audioclip-rn50, the released weights')",
    )
    esresnext_checkpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Table 1: more ESResNeXt AudioSet classifiers, label -> file (e.g. "
        "{'ESResNeXt (released)': 'ESRNXFBSP.pt', 'ESResNeXt (5 epochs)': '...safetensors'}); each gets a row",
    )
    include_trained: bool = Field(
        default=True,
        description="Table 1: a row for the trained esresnext_audioset checkpoint (evaluate_released turns it off)",
    )
    template: str = Field(default="{}", description="prompt template for class names ('{}' = bare, as the original)")
    input_scale: str = Field(
        default="",
        description="int16 | minmax | unit for every model and set; empty: the "
        "checkpoint's own, else the dataset's published loader (ESC-50 int16, US8K minmax), "
        "else int16 - the rule `audioclip classify` applies",
    )
    query_rule: str = Field(
        default="same_labels",
        description="AudioSet querying relevance: same_labels (the "
        "paper: text queries are the clips' label sets, relevant = the same set) or any_label",
    )
    audioset_partition: str = "eval"
    audioset_clip_seconds: Optional[float] = None
    imagenet_dir: str = Field(default="", description="ImageNet-layout folder; AUDIOCLIP_IMAGENET_DIR")
    imagenet_per_class: Optional[int] = None
    fast_inference: bool = Field(
        default=False,
        description="compile the audio backbone of the AudioSet-evaluated "
        "models (ESResNeXt, AudioCLIP partial/full) with frozen "
        "weights: about 2x the clips/s on a CPU after a ~40 s "
        "compilation per model. Fine-tuned fold models stay eager.",
    )

    def settings(self):
        return _tables().Settings(
            template=self.template,
            input_scale=self.input_scale or None,
            query_rule=self.query_rule,
            preset=self.preset or None,
            audioset_clip_seconds=self.audioset_clip_seconds,
            fast_inference=self.fast_inference,
            imagenet_dir=self.imagenet_dir or os.environ.get("AUDIOCLIP_IMAGENET_DIR") or None,
            imagenet_per_class=self.imagenet_per_class,
        )

    def audioclip_models(self, layout: DataLayout) -> dict:
        return {
            "partial": self.partial_checkpoint or _tables().existing(layout.checkpoint("audioclip_partial")),
            "full": self.full_checkpoint or _tables().existing(layout.checkpoint("audioclip_full")),
        }

    def esresnext_models(self, layout: DataLayout) -> dict:
        """Table 1's AudioSet classifiers: the trained stage and its kept shorter-trained weights
        (`keep_epochs`, e.g. the paper's 5 epochs against 30), then every checkpoint given."""
        out = {}
        if self.include_trained:
            out["ESResNeXt"] = _tables().existing(layout.checkpoint("esresnext_audioset"))
            for epochs, path in layout.snapshots("esresnext_audioset").items():
                out[f"ESResNeXt ({epochs} epochs)"] = path
        return {**out, **self.esresnext_checkpoints}


def _labels(sources: DatasetSources, layout: DataLayout):
    from audioclip_core.data.manifests import label_index_for

    return label_index_for(sources.audioset(layout))


def _layout(data_root: DataRoot) -> DataLayout:
    """The data layout of a table step; the step's process embeds whole partitions, so malloc
    keeps freed activations for reuse (audioclip_core/perf.py; AUDIOCLIP_MALLOC_TUNING=0 stops it)."""
    from audioclip_core.perf import tune_malloc

    tune_malloc()
    return data_root.layout


def _clipsets(layout: DataLayout) -> dict:
    return {name: _tables().clipset_table(layout, name) for name in _tables().CLIPSETS}


def _audioclip_labels(config: EvalConfig, layout: DataLayout) -> dict:
    """Row model name -> checkpoint of the AudioCLIP models a table evaluates."""
    return {f"AudioCLIP ({k})": v for k, v in config.audioclip_models(layout).items()}


def _run_tags(context, name: str) -> dict:
    from audioclip_core.lineage import code_version

    code = code_version()
    return {
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": name,
        "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
        "kind": "evaluation",
        "unit": "percent",
        "git_commit": code["git_commit"],
        "git_dirty": str(code["git_dirty"]),
    }


def _params(protocol: dict, models: Optional[dict]) -> dict:
    """The run's parameters: the protocol's scalar settings and the checkpoint of each model."""
    from .resources.tracking import mlflow_name

    out = {k: v for k, v in (protocol or {}).items() if isinstance(v, (str, int, float, bool)) and v != ""}
    out.update({f"checkpoint {label}": str(path) for label, path in (models or {}).items() if path})
    return {mlflow_name(k)[:250]: str(v)[:6000] for k, v in out.items()}


def _publish(
    context,
    result,
    layout: DataLayout,
    tracking: MlflowTracking,
    models: Optional[dict] = None,
    audioset_partition: str = "eval",
) -> dg.MaterializeResult:
    """Write a table (parquet, DuckDB, markdown, figures) and track it in MLflow: its figures as
    metrics against the logged models of `models` (row model name -> checkpoint file) and the
    evaluation manifests they were measured on."""
    from audioclip_core.data.catalog import publish_table
    from audioclip_core.evaluation.plots import render_figures
    from audioclip_core.evaluation.report import render_markdown
    from audioclip_core.files import atomic_write, write_parquet

    name, df = result.name, result.rows
    out = layout.table(name)
    digest = write_parquet(df, out)
    publish_table(layout, name, out)
    md = render_markdown(df, result.protocol)
    with atomic_write(layout.table(name, ".md")) as tmp:
        tmp.write_text(f"# {name}\n\n{md}\n", encoding="utf-8")
    images = render_figures(result.figures, layout.plots_dir)
    with tracking.start_run(layout, name, _run_tags(context, name)) as run:
        import mlflow

        from audioclip_core.evaluation.promotion import evaluation_data

        data = evaluation_data(layout, audioset_partition)
        datasets = {}
        for ds_name, d in data.items():
            datasets[ds_name] = tracking.log_manifest(Path(d["version"]), ds_name, d["sha256"], context="evaluation")
        model_ids = {label: tracking.model_id_for(layout, path) for label, path in (models or {}).items()}
        mlflow.log_params(_params(result.protocol, models))
        logged = tracking.log_figures(df, model_ids={k: v for k, v in model_ids.items() if v}, datasets=datasets)
        mlflow.log_dict(result.protocol, "protocol.json")
        for art in [out, layout.table(name, ".md"), *images]:
            mlflow.log_artifact(str(art))
        link = tracking.run_link(run)
    meta = {
        "table": dg.MetadataValue.md(md),
        "rows": len(df),
        "path": dg.MetadataValue.path(str(out)),
        "duckdb_table": name,
        "sha256": digest,
        "mlflow_run": dg.MetadataValue.url(link),
        "mlflow_figures": logged,
        "evaluation_data": dg.MetadataValue.json({k: v["sha256"] for k, v in data.items()}),
        "protocol": dg.MetadataValue.json(result.protocol),
    }
    meta.update(figure_metadata(name, df, images, layout.plots_dir))
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(digest[:16]))


def _group(stem: str) -> str:
    """`confusion_<model>_<dataset>_fold<k>` -> `<model>_<dataset>`: one grid per model and data set."""
    return re.sub(r"_fold\d+$", "", stem.removeprefix("confusion_"))


def _fold_number(path) -> int:
    found = re.search(r"_fold(\d+)$", path.stem)
    return int(found.group(1)) if found else 0


def figure_metadata(name: str, df, images: list, folder) -> dict:
    """The table's figures where a person looks, with nothing to serve them: each one a small PNG
    embedded in the metadata (a data URI), so the asset page shows it. A summary bar chart of the
    table's mean results (the one figure of Table 3); every confusion matrix - one per model, data
    set and fold - on a grid per model and data set, with the count and the files' folder; the
    other figures (PR curves, embedding maps) one by one. Full-size PNGs stay in `folder` (and in
    the MLflow run)."""
    from pathlib import Path

    from audioclip_core.evaluation.plots import contact_sheet, embedded_png, plot_table_summary

    folder = Path(folder)
    meta: dict = {"plots_folder": dg.MetadataValue.path(str(folder))}
    summary = plot_table_summary(df, folder / f"{name}_summary.png", f"{name}: mean results (bars) and chance (|)")
    if summary is not None:
        meta["summary_plot"] = dg.MetadataValue.md(embedded_png(summary, f"{name} summary", max_bytes=60_000))
    confusions = [p for p in images if p.stem.startswith("confusion_")]
    groups: dict[str, list] = {}
    for p in confusions:
        groups.setdefault(_group(p.stem), []).append(p)
    if confusions:
        lines = [
            f"**{len(confusions)} confusion matrices** (one per model, data set and fold) in "
            f"`{folder}`, as `confusion_<model>_<dataset>_fold<k>.png`; "
            f"{len(groups)} grid(s) below, one per model and data set.",
            "",
        ]
        for group, paths in groups.items():
            sheet = contact_sheet(sorted(paths, key=_fold_number), folder / f"{name}_grid_{group}.png", columns=5)
            lines += [
                f"### {group}: {len(paths)} fold(s)",
                "",
                f"full size: `{sheet}`",
                "",
                embedded_png(sheet, f"confusion {group}", max_bytes=60_000),
                "",
            ]
        meta["confusion_matrices"] = dg.MetadataValue.md("\n".join(lines))
    for p in images:
        if p not in confusions:
            meta[f"plot_{p.stem}"] = dg.MetadataValue.md(embedded_png(p, p.stem, max_bytes=60_000))
    return meta


@dg.asset(
    group_name=GROUP,
    deps=[esresnext_audioset, esresnext_esc50, esresnext_us8k, audioset_manifest],
    code_version=evaluation_code_version("table1_esresnext"),
    kinds=KINDS,
    description="Table 1: ESResNeXt alone - AudioSet mAP of the trained stage and of every checkpoint given "
    "(esresnext_checkpoints: a shorter-trained one, the released ESRNXFBSP.pt); fine-tuned ESC-50 "
    "and US8K accuracy per fold and mean.",
)
def table1_esresnext(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
) -> dg.MaterializeResult:
    layout, t = _layout(data_root), _tables()
    result = t.table1_esresnext(
        config.esresnext_models(layout),
        t.audioset_table(layout, config.audioset_partition),
        _labels(sources, layout).mids,
        [t.finetuned_from_layout(layout, f"esresnext_{n}", n) for n in t.CLIPSETS],
        config.settings(),
    )
    return _publish(context, result, layout, tracking, config.esresnext_models(layout), config.audioset_partition)


@dg.asset(
    group_name=GROUP,
    deps=[
        audioclip_partial,
        audioclip_full,
        audioclip_esc50,
        audioclip_us8k,
        audioclip_partial_esc50,
        audioclip_partial_us8k,
        audioset_manifest,
    ],
    code_version=evaluation_code_version("table2_audioclip"),
    kinds=KINDS,
    description="Table 2: AudioCLIP after partial and full training - AudioSet mAP (audio, image, "
    "both); ESC-50 / US8K accuracy after cooperative fine-tuning from each.",
)
def table2_audioclip(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
) -> dg.MaterializeResult:
    layout, t = _layout(data_root), _tables()
    result = t.table2_audioclip(
        config.audioclip_models(layout),
        t.audioset_table(layout, config.audioset_partition),
        _labels(sources, layout),
        [
            t.finetuned_from_layout(layout, t.finetune_asset(start, n), n, start)
            for start in ("partial", "full")
            for n in t.CLIPSETS
        ],
        config.settings(),
    )
    return _publish(context, result, layout, tracking, _audioclip_labels(config, layout), config.audioset_partition)


@dg.asset(
    group_name=GROUP,
    deps=[audioclip_partial, audioclip_full, *MANIFESTS.values()],
    code_version=evaluation_code_version("table3_zero_shot"),
    kinds=KINDS,
    description="Table 3: zero-shot ESC-50 and US8K accuracy without training on them (all clips, and per fold).",
)
def table3_zero_shot(
    context: dg.AssetExecutionContext, config: EvalConfig, data_root: DataRoot, tracking: MlflowTracking
) -> dg.MaterializeResult:
    layout, t = _layout(data_root), _tables()
    result = t.table3_zero_shot(config.audioclip_models(layout), _clipsets(layout), config.settings())
    return _publish(context, result, layout, tracking, _audioclip_labels(config, layout), config.audioset_partition)


@dg.asset(
    group_name=GROUP,
    deps=[audioclip_partial, audioclip_full, audioset_manifest, *MANIFESTS.values()],
    code_version=evaluation_code_version("table4_querying"),
    kinds=KINDS,
    description="Table 4: querying - P@1, R@1, mAP for image by text (ImageNet, AudioSet), audio "
    "by text (AudioSet, US8K, ESC-50), audio by image and image by audio (AudioSet).",
)
def table4_querying(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
) -> dg.MaterializeResult:
    layout, t = _layout(data_root), _tables()
    result = t.table4_querying(
        config.audioclip_models(layout),
        t.audioset_table(layout, config.audioset_partition),
        _labels(sources, layout),
        _clipsets(layout),
        config.settings(),
        audioset_partition=config.audioset_partition,
    )
    return _publish(context, result, layout, tracking, _audioclip_labels(config, layout), config.audioset_partition)
