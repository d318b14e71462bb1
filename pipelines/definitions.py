"""Dagster Definitions: resources, partitions, jobs and the asset modules of `assets/`.

The whole lineage is one asset backfill of every asset and all of its partitions (the UI's
"Materialize all", or `python -m pipelines.backfill`, which `make demo` runs): the daemon
launches one run per partition in dependency order through the run queue. Each run executes
its steps in its own process (in-process executor); the `youtube` pool bounds concurrent downloads across runs and
the `gpu` pool serialises training. AUDIOCLIP_DEPLOYMENT=k8s runs every step in a pod instead
(pipelines/deployment.py; docs/deployment.md);
pipelines/automation.py for scheduled re-training (on: the `automation` sensor and the
`refresh_audioset` schedule; the README says how to turn it off).
"""

import dagster as dg

from assets import audioset, clipsets, evaluation, promotion, shards, sources, training
from assets.resources import DataRoot, DatasetSources, MlflowTracking, TrainingLauncher, YoutubeDownloader

from .automation import CHAIN, audioset_data_job, automation_sensor, refresh_audioset, with_automation
from .deployment import executor, launcher_settings

all_assets = with_automation(
    dg.load_assets_from_modules([sources, audioset, clipsets, shards, training, evaluation, promotion])
)

retrain_audioset_chain = dg.define_asset_job(
    "retrain_audioset_chain",
    selection=dg.AssetSelection.assets(*CHAIN, promotion.model_promotion),
    description="Re-train by hand what the `automation` sensor re-trains on its cron: the CLIP towers, "
    "AudioSet stages 1-3, the tables that read them and the promotion decision",
)

EVALUATION_TABLES = (
    evaluation.table1_esresnext,
    evaluation.table2_audioclip,
    evaluation.table3_zero_shot,
    evaluation.table4_querying,
)
evaluate_released = dg.define_asset_job(
    "evaluate_released",
    selection=dg.AssetSelection.assets(*EVALUATION_TABLES),
    description="The four tables from checkpoint files - the released ESRNXFBSP.pt (Table 1: "
    "esresnext_checkpoints, include_trained false) and AudioCLIP-Partial/Full-Training.pt (Tables 2-4: "
    "partial_checkpoint / full_checkpoint) - with their run config (README: 'The released weights').",
)

defs = dg.Definitions(
    assets=all_assets,
    # AUDIOCLIP_DEPLOYMENT: local (each run's steps in its process) or k8s (a pod per step)
    executor=executor(),
    asset_checks=[],
    jobs=[audioset_data_job, retrain_audioset_chain, evaluate_released],
    sensors=[automation_sensor, sources.audioset_partitions_from_sources],
    schedules=[refresh_audioset],
    resources={
        "data_root": DataRoot(),
        "sources": DatasetSources(),
        "youtube": YoutubeDownloader(),
        "tracking": MlflowTracking(),
        "launcher": TrainingLauncher(**launcher_settings()),
    },
)
