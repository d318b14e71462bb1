"""The four training stages (audioclip_core.training.stages) as checkpoint assets (pool `gpu`),
tracked in MLflow."""
import os
from pathlib import Path
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import Field

from audioclip_core.layout import DataLayout

from .audioset import audioset_manifest
from .metadata import each_partition
from .clipsets import esc50_fold_partitions, esc50_folds, us8k_fold_partitions, us8k_folds
from .resources import DataRoot, DatasetSources, MlflowTracking, TrainingLauncher
from .shards import audioset_shards, esc50_shards, us8k_shards

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
    clip_seconds: Optional[float] = Field(default=None, description="AudioSet stages; fine-tuning always uses the "
                                          "clip set's protocol (ESC-50 5 s mono, US8K 4 s stereo)")
    seed: Optional[int] = Field(default=None, description="default: $AUDIOCLIP_SEED (make demo SEED=n), else 0")
    max_steps_per_epoch: Optional[int] = None
    keep_epochs: Optional[list[int]] = Field(default=None, description="also keep the weights after these many "
                                             "epochs (Table 1's shorter-trained row); default: the profile's (paper "
                                             "stage 1: [5], demo: [8])")
    input_scale: Optional[str] = Field(default=None, description="int16 | minmax | unit; default: the profile's "
                                       "(int16), and for fine-tuning the clip set's published loader's (ESC-50 "
                                       "int16, US8K minmax)")
    device: str = "auto"
    init_checkpoint: str = Field(default="", description="start from this checkpoint (e.g. a released "
                                 "AudioCLIP-Full-Training.pt) instead of the upstream asset")
    clip_weights: str = Field(default="", description="CLIP.pt or OpenAI RN50.pt for the image/text towers")
    imagenet_weights: str = Field(default="", description="torchvision resnext50_32x4d state dict for stage 1")
    audioset_partitions: list[str] = Field(default_factory=list, description="AudioSet partitions to train on; "
                                           "empty: every training partition that has a segment list (all but eval; "
                                           "the demo's balanced_train)")
    allow_random_init: Optional[bool] = Field(default=None, description="let stage 1 start without ImageNet weights "
                                              "and stage 2 without CLIP weights (random towers); the demo profile "
                                              "sets it, the paper profile refuses")
    allow_changed_parent: bool = Field(default=False, description="train from the upstream (or init_checkpoint) "
                                       "checkpoint even when its sha256 differs from its own lineage record (the file "
                                       "changed after its stage wrote it); by default the stage refuses, naming the "
                                       "file and both digests")
    nproc_per_node: int = Field(default=1, ge=1, description="> 1: launch torchrun (DDP) through Dagster Pipes")
    nnodes: int = Field(default=1, ge=1, description="> 1: torchrun agents on that many nodes, meeting in a c10d "
                        "rendezvous (resource `launcher`; locally, as many agents on this machine)")
    freeze_bn: Optional[bool] = None
    cpu_bf16: bool = Field(default=False, description="bfloat16 autocast on CPU (faster; not bit-reproducible)")
    dtype: str = Field(default="float32", description="float64: train in double precision (slow; for "
                       "exactness checks such as 1 process against torchrun)")


def _profile(cfg: StageConfig, sources: DatasetSources, layout: DataLayout) -> str:
    return cfg.profile or os.environ.get("AUDIOCLIP_TRAIN_PROFILE") or (
        "demo" if sources.uses_demo_audioset(layout) else "paper")


def _train_config(cfg: StageConfig, stage: str, sources: DatasetSources, layout: DataLayout,
                  clipset: Optional[str] = None):
    from audioclip_core.training.profiles import resolve

    profile = _profile(cfg, sources, layout)
    return resolve(profile, stage, cfg.model_dump(), clipset=clipset), profile


def _upstream(layout: DataLayout, name: str) -> Path:
    path = layout.checkpoint(name)
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint {path} not found: materialise {name} first, or set "
                                "init_checkpoint to start from a released checkpoint")
    return path


def _parent(path: Path, name: str) -> dict:
    from audioclip_core.files import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "name": name}


def _start(config: StageConfig, layout: DataLayout, upstream: Optional[str]):
    """(init checkpoint, parent record): the released checkpoint asked for, else the upstream asset's."""
    if config.init_checkpoint:
        return config.init_checkpoint, _parent(Path(config.init_checkpoint), "released")
    if upstream:
        path = _upstream(layout, upstream)
        return str(path), _parent(path, upstream)
    return None, None


def _execute(context, spec, layout: DataLayout, tracking: MlflowTracking, profile: str,
             nproc: int, partition: Optional[str] = None, *, nnodes: int = 1,
             launcher: Optional[TrainingLauncher] = None) -> dg.MaterializeResult:
    """Run a stage in-process, or with torchrun (nproc > 1) through Dagster Pipes; track it in MLflow."""
    import json
    import sys

    from audioclip_core.evaluation.plots import plot_history
    from audioclip_core.lineage import code_version
    from audioclip_core.perf import share_cpu_threads
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.run import run_stage
    from audioclip_core.training.stages import build_stage, require_unchanged_parent

    cfg = TrainConfig(**spec.config)
    require_unchanged_parent(spec, cfg)  # before anything is tracked (build_stage checks again, hashing nothing)
    code = code_version()
    tags = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.partition": partition or "", "name": spec.name, "stage": spec.stage, "profile": profile,
            "git_commit": code["git_commit"], "git_dirty": str(code["git_dirty"]), "nproc_per_node": str(nproc)}
    spec.dagster = {"run_id": context.run_id, "asset_key": context.asset_key.to_user_string(), "partition": partition}
    workdir = Path(spec.workdir)
    with tracking.start_run(layout, spec.name + (f"-fold{partition}" if partition else ""), tags) as mrun:
        import mlflow

        spec.mlflow_run_id = mrun.info.run_id
        mlflow.log_params({k: v for k, v in cfg.to_dict().items() if k != "extra"} | {"nproc_per_node": nproc})
        for name, m in spec.manifests.items():
            tracking.log_manifest(Path(m.get("version") or m["path"]), name, m["sha256"])  # the version it names
        if spec.parent:
            mlflow.log_param("parent_sha256", spec.parent["sha256"])

        def on_epoch(epoch, metrics):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)

        try:
            if nproc * nnodes <= 1:
                threads = share_cpu_threads()   # on a CPU, the other training slot's run gets the other cores
                context.log.info(f"{threads} CPU thread(s)")
                out = run_stage(build_stage(spec), on_epoch=on_epoch, mlflow_run_id=spec.mlflow_run_id,
                                log=context.log.info)
                history, checkpoint, lineage_path = out.result.history, out.checkpoint, out.lineage_path
                official, resumed, skipped = out.official, out.result.resumed_from, out.result.skipped_items
                lineage = out.lineage
                logged = out.result.resumed_from + 1 if out.result.resumed_from is not None else 0
            else:
                spec_path = spec.to_json(workdir / "spec.json")
                result_path = workdir / "result.json"
                result_path.unlink(missing_ok=True)
                (launcher or TrainingLauncher()).run(
                    context, ["pipelines.torchrun_entry", str(spec_path), str(result_path)], nproc=nproc,
                    nnodes=nnodes, env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // (nproc * nnodes)))})
                res = json.loads(result_path.read_text())
                history, checkpoint, lineage_path = res["history"], Path(res["checkpoint"]), Path(res["lineage_path"])
                official = Path(res["official"]) if res["official"] else None
                resumed, skipped = res["resumed_from"], res["skipped_items"]
                lineage = json.loads(lineage_path.read_text())
                logged = 0
        except Exception as exc:
            mlflow.set_tag("failure", str(exc)[:5000])
            raise
        for h in history[:logged] if nproc * nnodes <= 1 else history:  # epochs trained before a resume, or in workers
            on_epoch(h["epoch"], h)
        curve = plot_history(history, workdir / f"{spec.name}.curves.png", title=spec.name)
        for art in (checkpoint, lineage_path, curve) + ((official,) if official else ()):
            mlflow.log_artifact(str(art))
        mlflow.log_dict(cfg.to_dict(), "config.json")
        link = tracking.run_link(mrun)
        curves_link = tracking.artifact_link(mrun, curve.name)
    checks = _gates(context, history, checkpoint)
    failed = [c for c in checks if not c.passed]
    if failed:
        _reject([checkpoint, lineage_path] + ([official] if official else []), tracking, layout,
                spec.mlflow_run_id, failed)
    sha = lineage["checkpoint"]["sha256"]
    return dg.MaterializeResult(
        check_results=checks,
        metadata={"checkpoint": dg.MetadataValue.path(str(checkpoint)), "sha256": sha,
                  "lineage": dg.MetadataValue.json(lineage), "mlflow_run_id": spec.mlflow_run_id,
                  "mlflow_run": dg.MetadataValue.url(link), "epochs": len(history),
                  "loss_first_epoch": history[0]["loss"], "loss_last_epoch": history[-1]["loss"],
                  "skipped_items": len(skipped), "resumed_from_epoch": resumed if resumed is not None else -1,
                  "nproc_per_node": nproc, "nnodes": nnodes, "manifests": {k: v["sha256"] for k, v in spec.manifests.items()},
                  "curves": dg.MetadataValue.url(curves_link), "curves_file": dg.MetadataValue.path(str(curve))},
        data_version=dg.DataVersion(sha[:16]))


COLLAPSE_CHECK = ("not_collapsed", "The audio pair terms (audio-text, audio-image) of the last epoch are not at their "
                  "value for uniform logits (2 ln n for a batch of n, within 1 %): a model whose audio embeddings "
                  "tell no clip of a batch from another fails and blocks what is trained or evaluated from it "
                  "(audioclip_core/training/health.py)")
FINITE_CHECK = ("finite_weights", "Every tensor of the checkpoint is finite (no NaN or Inf); blocks downstream")
CHANCE_CHECK = ("above_chance", "In-batch audio-to-caption retrieval of the last epoch is above chance: more than "
                "two standard deviations above its expectation for random scores (the share of identical captions "
                "per clip); a model at chance blocks what is trained or evaluated from it "
                "(audioclip_core/training/health.py)")


def _checks(name: str, contrastive: bool, retrieval: bool = False) -> list[dg.AssetCheckSpec]:
    specs = [FINITE_CHECK] + ([COLLAPSE_CHECK] if contrastive else []) + ([CHANCE_CHECK] if retrieval else [])
    return [dg.AssetCheckSpec(check, asset=name, blocking=True, description=desc) for check, desc in specs]


def _gates(context, history: list[dict], checkpoint: Path) -> list[dg.AssetCheckResult]:
    from audioclip_core.training.health import at_chance, collapse, non_finite_tensors

    bad = non_finite_tensors(checkpoint)
    out = [dg.AssetCheckResult(check_name=FINITE_CHECK[0], passed=not bad,
                               metadata={"non_finite_tensors": bad[:20] or ["none"]})]
    if any(spec.name == COLLAPSE_CHECK[0] for spec in context.assets_def.check_specs):
        report = collapse(history)
        meta = ({"uniform_logit_value": report["uniform"], "last_epoch_terms": report["terms"],
                 "ratio_to_uniform": report["ratios"]} if report else {"note": "no contrastive terms recorded"})
        out.append(dg.AssetCheckResult(check_name=COLLAPSE_CHECK[0], passed=not (report and report["collapsed"]),
                                       metadata=meta))
    if any(spec.name == CHANCE_CHECK[0] for spec in context.assets_def.check_specs):
        report = at_chance(history)
        meta = ({k: v for k, v in report.items() if k != "at_chance"} if report
                else {"note": "no in-batch retrieval recorded"})
        out.append(dg.AssetCheckResult(check_name=CHANCE_CHECK[0], passed=not (report and report["at_chance"]),
                                       metadata=meta))
    return out


def _reject(files: list[Path], tracking: MlflowTracking, layout: DataLayout, mlflow_run_id: str,
            failed: list[dg.AssetCheckResult]):
    """A stage that fails a gate is not materialised: nothing downstream - in this run or a
    later one of the same backfill - may start from it. Its checkpoint and record are set aside
    as `<name>.rejected.*` for inspection, the MLflow run is marked FAILED, and the step fails
    with the gate's figures."""
    import mlflow

    reason = "; ".join(f"{c.check_name} failed: " + ", ".join(f"{k}={v.value if hasattr(v, 'value') else v}"
                                                               for k, v in (c.metadata or {}).items())
                       for c in failed)
    checkpoint = files[0]
    for path in files:
        if path.is_file():
            os.replace(path, path.with_name(path.name.replace(checkpoint.stem, checkpoint.stem + ".rejected", 1)))
    mlflow.set_tracking_uri(tracking.uri(layout))
    client = mlflow.MlflowClient()
    client.set_tag(mlflow_run_id, "gate_failed", reason[:5000])
    client.set_terminated(mlflow_run_id, status="FAILED")
    raise dg.Failure(description=f"{checkpoint.stem} is not published: {reason}",
                     metadata={c.check_name: dg.MetadataValue.json({k: (v.value if hasattr(v, "value") else v)
                                                                   for k, v in (c.metadata or {}).items()})
                               for c in failed})


def _shards_of(layout: DataLayout, name: str, entry: dict, asset: str, log=None) -> str:
    """The shard set of `name` that holds the manifest version `entry` names - the current one,
    or, when `asset` was not re-materialised since the manifest changed (a scheduled
    re-training), packed here (the same version is never packed twice). The lineage entry
    records it: folder, the digests of its record and of every shard."""
    from audioclip_core.data.shards import current_shards, publish_shards, shards_entry

    folder = current_shards(layout, name)
    shards = shards_entry(folder, layout.root) if folder is not None else None
    if shards is None or shards["source_sha256"] != entry["sha256"]:
        if log is not None:
            log(f"the shards of {name} do not hold manifest {entry['sha256'][:16]} ({asset} not re-materialised "
                "since it changed): packing them now")
        folder, _, _ = publish_shards(layout, name, Path(entry.get("version") or entry["path"]))
        shards = shards_entry(folder, layout.root)
    entry["shards"] = shards
    return str(folder)


def _audioset_manifests(layout: DataLayout, partitions: list[str], log=None):
    from audioclip_core.training.run import manifest_entry

    paths, entries, shards = [], {}, []
    for p in partitions:
        path = layout.audioset_manifest(p)
        if not path.is_file():
            raise FileNotFoundError(f"AudioSet manifest {path} missing: materialise audioset_manifest[{p}] first")
        df = pd.read_parquet(path, columns=["status"])
        entry = manifest_entry(path, (df["status"] == "ok").sum(), store=layout.versions_dir)
        paths.append(entry["version"])  # train on the version the lineage names
        shards.append(_shards_of(layout, f"audioset_{p}", entry, f"audioset_shards[{p}]", log))
        entries[f"audioset_{p}"] = entry
    return paths, entries, shards


def _training_partitions(config: StageConfig, sources: DatasetSources, layout: DataLayout, profile: str) -> list[str]:
    """The partitions asked for; else every training partition with a source (all but eval)
    for the paper profile, and balanced_train for the demo."""
    if config.audioset_partitions:
        return list(config.audioset_partitions)
    if profile == "demo":
        return ["balanced_train"]
    found = [p for p in sources.audioset_partitions(layout) if p not in ("eval", "demo")]
    if not found:
        raise FileNotFoundError(f"no AudioSet training partition has a segment list in {sources.audioset(layout)}")
    return found


def _audioset_stage(context, stage: str, config: StageConfig, data_root: DataRoot, sources: DatasetSources,
                    tracking: MlflowTracking, upstream: Optional[str], name: Optional[str] = None, *,
                    launcher: Optional[TrainingLauncher] = None) -> dg.MaterializeResult:
    from audioclip_core.data.manifests import label_index_for
    from audioclip_core.training.stages import StageSpec, published_towers, require_initialisation

    layout = data_root.layout
    cfg, profile = _train_config(config, stage, sources, layout)
    labels = label_index_for(sources.audioset(layout))
    tables, manifests, shards = _audioset_manifests(layout, _training_partitions(config, sources, layout, profile),
                                                    context.log.info)
    init, parent = _start(config, layout, upstream)
    clip_weights, extra = config.clip_weights or None, {}
    if stage == "audioclip_partial" and not clip_weights:  # the towers the clip_towers asset published
        towers = published_towers(layout)
        if towers["kind"] != "standin" or profile == "demo":   # the paper never distils into the stand-in
            clip_weights, extra = towers["path"], {"clip_towers": towers}
    name = name or stage
    spec = StageSpec(name=name, stage=stage, config=cfg.to_dict(), workdir=str(layout.checkpoint_dir(name)),
                     tables=tables, manifests=manifests, class_ids=list(labels.mids), init=init, parent=parent,
                     clip_weights=clip_weights, imagenet_weights=config.imagenet_weights or None,
                     data_root=str(layout.root), extra_lineage=extra, shards=shards)
    require_initialisation(spec, cfg)  # before anything is tracked: a paper stage never starts from random silently
    return _execute(context, spec, layout, tracking, profile, config.nproc_per_node, nnodes=config.nnodes,
                    launcher=launcher)


@dg.asset(group_name=GROUP, deps=[audioset_manifest, audioset_shards], pool="gpu", kinds={"pytorch", "mlflow"},
          check_specs=_checks("clip_towers", True, retrieval=True),
          description="CLIP's image and text towers, which stage 2 distils the audio head into. With `clip_weights` "
                      "(the paper: OpenAI's CLIP RN50, or CLIP.pt of the AudioCLIP release) that file, loaded strictly "
                      "and recorded with its sha256. In the demo profile without it: the DEMO'S STAND-IN FOR CLIP'S "
                      "PRE-TRAINING (no CLIP weights can be downloaded), image and text towers trained here "
                      "contrastively from random weights on the demo's frame-caption pairs (training stage "
                      "clip_standin), with its own checkpoint, lineage and MLflow run.")
def clip_towers(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                sources: DatasetSources, tracking: MlflowTracking,
                launcher: TrainingLauncher) -> dg.MaterializeResult:
    from audioclip_core.training.stages import (CLIP_SOURCE, missing_weights, publish_towers, towers_record,
                                                verify_clip_weights)

    layout = data_root.layout
    profile = _profile(config, sources, layout)
    if config.clip_weights or profile != "demo":
        cfg, _ = _train_config(config, "audioclip_partial", sources, layout)   # the towers' preset and init rule
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
            check_results=[dg.AssetCheckResult(check_name=c.name, passed=True, metadata=note)
                           for c in context.assets_def.check_specs],
            data_version=dg.DataVersion((record["sha256"] or "random")[:16]))
    result = _audioset_stage(context, "clip_standin", config, data_root, sources, tracking, None, name="clip_towers",
                             launcher=launcher)
    publish_towers(layout, towers_record("standin", str(layout.checkpoint("clip_towers")),
                                         sha256=result.metadata["sha256"], stage="clip_standin",
                                         note="the demo's stand-in for CLIP's pre-training"))
    return result


@dg.asset(group_name=GROUP, deps=[audioset_manifest, audioset_shards], pool="gpu", kinds={"pytorch", "mlflow"},
          check_specs=_checks("esresnext_audioset", False),
          description="Stage 1: stand-alone ESResNeXt, multi-label BCE over the 527 AudioSet classes.")
def esresnext_audioset(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                       sources: DatasetSources, tracking: MlflowTracking,
                launcher: TrainingLauncher) -> dg.MaterializeResult:
    return _audioset_stage(context, "esresnext_audioset", config, data_root, sources, tracking, None,
                           launcher=launcher)


@dg.asset(group_name=GROUP, deps=[esresnext_audioset, clip_towers, audioset_manifest, audioset_shards], pool="gpu",
          kinds={"pytorch", "mlflow"}, check_specs=_checks("audioclip_partial", True, retrieval=True),
          description="Stage 2: the audio head (from stage 1, fresh projection) trained under the frozen image and "
                      "text towers of clip_towers (CLIP's, or the demo's stand-in), its teachers.")
def audioclip_partial(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                      sources: DatasetSources, tracking: MlflowTracking,
                launcher: TrainingLauncher) -> dg.MaterializeResult:
    return _audioset_stage(context, "audioclip_partial", config, data_root, sources, tracking, "esresnext_audioset",
                           launcher=launcher)


@dg.asset(group_name=GROUP, deps=[audioclip_partial, audioset_manifest, audioset_shards], pool="gpu", kinds={"pytorch", "mlflow"},
          check_specs=_checks("audioclip_full", True, retrieval=True),
          description="Stage 3: all three heads trained jointly on AudioSet from the partial checkpoint.")
def audioclip_full(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
                   sources: DatasetSources, tracking: MlflowTracking,
                launcher: TrainingLauncher) -> dg.MaterializeResult:
    return _audioset_stage(context, "audioclip_full", config, data_root, sources, tracking, "audioclip_partial",
                           launcher=launcher)


def _finetune(context, name, dataset, config, data_root, sources, tracking, *, upstream, cooperative, fold,
              launcher=None):
    from audioclip_core.data.clipsets import class_names
    from audioclip_core.training.run import manifest_entry
    from audioclip_core.training.stages import StageSpec

    layout = data_root.layout
    stage = "audioclip_finetune" if cooperative else "esresnext_finetune"
    cfg, profile = _train_config(config, stage, sources, layout, clipset=dataset)
    train_path = layout.fold(dataset, fold, "train")
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} missing: materialise {dataset}_folds[{fold}] first")
    rows = len(pd.read_parquet(train_path, columns=["path"]))
    classes = class_names(pd.read_parquet(layout.clipset_manifest(dataset), columns=["class_id", "class_name"]))
    init, parent = _start(config, layout, upstream)
    entry = manifest_entry(train_path, rows, store=layout.versions_dir)
    source = manifest_entry(layout.clipset_manifest(dataset), 0)
    shards = _shards_of(layout, dataset, source, f"{dataset}_shards", context.log.info)
    entry["shards"] = source["shards"]
    spec = StageSpec(name=name, stage=stage, config=cfg.to_dict(), workdir=str(layout.checkpoint_dir(name, fold)),
                     tables=[entry["version"]], manifests={f"{dataset}_fold{fold}_train": entry},
                     classes=classes, init=init, parent=parent, extra_lineage={"fold": int(fold), "classes": classes},
                     data_root=str(layout.root), shards=[shards])
    return _execute(context, spec, layout, tracking, profile, config.nproc_per_node, partition=fold,
                    nnodes=config.nnodes, launcher=launcher)


# a backfill fine-tunes up to five folds per run, one after another (ESC-50: one run, US8K:
# two): a run's start-up (a process, the code location's imports) costs as much as a fold of
# the demo; each fold still has its own checkpoint, lineage and MLflow run
FOLDS_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=5)


def _finetune_asset(name, dataset, folds_asset, partitions, upstream_asset, cooperative, description):
    shards_asset = {"esc50": esc50_shards, "us8k": us8k_shards}[dataset]
    @dg.asset(name=name, group_name=GROUP, partitions_def=partitions, deps=[upstream_asset, folds_asset, shards_asset],
              pool="gpu", kinds={"pytorch", "mlflow"}, description=description, check_specs=_checks(name, cooperative),
              backfill_policy=FOLDS_PER_RUN)
    def _asset(context: dg.AssetExecutionContext, config: StageConfig, data_root: DataRoot,
               sources: DatasetSources, tracking: MlflowTracking,
                launcher: TrainingLauncher) -> dg.MaterializeResult:
        return each_partition(context, lambda fold: _finetune(
            context, name, dataset, config, data_root, sources, tracking,
            upstream=upstream_asset.key.to_user_string(), cooperative=cooperative, fold=fold,
            launcher=launcher))

    return _asset


esresnext_esc50 = _finetune_asset("esresnext_esc50", "esc50", esc50_folds, esc50_fold_partitions, esresnext_audioset,
                                  False, "Stage 4: stand-alone ESResNeXt fine-tuned on an ESC-50 fold (new classifier).")
esresnext_us8k = _finetune_asset("esresnext_us8k", "us8k", us8k_folds, us8k_fold_partitions, esresnext_audioset,
                                 False, "Stage 4: stand-alone ESResNeXt fine-tuned on a US8K fold (new classifier).")
audioclip_esc50 = _finetune_asset("audioclip_esc50", "esc50", esc50_folds, esc50_fold_partitions, audioclip_full,
                                  True, "Stage 4: cooperative fine-tuning on an ESC-50 fold (audio head only).")
audioclip_us8k = _finetune_asset("audioclip_us8k", "us8k", us8k_folds, us8k_fold_partitions, audioclip_full,
                                 True, "Stage 4: cooperative fine-tuning on a US8K fold (audio head only).")
# Table 2 reports fine-tuned accuracy after partial AND after full training: cooperative
# fine-tuning from the partial model too
audioclip_partial_esc50 = _finetune_asset(
    "audioclip_partial_esc50", "esc50", esc50_folds, esc50_fold_partitions, audioclip_partial, True,
    "Stage 4 from the partial model (Table 2's partial rows): cooperative fine-tuning on an ESC-50 fold.")
audioclip_partial_us8k = _finetune_asset(
    "audioclip_partial_us8k", "us8k", us8k_folds, us8k_fold_partitions, audioclip_partial, True,
    "Stage 4 from the partial model (Table 2's partial rows): cooperative fine-tuning on a US8K fold.")
