"""The training stage assets on the tiny preset and the demo data, materialised through Dagster."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from conftest import REPO, materialize_stage, run_config, weights

from assets import training
from assets.resources import DataRoot


def test_every_stage_runs_and_its_loss_falls(stage_outputs):
    """A few seeded epochs on the demo data lower every stage's loss. The stages train in
    float64, so the whole trajectory is the same on every CPU to ~1e-12 (float32 sums in
    another order differ at ~1e-7 and, compounded over the steps, by more than the smallest
    fall here: cooperative ESC-50 fine-tuning moves its loss by ~1e-3 relative in 5 epochs)."""
    for name, meta in stage_outputs.items():
        assert meta["epochs"] >= 3, name
        assert Path(meta["checkpoint"]).is_file() and len(meta["sha256"]) == 64
        if name == "audioclip_full":
            # all three towers train here, on the demo's frames, which leave each frame two candidate
            # classes on purpose: over 4 epochs of these 30 clips the image terms drift up (audio-image
            # 3.42 -> 3.75, image-text 2.40 -> 2.62; the total 1.61 -> 1.64) while the audio-text term
            # falls (2.97 -> 2.62) and in-batch audio-to-caption accuracy rises (0.33 -> 0.58)
            first, last = meta["lineage"]["history"][0], meta["lineage"]["history"][-1]
            assert last["loss_audio_text"] < first["loss_audio_text"], (first, last)
            assert last["acc_audio_text"] > first["acc_audio_text"], (first, last)
            continue
        assert meta["loss_last_epoch"] < meta["loss_first_epoch"], (
            name,
            meta["loss_first_epoch"],
            meta["loss_last_epoch"],
        )


def test_lineage_names_manifests_code_and_runs(stage_outputs, lineage):
    import mlflow

    meta = stage_outputs["audioclip_partial"]
    rec = meta["lineage"]
    parent = stage_outputs["esresnext_audioset"]
    assert rec["parent"]["sha256"] == parent["sha256"] and rec["parent"]["name"] == "esresnext_audioset"
    manifest = lineage["data"] / "audioset" / "manifests" / "balanced_train.parquet"
    from audioclip_core.files import sha256_file

    assert rec["manifests"]["audioset_balanced_train"]["sha256"] == sha256_file(manifest)
    assert rec["code"]["git_commit"] and rec["dagster"]["run_id"] and rec["mlflow_run_id"] == meta["mlflow_run_id"]
    on_disk = json.loads(Path(meta["checkpoint"]).with_suffix(".lineage.json").read_text())
    assert on_disk["checkpoint"]["sha256"] == meta["sha256"]
    mlflow.set_tracking_uri(f"sqlite:///{lineage['data'] / 'mlflow' / 'mlflow.db'}")
    run = mlflow.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["dagster.asset_key"] == "audioclip_partial"
    assert "loss_audio_text" in run.data.metrics and "samples_per_s" in run.data.metrics
    assert {"acc_audio_text", "acc_chance"} <= set(run.data.metrics)  # what above_chance judges
    # the asset links the run in MLflow's model-training view (a fresh browser opens GenAI)
    assert meta["mlflow_run"].endswith(
        f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    )
    assert float(run.data.params["lr"]) > 0 and run.inputs.dataset_inputs
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"audioclip_partial.lineage.json", "config.json"} <= arts
    # the checkpoint is the run's logged model (one copy, not also a run artifact)
    logged = mlflow.MlflowClient().get_logged_model(meta["model_uri"].removeprefix("models:/"))
    assert logged.source_run_id == run.info.run_id and logged.tags["sha256"] == meta["sha256"]
    files = {a.path for a in mlflow.MlflowClient().list_logged_model_artifacts(logged.model_id, "artifacts")}
    assert "artifacts/audioclip_partial.safetensors" in files and "audioclip_partial.safetensors" not in arts
    # stage 1 also wrote the ESRNXFBSP layout the original code reads
    import audioclip_core as ac

    head = ac.load_audio_classifier(
        Path(stage_outputs["esresnext_audioset"]["checkpoint"]).with_suffix(".esrnxfbsp.pt"), preset="audioclip-demo"
    )
    assert head.fc.out_features == 527


def test_frozen_teachers_unchanged_and_cooperative_changes_only_audio(stage_outputs):
    partial = weights(stage_outputs["audioclip_partial"]["checkpoint"])
    full = weights(stage_outputs["audioclip_full"]["checkpoint"])
    coop = weights(stage_outputs["audioclip_esc50"]["checkpoint"])
    # the partial stage distilled into the towers that clip_towers trained (the demo's stand-in
    # for CLIP) and left them as they were
    towers = weights(stage_outputs["clip_towers"]["checkpoint"])
    teacher = [
        k
        for k in partial
        if k.startswith(
            ("visual.", "transformer.", "token_embedding", "ln_final", "positional_embedding", "text_projection")
        )
        or k == "logit_scale"
    ]
    assert teacher
    for k in teacher:
        assert torch.equal(partial[k], towers[k]), f"frozen teacher tensor changed: {k}"
    # ... which the stand-in did train, from the fresh towers of the run's seed
    import audioclip_core as ac

    torch.manual_seed(0)
    fresh = ac.build_model("audioclip-demo").state_dict()
    assert any(not torch.equal(towers[k], fresh[k].to(towers[k].dtype)) for k in teacher if k.startswith("visual."))
    record = stage_outputs["audioclip_partial"]["lineage"]["clip_towers"]
    assert record["kind"] == "standin" and record["sha256"] == stage_outputs["clip_towers"]["sha256"]
    changed = {k for k in coop if not torch.equal(coop[k], full[k])}
    assert changed and all(k.startswith("audio.") or k in ("logit_scale_ai", "logit_scale_at") for k in changed), (
        sorted(k for k in changed if not k.startswith("audio."))
    )
    assert any(not torch.equal(full[k], partial[k]) for k in full if k.startswith("visual."))  # full trains all


def test_released_checkpoint_as_the_starting_point(stage_outputs, lineage, tmp_path):
    import audioclip_core as ac

    model = ac.load_model(stage_outputs["audioclip_full"]["checkpoint"])
    released = ac.export_official(model, tmp_path / "AudioCLIP-Full-Training.pt")
    meta = materialize_stage(lineage, training.audioclip_esc50, "2", init_checkpoint=str(released), epochs=1)
    assert meta["lineage"]["parent"]["name"] == "released"
    assert meta["lineage"]["parent"]["path"] == str(released)


def _cli_env(lineage):
    env = dict(
        os.environ,
        AUDIOCLIP_DATA_ROOT=str(lineage["data"]),
        AUDIOCLIP_AUDIOSET_DIR=str(lineage["src"] / "audioset"),
        DAGSTER_HOME=str(lineage["base"] / "dh"),
        PYTHONUNBUFFERED="1",
    )
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    return env


def _cli(lineage, data_root, epochs=8, **popen):
    env = _cli_env(lineage)
    env["AUDIOCLIP_DATA_ROOT"] = str(data_root)
    cfg = json.dumps({"ops": {"esresnext_audioset": {"config": {"epochs": epochs, "batch_size": 8}}}})
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "pipelines.definitions",
        "--select",
        "esresnext_audioset",
        "--config-json",
        cfg,
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **popen
    )


def test_sigkill_mid_epoch_resumes_to_identicalweights(lineage, tmp_path):
    import shutil

    roots = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        for sub in ("audioset", "shards"):  # the clips, and the shards training reads them from
            shutil.copytree(lineage["data"] / sub, root / sub)
        roots[name] = root
    assert _cli(lineage, roots["straight"]).wait(timeout=600) == 0
    proc = _cli(lineage, roots["killed"])
    epochs = roots["killed"] / "checkpoints" / "esresnext_audioset" / "epochs"
    deadline = time.time() + 600
    while not (epochs / "epoch_000" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(0.3)  # inside epoch 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    final = roots["killed"] / "checkpoints" / "esresnext_audioset" / "esresnext_audioset.safetensors"
    assert not final.exists()
    assert _cli(lineage, roots["killed"]).wait(timeout=600) == 0
    a = weights(roots["straight"] / "checkpoints" / "esresnext_audioset" / "esresnext_audioset.safetensors")
    b = weights(final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rec = json.loads(final.with_suffix(".lineage.json").read_text())
    assert rec["resumed_from_epoch"] is not None and rec["resumed_from_epoch"] >= 0


def test_two_processes_match_one_on_the_same_global_batch(lineage, stage_outputs, tmp_path):
    """torchrun with 2 CPU processes (gloo, DDP, features gathered across ranks) through Dagster
    Pipes reaches the weights one process reaches on the same global batches - on one node, and
    on 2 nodes x 1 process (two torchrun agents meeting in a c10d rendezvous on 127.0.0.1,
    started by the `launcher` resource as a cluster's nodes would be).

    Both runs train in float64. In float32 the gloo all-reduce sums in another order than one
    process does (~1e-7 relative), which can flip a max pool's argmax and move a whole gradient;
    how far depends on the CPU family, so no float32 tolerance holds on every machine. In float64
    the same reordering is ~1e-16 relative: even magnified by the fbsp gradients' unit max-norm
    rescaling (it divides near-zero entries by a small maximum; ~5e4x was seen in float32) and by
    two SGD steps, the difference stays far below TOL, while a real mismatch (a gradient not
    averaged, a loss not scaled by the world size, a shard of other samples) moves weights by
    the size of an SGD step, which the test checks is more than 1e4 x TOL."""
    import shutil

    TOL = 1e-9
    results = {}
    for nproc, nnodes in ((1, 1), (2, 1), (1, 2)):
        root = tmp_path / f"n{nproc}x{nnodes}"
        shutil.copytree(lineage["data"], root, ignore=shutil.ignore_patterns("audioclip_esc50", "mlflow"))
        res = dict(lineage["res"], data_root=DataRoot(root=str(root)))
        result = dg.materialize(
            [training.audioclip_esc50],
            resources=res,
            partition_key="2",
            run_config=run_config(
                "audioclip_esc50",
                epochs=1,
                batch_size=8,
                max_steps_per_epoch=2,
                freeze_bn=True,
                nproc_per_node=nproc,
                nnodes=nnodes,
                dtype="float64",
                validation_share=0.0,  # the same training in 1 and 2 processes, its last epoch
            ),
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        meta = result.asset_materializations_for_node("audioclip_esc50")[-1].metadata
        assert meta["nproc_per_node"].value == nproc and meta["nnodes"].value == nnodes
        lineage_record = meta["lineage"].value
        results[(nproc, nnodes)] = (weights(meta["checkpoint"].value), meta["loss_first_epoch"].value, lineage_record)
    (w1, loss1, _), (w2, loss2, _), (w3, loss3, rec3) = results[(1, 1)], results[(2, 1)], results[(1, 2)]
    assert abs(loss1 - loss2) < TOL * max(1.0, abs(loss1)), (loss1, loss2)
    assert abs(loss1 - loss3) < TOL * max(1.0, abs(loss1)), (loss1, loss3)
    # every node read its clips from the shards the lineage names, down to each shard's digest
    shards = rec3["manifests"]["esc50_fold2_train"]["shards"]
    assert shards["folder"].startswith("shards/esc50/") and all(len(s["sha256"]) == 64 for s in shards["shards"])
    parent = weights(stage_outputs["audioclip_full"]["checkpoint"])
    floats = [k for k in w1 if w1[k].is_floating_point() and w1[k].numel()]
    assert all(w1[k].dtype == torch.float64 and w2[k].dtype == torch.float64 for k in floats)
    moved = {k: float((w1[k] - parent[k].double()).abs().max()) for k in floats}
    assert max(moved.values()) > 1e4 * TOL, moved  # training moved the weights well above TOL
    for other in (w2, w3):
        worst = {k: float((w1[k] - other[k]).abs().max()) for k in floats}
        assert max(worst.values()) < TOL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def test_a_stage_that_fails_a_gate_is_set_aside_not_published(tmp_path):
    """A failed gate: the checkpoint and its record are renamed `.rejected`, so no later run
    (a fine-tune, a table) can start from them; the MLflow run is FAILED; the step fails."""
    import mlflow

    from assets.gates import reject
    from assets.resources import MlflowTracking
    from audioclip_core.layout import DataLayout
    from audioclip_core.training.spec import StageResult

    layout = DataLayout.at(tmp_path / "data")
    folder = layout.checkpoint_dir("audioclip_full")
    folder.mkdir(parents=True)
    ck, rec = folder / "audioclip_full.safetensors", folder / "audioclip_full.lineage.json"
    ck.write_bytes(b"w")
    rec.write_text("{}")
    tracking = MlflowTracking()
    with tracking.start_run(layout, "audioclip_full", {}) as run:
        run_id = run.info.run_id
    failed = [dg.AssetCheckResult(check_name="not_collapsed", passed=False, metadata={"ratio": 1.001})]
    with pytest.raises(dg.Failure, match="audioclip_full is not published: not_collapsed failed: ratio=1.001"):
        reject(StageResult(checkpoint=str(ck), lineage_path=str(rec), history=[]), tracking, layout, run_id, failed)
    assert not ck.exists() and not rec.exists()
    assert (folder / "audioclip_full.rejected.safetensors").is_file()
    assert (folder / "audioclip_full.rejected.lineage.json").is_file()
    mlflow.set_tracking_uri(tracking.uri(layout))
    got = mlflow.MlflowClient().get_run(run_id)
    assert got.info.status == "FAILED" and "not_collapsed" in got.data.tags["gate_failed"]


def test_a_paper_stage_2_without_clip_weights_stops_with_a_clear_message(stage_outputs, lineage):
    """The paper profile refuses to distil from random "teachers": the run fails before any
    training or tracking, naming the config key, the file and where it is published."""
    result = dg.materialize(
        [training.audioclip_partial],
        resources=lineage["res"],
        raise_on_error=False,
        run_config=run_config("audioclip_partial", profile="paper"),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    err = failure.step_failure_data.error
    while err.cause is not None:
        err = err.cause
    assert "`clip_weights` is not set" in err.message and "CLIP.pt" in err.message
    assert "allow_random_init" in err.message


def _error(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    err = failure.step_failure_data.error
    while err.cause is not None:
        err = err.cause
    return err.message


def test_clip_towers_in_the_paper_profile_load_clip_weights_or_refuse(stage_outputs, lineage, tmp_path):
    """Outside the demo, clip_towers trains nothing: it loads the CLIP file given, strictly,
    and publishes it with its sha256 for stage 2 - and without one it refuses, as stage 2 does."""
    import audioclip_core as ac
    from audioclip_core.files import sha256_file

    res = {**lineage["res"], "data_root": DataRoot(root=str(tmp_path / "data"))}
    result = dg.materialize(
        [training.clip_towers],
        resources=res,
        raise_on_error=False,
        run_config=run_config("clip_towers", profile="paper"),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    msg = _error(result)
    assert "`clip_weights` is not set" in msg and "CLIP.pt" in msg and "allow_random_init" in msg
    clip = ac.export_official(ac.load_model(stage_outputs["clip_towers"]["checkpoint"]), tmp_path / "CLIP.pt", "clip")
    meta = materialize_stage(
        {**lineage, "res": res}, training.clip_towers, profile="paper", preset="audioclip-demo", clip_weights=str(clip)
    )
    assert meta["towers"] == {"kind": "clip_weights", "path": str(clip), "sha256": sha256_file(clip)}
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(clip.read_bytes()[:1000])
    result = dg.materialize(
        [training.clip_towers],
        resources=res,
        raise_on_error=False,
        run_config=run_config("clip_towers", profile="paper", preset="audioclip-demo", clip_weights=str(truncated)),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert not result.success and "truncated.pt" in _error(result)


def test_a_fine_tuning_run_logs_validation_on_the_training_steps(stage_outputs, lineage):
    """MLflow steps are epochs trained for every metric (validation 0 = the starting model), so
    the charts line up; the kept epoch's scores are logged apart from the last epoch's."""
    import mlflow

    meta = stage_outputs["audioclip_esc50"]
    cl = mlflow.MlflowClient(tracking_uri=f"sqlite:///{lineage['data'] / 'mlflow' / 'mlflow.db'}")
    run_id = meta["mlflow_run_id"]
    epochs = meta["epochs"]
    assert sorted(m.step for m in cl.get_metric_history(run_id, "loss")) == list(range(1, epochs + 1))
    val = {m.step: m.value for m in cl.get_metric_history(run_id, "validation_accuracy")}
    assert sorted(val) == list(range(0, epochs + 1))
    metrics = cl.get_run(run_id).data.metrics
    assert metrics["kept_validation_accuracy"] == val[meta["kept_epoch"]]
    assert metrics["kept_validation_accuracy"] == max(val.values())  # the rule: best accuracy first
    # the logged model is linked to the run's metrics at its step: the kept weights' scores
    model_id = meta["mlflow_model"].rsplit("/models/", 1)[1].split("?")[0]
    linked = {m.key: m for m in cl.get_logged_model(model_id).metrics or []}
    assert linked["validation_accuracy"].step == meta["kept_epoch"]
    assert linked["validation_accuracy"].value == val[meta["kept_epoch"]]


def test_quality_gates_record_warns_and_blocks_nothing_but_non_finite_weights_still_block(tmp_path):
    """`quality_gates: record` (a rehearsal on untrained weights): a stage at chance gets a failed
    WARN check - recorded, nothing set aside - while `block` (the default) fails it with ERROR;
    NaN weights are an ERROR either way."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from assets.gates import check_specs, gates

    context = SimpleNamespace(assets_def=SimpleNamespace(check_specs=check_specs("audioclip_partial", True, True)))
    history = [{"loss_audio_text": 4.15888, "loss_uniform": 2 * 1.3863, "acc_audio_text": 0.5, "acc_chance": 0.5}]
    history[0]["samples"] = 8
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_file({"w": torch.ones(3)}, str(good))
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(bad))

    blocked = {c.check_name: c for c in gates(context, history, good)}
    assert not blocked["above_chance"].passed and blocked["above_chance"].severity == dg.AssetCheckSeverity.ERROR
    recorded = {c.check_name: c for c in gates(context, history, good, "record")}
    assert not recorded["above_chance"].passed and recorded["above_chance"].severity == dg.AssetCheckSeverity.WARN
    assert "record" in recorded["above_chance"].metadata["quality_gates"].value
    assert recorded["finite_weights"].passed
    nan = {c.check_name: c for c in gates(context, history, bad, "record")}
    assert not nan["finite_weights"].passed and nan["finite_weights"].severity == dg.AssetCheckSeverity.ERROR
    with pytest.raises(ValueError, match="quality_gates must be one of block, record"):
        gates(context, history, good, "off")
