"""The core training loop on bad input: a clip that fails mid-epoch, a loss that becomes NaN."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch

from assets import training
from assets.resources import DataRoot
from conftest import REPO, SMALL, materialize_stage, run_config, weights


def test_bad_clip_mid_epoch_is_skipped_and_recorded(lineage, tmp_path):
    from audioclip_core.training import stages
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = pd.read_parquet(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    df.loc[3, "audio_path"] = str(broken)
    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=1, batch_size=8, lr=0.01,
                      clip_seconds=2.0)
    classes = sorted(df["class_name"].unique())
    model = stages.build_classifier(cfg, len(classes))
    result = train(model, stages.clipset_dataset(df, cfg, classes), stages.classifier_step, cfg, tmp_path / "wd",
                   log=lambda m: None)
    assert len(result.skipped_items) == 1 and "broken.wav" in result.skipped_items[0]
    assert result.history[0]["samples"] == len(df) - 1


def test_nan_loss_stops_with_a_clear_error(lineage, tmp_path):
    from audioclip_core.training import stages
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import TrainingError, train

    df = pd.read_parquet(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet")
    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=2, batch_size=8, lr=0.01,
                      clip_seconds=2.0)
    classes = sorted(df["class_name"].unique())
    model = stages.build_classifier(cfg, len(classes))

    def nan_step(m, batch):
        loss, terms = stages.classifier_step(m, batch)
        return loss * float("nan"), terms

    with pytest.raises(TrainingError, match="became nan at epoch 0, step 0"):
        train(model, stages.clipset_dataset(df, cfg, classes), nan_step, cfg, tmp_path / "wd", log=lambda m: None)
