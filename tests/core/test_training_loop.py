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
from audioclip_core.data.manifests import read_manifest
from assets.resources import DataRoot
from conftest import REPO, SMALL, materialize_stage, run_config, weights


def test_bad_clip_mid_epoch_is_skipped_and_recorded(lineage, tmp_path):
    from audioclip_core.training import stages
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
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

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=2, batch_size=8, lr=0.01,
                      clip_seconds=2.0)
    classes = sorted(df["class_name"].unique())
    model = stages.build_classifier(cfg, len(classes))

    def nan_step(m, batch):
        loss, terms = stages.classifier_step(m, batch)
        return loss * float("nan"), terms

    with pytest.raises(TrainingError, match="became nan at epoch 0, step 0"):
        train(model, stages.clipset_dataset(df, cfg, classes), nan_step, cfg, tmp_path / "wd", log=lambda m: None)


def test_kept_epochs_are_snapshots_of_those_epochs(lineage, tmp_path):
    """keep_epochs (Table 1's shorter-trained row) keeps the weights after that many epochs,
    exactly the epoch's weights; a fresh run clears the snapshots of an earlier one."""
    from safetensors.torch import load_file

    from audioclip_core.training import stages
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=3, batch_size=8, lr=0.01,
                      clip_seconds=1.0, max_steps_per_epoch=1, keep_epochs=[2])
    classes = sorted(df["class_name"].unique())
    wd = tmp_path / "wd"
    (wd / "snapshots").mkdir(parents=True)
    (wd / "snapshots" / "after_009_epochs.safetensors").write_bytes(b"an earlier run's")
    train(stages.build_classifier(cfg, len(classes)), stages.clipset_dataset(df, cfg, classes),
          stages.classifier_step, cfg, wd, log=lambda m: None)
    assert sorted(p.name for p in (wd / "snapshots").iterdir()) == ["after_002_epochs.safetensors"]
    kept = load_file(str(wd / "snapshots" / "after_002_epochs.safetensors"))
    epoch1 = load_file(str(wd / "epochs" / "epoch_001" / "model.safetensors"))  # 0-based: the 2nd epoch
    assert kept.keys() == epoch1.keys() and all(torch.equal(kept[k], epoch1[k]) for k in kept)


def test_fbsp_hook_flag_is_restored_when_training_fails(monkeypatch, tmp_path):
    """Under DDP the fbsp layers normalise after the all-reduce (a flag the loop sets); a run
    that fails - here DDP cannot start without a process group - gives them back their own hook."""
    from audioclip_core.models.fbsp import LinearFBSP
    from audioclip_core.training import distributed as D
    from audioclip_core.training import stages
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=1, batch_size=2, clip_seconds=1.0)
    model = stages.build_classifier(cfg, 3)
    layers = [m for m in model.modules() if isinstance(m, LinearFBSP)]
    assert layers
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "world_size", lambda: 1)
    with pytest.raises(Exception):
        train(model, [], stages.classifier_step, cfg, tmp_path / "wd", log=lambda m: None)
    assert all(layer.normalize_in_hook for layer in layers)
