"""The main job (`make demo`): the whole lineage on the built-in demo data, run by Dagster.

Launches the backfill of every asset and all of its partitions through the Dagster instance
in DAGSTER_HOME (pipelines/backfill.py): the daemon runs `dataset_sources` (which generates
the demo dataset into the data root, once), the AudioSet partitions (downloaded with yt-dlp
from the stand-in media server on 127.0.0.1 that the `youtube` resource starts for each
download step), the ESC-50 / UrbanSound8K folds, the training stages and the four tables, in
dependency order. This script waits, printing a line per finished run, then prints the tables
(audioclip_core/evaluation/report.py `render_tables`: the legend and the protocol they share
once, under each table what its rows can show and its own protocol statements) and the verdict
(audioclip_core/evaluation/verdict.py): whether they show the paper's claims, each figure
against its chance level.

    python -m pipelines.demo [--seed N] [--strict]   # make demo SEED=N STRICT=1
--seed: the data and every stage seeded by N; --strict (or STRICT=1): exit 3 when a claim of the
verdict fails (by default the exit status says whether the pipeline ran).
`make ui` then shows every run (re-executable) and asset, with its metadata and checks;
`make mlflow-ui` shows the training and evaluation runs.
"""

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLES = ("table1_esresnext", "table2_audioclip", "table3_zero_shot", "table4_querying")


def main(argv=None) -> int:
    import argparse

    if not sys.stderr.isatty():  # MLflow's download bar (the champion's example) not in a redirected log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import pandas as pd

    from audioclip_core.data.demo_dataset import SEED_ENV, SeedMismatch, demo_seed, generated_seed
    from audioclip_core.evaluation.report import render_tables
    from audioclip_core.evaluation.verdict import judge, render
    from audioclip_core.layout import DataLayout

    from .backfill import run_lineage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the demo data and of every stage (default: ${SEED_ENV}, else 0)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=os.environ.get("STRICT", "") not in ("", "0"),
        help="exit 3 when a claim of the verdict fails (default: 0 once the pipeline ran; $STRICT=1)",
    )
    args = parser.parse_args(argv)
    seed = demo_seed(args.seed)
    os.environ[SEED_ENV] = str(seed)  # the Dagster processes started here inherit it
    start = time.time()
    for var in ("AUDIOCLIP_AUDIOSET_DIR", "AUDIOCLIP_ESC50_DIR", "AUDIOCLIP_US8K_DIR"):
        if os.environ.get(var):
            print(f"note: {var} is set; the demo uses it instead of the built-in data")
    layout = DataLayout.at(None)
    print(f"data root: {layout.root}   seed: {seed}", flush=True)
    have = generated_seed(layout.demo_source)
    if have is not None and have != seed:
        print(
            str(
                SeedMismatch(
                    f"{layout.demo_source} holds the demo dataset of seed {have}, not {seed}: give each "
                    "seed its own data root and Dagster home, e.g. AUDIOCLIP_DATA_ROOT=data-seed"
                    f"{seed} DAGSTER_HOME=$PWD/dagster-seed{seed} (a copy of dagster_home/dagster.yaml "
                    "in it)"
                )
            ),
            file=sys.stderr,
        )
        return 2
    failures: list[str] = []
    ok = run_lineage(
        "demo", say=lambda line: print(line, flush=True), tags={"audioclip/seed": str(seed)}, failures=failures
    )
    promotion = promotion_summary(layout)
    if not ok and failures and all(f.startswith("model_promotion") for f in failures) and promotion["rejected"]:
        ok = True  # a rejected challenger is a decision (its check failed, as it should), not a failed demo
    if not ok:
        print(
            "\nThe demo did not complete: the failed runs are listed above; `make ui` shows their logs. "
            "Re-running `make demo` keeps what is done.",
            file=sys.stderr,
        )
        return 1
    # the legend and the shared protocol once, each table with what its rows can show
    print("\n" + render_tables({name: layout.table(name, ".md").read_text(encoding="utf-8") for name in TABLES}))
    claims = judge({name: pd.read_parquet(layout.table(name)) for name in TABLES})
    print("\n" + render(claims) + "\n")
    print(promotion["text"] + "\n")
    warned = warned_checks()
    if warned:
        print("Checks that warned (severity WARN: recorded, not blocking; make ui shows them):")
        print("\n".join(f"  {line}" for line in warned) + "\n")
    from assets.resources.tracking import TRAINING_VIEW, ui_host

    mlflow_ui = f"{ui_host()}/#/experiments?{TRAINING_VIEW}"
    dagster_ui = f"http://127.0.0.1:{os.environ.get('DAGSTER_PORT', '3000')}"
    print(
        f"Done in {(time.time() - start) / 60:.1f} min.\n"
        f"  Dagster UI (runs, assets, metadata, checks):  make ui        -> {dagster_ui}\n"
        f"  MLflow runs (training and evaluation):        make mlflow-ui -> {mlflow_ui}\n"
        f"  Tables in DuckDB: {layout.catalog} (table1_esresnext ... table4_querying)\n"
        f"  Trace the model in use: .venv/bin/audioclip lineage models:/audioclip@champion\n"
        f"  Serve it:  make serve   (MLflow's scoring server for models:/audioclip@champion on 127.0.0.1:"
        f"{os.environ.get('SERVE_PORT', '5001')}), then in another shell:\n"
        f"    curl -s -H 'Content-Type: application/json' -d @{promotion['example'] or 'REQUEST.json'} "
        f"http://127.0.0.1:{os.environ.get('SERVE_PORT', '5001')}/invocations"
    )
    failed = [c.text for c in claims if not c.holds]
    if failed and args.strict:
        print(f"\nSTRICT: {len(failed)} claim(s) of the verdict failed: {'; '.join(failed)}", file=sys.stderr)
        return 3
    return 0


def promotion_summary(layout) -> dict:
    """What the registry says after the run: each registered model's champion and the latest
    promotion decision (from the challenger version's `promotion.*` tags), as text; whether a
    challenger was rejected; the champion's stored serving example (a real request)."""
    from audioclip_core.registry import CHALLENGER, CHAMPION, aliases, model_example_request

    lines, rejected, example = ["Models (MLflow registry):"], False, None
    for name in ("audioclip", "esresnext"):
        found = aliases(name, layout)
        champion, challenger = found.get(CHAMPION), found.get(CHALLENGER)
        if champion is None and challenger is None:
            lines.append(f"  {name}: not registered")
            continue
        tags = challenger.tags if challenger is not None else {}
        outcome = tags.get("promotion.outcome", "not judged yet")
        rejected |= outcome == "rejected"
        lines.append(
            f"  {name}: champion {f'version {champion.version}' if champion else 'none'}"
            f" (models:/{name}@{CHAMPION}); challenger version {challenger.version if challenger else '-'}: "
            f"{outcome} - {tags.get('promotion.reason', '')}"
        )
        if name == "audioclip" and champion is not None:
            example = model_example_request(f"models:/{name}@{CHAMPION}", layout)
    figures = _decision_figures()
    if figures:
        lines += ["", "The last promotion decision (model_promotion's metadata; make ui shows it):", figures]
    return {"text": "\n".join(lines), "rejected": rejected, "example": example}


def warned_checks() -> list[str]:
    """The asset checks whose latest result failed with severity WARN (not blocking, so the run
    is green): each with its figures, e.g. a clip set smaller than the published one."""
    import dagster as dg

    from pipelines.definitions import defs

    keys = list(defs.get_repository_def().asset_graph.asset_check_keys)
    with dg.DagsterInstance.get() as instance:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    out = []
    for key, record in sorted(latest.items(), key=lambda kv: kv[0].to_user_string()):
        evaluation = record.event.dagster_event.event_specific_data if record.event is not None else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
            continue
        if evaluation.severity != dg.AssetCheckSeverity.WARN:
            continue
        figures = ", ".join(f"{k}: {_brief(getattr(v, 'value', v))}" for k, v in list(evaluation.metadata.items())[:4])
        where = f" [{evaluation.partition}]" if evaluation.partition else ""
        out.append(f"{key.asset_key.to_user_string()}{where} {key.name}: {evaluation.description or figures}")
    return out


def _brief(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 1:
        return f"{value[0]} (and {len(value) - 1} more)"
    return str(value[0] if isinstance(value, (list, tuple)) and value else value)


def _decision_figures() -> str:
    """The comparison tables of the latest `model_promotion` materialisation, if it compared."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("model_promotion"))
    if event is None or event.asset_materialization is None:
        return ""
    md = event.asset_materialization.metadata.get("decisions")
    text = md.value if md is not None else ""
    return text if "| task |" in text else ""


if __name__ == "__main__":
    sys.exit(main())
