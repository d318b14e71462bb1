"""Worker entry point that a training stage launches with torchrun through Dagster Pipes.

    torchrun --standalone --nproc_per_node N -m pipelines.torchrun_entry SPEC.json RESULT.json

Every rank builds the stage from the same spec and trains its share of each global batch;
rank 0 writes the checkpoint, the lineage record and RESULT.json, and talks to Dagster.
"""
import contextlib
import json
import os
import sys
from pathlib import Path


def main(spec_path: str, result_path: str) -> None:
    from audioclip_core.training import distributed as D
    from audioclip_core.training.stages import StageSpec, build_stage
    from audioclip_core.training.run import run_stage

    D.init_from_env()
    rank = D.rank()
    pipes_ctx = contextlib.nullcontext(None)
    if rank == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        pipes_ctx = open_dagster_pipes()
    with pipes_ctx as pipes:
        log = (pipes.log.info if pipes is not None else print) if rank == 0 else (lambda msg: None)
        spec = StageSpec.from_json(Path(spec_path))
        log(f"{spec.name}: rank {rank} of {D.world_size()} starting")
        out = run_stage(build_stage(spec), mlflow_run_id=spec.mlflow_run_id, log=log)
        if rank == 0 and out is not None:
            result = {"checkpoint": str(out.checkpoint), "official": str(out.official) if out.official else None,
                      "lineage_path": str(out.lineage_path), "history": out.result.history,
                      "skipped_items": out.result.skipped_items, "resumed_from": out.result.resumed_from,
                      "world_size": D.world_size()}
            Path(result_path).write_text(json.dumps(result, default=str), encoding="utf-8")
            if pipes is not None:
                pipes.report_custom_message({"result": result_path})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
