"""`model_promotion`: whether the latest re-training (alias `challenger`) of each registered model
becomes the model in use (alias `champion`), decided by `audioclip_core.evaluation.promotion`'s
rule on the figures both models have on the evaluation manifests of the data root now.

A model's figures are the table figures logged against its MLflow LoggedModel for the digests of
those manifests; a model without them - the champion after the evaluation data changed - is
evaluated here first (and those figures logged against it). The decision, its figures and its
reason go into the asset's metadata, onto both model versions (tags `promotion.*`) and into an
MLflow run; the blocking check `challenger_accepted` fails when a challenger is rejected, so the
UI shows why. The first model of a registered name becomes champion.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from .evaluation import table1_esresnext, table3_zero_shot, table4_querying
from .resources import DataRoot, DatasetSources, MlflowTracking
from .training import audioclip_full, esresnext_audioset

GROUP = "models"
CHECK = "challenger_accepted"


class PromotionConfig(dg.Config):
    mean_tolerance: float = Field(
        default=1.0, description="percentage points a figure's fold mean may fall below the champion's"
    )
    fold_collapse: float = Field(
        default=10.0, description="percentage points one fold may fall below the champion's same fold"
    )
    min_mean_change: float = Field(
        default=0.0, description="percentage points the fold means must change by on average (0: not worse)"
    )
    audioset_partition: str = "eval"


def _figures(cl, model_id: str, data: dict, tasks: tuple) -> dict:
    """The figures of `tasks` logged against `model_id` for the manifests in `data` (by digest)."""
    from .resources.tracking import dataset_digest, parse_figure_name

    out = {}
    for m in cl.get_logged_model(model_id).metrics or []:
        parsed = parse_figure_name(m.key)
        if parsed is None:
            continue
        _, dataset, task, metric, fold = parsed
        if (fold != "mean" and not fold.isdigit()) or task not in tasks:
            continue
        if dataset in data and m.dataset_digest != dataset_digest(data[dataset]["sha256"]):
            continue  # measured on another version of the evaluation data
        out[(task, dataset, metric, fold)] = float(m.value)
    return out


def _judge(
    context, registered: str, config: PromotionConfig, layout, labels, tracking: MlflowTracking, datasets, data
) -> dict:
    import mlflow

    from audioclip_core.evaluation.promotion import JUDGED_BY, Rule, decide, evaluate_checkpoint
    from audioclip_core.registry import CHALLENGER, CHAMPION, aliases, resolve_checkpoint, version_model_id

    store = tracking.uri(layout)
    cl = tracking.client(layout)
    found = aliases(registered, layout, store)
    challenger, champion = found.get(CHALLENGER), found.get(CHAMPION)
    if challenger is None:
        return {"registered": registered, "outcome": "nothing to judge", "reason": "no version has alias challenger"}
    _, model_name, tasks = JUDGED_BY[registered]

    def figures_of(version) -> dict:
        model_id = version_model_id(version)
        got = _figures(cl, model_id, data, tasks)
        if not got:  # never evaluated on these manifests: evaluate it now, and keep the figures
            context.log.info(f"evaluating {registered} version {version.version} on the evaluation data of now")
            path = resolve_checkpoint(f"models:/{registered}/{version.version}", layout, store)
            rows = evaluate_checkpoint(registered, path, layout, labels, audioset_partition=config.audioset_partition)
            tracking.log_figures(rows, model_ids={model_name: model_id}, datasets=datasets)
            got = _figures(cl, model_id, data, tasks)
        return got

    rule = Rule(config.mean_tolerance, config.fold_collapse, config.min_mean_change)
    same = (
        champion is not None
        and champion.tags.get("sha256")
        and champion.tags.get("sha256") == challenger.tags.get("sha256")
    )
    if champion is not None and champion.version == challenger.version:
        outcome, reason = "kept", f"version {challenger.version} is already champion"
        decision = None
    elif same:
        outcome, reason = "kept", f"the same weights as the champion (version {champion.version}, sha256 equal)"
        decision = None
    else:
        if champion is None:  # the first model: nothing to compare it with
            decision = decide({}, None, rule)
        else:
            decision = decide(figures_of(challenger), figures_of(champion), rule)
        outcome, reason = ("promoted" if decision.promote else "rejected"), decision.reason
    if outcome == "promoted":
        cl.set_registered_model_alias(registered, CHAMPION, challenger.version)
    vs = f"version {champion.version}" if champion is not None else "none"
    tags = {
        "promotion.outcome": outcome,
        "promotion.reason": reason[:5000],
        "promotion.against": vs,
        "promotion.dagster_run_id": context.run.run_id,
    }
    for k, v in tags.items():
        cl.set_model_version_tag(registered, challenger.version, k, v)
    if champion is not None and outcome != "kept":
        cl.set_model_version_tag(
            registered, champion.version, "promotion.last_challenger", f"version {challenger.version}: {outcome}"
        )
    result = {
        "registered": registered,
        "outcome": outcome,
        "reason": reason,
        "challenger": f"models:/{registered}/{challenger.version}",
        "champion_before": f"models:/{registered}/{champion.version}" if champion is not None else None,
        "champion": f"models:/{registered}/{challenger.version if outcome == 'promoted' else champion.version}",
        "rule": rule.describe(),
    }
    if decision is not None:
        result["decision"] = decision.to_dict()
        result["table"] = decision.table() if decision.comparisons else None
        mlflow.log_dict(decision.to_dict(), f"{registered}_decision.json")
    return result


@dg.asset(
    group_name=GROUP,
    deps=[audioclip_full, esresnext_audioset, table1_esresnext, table3_zero_shot, table4_querying],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="model_promotion",
            blocking=True,
            description="Fails when a challenger is rejected: its figures fall outside the rule against the "
            "champion's on the same evaluation data (the metadata lists each figure).",
        )
    ],
    description="Registry aliases: the latest re-training of `audioclip` (full) and `esresnext` (alias "
    "challenger) becomes champion when its zero-shot and querying figures (ESResNeXt: AudioSet mAP) are not "
    "worse than the champion's on the same evaluation manifests, by the stated rule; the first model "
    "becomes champion.",
)
def model_promotion(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    data_root: DataRoot,
    sources: DatasetSources,
    tracking: MlflowTracking,
) -> dg.MaterializeResult:
    from audioclip_core.data.manifests import label_index_for
    from audioclip_core.evaluation.promotion import JUDGED_BY, evaluation_data

    layout = data_root.layout
    data = evaluation_data(layout, config.audioset_partition)
    labels = label_index_for(sources.audioset(layout))
    tags = {"dagster.run_id": context.run.run_id, "dagster.asset_key": "model_promotion", "kind": "promotion"}
    with tracking.start_run(layout, "model_promotion", tags) as run:
        datasets = {
            name: tracking.log_manifest(Path(d["version"]), name, d["sha256"], context="evaluation")
            for name, d in data.items()
        }
        results = [_judge(context, r, config, layout, labels, tracking, datasets, data) for r in JUDGED_BY]
        link = tracking.run_link(run)
    rejected = [r for r in results if r["outcome"] == "rejected"]
    summary = "; ".join(f"{r['registered']}: {r['outcome']} ({r['reason']})" for r in results)
    context.log.info(summary)
    metadata = {
        "decisions": dg.MetadataValue.md(_markdown(results)),
        "champions": dg.MetadataValue.json({r["registered"]: r.get("champion") for r in results}),
        "evaluation_data": dg.MetadataValue.json({k: v["sha256"] for k, v in data.items()}),
        "mlflow_run": dg.MetadataValue.url(link),
    }
    check = dg.AssetCheckResult(
        check_name=CHECK,
        passed=not rejected,
        metadata={
            "outcome": "; ".join(f"{r['registered']}: {r['outcome']}" for r in results),
            "reason": summary[:4000],
            **({"figures": dg.MetadataValue.md(_markdown(rejected))} if rejected else {}),
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"### {r['registered']}: {r['outcome']}", "", r["reason"], ""]
        if r.get("challenger"):
            lines += [
                f"challenger {r['challenger']}, champion before {r.get('champion_before') or 'none'}, "
                f"champion now {r.get('champion')}",
                "",
                f"rule: {r['rule']}",
                "",
            ]
        if r.get("table"):
            lines += [r["table"], ""]
    return "\n".join(lines)
