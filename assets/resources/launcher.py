"""How a training stage with several processes is launched: torchrun, on this machine or in a
Kubernetes pod (pipelines/deployment.py picks which), through Dagster Pipes either way."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(entry: list[str], *, nproc: int, nnodes: int = 1, rdzv_endpoint: str = "",
                     rdzv_id: str = "") -> list[str]:
    """torchrun for `entry` (module and arguments): standalone on one node, else a c10d
    rendezvous at `rdzv_endpoint` that `nnodes` agents join (each with `nproc` processes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes <= 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}",
                f"--rdzv_id={rdzv_id}", "--max_restarts=0"]
    return cmd + ["-m", *entry]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TrainingLauncher(dg.ConfigurableResource):
    """Launches `python -m pipelines.torchrun_entry SPEC RESULT` under torchrun.

    `local`: node 0's agent runs through Dagster Pipes (rank 0 reports logs and its result);
    with `nnodes` > 1 the other agents are started on this machine too and join a c10d
    rendezvous on 127.0.0.1 - several nodes on one machine, the multi-node path as a cluster
    runs it. `k8s`: the torchrun command runs in a pod through `PipesK8sClient` (one node,
    `nproc_per_node` processes, e.g. one per GPU of the pod)."""

    deployment: str = Field(default="", description="local | k8s; empty: AUDIOCLIP_DEPLOYMENT, else local")
    rdzv_host: str = Field(default="127.0.0.1", description="where local agents meet (c10d rendezvous)")
    gpus_per_pod: int = Field(default=0, ge=0, description="k8s: nvidia.com/gpu limit of the training pod")

    def kind(self) -> str:
        from pipelines.deployment import deployment

        return self.deployment or deployment()

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
            for node in range(1, nnodes):  # the other nodes' agents: plain processes, their ranks log nothing
                err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty agent never blocks on it
                others.append((subprocess.Popen(cmd, cwd=str(REPO), env={**os.environ, **env},
                                                stdout=subprocess.DEVNULL, stderr=err), err))
            dg.PipesSubprocessClient(cwd=str(REPO)).run(command=cmd, context=context, env=env)
            for p, err in others:
                if p.wait(timeout=120) != 0:
                    err.seek(0)
                    raise RuntimeError(f"a torchrun agent exited {p.returncode}: "
                                       f"{err.read().decode(errors='replace')[-2000:]}")
        finally:
            for p, err in others:
                if p.poll() is None:
                    p.kill()
                err.close()

    def _run_k8s(self, context, entry, *, nproc: int, nnodes: int, env: dict) -> None:
        from dagster_k8s import PipesK8sClient

        from pipelines.deployment import FORWARDED_ENV, k8s_settings, k8s_volumes

        if nnodes > 1:
            raise ValueError("the k8s launcher runs torchrun in one pod (nnodes 1, nproc_per_node processes); "
                             "several nodes need a job that starts a pod per node (e.g. a PyTorchJob)")
        s = k8s_settings()
        volumes, mounts = k8s_volumes(s["pvc"])
        env = {**{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}, **env}
        container = {"volume_mounts": mounts, "working_dir": "/app"}
        if self.gpus_per_pod:
            container["resources"] = {"limits": {"nvidia.com/gpu": self.gpus_per_pod}}
        cmd = torchrun_command(entry, nproc=nproc)
        cmd[0] = "python"
        PipesK8sClient(load_incluster_config=True).run(
            context=context, image=s["image"] or None, namespace=s["namespace"], command=cmd, env=env,
            base_pod_spec={"volumes": volumes, "containers": [container]})
