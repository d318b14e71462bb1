"""Dagster Definitions: resources, partitions, jobs and the asset modules of `assets/`.

Local runs use the multiprocess executor (one run per partition; backfills fan out across
partitions); the `youtube` pool bounds concurrent downloads across runs and the `gpu` pool
serialises training. See docs/deployment.md for the Kubernetes executor configuration;
pipelines/automation.py for scheduled re-training (off by default).
"""
import dagster as dg

from assets import audioset, clipsets, evaluation, training
from assets.resources import DataRoot, DatasetSources, MlflowTracking, YoutubeDownloader

from .automation import retrain_audioset_chain, retrain_on_new_data

all_assets = dg.load_assets_from_modules([audioset, clipsets, training, evaluation])

audioset_data_job = dg.define_asset_job(
    "audioset_data", selection=dg.AssetSelection.groups(audioset.GROUP),
    partitions_def=audioset.audioset_partitions,
    description="segments -> downloads -> clips -> manifest for one AudioSet partition")

evaluate_released = dg.define_asset_job(
    "evaluate_released", selection=dg.AssetSelection.assets(evaluation.table3_zero_shot, evaluation.table4_querying),
    description="Zero-shot and querying tables from checkpoint files (e.g. the released AudioCLIP-Full-Training.pt "
                "and AudioCLIP-Partial-Training.pt): set partial_checkpoint / full_checkpoint in the run config")

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[],
    jobs=[audioset_data_job, retrain_audioset_chain, evaluate_released],
    sensors=[retrain_on_new_data],
    resources={
        "data_root": DataRoot(),
        "sources": DatasetSources(),
        "youtube": YoutubeDownloader(),
        "tracking": MlflowTracking(),
    },
)
