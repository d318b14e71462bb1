"""The process every torchrun agent starts for a training stage (`TrainingLauncher`):

    torchrun --standalone --nproc_per_node N -m assets.resources.stage_worker SPEC.json RESULT.json

Every rank runs the stage from the same `StageSpec` and trains its share of each global batch;
rank 0 writes the checkpoint, the lineage record and the `StageResult` (RESULT.json), and talks
to Dagster through Pipes.
"""

import contextlib
import os
import sys
from pathlib import Path


def main(spec_path: str, result_path: str) -> None:
    from audioclip_core.training import distributed as D
    from audioclip_core.training.run import run_stage
    from audioclip_core.training.spec import StageSpec

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
        result = run_stage(spec, log=log)
        if rank == 0 and result is not None:
            result.to_json(Path(result_path))
            if pipes is not None:
                pipes.report_custom_message({"result": result_path})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
