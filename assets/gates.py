"""The blocking gates of a training stage - finite weights, not collapsed, above chance - as
Dagster checks, and what happens to a stage that fails one (`reject`: the one place that rule
lives). The figures come from audioclip_core/training/health.py."""

import os
from pathlib import Path

import dagster as dg

from audioclip_core.layout import DataLayout

from .metadata import partitioned_check
from .resources import MlflowTracking

COLLAPSE_CHECK = (
    "not_collapsed",
    "The audio pair terms (audio-text, audio-image) of the last epoch are not at their "
    "value for uniform logits (2 ln n for a batch of n, within 1 %): a model whose audio embeddings "
    "tell no clip of a batch from another fails and blocks what is trained or evaluated from it "
    "(audioclip_core/training/health.py)",
)
FINITE_CHECK = ("finite_weights", "Every tensor of the checkpoint is finite (no NaN or Inf); blocks downstream")
CHANCE_CHECK = (
    "above_chance",
    "In-batch audio-to-caption retrieval of the last epoch is above chance: more than "
    "two standard deviations above its expectation for random scores (the share of identical captions "
    "per clip); a model at chance blocks what is trained or evaluated from it "
    "(audioclip_core/training/health.py)",
)


def check_specs(name: str, contrastive: bool, retrieval: bool = False, partitions_def=None) -> list[dg.AssetCheckSpec]:
    """The gates of stage `name`; with `partitions_def` (a fine-tuning's folds) each fold's
    result is recorded against its fold."""
    specs = [FINITE_CHECK] + ([COLLAPSE_CHECK] if contrastive else []) + ([CHANCE_CHECK] if retrieval else [])
    if partitions_def is not None:
        return [partitioned_check(c, name, partitions_def, blocking=True, description=d) for c, d in specs]
    return [dg.AssetCheckSpec(check, asset=name, blocking=True, description=desc) for check, desc in specs]


QUALITY_GATES = ("block", "record")


def gates(context, history: list[dict], checkpoint: Path, quality: str = "block") -> list[dg.AssetCheckResult]:
    """The gates' results. `quality` "record" (run config `quality_gates`; a rehearsal of the
    pipeline on untrained weights) records a failed `not_collapsed` / `above_chance` as a
    warning that blocks nothing; `finite_weights` always blocks."""
    from audioclip_core.training.health import at_chance, collapse, non_finite_tensors

    if quality not in QUALITY_GATES:
        raise ValueError(f"quality_gates must be one of {', '.join(QUALITY_GATES)}, got {quality!r}")
    severity = dg.AssetCheckSeverity.ERROR if quality == "block" else dg.AssetCheckSeverity.WARN
    note = {} if quality == "block" else {"quality_gates": "record: a failure is recorded, not blocking"}

    bad = non_finite_tensors(checkpoint)
    out = [
        dg.AssetCheckResult(
            check_name=FINITE_CHECK[0],
            passed=not bad,
            metadata={"non_finite_tensors": len(bad), "first_non_finite": bad[:20]},
        )
    ]
    if any(spec.name == COLLAPSE_CHECK[0] for spec in context.assets_def.check_specs):
        report = collapse(history)
        meta = (
            {
                "uniform_logit_value": report["uniform"],
                "last_epoch_terms": report["terms"],
                "ratio_to_uniform": report["ratios"],
            }
            if report
            else {"note": "no contrastive terms recorded"}
        )
        out.append(
            dg.AssetCheckResult(
                check_name=COLLAPSE_CHECK[0],
                passed=not (report and report["collapsed"]),
                metadata={**meta, **note},
                severity=severity,
            )
        )
    if any(spec.name == CHANCE_CHECK[0] for spec in context.assets_def.check_specs):
        report = at_chance(history)
        meta = (
            {k: v for k, v in report.items() if k != "at_chance"}
            if report
            else {"note": "no in-batch retrieval recorded"}
        )
        out.append(
            dg.AssetCheckResult(
                check_name=CHANCE_CHECK[0],
                passed=not (report and report["at_chance"]),
                metadata={**meta, **note},
                severity=severity,
            )
        )
    return out


def reject(result, tracking: MlflowTracking, layout: DataLayout, mlflow_run_id: str, failed: list[dg.AssetCheckResult]):
    """A stage that fails a gate is not materialised: nothing downstream - in this run or a
    later one of the same backfill - may start from it. Its checkpoint and record are set aside
    as `<name>.rejected.*` for inspection, the MLflow run is marked FAILED, and the step fails
    with the gate's figures."""
    reason = "; ".join(
        f"{c.check_name} failed: "
        + ", ".join(f"{k}={v.value if hasattr(v, 'value') else v}" for k, v in (c.metadata or {}).items())
        for c in failed
    )
    checkpoint = Path(result.checkpoint)
    for path in result.files():
        if path.is_file():
            os.replace(path, path.with_name(path.name.replace(checkpoint.stem, checkpoint.stem + ".rejected", 1)))
    tracking.mark_rejected(layout, mlflow_run_id, reason)
    raise dg.Failure(
        description=f"{checkpoint.stem} is not published: {reason}",
        metadata={
            c.check_name: dg.MetadataValue.json(
                {k: (v.value if hasattr(v, "value") else v) for k, v in (c.metadata or {}).items()}
            )
            for c in failed
        },
    )
