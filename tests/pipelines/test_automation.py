"""Scheduled re-training, declaratively (pipelines/automation.py): the chain's condition asks for a
re-training at a cron tick if and only if a dependency's data version changed since its last
materialisation; the fine-tunings and tables follow their parents; nothing runs twice."""

import datetime

import dagster as dg
import pytest

from pipelines import automation

CRON = "0 3 * * 1"  # Mondays 03:00 UTC
WEEK = datetime.timedelta(days=7)
PARTS = dg.StaticPartitionsDefinition(["balanced_train", "eval"])
FOLDS = dg.StaticPartitionsDefinition(["1", "2"])
VERSION = {"balanced_train": "a", "eval": "e"}  # the manifests' content digests, as a test sets them


@dg.asset(partitions_def=PARTS)
def manifest(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(VERSION[context.partition_key]))


@dg.asset(deps=[manifest], automation_condition=automation.retrain_on_cron(CRON))
def stage() -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion("ckpt"))


@dg.asset(deps=[stage], automation_condition=automation.retrain_on_cron(CRON))
def table() -> None:
    return None


@dg.asset(deps=[stage], partitions_def=FOLDS, automation_condition=automation.follow_parents())
def finetune() -> None:
    return None


ASSETS = [manifest, stage, table, finetune]


def requested(result) -> dict:
    return {r.key.to_user_string(): r.true_subset.size for r in result.results if r.true_subset.size}


@pytest.fixture
def trained():
    """An instance where everything was materialised once, at a known time (a Tuesday)."""
    instance = dg.DagsterInstance.ephemeral()
    for p in PARTS.get_partition_keys():
        assert dg.materialize([manifest], partition_key=p, instance=instance).success
    assert dg.materialize([stage, table], instance=instance, selection=[stage, table]).success
    for f in FOLDS.get_partition_keys():
        assert dg.materialize([stage, finetune], selection=[finetune], partition_key=f, instance=instance).success
    return instance


def evaluate(instance, when, cursor=None):
    return dg.evaluate_automation_conditions(defs=ASSETS, instance=instance, evaluation_time=when, cursor=cursor)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def test_nothing_is_requested_a_week_later_when_nothing_changed(trained):
    first = evaluate(trained, now())
    assert requested(first) == {}
    assert requested(evaluate(trained, now() + WEEK, first.cursor)) == {}
    assert requested(evaluate(trained, now() + 2 * WEEK)) == {}  # a fresh evaluation (no cursor) agrees


def test_the_same_bytes_again_keep_it_synced(trained):
    assert dg.materialize([manifest], partition_key="balanced_train", instance=trained).success  # version "a" again
    assert requested(evaluate(trained, now() + WEEK)) == {}


def test_a_changed_manifest_retrains_the_chain_at_the_next_tick_and_the_children_follow(trained):
    VERSION["balanced_train"] = "b"  # a segment added: the manifest's digest changed
    try:
        assert dg.materialize([manifest], partition_key="balanced_train", instance=trained).success
    finally:
        VERSION["balanced_train"] = "a"
    # no cron tick since the last training: wait for it
    assert requested(evaluate(trained, now())) == {}
    later = evaluate(trained, now() + WEEK)
    assert requested(later) == {"stage": 1, "table": 1}  # the table with its parent, in the same run
    chain = next(r for r in later.results if r.key.to_user_string() == "stage")
    assert "data_changed_since_cron_tick" in str(chain.child_results[0].child_results[0].condition.name)
    # the run re-trains the stage (and the table); the fine-tunings follow at the next evaluation,
    # every fold, once; then nothing more
    assert dg.materialize([stage, table], instance=trained).success
    after = evaluate(trained, now() + WEEK + datetime.timedelta(minutes=1), later.cursor)
    assert requested(after) == {"finetune": 2}
    for f in FOLDS.get_partition_keys():
        assert dg.materialize([stage, finetune], selection=[finetune], partition_key=f, instance=trained).success
    assert requested(evaluate(trained, now() + WEEK + datetime.timedelta(minutes=2), after.cursor)) == {}


def test_a_run_in_progress_is_not_requested_again(trained):
    VERSION["eval"] = "e2"
    try:
        assert dg.materialize([manifest], partition_key="eval", instance=trained).success
    finally:
        VERSION["eval"] = "e"
    job = dg.define_asset_job("stage_job", selection=[stage]).resolve(
        asset_graph=dg.Definitions(assets=ASSETS).resolve_asset_graph()
    )
    run = trained.create_run_for_job(job, asset_selection=frozenset({stage.key}), status=dg.DagsterRunStatus.STARTED)
    assert run.status == dg.DagsterRunStatus.STARTED
    assert "stage" not in requested(evaluate(trained, now() + WEEK))


def test_the_real_definitions_carry_the_conditions_and_one_mechanism():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    chain = [
        "clip_towers",
        "esresnext_audioset",
        "audioclip_partial",
        "audioclip_full",
        "table3_zero_shot",
        "table4_querying",
    ]
    for key in chain:
        assert graph.get(dg.AssetKey(key)).automation_condition.get_label().startswith("retrain_on_cron(")
    for key in ["audioclip_esc50", "esresnext_us8k", "table1_esresnext", "table2_audioclip", "model_promotion"]:
        assert graph.get(dg.AssetKey(key)).automation_condition.get_label() == "follow_parents"
    assert graph.get(dg.AssetKey("audioset_manifest")).automation_condition is None
    # training stages and tables declare code versions
    for key in ["audioclip_full", "esresnext_esc50", "table3_zero_shot"]:
        assert len(graph.get(dg.AssetKey(key)).code_version) == 16
    sensors = {s.name: s for s in defs.sensors}
    assert "retrain_on_new_data" not in sensors  # the hand-made sensor is gone
    assert sensors["automation"].default_status == dg.DefaultSensorStatus.RUNNING
    schedule = defs.get_schedule_def("refresh_audioset")
    assert schedule.cron_schedule == automation.DEFAULT_CRON and schedule.job.name == "audioset_data"


def test_the_cron_is_configurable_and_checked(monkeypatch):
    monkeypatch.setenv(automation.CRON_ENV, "0 4 * * *")
    assert automation.retrain_cron() == "0 4 * * *"
    monkeypatch.setenv(automation.CRON_ENV, "every tuesday")
    with pytest.raises(dg.DagsterInvariantViolationError, match="not a valid cron"):
        automation.retrain_cron()


def test_the_refresh_schedule_requests_every_registered_partition():
    # both as context managers: the schedule context opens the instance again from its ref
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=now()) as ctx,
    ):
        assert isinstance(automation.refresh_audioset(ctx), dg.SkipReason)
        instance.add_dynamic_partitions("audioset_partition", ["balanced_train", "eval"])
        reqs = automation.refresh_audioset(ctx)
        assert sorted(r.partition_key for r in reqs) == ["balanced_train", "eval"]
        assert len({r.run_key for r in reqs}) == 2
