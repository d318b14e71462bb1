"""Deployment configuration: the code location's Definitions validate with the Kubernetes
executor (dagster-k8s, no cluster needed), the torchrun step goes to a pod through
PipesK8sClient, and a bad configuration is refused with a message that names the fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json
import dagster as dg
import pipelines.definitions as d
from pipelines import deployment
dg.Definitions.validate_loadable(d.defs)
jobs = [d.defs.resolve_implicit_global_asset_job_def()] + [d.defs.resolve_job_def(n) for n in
        ("audioset_data", "retrain_audioset_chain", "evaluate_released")]
config, valid = None, None
if deployment.deployment() == "k8s":
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor
    config = deployment.k8s_executor_config()
    valid = process_config(k8s_job_executor.config_schema.config_type, config).success
print(json.dumps({"executors": sorted({j.executor_def.name for j in jobs}), "config": config, "valid": valid,
                  "launcher": d.defs.resources["launcher"].kind()}))
"""


def _probe(**env):
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=full, capture_output=True, text=True, timeout=300
    )


def test_definitions_validate_under_the_kubernetes_executor():
    proc = _probe(
        AUDIOCLIP_DEPLOYMENT="k8s",
        AUDIOCLIP_K8S_IMAGE="registry.example/audioclip:1",
        AUDIOCLIP_K8S_NAMESPACE="research",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["executors"] == ["k8s_job_executor"] and out["launcher"] == "k8s"
    cfg = out["config"]
    assert out["valid"] is True  # the configuration passes dagster-k8s' own schema
    assert cfg["job_image"] == "registry.example/audioclip:1" and cfg["job_namespace"] == "research"
    assert {"name": "data", "mount_path": "/data"} in cfg["volume_mounts"]
    assert "AUDIOCLIP_DATA_ROOT" in cfg["env_vars"]


def test_local_is_the_default_and_bad_settings_are_refused():
    local = _probe(AUDIOCLIP_DEPLOYMENT="")
    assert local.returncode == 0, local.stderr[-3000:]
    out = json.loads(local.stdout.strip().splitlines()[-1])
    assert out["executors"] == ["in_process"] and out["launcher"] == "local"
    no_image = _probe(AUDIOCLIP_DEPLOYMENT="k8s", AUDIOCLIP_K8S_IMAGE="")
    assert no_image.returncode != 0 and "AUDIOCLIP_K8S_IMAGE" in no_image.stderr
    typo = _probe(AUDIOCLIP_DEPLOYMENT="kubernetes")
    assert typo.returncode != 0 and "one of local, k8s" in typo.stderr


def test_the_torchrun_step_runs_in_a_pod_through_pipes(monkeypatch):
    import dagster_k8s

    from assets.resources import TrainingLauncher

    calls = []

    class FakeClient:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def run(self, **kw):
            calls.append(("run", kw))

    from pipelines.deployment import FORWARDED_ENV

    monkeypatch.setattr(dagster_k8s, "PipesK8sClient", FakeClient)
    for name in FORWARDED_ENV:  # only what this test sets is forwarded
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIOCLIP_K8S_IMAGE", "registry.example/audioclip:1")
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", "/data/root")
    from pipelines.deployment import launcher_settings

    monkeypatch.setenv("AUDIOCLIP_DEPLOYMENT", "k8s")
    launcher = TrainingLauncher(**launcher_settings(), gpus_per_pod=8)  # as pipelines/definitions.py fills it
    launcher.run(
        context="ctx",
        entry=["assets.resources.stage_worker", "/data/spec.json", "/data/result.json"],
        nproc=8,
        env={"OMP_NUM_THREADS": "2"},
    )
    run = dict(calls)["run"]
    assert run["image"] == "registry.example/audioclip:1" and run["context"] == "ctx"
    assert run["command"][:4] == ["python", "-m", "torch.distributed.run", "--nproc_per_node=8"]
    assert run["command"][-3:] == ["assets.resources.stage_worker", "/data/spec.json", "/data/result.json"]
    assert run["env"] == {"AUDIOCLIP_DATA_ROOT": "/data/root", "OMP_NUM_THREADS": "2"}
    container = run["base_pod_spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    with pytest.raises(ValueError, match="PyTorchJob"):
        launcher.run(context="ctx", entry=["assets.resources.stage_worker"], nproc=1, nnodes=2)


def test_torchrun_commands():
    from assets.resources.launcher import torchrun_command

    one = torchrun_command(["m", "a"], nproc=2)
    assert "--standalone" in one and one[-3:] == ["-m", "m", "a"]
    multi = torchrun_command(["m"], nproc=1, nnodes=2, rdzv_endpoint="127.0.0.1:29400", rdzv_id="x")
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29400"} <= set(multi)
    assert "--standalone" not in multi
