"""How a training stage runs: in the step's process, or with several processes under torchrun -
on this machine or in a Kubernetes pod - through Dagster Pipes. The deployment's settings
(local or k8s, the image, namespace, data volume, the environment to forward) are fields, filled
where the Definitions are assembled (pipelines/definitions.py); nothing here reads them itself.
Either way a stage's `StageSpec` goes in and its `StageResult` comes out."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from audioclip_core.net import free_port

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(
    entry: list[str], *, nproc: int, nnodes: int = 1, rdzv_endpoint: str = "", rdzv_id: str = ""
) -> list[str]:
    """torchrun for `entry` (module and arguments): standalone on one node, else a c10d
    rendezvous at `rdzv_endpoint` that `nnodes` agents join (each with `nproc` processes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes <= 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
            f"--rdzv_id={rdzv_id}",
            "--max_restarts=0",
        ]
    return cmd + ["-m", *entry]


WORKER = "assets.resources.stage_worker"  # the module every torchrun process runs (SPEC RESULT)
DATA_MOUNT = "/data"


def k8s_volumes(pvc: str, mount: str = DATA_MOUNT) -> tuple[list[dict], list[dict]]:
    """(volumes, volume mounts) of the shared data root in a pod."""
    return ([{"name": "data", "persistent_volume_claim": {"claim_name": pvc}}], [{"name": "data", "mount_path": mount}])


class TrainingLauncher(dg.ConfigurableResource):
    """Runs a training stage: `run_stage(context, spec)` trains in the step's process (one
    process) or launches `python -m assets.resources.stage_worker SPEC RESULT` under torchrun.

    `local`: node 0's agent runs through Dagster Pipes (rank 0 reports logs and its result);
    with `nnodes` > 1 the other agents are started on this machine too and join a c10d
    rendezvous on 127.0.0.1 - several nodes on one machine, the multi-node path as a cluster
    runs it. `k8s`: the torchrun command runs in a pod through `PipesK8sClient` (one node,
    `nproc_per_node` processes, e.g. one per GPU of the pod)."""

    deployment: str = Field(
        default="local", description="local | k8s (pipelines/definitions.py sets it from AUDIOCLIP_DEPLOYMENT)"
    )
    rdzv_host: str = Field(default="127.0.0.1", description="where local agents meet (c10d rendezvous)")
    gpus_per_pod: int = Field(default=0, ge=0, description="k8s: nvidia.com/gpu limit of the training pod")
    forwarded_env: list[str] = Field(
        default_factory=list, description="k8s: environment variables of this process that the training pod gets"
    )
    k8s_image: str = Field(default="", description="k8s: the image the training pod runs")
    k8s_namespace: str = Field(default="audioclip", description="k8s: the training pod's namespace")
    k8s_data_pvc: str = Field(default="audioclip-data", description="k8s: the data root's volume claim")

    def kind(self) -> str:
        return self.deployment or "local"

    def run_stage(self, context, spec, *, nproc: int = 1, nnodes: int = 1, on_epoch=None, log=None):
        """Train `spec` (a `StageSpec`) and return its `StageResult`: in this process when one
        process trains it (sharing the CPU with the other training slot), else in `nproc` x
        `nnodes` torchrun processes, each with its share of the cores."""
        from audioclip_core.training.run import run_stage
        from audioclip_core.training.spec import StageResult

        log = log or context.log.info
        if nproc * nnodes <= 1:
            from audioclip_core.perf import share_cpu_threads

            log(f"{share_cpu_threads()} CPU thread(s)")  # the other training slot's run gets the other cores
            return run_stage(spec, on_epoch=on_epoch, log=log)
        workdir = Path(spec.workdir)
        spec_path = spec.to_json(workdir / "spec.json")
        result_path = workdir / "result.json"
        result_path.unlink(missing_ok=True)
        threads = max(1, (os.cpu_count() or 2) // (nproc * nnodes))
        self.run(
            context,
            [WORKER, str(spec_path), str(result_path)],
            nproc=nproc,
            nnodes=nnodes,
            env={"OMP_NUM_THREADS": str(threads)},
        )
        return StageResult.from_json(result_path)  # the workers' epochs are in its history

    def run(self, context, entry: list[str], *, nproc: int, nnodes: int = 1, env: Optional[dict] = None) -> None:
        env = dict(env or {})
        if self.kind() == "k8s":
            return self._run_k8s(context, entry, nproc=nproc, nnodes=nnodes, env=env)
        endpoint, rdzv_id = "", ""
        if nnodes > 1:
            endpoint, rdzv_id = f"{self.rdzv_host}:{free_port(self.rdzv_host)}", uuid.uuid4().hex[:12]
        cmd = torchrun_command(entry, nproc=nproc, nnodes=nnodes, rdzv_endpoint=endpoint, rdzv_id=rdzv_id)
        others = []
        try:
            for _node in range(1, nnodes):  # the other nodes' agents: plain processes, their ranks log nothing
                err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty agent never blocks on it
                others.append(
                    (
                        subprocess.Popen(
                            cmd, cwd=str(REPO), env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err
                        ),
                        err,
                    )
                )
            dg.PipesSubprocessClient(cwd=str(REPO)).run(command=cmd, context=context, env=env)
            for p, err in others:
                if p.wait(timeout=120) != 0:
                    err.seek(0)
                    raise RuntimeError(
                        f"a torchrun agent exited {p.returncode}: {err.read().decode(errors='replace')[-2000:]}"
                    )
        finally:
            for p, err in others:
                if p.poll() is None:
                    p.kill()
                err.close()

    def _run_k8s(self, context, entry, *, nproc: int, nnodes: int, env: dict) -> None:
        from dagster_k8s import PipesK8sClient

        if nnodes > 1:
            raise ValueError(
                "the k8s launcher runs torchrun in one pod (nnodes 1, nproc_per_node processes); "
                "several nodes need a job that starts a pod per node (e.g. a PyTorchJob)"
            )
        volumes, mounts = k8s_volumes(self.k8s_data_pvc)
        env = {**{k: os.environ[k] for k in self.forwarded_env if k in os.environ}, **env}
        container = {"volume_mounts": mounts, "working_dir": "/app"}
        if self.gpus_per_pod:
            container["resources"] = {"limits": {"nvidia.com/gpu": self.gpus_per_pod}}
        cmd = torchrun_command(entry, nproc=nproc)
        cmd[0] = "python"
        PipesK8sClient(load_incluster_config=True).run(
            context=context,
            image=self.k8s_image or None,
            namespace=self.k8s_namespace,
            command=cmd,
            env=env,
            base_pod_spec={"volumes": volumes, "containers": [container]},
        )
