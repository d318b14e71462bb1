"""The demo across seeds: `make demo SEED=n` for several seeds, each on its own data root and
Dagster home, then min / median / max of every cell of the four tables (fold means), beside
its chance level, the verdict of each seed with each claim's margin
(audioclip_core/evaluation/verdict.py), the image figures at their ceiling, each run's wall
time and the machine (CPU model, cores): float rounding differs between CPU families, so a
figure is only comparable with others from the same kind of machine. Not a test: it trains
the whole demo lineage once per seed (about 10 min each on 2 cores).

    .venv/bin/python bench/seed_study.py                  # seeds 0 1 2, under ./bench-seeds
    .venv/bin/python bench/seed_study.py --seeds 0 1 2 3 --out /tmp/seeds --reuse

Prints a table per demo table and one JSON line ({"machine", "seeds", "minutes", "verdict",
"margins", "image_figures_at_100", "cells"}).
`--reuse` reads the tables of seeds already run under --out instead of running them again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TABLES = ("table1_esresnext", "table2_audioclip", "table3_zero_shot", "table4_querying")


def run_seed(seed: int, out: Path, reuse: bool) -> dict:
    root = out / f"seed{seed}"
    data, home = root / "data", root / "dagster_home"
    done = all((data / "tables" / f"{t}.parquet").is_file() for t in TABLES)
    minutes = None
    if not (reuse and done):
        shutil.rmtree(root, ignore_errors=True)
        home.mkdir(parents=True)
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        env = {
            **os.environ,
            "AUDIOCLIP_DATA_ROOT": str(data),
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": str(REPO),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("DAGSTER_PORT", None)
        start = time.time()
        with open(root / "demo.log", "w") as log:
            rc = subprocess.run(
                [sys.executable, "-m", "pipelines.demo", "--seed", str(seed)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ).returncode
        minutes = (time.time() - start) / 60
        print(f"seed {seed}: exit {rc}, {minutes:.1f} min (log: {root / 'demo.log'})", flush=True)
        if rc != 0:
            return {"seed": seed, "minutes": minutes, "failed": True}
    import pandas as pd

    return {
        "seed": seed,
        "minutes": minutes,
        "tables": {t: pd.read_parquet(data / "tables" / f"{t}.parquet") for t in TABLES},
    }


def cpu() -> str:
    """The CPU's model name and the cores this process may use: the figures depend on both."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        name = platform.processor() or name
    return f"{name}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


IMAGE = ("mAP image", "image by text", "image by audio", "audio by image")


def image_rows(tables: dict) -> list[tuple[str, float, float]]:
    """(label, value, chance) of the figures that read images: they should sit between chance
    and their ceiling (the demo's frames carry a partial class signal)."""
    out = []
    for df in tables.values():
        for r in df[(df["fold"] == "mean") & df["value"].notna()].itertuples():
            if r.metric in IMAGE or (r.task in IMAGE and r.dataset == "AudioSet"):
                out.append((f"{r.model} {r.task} {r.dataset} {r.metric}", float(r.value), float(r.chance)))
    return out


def main(argv=None) -> int:
    from audioclip_core.evaluation.verdict import judge

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=REPO / "bench-seeds")
    p.add_argument("--reuse", action="store_true", help="read the tables of seeds already run under --out")
    args = p.parse_args(argv)
    machine = cpu()
    print(f"machine: {machine}", flush=True)
    results = [run_seed(s, args.out.resolve(), args.reuse) for s in args.seeds]
    good = [r for r in results if not r.get("failed")]
    cells: dict[tuple, dict] = {}
    verdicts, margins, ceiling = {}, {}, {}
    for r in good:
        claims = judge(r["tables"])
        verdicts[r["seed"]] = {c.text: c.holds for c in claims}
        margins[r["seed"]] = {c.text: None if c.margin is None else round(100 * c.margin, 2) for c in claims}
        ceiling[r["seed"]] = [label for label, v, _ in image_rows(r["tables"]) if v >= 1 - 1e-9]
        for name, df in r["tables"].items():
            for row in df[(df["fold"] == "mean") & df["value"].notna()].itertuples():
                cell = cells.setdefault(
                    (name, row.model, row.task, row.dataset, row.metric), {"values": [], "chance": []}
                )
                cell["values"].append(float(row.value))
                cell["chance"].append(
                    float(row.chance) if row.chance == row.chance and row.chance is not None else float("nan")
                )
    summary = []
    for name in TABLES:
        keys = [k for k in cells if k[0] == name]
        if not keys:
            continue
        print(f"\n## {name}  (fold means over seeds {[r['seed'] for r in good]}, %)\n")
        print("| model | task | dataset | metric | min | median | max | chance |")
        print("|---|---|---|---|---|---|---|---|")
        for k in keys:
            v, c = cells[k]["values"], cells[k]["chance"]
            entry = {
                "table": k[0],
                "model": k[1],
                "task": k[2],
                "dataset": k[3],
                "metric": k[4],
                "min": min(v),
                "median": statistics.median(v),
                "max": max(v),
                "chance": max(c),
                "n": len(v),
            }
            summary.append(entry)
            print(
                f"| {k[1]} | {k[2]} | {k[3]} | {k[4]} | {100 * min(v):.1f} | {100 * statistics.median(v):.1f} | "
                f"{100 * max(v):.1f} | {100 * max(c):.1f} |"
            )
    print(f"\nverdict per seed (margins in points; {machine}):")
    for seed, v in verdicts.items():
        print(
            f"  seed {seed}: "
            + "; ".join(
                f"{'holds' if ok else 'FAILS'} ({'—' if margins[seed][t] is None else f'{margins[seed][t]:+.1f}'}): {t}"
                for t, ok in v.items()
            )
        )
        print(f"    image figures at 100 %: {', '.join(ceiling[seed]) or 'none'}")
    for r in results:
        if r.get("failed"):
            print(f"  seed {r['seed']}: the demo failed (see its log)")
    print(
        json.dumps(
            {
                "bench": "seed_study",
                "machine": machine,
                "seeds": args.seeds,
                "minutes": {r["seed"]: r["minutes"] for r in results},
                "failed": [r["seed"] for r in results if r.get("failed")],
                "verdict": verdicts,
                "margins": margins,
                "image_figures_at_100": ceiling,
                "cells": summary,
            }
        )
    )
    return 0 if good and len(good) == len(results) and all(all(v.values()) for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
