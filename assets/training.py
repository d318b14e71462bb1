"""The training stages (audioclip_core.training) as checkpoint assets (pool `gpu`), tracked in
MLflow. Each asset is thin: its config resolved against a profile, a `StageSpec` assembled by
`training.assemble` from the data root, run by the `launcher` resource (in-process or torchrun),
tracked by the `tracking` resource, its blocking gates checked - and a stage that fails one set
aside (`gates.reject`, the one place that rule lives). The run config: `stage_config.StageConfig`."""

from pathlib import Path
from typing import Optional

import dagster as dg

from audioclip_core.data.clipsets import SPECS
from audioclip_core.layout import DataLayout
from audioclip_core.versions import stage_code_version

from .audioset import audioset_manifest
from .clipsets import FOLD_PARTITIONS, FOLDS
from .gates import QUALITY_GATES
from .gates import check_specs as _checks
from .gates import gates as _gates
from .gates import reject as _reject
from .metadata import each_partition
from .resources import DataRoot, DatasetSources, MlflowTracking, TrainingLauncher
from .shards import CLIPSET_SHARDS, audioset_shards
from .stage_config import StageConfig
from .stage_config import profile as _profile
from .stage_config import train_config as _train_config

GROUP = "training"


def _execute(
    context,
    spec,
    config: StageConfig,
    layout: DataLayout,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
    profile: str,
    partition: Optional[str] = None,
) -> dg.MaterializeResult:
    """Run `spec` through the launcher, tracked; its gates checked; a rejected stage set aside."""
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.stages import require_unchanged_parent

    if config.quality_gates not in QUALITY_GATES:  # before hours of training, not after
        raise ValueError(f"quality_gates must be one of {', '.join(QUALITY_GATES)}, got {config.quality_gates!r}")
    nproc, nnodes = config.nproc_per_node, config.nnodes
    require_unchanged_parent(spec, TrainConfig(**spec.config))  # before anything is tracked
    with tracking.stage_run(layout, context, spec, profile=profile, partition=partition, nproc=nproc) as tracker:
        result = launcher.run_stage(context, spec, nproc=nproc, nnodes=nnodes, on_epoch=tracker.on_epoch)
        links = tracker.finish(result)
    checks = _gates(context, result.history, Path(result.checkpoint), config.quality_gates)
    failed = [c for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
    if failed:
        _reject(result, tracking, layout, spec.mlflow_run_id, failed)
    history, sha = result.history, result.sha256
    registered = _register(context, spec, tracking, layout, links, result) if partition is None else {}
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            "checkpoint": dg.MetadataValue.path(result.checkpoint),
            "sha256": sha,
            "lineage": dg.MetadataValue.json(result.lineage),
            "mlflow_run_id": spec.mlflow_run_id,
            "mlflow_run": dg.MetadataValue.url(links["run"]),
            "epochs": len(history),
            "loss_first_epoch": history[0]["loss"],
            "loss_last_epoch": history[-1]["loss"],
            "skipped_items": len(result.skipped_items),
            **_cost_metadata(history),
            "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else -1,
            **_validation_metadata(result.validation),
            "nproc_per_node": nproc,
            "nnodes": nnodes,
            "manifests": {k: v["sha256"] for k, v in spec.manifests.items()},
            "curves": dg.MetadataValue.url(links["curves"]),
            "curves_file": dg.MetadataValue.path(str(links["curves_file"])),
            "curves_plot": _curves_plot(links["curves_file"]),
            "mlflow_model": dg.MetadataValue.url(links["model"]),
            "model_uri": links["model_uri"],
            **registered,
        },
        data_version=dg.DataVersion(sha[:16]),
    )


def _cost_metadata(history: list[dict]) -> dict:
    """What the training cost per sample and at most in memory (the epochs of this history)."""
    samples = sum(h.get("samples", 0) for h in history)
    seconds = sum(h["samples"] / h["samples_per_s"] for h in history if h.get("samples") and h.get("samples_per_s"))
    peaks = [h["peak_rss_mb"] for h in history if h.get("peak_rss_mb")]
    out = {"seconds_per_sample": round(seconds / samples, 4)} if samples and seconds else {}
    return {**out, **({"peak_rss_mb": max(peaks)} if peaks else {})}


def _validation_metadata(validation) -> dict:
    """A fine-tuning's held-out scores on its page: the epoch kept and the curve as a table."""
    if not validation:
        return {}
    rows = "\n".join(
        f"| {v['epoch']} | {100 * v['accuracy']:.1f} % | {v['loss']:.4f} |"
        + (" kept |" if v["epoch"] == validation.get("kept_epoch") else " |")
        for v in validation.get("scores", [])
    )
    return {
        "kept_epoch": validation.get("kept_epoch"),
        "validation_clips": len(validation.get("clips", [])),
        "validation": dg.MetadataValue.md(
            "Held-out clips of the training folds (the lineage names them); the weights kept are the best "
            f"epoch's ({validation.get('rule', '')}).\n\n| epochs trained | accuracy | loss | |\n|---|---|---|---|\n"
            + rows
        ),
    }


def _register(context, spec, tracking: MlflowTracking, layout: DataLayout, links: dict, result) -> dict:
    """A stage whose model people use (`registry.REGISTERED`) registers its logged model as a new
    version, alias `challenger`, tagged with the Dagster run, the asset's data and code versions
    and the manifest versions it read. Only a stage that passed its gates gets here."""
    from audioclip_core.registry import REGISTERED

    name = REGISTERED.get(spec.name)
    if name is None:
        return {}
    sha = result.sha256
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": spec.name,
        "dagster.data_version": sha[:16],
        "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
        "sha256": sha,
        "git_commit": result.lineage.get("code", {}).get("git_commit", ""),
        **{f"manifest_version.{n}": str(m.get("version") or m["path"]) for n, m in spec.manifests.items()},
    }
    version = tracking.register(layout, name, links["model_uri"], tags)
    # the alias when registered; `model_promotion` may move champion to it later (its metadata says)
    return {"registered_model": f"models:/{name}/{version.version}", "alias_at_registration": "challenger"}


def _curves_plot(path) -> dg.MetadataValue:
    """The training curves shown on the asset page (a small PNG embedded as a data URI: no
    server behind it), not only linked."""
    from audioclip_core.evaluation.plots import embedded_png

    path = Path(path)
    return dg.MetadataValue.md(embedded_png(path, "training curves") if path.is_file() else f"missing: {path}")


def _audioset_stage(
    context,
    stage: str,
    config: StageConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
    upstream: Optional[str],
    name: Optional[str] = None,
    *,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    from audioclip_core.data.manifests import label_index_for
    from audioclip_core.training.assemble import audioset_spec, training_partitions
    from audioclip_core.training.stages import require_initialisation

    layout = data_root.layout
    cfg, profile = _train_config(config, stage, sources, layout)
    partitions = training_partitions(config.audioset_partitions, sources.audioset_partitions(layout), profile)
    spec = audioset_spec(
        layout,
        stage,
        cfg,
        name=name or stage,
        partitions=partitions,
        class_ids=label_index_for(sources.audioset(layout)).mids,
        upstream=upstream,
        init_checkpoint=config.init_checkpoint,
        clip_weights=config.clip_weights,
        imagenet_weights=config.imagenet_weights,
        profile=profile,
        log=context.log.info,
    )
    require_initialisation(spec, cfg)  # before anything is tracked: a paper stage never starts from random silently
    return _execute(context, spec, config, layout, tracking, launcher, profile)


@dg.asset(
    group_name=GROUP,
    deps=[audioset_manifest, audioset_shards],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    code_version=stage_code_version("clip_standin"),
    check_specs=_checks("clip_towers", True, retrieval=True),
    description="CLIP's image and text towers, which stage 2 distils the audio head into. With `clip_weights` "
    "(the paper: OpenAI's CLIP RN50, or CLIP.pt of the AudioCLIP release) that file, loaded strictly "
    "and recorded with its sha256. In the demo profile without it: the DEMO'S STAND-IN FOR CLIP'S "
    "PRE-TRAINING (no CLIP weights can be downloaded), image and text towers trained here "
    "contrastively from random weights on the demo's frame-caption pairs (training stage "
    "clip_standin), with its own checkpoint, lineage and MLflow run.",
)
def clip_towers(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    from audioclip_core.training.builders import verify_clip_weights
    from audioclip_core.training.stages import CLIP_SOURCE, missing_weights
    from audioclip_core.training.towers import publish_towers, towers_record

    layout = data_root.layout
    profile = _profile(config, sources, layout)
    if config.clip_weights or profile != "demo":
        cfg, _ = _train_config(config, "audioclip_partial", sources, layout)  # the towers' preset and init rule
        if config.clip_weights:
            verify_clip_weights(config.clip_weights, cfg.preset)
            record = towers_record("clip_weights", config.clip_weights)
        elif cfg.allow_random_init:
            record = towers_record("random")
        else:
            raise missing_weights("clip_towers", CLIP_SOURCE)
        publish_towers(layout, record)
        note = {"not_trained_here": "the towers come from " + (record["path"] or "random initialisation")}
        return dg.MaterializeResult(
            metadata={"towers": dg.MetadataValue.json(record), "sha256": record["sha256"] or "random"},
            check_results=[
                dg.AssetCheckResult(check_name=c.name, passed=True, metadata=note)
                for c in context.assets_def.check_specs
            ],
            data_version=dg.DataVersion((record["sha256"] or "random")[:16]),
        )
    result = _audioset_stage(
        context, "clip_standin", config, data_root, sources, tracking, None, name="clip_towers", launcher=launcher
    )
    publish_towers(
        layout,
        towers_record(
            "standin",
            str(layout.checkpoint("clip_towers")),
            sha256=result.metadata["sha256"],
            stage="clip_standin",
            note="the demo's stand-in for CLIP's pre-training",
        ),
    )
    return result


@dg.asset(
    group_name=GROUP,
    deps=[audioset_manifest, audioset_shards],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    code_version=stage_code_version("esresnext_audioset"),
    check_specs=_checks("esresnext_audioset", False),
    description="Stage 1: stand-alone ESResNeXt, multi-label BCE over the 527 AudioSet classes.",
)
def esresnext_audioset(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return _audioset_stage(context, "esresnext_audioset", config, data_root, sources, tracking, None, launcher=launcher)


@dg.asset(
    group_name=GROUP,
    deps=[esresnext_audioset, clip_towers, audioset_manifest, audioset_shards],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    code_version=stage_code_version("audioclip_partial"),
    check_specs=_checks("audioclip_partial", True, retrieval=True),
    description="Stage 2: the audio head (from stage 1, fresh projection) trained under the frozen image and "
    "text towers of clip_towers (CLIP's, or the demo's stand-in), its teachers.",
)
def audioclip_partial(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return _audioset_stage(
        context, "audioclip_partial", config, data_root, sources, tracking, "esresnext_audioset", launcher=launcher
    )


@dg.asset(
    group_name=GROUP,
    deps=[audioclip_partial, audioset_manifest, audioset_shards],
    pool="gpu",
    kinds={"pytorch", "mlflow"},
    code_version=stage_code_version("audioclip_full"),
    check_specs=_checks("audioclip_full", True, retrieval=True),
    description="Stage 3: all three heads trained jointly on AudioSet from the partial checkpoint.",
)
def audioclip_full(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return _audioset_stage(
        context, "audioclip_full", config, data_root, sources, tracking, "audioclip_partial", launcher=launcher
    )


def _finetune(context, name, dataset, config, data_root, sources, tracking, launcher, *, upstream, cooperative, fold):
    from audioclip_core.training.assemble import finetune_spec

    layout = data_root.layout
    stage = "audioclip_finetune" if cooperative else "esresnext_finetune"
    cfg, profile = _train_config(config, stage, sources, layout, clipset=dataset)
    spec = finetune_spec(
        layout,
        name,
        dataset,
        int(fold),
        cfg,
        upstream=upstream,
        init_checkpoint=config.init_checkpoint,
        log=context.log.info,
    )
    return _execute(context, spec, config, layout, tracking, launcher, profile, partition=fold)


# a backfill fine-tunes up to five folds per run, one after another (ESC-50: one run, US8K:
# two): a run's start-up (a process, the code location's imports) costs as much as a fold of
# the demo; each fold still has its own checkpoint, lineage and MLflow run
FOLDS_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=5)


def _finetune_asset(name, dataset, upstream_asset, cooperative, description):
    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=FOLD_PARTITIONS[dataset],
        deps=[upstream_asset, FOLDS[dataset], CLIPSET_SHARDS[dataset]],
        pool="gpu",
        kinds={"pytorch", "mlflow"},
        description=description,
        check_specs=_checks(name, cooperative, partitions_def=FOLD_PARTITIONS[dataset]),
        backfill_policy=FOLDS_PER_RUN,
        code_version=stage_code_version("audioclip_finetune" if cooperative else "esresnext_finetune"),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        data_root: DataRoot,
        sources: DatasetSources,
        tracking: MlflowTracking,
        launcher: TrainingLauncher,
    ):
        yield from each_partition(
            context,
            lambda fold: _finetune(
                context,
                name,
                dataset,
                config,
                data_root,
                sources,
                tracking,
                launcher,
                upstream=upstream_asset.key.to_user_string(),
                cooperative=cooperative,
                fold=fold,
            ),
        )

    return _asset


# Stage 4 for every clip set: stand-alone ESResNeXt, and cooperative fine-tuning from the full
# model and - Table 2 reports fine-tuned accuracy after partial AND after full training - from
# the partial model
FINETUNES = (
    [
        (
            f"esresnext_{n}",
            n,
            esresnext_audioset,
            False,
            f"Stage 4: stand-alone ESResNeXt fine-tuned on a fold of {SPECS[n].title} (new classifier).",
        )
        for n in SPECS
    ]
    + [
        (
            f"audioclip_{n}",
            n,
            audioclip_full,
            True,
            f"Stage 4: cooperative fine-tuning on a fold of {SPECS[n].title} (audio head only).",
        )
        for n in SPECS
    ]
    + [
        (
            f"audioclip_partial_{n}",
            n,
            audioclip_partial,
            True,
            f"Stage 4 from the partial model (Table 2's partial rows): cooperative fine-tuning on a fold of "
            f"{SPECS[n].title}.",
        )
        for n in SPECS
    ]
)
finetune_assets = [_finetune_asset(*args) for args in FINETUNES]
globals().update({a.key.to_user_string(): a for a in finetune_assets})  # esresnext_esc50, audioclip_us8k, ...
