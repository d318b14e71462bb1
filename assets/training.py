"""The four training stages as checkpoint assets (pool `gpu`), tracked in MLflow."""
import os
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from .clipsets import esc50_fold_partitions, esc50_folds, us8k_fold_partitions, us8k_folds
from .audioset import audioset_manifest
from .resources import DataRoot, DatasetSources, MlflowTracking

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
    clip_seconds: Optional[float] = None
    seed: int = 0
    max_steps_per_epoch: Optional[int] = None
    input_scale: str = "int16"
    device: str = "auto"
    init_checkpoint: str = Field(default="", description="start from this checkpoint (e.g. a released "
                                 "AudioCLIP-Full-Training.pt) instead of the upstream asset")
    clip_weights: str = Field(default="", description="CLIP.pt or OpenAI RN50.pt for the image/text towers")
    imagenet_weights: str = Field(default="", description="torchvision resnext50_32x4d state dict for stage 1")
    audioset_partitions: list[str] = Field(default_factory=lambda: ["balanced_train"])


def _train_config(cfg: StageConfig, stage: str, kind: str, sources: DatasetSources, data_root: DataRoot):
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.profiles import profile_values

    profile = cfg.profile or os.environ.get("AUDIOCLIP_TRAIN_PROFILE") or (
        "demo" if sources.uses_demo_audioset(data_root.path) else "paper")
    values = profile_values(profile, kind)
    for key in ("preset", "epochs", "batch_size", "lr", "gamma", "clip_seconds"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    return TrainConfig(stage=stage, seed=cfg.seed, max_steps_per_epoch=cfg.max_steps_per_epoch,
                       input_scale=cfg.input_scale, device=cfg.device, **values), profile


def _ckpt_dir(data_root: DataRoot, name: str, partition: Optional[str] = None) -> Path:
    return data_root.sub("checkpoints", name, *( [f"fold{partition}"] if partition else []))


def _upstream(data_root: DataRoot, name: str) -> Path:
    path = data_root.path / "checkpoints" / name / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint {path} not found: materialise {name} first, or set "
                                "init_checkpoint to start from a released checkpoint")
    return path


def _parent(path: Path, stage: str) -> dict:
    from audioclip_core.data.io import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "stage": stage}


def _run(context, run, data_root: DataRoot, tracking: MlflowTracking, profile: str) -> dg.MaterializeResult:
    from audioclip_core.evaluation.plots import plot_history
    from audioclip_core.training.run import run_stage

    partition = context.partition_key if context.has_partition_key else None
    tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.partition": partition or "", "stage": run.name, "profile": profile}
    from audioclip_core.lineage import code_version

    code = code_version()
    tags.update({"git_commit": code["git_commit"], "git_dirty": str(code["git_dirty"])})
    run.dagster = {"run_id": context.run_id, "asset_key": context.asset_key.to_user_string(), "partition": partition}
    with tracking.start_run(data_root.path, f"{run.name}" + (f"-fold{partition}" if partition else ""), tags) as mrun:
        import mlflow

        mlflow.log_params({k: v for k, v in run.config.to_dict().items() if k != "extra"})
        for name, m in run.manifests.items():
            tracking.log_manifest(Path(m["path"]), name, m["sha256"])
        if run.parent:
            mlflow.log_param("parent_sha256", run.parent["sha256"])

        def on_epoch(epoch, metrics):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)

        try:
            out = run_stage(run, on_epoch=on_epoch, mlflow_run_id=mrun.info.run_id, log=context.log.info)
        except Exception as exc:
            mlflow.set_tag("failure", str(exc)[:5000])
            raise
        if out.result.resumed_from is not None:
            for h in out.result.history[: out.result.resumed_from + 1]:
                on_epoch(h["epoch"], h)
        curve = plot_history(out.result.history, run.workdir / f"{run.name}.curves.png", title=run.name)
        for art in (out.checkpoint, out.lineage_path, curve) + ((out.official,) if out.official else ()):
            mlflow.log_artifact(str(art))
        mlflow.log_dict(run.config.to_dict(), "config.json")
        link = tracking.run_link(mrun)
    history = out.result.history
    first, last = history[0]["loss"], history[-1]["loss"]
    sha = out.lineage["checkpoint"]["sha256"]
    return dg.MaterializeResult(
        metadata={"checkpoint": dg.MetadataValue.path(str(out.checkpoint)), "sha256": sha,
                  "lineage": dg.MetadataValue.json(out.lineage), "mlflow_run_id": mrun.info.run_id,
                  "mlflow_run": dg.MetadataValue.url(link), "epochs": len(history), "loss_first_epoch": first,
                  "loss_last_epoch": last, "skipped_items": len(out.result.skipped_items),
                  "resumed_from_epoch": out.result.resumed_from if out.result.resumed_from is not None else -1,
                  "manifests": {k: v["sha256"] for k, v in run.manifests.items()},
                  "curves": dg.MetadataValue.md(f"![curves]({curve.as_uri()})")},
        data_version=dg.DataVersion(sha[:16]))


def _audioset_manifests(data_root: DataRoot, partitions: list[str]):
    from audioclip_core.training.run import manifest_entry

    dfs, entries = [], {}
    for p in partitions:
        path = data_root.path / "audioset" / "manifests" / f"{p}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"AudioSet manifest {path} missing: materialise audioset_manifest[{p}] first")
        df = pd.read_parquet(path)
        dfs.append(df)
        entries[f"audioset_{p}"] = manifest_entry(path, (df["status"] == "ok").sum())
    return dfs, entries


@dg.asset(group_name=GROUP, deps=[audioset_manifest], pool="gpu", kinds={"pytorch", "mlflow"},
          description="Stage 1: stand-alone ESResNeXt, multi-label BCE over the 527 AudioSet classes.")
def esresnext_audioset(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                       sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    from audioclip_core.data.audioset_steps import label_index_for
    from audioclip_core.training import stages
    from audioclip_core.training.run import StageRun

    cfg, profile = _train_config(config, "esresnext_audioset", "audioset", sources, data_root)
    labels = label_index_for(sources.audioset(data_root.path))
    dfs, manifests = _audioset_manifests(data_root, config.audioset_partitions)
    model = stages.build_classifier(cfg, len(labels.mids), init=config.init_checkpoint or None,
                                    imagenet=config.imagenet_weights or None)
    ds = stages.audioset_dataset(dfs, list(labels.mids), cfg, with_image=False)
    run = StageRun("esresnext_audioset", cfg, model, ds, stages.classifier_step,
                   _ckpt_dir(data_root, "esresnext_audioset"), manifests,
                   parent=_parent(Path(config.init_checkpoint), "released") if config.init_checkpoint else None)
    return _run(context, run, data_root, tracking, profile)


def _audioclip_stage(context, name, config, data_root, sources, tracking, *, upstream, partial: bool):
    from audioclip_core.data.audioset_steps import label_index_for
    from audioclip_core.training import stages
    from audioclip_core.training.run import StageRun

    cfg, profile = _train_config(config, "audioclip_partial" if partial else "audioclip_full", "audioset", sources,
                                 data_root)
    labels = label_index_for(sources.audioset(data_root.path))
    dfs, manifests = _audioset_manifests(data_root, config.audioset_partitions)
    if config.init_checkpoint:
        parent_path = Path(config.init_checkpoint)
        model = (stages.build_audioclip(cfg, audio_head=str(parent_path), clip_weights=config.clip_weights or None)
                 if partial else stages.build_audioclip(cfg, init=str(parent_path)))
    else:
        parent_path = _upstream(data_root, upstream)
        model = (stages.build_audioclip(cfg, audio_head=str(parent_path), clip_weights=config.clip_weights or None)
                 if partial else stages.build_audioclip(cfg, init=str(parent_path)))
    if partial:
        stages.freeze_teachers(model)
    ds = stages.audioset_dataset(dfs, list(labels.mids), cfg, with_image=True, image_size=model.visual.image_size)
    run = StageRun(name, cfg, model, ds, stages.audioclip_step(use_image=True), _ckpt_dir(data_root, name),
                   manifests, parent=_parent(parent_path, upstream if not config.init_checkpoint else "released"),
                   prepare=stages.keep_frozen_in_eval,
                   extra_lineage={"clip_weights": config.clip_weights or None})
    return _run(context, run, data_root, tracking, profile)


@dg.asset(group_name=GROUP, deps=[esresnext_audioset, audioset_manifest], pool="gpu", kinds={"pytorch", "mlflow"},
          description="Stage 2: the audio head (from stage 1, fresh projection) trained under frozen CLIP teachers.")
def audioclip_partial(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                      sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    return _audioclip_stage(context, "audioclip_partial", config, data_root, sources, tracking,
                            upstream="esresnext_audioset", partial=True)


@dg.asset(group_name=GROUP, deps=[audioclip_partial, audioset_manifest], pool="gpu", kinds={"pytorch", "mlflow"},
          description="Stage 3: all three heads trained jointly on AudioSet from the partial checkpoint.")
def audioclip_full(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                   sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
    return _audioclip_stage(context, "audioclip_full", config, data_root, sources, tracking,
                            upstream="audioclip_partial", partial=False)


def _finetune(context, name, dataset, config, data_root, sources, tracking, *, upstream, cooperative):
    from audioclip_core.training import stages
    from audioclip_core.training.run import StageRun, manifest_entry

    fold = context.partition_key
    cfg, profile = _train_config(config, "audioclip_finetune" if cooperative else "esresnext_finetune",
                                 "finetune", sources, data_root)
    train_path = data_root.path / dataset / "folds" / fold / "train.parquet"
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} missing: materialise {dataset}_folds[{fold}] first")
    train_df = pd.read_parquet(train_path)
    manifest = pd.read_parquet(data_root.path / dataset / "manifest.parquet")
    classes = [n for _, n in sorted(set(zip(manifest["class_id"], manifest["class_name"])))]
    parent_path = Path(config.init_checkpoint) if config.init_checkpoint else _upstream(data_root, upstream)
    if cooperative:
        model = stages.build_audioclip(cfg, init=str(parent_path))
        stages.freeze_teachers(model)
        model.logit_scale.requires_grad_(False)
        step = stages.audioclip_step(use_image=False)
    else:
        model = stages.build_classifier(cfg, len(classes), init=str(parent_path))
        step = stages.classifier_step
    cfg.channels = 2 if dataset == "us8k" else 1  # the original protocols: US8K stereo, ESC-50 mono
    ds = stages.clipset_dataset(train_df, cfg, classes)
    run = StageRun(name, cfg, model, ds, step, _ckpt_dir(data_root, name, fold),
                   {f"{dataset}_fold{fold}_train": manifest_entry(train_path, len(train_df))},
                   parent=_parent(parent_path, upstream if not config.init_checkpoint else "released"),
                   prepare=stages.keep_frozen_in_eval, extra_lineage={"fold": int(fold), "classes": classes})
    return _run(context, run, data_root, tracking, profile)


def _finetune_asset(name, dataset, folds_asset, partitions, upstream_asset, cooperative, description):
    @dg.asset(name=name, group_name=GROUP, partitions_def=partitions, deps=[upstream_asset, folds_asset],
              pool="gpu", kinds={"pytorch", "mlflow"}, description=description)
    def _asset(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
               sources: DatasetSources, tracking: MlflowTracking) -> dg.MaterializeResult:
        return _finetune(context, name, dataset, config, data_root, sources, tracking,
                         upstream=upstream_asset.key.to_user_string(), cooperative=cooperative)

    return _asset


esresnext_esc50 = _finetune_asset("esresnext_esc50", "esc50", esc50_folds, esc50_fold_partitions, esresnext_audioset,
                                  False, "Stage 4: stand-alone ESResNeXt fine-tuned on an ESC-50 fold (new classifier).")
esresnext_us8k = _finetune_asset("esresnext_us8k", "us8k", us8k_folds, us8k_fold_partitions, esresnext_audioset,
                                 False, "Stage 4: stand-alone ESResNeXt fine-tuned on a US8K fold (new classifier).")
audioclip_esc50 = _finetune_asset("audioclip_esc50", "esc50", esc50_folds, esc50_fold_partitions, audioclip_full,
                                  True, "Stage 4: cooperative fine-tuning on an ESC-50 fold (audio head only).")
audioclip_us8k = _finetune_asset("audioclip_us8k", "us8k", us8k_folds, us8k_fold_partitions, audioclip_full,
                                 True, "Stage 4: cooperative fine-tuning on a US8K fold (audio head only).")
