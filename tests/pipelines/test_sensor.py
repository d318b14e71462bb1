"""Scheduled re-training: the sensor that watches the manifests the AudioSet stages trained on."""

import dagster as dg
import pandas as pd
from conftest import run_config

from assets import training
from assets.resources import DataRoot
from audioclip_core.files import publish_version


def test_retraining_sensor_fires_once_when_a_manifest_changes(lineage, tmp_path):
    import shutil

    from pipelines.automation import retrain_on_new_data

    root = tmp_path / "data"
    shutil.copytree(lineage["data"], root, ignore=shutil.ignore_patterns("checkpoints", "mlflow"))
    res = dict(lineage["res"], data_root=DataRoot(root=str(root)))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(
        [training.esresnext_audioset],
        resources=res,
        instance=instance,
        run_config=run_config("esresnext_audioset", epochs=1),
    ).success

    def evaluate(cursor=None):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"data_root": res["data_root"]})
        return retrain_on_new_data(ctx), ctx.cursor

    result, cursor = evaluate()
    assert isinstance(result, dg.SkipReason) and "unchanged" in result.skip_message
    manifest = root / "audioset" / "manifests" / "balanced_train.parquet"
    df = pd.read_parquet(manifest)
    publish_version(df.iloc[:-1], root / "versions", manifest)  # a clip dropped: the data changed
    result, cursor = evaluate()
    assert isinstance(result, dg.RunRequest) and "esresnext_audioset" in result.tags["audioclip/reason"]
    again, _ = evaluate(cursor)
    assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message
