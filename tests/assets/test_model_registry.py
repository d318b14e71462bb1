"""Models people can use: every stage's checkpoint is an MLflow LoggedModel linked to the data it
read; AudioSet stages register versions with alias `challenger`; `model_promotion` moves `champion`
by its rule on the same evaluation data, re-evaluating a model that has no figures on it."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

pytest.importorskip("mlflow")


def _client(data: Path):
    from audioclip_core.registry import client

    return client(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")


def test_stages_log_models_register_and_link_their_data(lineage, stage_outputs, monkeypatch, capsys):
    from audioclip_core.cli import main
    from audioclip_core.files import sha256_file
    from audioclip_core.registry import version_model_id

    data = lineage["data"]
    cl = _client(data)
    full = stage_outputs["audioclip_full"]
    assert full["registered_model"].startswith("models:/audioclip/") and full["alias_at_registration"] == "challenger"
    version = cl.get_model_version("audioclip", full["registered_model"].rsplit("/", 1)[1])
    assert version.tags["sha256"] == full["sha256"] and version.tags["dagster.data_version"] == full["sha256"][:16]
    assert version.tags["dagster.run_id"] and len(version.tags["dagster.code_version"]) == 16
    manifest_version = Path(version.tags["manifest_version.audioset_balanced_train"])
    assert manifest_version.parent == data / "versions" and manifest_version.is_file()
    assert sha256_file(manifest_version) == full["manifests"]["audioset_balanced_train"]
    # the training run's dataset input: the immutable version, our digest, the clips used
    run = cl.get_run(full["mlflow_run_id"])
    (inp,) = [i for i in run.inputs.dataset_inputs if i.dataset.name.startswith("audioset_balanced_train@")]
    assert inp.dataset.digest == full["manifests"]["audioset_balanced_train"][:36]
    assert str(manifest_version) in inp.dataset.source
    used = int((pd.read_parquet(manifest_version)["status"] == "ok").sum())
    assert '"num_rows": %d' % used in inp.dataset.profile
    assert {t.key: t.value for t in inp.tags}["sha256"] == full["manifests"]["audioset_balanced_train"]
    # the logged model: the checkpoint itself (not a copy among the run's artifacts), linked to that dataset
    model = cl.get_logged_model(version_model_id(version))
    assert model.source_run_id == full["mlflow_run_id"]
    (loss,) = [m for m in model.metrics if m.key == "training_loss_last_epoch"]
    assert loss.dataset_digest == inp.dataset.digest
    assert "audioclip_full.safetensors" not in {f.path for f in cl.list_artifacts(full["mlflow_run_id"])}
    shards = full["lineage"]["manifests"]["audioset_balanced_train"]["shards"]["index_sha256"]
    assert (
        model.tags["shards.audioset_balanced_train"] == shards
        and model.tags["dagster.run_id"] == version.tags["dagster.run_id"]
    )
    # the CLI takes the registered version: the chain of the checkpoint in the registry, verified
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    assert main(["lineage", full["registered_model"]]) == 0
    out = capsys.readouterr().out
    assert "audioclip_full" in out and "VERIFIED" in out and full["sha256"][:12] in out
    # stage 1 registers `esresnext`; a fine-tuned fold logs a model but registers none
    assert stage_outputs["esresnext_audioset"]["registered_model"].startswith("models:/esresnext/")
    fold = stage_outputs["audioclip_esc50"]
    assert fold["model_uri"].startswith("models:/m-") and "registered_model" not in fold


def _log_figures(tracking, layout, model_id: str, accuracy: list[float], digest_of=None):
    """Table 3 rows of one model (mean and folds) logged against it, as the table asset does."""
    from audioclip_core.evaluation.promotion import evaluation_data

    rows = pd.DataFrame(
        [
            {
                "model": "AudioCLIP (full)",
                "task": "zero-shot",
                "dataset": "ESC50",
                "metric": "accuracy",
                "fold": "mean",
                "value": sum(accuracy) / len(accuracy),
                "chance": 0.1,
            }
        ]
        + [
            {
                "model": "AudioCLIP (full)",
                "task": "zero-shot",
                "dataset": "ESC50",
                "metric": "accuracy",
                "fold": str(i + 1),
                "value": v,
                "chance": 0.1,
            }
            for i, v in enumerate(accuracy)
        ]
    )
    d = evaluation_data(layout)["ESC50"]
    with tracking.start_run(layout, "figures", {}):
        ds = tracking.log_manifest(Path(d["version"]), "ESC50", digest_of or d["sha256"], context="evaluation")
        tracking.log_figures(rows, model_ids={"AudioCLIP (full)": model_id}, datasets={"ESC50": ds})


def test_promotion_first_model_then_a_weaker_challenger_then_a_re_evaluation(lineage, stage_outputs, tmp_path):
    from assets import promotion
    from assets.resources import MlflowTracking
    from audioclip_core.layout import DataLayout
    from audioclip_core.serving import log_checkpoint_model

    layout = DataLayout.at(lineage["data"])
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="promotion-test")
    res = dict(lineage["res"], tracking=tracking)
    ckpt = Path(stage_outputs["audioclip_full"]["checkpoint"])
    instance = dg.DagsterInstance.ephemeral()

    def challenger(name: str):
        with tracking.start_run(layout, name, {}):
            info = log_checkpoint_model(
                ckpt, kind="audioclip", name=name, card={}, example_audio=None, labels=[], tags={"sha256": name}
            )
        return info, tracking.register(layout, "audioclip", info.model_uri, {"name": name})

    def promote():
        result = dg.materialize([promotion.model_promotion], resources=res, instance=instance, raise_on_error=False)
        (check,) = result.get_asset_check_evaluations()
        meta = result.asset_materializations_for_node("model_promotion")[-1].metadata
        return check, {k: v.value for k, v in meta.items()}

    cl = tracking.client(layout)
    first, v1 = challenger("first")
    _log_figures(tracking, layout, first.model_id, [0.80, 0.70, 0.90])
    check, meta = promote()
    assert check.passed and meta["champions"]["audioclip"] == f"models:/audioclip/{v1.version}"
    assert "first model becomes champion" in meta["decisions"]
    assert meta["champions"]["esresnext"] is None  # nothing registered under that name here

    weaker, v2 = challenger("weaker")  # e.g. fewer epochs: one fold collapses
    _log_figures(tracking, layout, weaker.model_id, [0.80, 0.40, 0.90])
    check, meta = promote()
    assert not check.passed
    said = check.metadata["reason"].value
    assert "audioclip: rejected" in said and "fold 2: 40.00 vs 70.00 (-30.00 < -10)" in said
    assert cl.get_model_version_by_alias("audioclip", "champion").version == v1.version
    tags = cl.get_model_version("audioclip", v2.version).tags
    assert tags["promotion.outcome"] == "rejected" and "fold 2" in tags["promotion.reason"]
    assert "| zero-shot | ESC50 | accuracy | 2 | 40.00 | 70.00 | -30.00 | -10 | NO |" in meta["decisions"]

    # a challenger whose figures were measured on other evaluation data is evaluated again here,
    # on the manifests of now, and judged on those
    stale, v3 = challenger("stale")
    _log_figures(tracking, layout, stale.model_id, [1.0, 1.0, 1.0], digest_of="0" * 64)
    check, meta = promote()
    fresh = [m for m in cl.get_logged_model(stale.model_id).metrics if m.key.endswith("/mean")]
    from audioclip_core.evaluation.promotion import evaluation_data

    now = evaluation_data(layout)["ESC50"]["sha256"][:36]
    assert any(m.dataset_digest == now for m in fresh), "the stale challenger was not re-evaluated"
    measured = next(
        m.value for m in fresh if m.dataset_digest == now and m.key == "AudioCLIP full/ESC50/zero-shot/accuracy/mean"
    )
    assert 0.0 <= measured <= 100.0 and measured != 100.0 * (0.8 + 0.7 + 0.9) / 3
    outcome = cl.get_model_version("audioclip", v3.version).tags["promotion.outcome"]
    assert outcome in ("promoted", "rejected") and check.passed == (outcome == "promoted")
