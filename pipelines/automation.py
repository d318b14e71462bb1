"""Scheduled re-training: re-materialise the training chain when its data changed.

`retrain_on_new_data` (a sensor, STOPPED by default; start it in the UI or with
`dagster sensor start retrain_on_new_data`) compares, every `minimum_interval_seconds`, the
SHA-256 of each manifest that the last materialisation of a training stage recorded with the
manifest on disk now. When one differs - a new AudioSet shard downloaded, a re-validated
ESC-50 folder - it requests one run of the `retrain_audioset_chain` job (the CLIP towers, stages 1-3 and the
zero-shot and querying tables). The digests it acted on are kept in the cursor, so one change
triggers one run.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from assets import evaluation, training
from assets.resources import DataRoot

CHAIN = [
    training.clip_towers,
    training.esresnext_audioset,
    training.audioclip_partial,
    training.audioclip_full,
    evaluation.table3_zero_shot,
    evaluation.table4_querying,
]

retrain_audioset_chain = dg.define_asset_job(
    "retrain_audioset_chain",
    selection=dg.AssetSelection.assets(*CHAIN),
    description="The CLIP towers (the demo's stand-in trains on AudioSet frames), AudioSet training "
    "stages 1-3 and the tables that read them",
)

WATCHED = ("clip_towers", "esresnext_audioset", "audioclip_partial", "audioclip_full")


def changed_manifests(instance: dg.DagsterInstance) -> dict[str, dict]:
    """stage -> {manifest path: (recorded sha, current sha)} for manifests that changed."""
    from audioclip_core.files import sha256_file

    out = {}
    for stage in WATCHED:
        event = instance.get_latest_materialization_event(dg.AssetKey(stage))
        if event is None or event.asset_materialization is None:
            continue
        lineage = event.asset_materialization.metadata.get("lineage")
        manifests = (lineage.value if lineage is not None else {}).get("manifests", {})
        diffs = {}
        for m in manifests.values():
            path = Path(m["path"])
            now = sha256_file(path) if path.is_file() else "missing"
            if now != m["sha256"]:
                diffs[str(path)] = (m["sha256"], now)
        if diffs:
            out[stage] = diffs
    return out


@dg.sensor(
    job=retrain_audioset_chain,
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=3600,
    description="Re-train the AudioSet chain when a manifest it was trained on changed (off by default).",
)
def retrain_on_new_data(context: dg.SensorEvaluationContext, data_root: DataRoot):
    changes = changed_manifests(context.instance)
    if not changes:
        return dg.SkipReason("every training stage's manifests are unchanged")
    key = hashlib.sha256(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:16]
    if context.cursor == key:
        return dg.SkipReason("a re-training run was already requested for these changes")
    context.update_cursor(key)
    summary = "; ".join(f"{stage}: {len(d)} manifest(s)" for stage, d in changes.items())
    return dg.RunRequest(run_key=f"retrain-{key}", tags={"audioclip/reason": f"data changed - {summary}"[:250]})
