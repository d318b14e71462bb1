"""The training stages (audioclip_core.training) as checkpoint assets (pool `gpu`), tracked in
MLflow. Each asset is thin: its config resolved against a profile, a `StageSpec` assembled by
`training.assemble` from the data root, run by the `launcher` resource (in-process or torchrun),
tracked by the `tracking` resource, its blocking gates checked - and a stage that fails one set
aside here (`_reject`, the one place that rule lives)."""

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from audioclip_core.data.clipsets import SPECS
from audioclip_core.layout import DataLayout

from .audioset import audioset_manifest
from .clipsets import FOLD_PARTITIONS, FOLDS
from .gates import check_specs as _checks
from .gates import gates as _gates
from .gates import reject as _reject
from .metadata import each_partition
from .resources import DataRoot, DatasetSources, MlflowTracking, TrainingLauncher
from .shards import CLIPSET_SHARDS, audioset_shards

GROUP = "training"


class StageConfig(dg.Config):
    """Run config of a training stage. Unset values come from the profile: `paper` (the paper's
    values) or `demo` (tiny, for the demo data); the default profile is `demo` on the built-in
    demo data and `paper` otherwise (AUDIOCLIP_TRAIN_PROFILE overrides)."""

    profile: str = ""
    preset: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    gamma: Optional[float] = None
    clip_seconds: Optional[float] = Field(
        default=None,
        description="AudioSet stages; fine-tuning always uses the "
        "clip set's protocol (ESC-50 5 s mono, US8K 4 s stereo)",
    )
    seed: Optional[int] = Field(default=None, description="default: $AUDIOCLIP_SEED (make demo SEED=n), else 0")
    max_steps_per_epoch: Optional[int] = None
    keep_epochs: Optional[list[int]] = Field(
        default=None,
        description="also keep the weights after these many "
        "epochs (Table 1's shorter-trained row); default: the profile's (paper "
        "stage 1: [5], demo: [8])",
    )
    input_scale: Optional[str] = Field(
        default=None,
        description="int16 | minmax | unit; default: the profile's "
        "(int16), and for fine-tuning the clip set's published loader's (ESC-50 "
        "int16, US8K minmax)",
    )
    device: str = "auto"
    init_checkpoint: str = Field(
        default="",
        description="start from this checkpoint (e.g. a released "
        "AudioCLIP-Full-Training.pt) instead of the upstream asset",
    )
    clip_weights: str = Field(default="", description="CLIP.pt or OpenAI RN50.pt for the image/text towers")
    imagenet_weights: str = Field(default="", description="torchvision resnext50_32x4d state dict for stage 1")
    audioset_partitions: list[str] = Field(
        default_factory=list,
        description="AudioSet partitions to train on; "
        "empty: every training partition that has a segment list (all but eval; "
        "the demo's balanced_train)",
    )
    allow_random_init: Optional[bool] = Field(
        default=None,
        description="let stage 1 start without ImageNet weights "
        "and stage 2 without CLIP weights (random towers); the demo profile "
        "sets it, the paper profile refuses",
    )
    allow_changed_parent: bool = Field(
        default=False,
        description="train from the upstream (or init_checkpoint) "
        "checkpoint even when its sha256 differs from its own lineage record (the file "
        "changed after its stage wrote it); by default the stage refuses, naming the "
        "file and both digests",
    )
    nproc_per_node: int = Field(default=1, ge=1, description="> 1: launch torchrun (DDP) through Dagster Pipes")
    nnodes: int = Field(
        default=1,
        ge=1,
        description="> 1: torchrun agents on that many nodes, meeting in a c10d "
        "rendezvous (resource `launcher`; locally, as many agents on this machine)",
    )
    freeze_bn: Optional[bool] = None
    cpu_bf16: bool = Field(default=False, description="bfloat16 autocast on CPU (faster; not bit-reproducible)")
    dtype: str = Field(
        default="float32",
        description="float64: train in double precision (slow; for "
        "exactness checks such as 1 process against torchrun)",
    )


def _profile(cfg: StageConfig, sources: DatasetSources, layout: DataLayout) -> str:
    return (
        cfg.profile
        or os.environ.get("AUDIOCLIP_TRAIN_PROFILE")
        or ("demo" if sources.uses_demo_audioset(layout) else "paper")
    )


def _train_config(
    cfg: StageConfig, stage: str, sources: DatasetSources, layout: DataLayout, clipset: Optional[str] = None
):
    from audioclip_core.training.profiles import resolve

    profile = _profile(cfg, sources, layout)
    return resolve(profile, stage, cfg.model_dump(), clipset=clipset), profile


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

    nproc, nnodes = config.nproc_per_node, config.nnodes
    require_unchanged_parent(spec, TrainConfig(**spec.config))  # before anything is tracked
    with tracking.stage_run(layout, context, spec, profile=profile, partition=partition, nproc=nproc) as tracker:
        result = launcher.run_stage(context, spec, nproc=nproc, nnodes=nnodes, on_epoch=tracker.on_epoch)
        links = tracker.finish(result)
    checks = _gates(context, result.history, Path(result.checkpoint))
    failed = [c for c in checks if not c.passed]
    if failed:
        _reject(result, tracking, layout, spec.mlflow_run_id, failed)
    history, sha = result.history, result.sha256
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
            "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else -1,
            "nproc_per_node": nproc,
            "nnodes": nnodes,
            "manifests": {k: v["sha256"] for k, v in spec.manifests.items()},
            "curves": dg.MetadataValue.url(links["curves"]),
            "curves_file": dg.MetadataValue.path(str(links["curves_file"])),
        },
        data_version=dg.DataVersion(sha[:16]),
    )


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
        check_specs=_checks(name, cooperative),
        backfill_policy=FOLDS_PER_RUN,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        data_root: DataRoot,
        sources: DatasetSources,
        tracking: MlflowTracking,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        return each_partition(
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
