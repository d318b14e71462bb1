"""Scheduled re-training, declaratively: Dagster's data versions, automation conditions and one
schedule, no hand-kept state.

- `refresh_audioset` (a schedule, on by default) re-materialises every AudioSet partition
  (segments -> downloads -> clips -> manifest -> shards) on the re-training cron. Downloads
  that fail transiently wait out their back-off (`youtube.retry_after_seconds`) and are retried
  by a later run; a manifest re-made with the same rows keeps its data version.
- The AudioSet chain (`clip_towers`, stages 1-3, Tables 3 and 4) carries `retrain_on_cron`: at
  the first evaluation after a cron tick that came after its last materialisation (or request),
  it is requested if and only if the data version of something it read changed since that
  materialisation - the same comparison that shows it as unsynced in the UI - and neither it
  nor an upstream asset is in progress. A manifest re-made with the same bytes changes nothing.
- What is downstream of the chain - the fine-tunings (per fold), Tables 1 and 2 and
  `model_promotion` - carries `follow_parents`: requested when a parent was updated (or is
  requested in the same tick), once all its parents are done.

`automation` (an automation condition sensor, RUNNING by default) evaluates both every minute.
Turn scheduled re-training off with `dagster sensor stop automation` and `dagster schedule stop
refresh_audioset` (or in the UI: Automation), or for the whole instance with
`auto_materialize: enabled: false` in dagster.yaml. The cron (default weekly, Monday 03:00 UTC):
AUDIOCLIP_RETRAIN_CRON.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import dagster as dg

from assets import audioset, evaluation, promotion, training

DEFAULT_CRON = "0 3 * * 1"
CRON_ENV = "AUDIOCLIP_RETRAIN_CRON"


def retrain_cron() -> str:
    cron = os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON
    from dagster._utils.schedules import is_valid_cron_schedule

    if not is_valid_cron_schedule(cron):  # a clear error at load, not a silent default
        raise dg.DagsterInvariantViolationError(f"{CRON_ENV}={cron!r} is not a valid cron schedule")
    return cron


class DataChangedSinceCronTick(dg.AutomationCondition):
    """True for an (unpartitioned) asset when a tick of `cron` passed since it was last
    materialised or requested, and a dependency's data version differs from the one its last
    materialisation read (Dagster's stale status, category DATA). Stateless: the same answer
    for a fresh evaluation as for one with the sensor's cursor, so a missed tick is not lost."""

    def __init__(self, cron_schedule: str, cron_timezone: str = "UTC"):
        self.cron_schedule, self.cron_timezone = cron_schedule, cron_timezone

    @property
    def name(self) -> str:
        return f"data_changed_since_cron_tick({self.cron_schedule})"

    @property
    def description(self) -> str:
        return f"a dependency's data version changed, and a tick of {self.cron_schedule} passed since the last run"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        due = context.candidate_subset if not context.candidate_subset.is_empty else None
        if due is not None and not changed_at_tick(context, self.cron_schedule, self.cron_timezone):
            due = None
        return dg.AutomationResult(context=context, true_subset=due or context.get_empty_subset())


def _last_handled(instance: dg.DagsterInstance, key: dg.AssetKey) -> Optional[float]:
    """When `key` was last materialised or last requested (the later of the two)."""
    event = instance.get_latest_materialization_event(key)
    times = [event.timestamp] if event is not None else []
    planned = instance.get_latest_planned_materialization_info(key)
    if planned is not None:
        record = instance.get_run_record_by_id(planned.run_id)
        if record is not None and record.create_timestamp is not None:
            times.append(record.create_timestamp.timestamp())
    return max(times) if times else None


def data_causes(instance: dg.DagsterInstance, asset_graph, key: dg.AssetKey, loading_context) -> list:
    """The reasons Dagster shows `key` unsynced that are data (a dependency's version changed)."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory

    resolver = CachingStaleStatusResolver(instance, asset_graph, loading_context)
    return [c for c in resolver.get_stale_causes(key) if c.category == StaleCauseCategory.DATA]


def changed_at_tick(context: dg.AutomationContext, cron: str, tz: str) -> bool:
    from dagster._utils.schedules import reverse_cron_string_iterator

    instance = context.asset_graph_view.instance
    last = _last_handled(instance, context.key)
    if last is None:  # never made: the backfill (`make demo`, the UI's Materialize) makes it
        return False
    tick = next(reverse_cron_string_iterator(context.evaluation_time.timestamp(), cron, tz)).timestamp()
    if tick <= last:
        return False
    causes = data_causes(instance, context.asset_graph, context.key, context.asset_graph_view)
    if causes:
        context.log.info(f"{context.key.to_user_string()}: {'; '.join(c.reason for c in causes)[:500]}")
    return bool(causes)


def retrain_on_cron(cron: str) -> dg.AutomationCondition:
    return (
        (
            DataChangedSinceCronTick(cron)
            | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).with_label(
                "a parent is requested"
            )
        )
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
    ).with_label(f"retrain_on_cron({cron})")


def follow_parents() -> dg.AutomationCondition:
    """A parent requested in this tick, or updated since this asset was last handled."""
    return (
        (
            dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).with_label(
                "a parent is requested"
            )
            | dg.AutomationCondition.any_deps_updated().since_last_handled()
        )
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("follow_parents")


CHAIN = [
    training.clip_towers,
    training.esresnext_audioset,
    training.audioclip_partial,
    training.audioclip_full,
    evaluation.table3_zero_shot,
    evaluation.table4_querying,
]
FOLLOWERS = [
    *training.finetune_assets,
    evaluation.table1_esresnext,
    evaluation.table2_audioclip,
    promotion.model_promotion,
]


def with_automation(assets: list) -> list:
    """`assets` with the chain's and the followers' conditions attached (others as they are)."""
    cron = retrain_cron()
    chain = {a.key for a in CHAIN}
    followers = {a.key for a in FOLLOWERS}
    conditions = {**{k: follow_parents() for k in followers}, **{k: retrain_on_cron(cron) for k in chain}}

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = conditions.get(spec.key)
        return spec.replace_attributes(automation_condition=condition) if condition is not None else spec

    return [a.map_asset_specs(attach) if isinstance(a, dg.AssetsDefinition) else a for a in assets]


with warnings.catch_warnings():  # use_user_code_server is beta in Dagster 1.13
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        use_user_code_server=True,  # the chain's condition is Python of this code location
        description="Scheduled re-training: evaluates the AudioSet chain's and its followers' automation "
        "conditions (pipelines/automation.py). Stop it to turn re-training off.",
    )

audioset_data_job = dg.define_asset_job(
    "audioset_data",
    selection=dg.AssetSelection.groups(audioset.GROUP),
    description="segments -> downloads -> clips -> manifest -> shards for one AudioSet partition",
)


@dg.schedule(
    job=audioset_data_job,
    cron_schedule=retrain_cron(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refresh every AudioSet partition on the re-training cron (AUDIOCLIP_RETRAIN_CRON); a "
    "manifest whose rows changed makes the chain's data unsynced, and `automation` re-trains it.",
)
def refresh_audioset(context: dg.ScheduleEvaluationContext):
    partitions = context.instance.get_dynamic_partitions(audioset.audioset_partitions.name)
    if not partitions:
        return dg.SkipReason("no AudioSet partition is registered yet (dataset_sources registers them)")
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
    return [dg.RunRequest(run_key=f"{p}@{tick}", partition_key=p) for p in partitions]
