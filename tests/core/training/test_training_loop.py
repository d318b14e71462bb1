"""The core training loop on bad input: a clip that fails mid-epoch, a loss that becomes NaN."""

from pathlib import Path

import pytest
import torch

from audioclip_core.data.manifests import read_manifest


def test_bad_clip_mid_epoch_is_skipped_and_recorded(lineage, tmp_path):
    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    df.loc[3, "audio_path"] = str(broken)
    cfg = TrainConfig(
        stage="esresnext_finetune", preset="audioclip-tiny", epochs=1, batch_size=8, lr=0.01, clip_seconds=2.0
    )
    classes = sorted(df["class_name"].unique())
    model = builders.build_classifier(cfg, len(classes))
    result = train(
        model,
        clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed),
        steps.classifier_step,
        cfg,
        tmp_path / "wd",
        log=lambda m: None,
    )
    assert len(result.skipped_items) == 1 and "broken.wav" in result.skipped_items[0]
    assert result.history[0]["samples"] == len(df) - 1


def test_nan_loss_stops_with_a_clear_error(lineage, tmp_path):
    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import TrainingError, train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    cfg = TrainConfig(
        stage="esresnext_finetune", preset="audioclip-tiny", epochs=2, batch_size=8, lr=0.01, clip_seconds=2.0
    )
    classes = sorted(df["class_name"].unique())
    model = builders.build_classifier(cfg, len(classes))

    def nan_step(m, batch):
        loss, terms = steps.classifier_step(m, batch)
        return loss * float("nan"), terms

    with pytest.raises(TrainingError, match="became nan at epoch 0, step 0"):
        train(
            model,
            clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed),
            nan_step,
            cfg,
            tmp_path / "wd",
            log=lambda m: None,
        )


def test_kept_epochs_are_snapshots_of_those_epochs(lineage, tmp_path):
    """keep_epochs (Table 1's shorter-trained row) keeps the weights after that many epochs,
    exactly the epoch's weights; a fresh run clears the snapshots of an earlier one."""
    from safetensors.torch import load_file

    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    cfg = TrainConfig(
        stage="esresnext_finetune",
        preset="audioclip-tiny",
        epochs=3,
        batch_size=8,
        lr=0.01,
        clip_seconds=1.0,
        max_steps_per_epoch=1,
        keep_epochs=[2],
    )
    classes = sorted(df["class_name"].unique())
    wd = tmp_path / "wd"
    (wd / "snapshots").mkdir(parents=True)
    (wd / "snapshots" / "after_009_epochs.safetensors").write_bytes(b"an earlier run's")
    states = {}  # each epoch's state as it was written (a finished run keeps only the last)
    train(
        builders.build_classifier(cfg, len(classes)),
        clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed),
        steps.classifier_step,
        cfg,
        wd,
        log=lambda m: None,
        on_epoch=lambda e, m: states.setdefault(
            e, load_file(str(wd / "epochs" / f"epoch_{e:03d}" / "model.safetensors"))
        ),
    )
    assert sorted(p.name for p in (wd / "snapshots").iterdir()) == ["after_002_epochs.safetensors"]
    kept = load_file(str(wd / "snapshots" / "after_002_epochs.safetensors"))
    epoch1 = states[1]  # 0-based: the 2nd epoch
    assert kept.keys() == epoch1.keys() and all(torch.equal(kept[k], epoch1[k]) for k in kept)
    assert sorted(p.name for p in (wd / "epochs").glob("epoch_*")) == ["epoch_002"]  # the last state resumes


def test_fbsp_hook_flag_is_restored_when_training_fails(monkeypatch, tmp_path):
    """Under DDP the fbsp layers normalise after the all-reduce (a flag the loop sets); a run
    that fails - here DDP cannot start without a process group - gives them back their own hook."""
    from audioclip_core.models.fbsp import LinearFBSP
    from audioclip_core.training import builders, steps
    from audioclip_core.training import distributed as D
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    cfg = TrainConfig(stage="esresnext_finetune", preset="audioclip-tiny", epochs=1, batch_size=2, clip_seconds=1.0)
    model = builders.build_classifier(cfg, 3)
    layers = [m for m in model.modules() if isinstance(m, LinearFBSP)]
    assert layers
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "world_size", lambda: 1)
    with pytest.raises((RuntimeError, ValueError)):  # DDP without a process group
        train(model, [], steps.classifier_step, cfg, tmp_path / "wd", log=lambda m: None)
    assert all(layer.normalize_in_hook for layer in layers)


def test_a_parent_changed_since_its_record_is_refused_unless_allowed(lineage, tiny_model, tmp_path):
    """A stage hashes its parent once (the spec's parent digest) and compares it with the
    parent's own lineage record: a changed parent is refused, naming the file and both digests;
    `allow_changed_parent` trains from it as it is, and the new record says so."""
    import audioclip_core as ac
    from audioclip_core.files import sha256_file
    from audioclip_core.lineage import lineage_record, write_lineage
    from audioclip_core.training.assemble import manifest_entry
    from audioclip_core.training.run import run_stage
    from audioclip_core.training.spec import StageSpec
    from audioclip_core.training.stages import ChangedParentError, build_stage

    parent = tmp_path / "audioclip_full" / "audioclip_full.safetensors"
    parent.parent.mkdir()
    ac.save_checkpoint(tiny_model, parent, metadata={"input_scale": "int16"})
    write_lineage(
        lineage_record(name="audioclip_full", stage="audioclip_full", checkpoint=parent, config={}, manifests={}),
        parent,
    )
    recorded = sha256_file(parent)
    data = bytearray(parent.read_bytes())
    data[8 + int.from_bytes(data[:8], "little")] ^= 0x01  # one bit of the first tensor's data
    parent.write_bytes(bytes(data))
    actual = sha256_file(parent)

    train_path = lineage["data"] / "esc50" / "folds" / "2" / "train.parquet"
    df = read_manifest(train_path, lineage["data"])
    entry = manifest_entry(train_path, len(df), store=lineage["data"] / "versions")
    config = {
        "stage": "esresnext_finetune",
        "preset": "audioclip-tiny",
        "epochs": 1,
        "batch_size": 4,
        "max_steps_per_epoch": 1,
        "clip_seconds": 1.0,
        "lr": 0.01,
    }
    spec = StageSpec(
        name="esresnext_esc50",
        stage="esresnext_finetune",
        config=config,
        workdir=str(tmp_path / "wd"),
        tables=[entry["version"]],
        manifests={"esc50_fold2_train": entry},
        classes=sorted(df["class_name"].unique()),
        init=str(parent),
        parent={"path": str(parent), "sha256": actual, "name": "audioclip_full"},
        data_root=str(lineage["data"]),
    )
    with pytest.raises(ChangedParentError) as err:
        build_stage(spec)
    msg = str(err.value)
    assert str(parent) in msg and f"sha256 {actual}" in msg and f"says {recorded}" in msg
    assert "allow_changed_parent" in msg

    spec.config = {**config, "allow_changed_parent": True}
    out = run_stage(spec, log=lambda m: None)
    record = out.lineage
    assert record["parent"]["sha256"] == actual
    assert record["parent_changed"] == {"recorded_sha256": recorded, "sha256": actual}
    assert record["config"]["allow_changed_parent"] is True


def test_epoch_states_are_resumed_only_by_the_same_run(lineage, tmp_path):
    """A re-run with the same run key takes up where the last one ended; one with another key
    (its config, data or parent changed - a scheduled re-training on new data) trains from the
    start, instead of handing back the old weights under a new record."""
    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    classes = sorted(df["class_name"].unique())
    cfg = TrainConfig(
        stage="esresnext_finetune",
        preset="audioclip-tiny",
        epochs=2,
        batch_size=8,
        lr=0.01,
        clip_seconds=1.0,
        max_steps_per_epoch=1,
    )
    wd = tmp_path / "wd"

    def run(key):
        said = []
        result = train(
            builders.build_classifier(cfg, len(classes)),
            clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed),
            steps.classifier_step,
            cfg,
            wd,
            log=said.append,
            run_key=key,
        )
        return result, said

    first, _ = run("data-a")
    assert first.resumed_from is None and len(first.history) == 2
    again, said = run("data-a")
    assert again.resumed_from == 1 and "resuming after epoch 1" in said
    changed, said = run("data-b")
    assert changed.resumed_from is None and any("of another run" in s for s in said)
    assert [h["epoch"] for h in changed.history] == [0, 1]
    assert (wd / "epochs" / "run_key").read_text().strip() == "data-b"


def test_validation_keeps_the_best_epoch_and_resumes_with_it(lineage, tmp_path):
    """With held-out clips, the starting model (epoch 0) and every epoch are scored, and the
    weights returned are the best epoch's - here epoch 1 of 3, by a scripted score - also when
    the run is stopped and resumed between epochs."""
    from safetensors.torch import load_file

    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import Validation, train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    classes = sorted(df["class_name"].unique())

    def config(epochs):
        return TrainConfig(
            stage="esresnext_finetune",
            preset="audioclip-tiny",
            epochs=epochs,
            batch_size=8,
            lr=0.01,
            clip_seconds=1.0,
            max_steps_per_epoch=1,
        )

    held = clipset_dataset(df.iloc[:4], classes, audio_options(config(1)), train=False)
    # accuracy per scoring (epochs trained 0 to 4): 1 of 4 right, then 3, 2, 3 and 2 of 4 -
    # epoch 3 ties epoch 1 on accuracy and must lose on loss (its wrong clip more confidently wrong)
    right = {0: 1, 1: 3, 2: 2, 3: 3, 4: 2}
    calls = []

    def scripted(model, batch):
        epochs = len(calls)
        calls.append(epochs)
        target = batch["target"].view(-1)
        logits = torch.zeros(len(target), len(classes), dtype=torch.float64)
        for i, t in enumerate(target.tolist()):
            logits[i, t if i < right[epochs] else (t + 1) % len(classes)] = 5.0 if epochs != 3 else 9.0
        return logits

    wd = tmp_path / "wd"
    model = builders.build_classifier(config(1), len(classes))
    data = clipset_dataset(df, classes, audio_options(config(1)), train=True)
    val = Validation(held, scripted, ["a", "b", "c", "d"])
    first = train(model, data, steps.classifier_step, config(2), wd, log=lambda m: None, validation=val)
    assert [s["epoch"] for s in first.validation["scores"]] == [0, 1, 2]
    assert first.validation["kept_epoch"] == 1
    # resumed with more epochs: the scores so far and the best weights come back from the state
    model = builders.build_classifier(config(1), len(classes))
    again = train(model, data, steps.classifier_step, config(4), wd, log=lambda m: None, validation=val)
    assert again.resumed_from == 1
    scores = again.validation["scores"]
    assert [s["epoch"] for s in scores] == [0, 1, 2, 3, 4] and len(calls) == 5
    assert [round(s["accuracy"], 2) for s in scores[:4]] == [0.25, 0.75, 0.5, 0.75]
    assert scores[3]["loss"] > scores[1]["loss"] and again.validation["kept_epoch"] == 1
    kept = load_file(str(wd / "epochs" / "best" / "after_001_epochs.safetensors"))
    got = again.model.state_dict()
    assert kept and all(torch.equal(got[k].cpu(), v) for k, v in kept.items())
    last = load_file(str(wd / "epochs" / "epoch_003" / "model.safetensors"))
    assert any(not torch.equal(got[k].cpu(), v) for k, v in last.items() if v.is_floating_point())


def test_fine_tuning_holds_out_whole_recordings_per_class_and_records_them(lineage, tmp_path):
    """A fine-tuning stage with `validation_share` holds out about that share of each class's
    training clips (never the test fold's), names them in its lineage with a score for the
    starting model and every epoch, and writes the kept epoch's weights as its checkpoint."""
    import pandas as pd
    from safetensors.torch import load_file

    from audioclip_core.data.clipsets import ESC50, US8K, validation_split
    from audioclip_core.layout import DataLayout
    from audioclip_core.training.assemble import finetune_spec
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.run import run_stage

    layout = DataLayout.at(lineage["data"])
    cfg = TrainConfig(
        stage="esresnext_finetune",
        preset="audioclip-tiny",
        epochs=2,
        batch_size=8,
        lr=0.01,
        clip_seconds=1.0,
        max_steps_per_epoch=1,
        augment=False,
        validation_share=0.25,
    )
    spec = finetune_spec(layout, "esresnext_esc50", "esc50", 2, cfg, upstream=None)
    spec.workdir = str(tmp_path / "wd")
    result = run_stage(spec, log=lambda m: None)
    record = result.lineage["validation"]
    train = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    test = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "test.parquet", lineage["data"])
    held = train[train["path"].isin(record["clips"])]
    assert len(held) == len(record["clips"]) and not set(record["clips"]) & set(test["path"])
    per_class = held["class_name"].value_counts()
    assert set(per_class.index) == set(train["class_name"]) and (per_class == 1).all()  # 4 per class * 0.25
    assert [s["epoch"] for s in record["scores"]] == [0, 1, 2] and record["kept_epoch"] in (0, 1, 2)
    assert result.validation == record
    kept = load_file(str(tmp_path / "wd" / "epochs" / "best" / f"after_{record['kept_epoch']:03d}_epochs.safetensors"))
    written = load_file(result.checkpoint)
    assert all(torch.equal(written[k], v) for k, v in kept.items())
    from audioclip_core.lineage import chain, format_chain

    said = format_chain(chain(Path(result.checkpoint)))  # what `audioclip lineage` prints of it
    assert f"validation on {len(held)} held-out clips" in said and f"kept: {record['kept_epoch']}" in said
    # an auditor asking which checkpoints a clip went into is told it was held out, not trained on
    from audioclip_core.lineage import HELD_OUT, checkpoints_for_clip, clips_of

    rows = clips_of(Path(result.checkpoint))
    assert {r["clip"] for r in rows if r["use"] == HELD_OUT} == set(record["clips"])
    assert checkpoints_for_clip(record["clips"][0], tmp_path / "wd")[0].via.startswith(HELD_OUT)
    trained = next(r["clip"] for r in rows if r["use"] == "trained on")
    assert checkpoints_for_clip(trained, tmp_path / "wd")[0].via == "trained on it"
    # whole recordings: UrbanSound8K slices of one fsID, ESC-50 takes of one source, stay together
    us8k = pd.DataFrame(
        {
            "path": [f"audio/fold1/{fs}-0-0-{k}.wav" for fs in (100, 101, 102, 103) for k in range(3)],
            "class_name": ["dog"] * 12,
            "status": ["ok"] * 12,
        }
    )
    kept_rows, held_rows = validation_split(us8k, "us8k", 0.3, seed=3)
    rec = {US8K.recording(p) for p in held_rows["path"]}
    assert len(held_rows) == 3 and len(rec) == 1 and not rec & {US8K.recording(p) for p in kept_rows["path"]}
    assert ESC50.recording("audio/1-100032-A-0.wav") == "100032"
    assert validation_split(us8k, "us8k", 0.3, seed=3)[1].equals(held_rows)  # seeded
    assert validation_split(us8k, "us8k", 0.0, seed=3)[1].empty


def test_device_augmentation_trains_as_worker_augmentation(lineage, tmp_path):
    """augment_on="device": the workers read and draw, the loop augments the batch on its device;
    on a CPU the batches, so the losses and weights, are those of the worker placement."""
    from audioclip_core.data.datasets import clipset_dataset
    from audioclip_core.training import builders, steps
    from audioclip_core.training.builders import audio_options
    from audioclip_core.training.config import TrainConfig
    from audioclip_core.training.loop import train

    df = read_manifest(lineage["data"] / "esc50" / "folds" / "2" / "train.parquet", lineage["data"])
    classes = sorted(df["class_name"].unique())
    results = {}
    for placement in ("worker", "device"):
        cfg = TrainConfig(
            stage="esresnext_finetune",
            preset="audioclip-tiny",
            epochs=1,
            batch_size=8,
            lr=0.01,
            clip_seconds=1.0,
            max_steps_per_epoch=2,
            noise_p=0.5,
            augment_on=placement,
        )
        torch.manual_seed(0)
        results[placement] = train(
            builders.build_classifier(cfg, len(classes)),
            clipset_dataset(df, classes, audio_options(cfg), train=True, seed=cfg.seed),
            steps.classifier_step,
            cfg,
            tmp_path / placement,
            log=lambda m: None,
        )
    worker, device = results["worker"], results["device"]
    assert device.history[0]["samples"] == worker.history[0]["samples"] == 16
    assert device.history[0]["loss"] == worker.history[0]["loss"]
    w, d = worker.model.state_dict(), device.model.state_dict()
    assert all(torch.equal(w[k], d[k]) for k in w)
