"""Where the steps of a run execute, chosen by deployment configuration: `AUDIOCLIP_DEPLOYMENT`.

* `local` (default): every step of a run in the run's own process (in-process executor); a
  training stage with `nproc_per_node` / `nnodes` > 1 runs torchrun agents on this machine
  (`assets.resources.TrainingLauncher`).
* `k8s`: every step in its own Kubernetes pod (dagster-k8s' `k8s_job_executor`, the `k8s`
  extra: `uv sync --extra k8s`), and a torchrun stage in a pod of its own through
  `PipesK8sClient`. The image, namespace and shared data volume come from the environment
  below; the data root must be a ReadWriteMany volume mounted at the same path in every pod.

    AUDIOCLIP_K8S_IMAGE       the image with this checkout and its environment (required for k8s)
    AUDIOCLIP_K8S_NAMESPACE   default "audioclip"
    AUDIOCLIP_K8S_DATA_PVC    the data volume's claim, default "audioclip-data", mounted at /data
    AUDIOCLIP_K8S_MAX_STEPS   pods at once per run, default 8
"""
from __future__ import annotations

import os

DEPLOYMENTS = ("local", "k8s")
# what a step's pod needs from the run's environment
FORWARDED_ENV = ["AUDIOCLIP_DATA_ROOT", "AUDIOCLIP_AUDIOSET_DIR", "AUDIOCLIP_ESC50_DIR", "AUDIOCLIP_US8K_DIR",
                 "AUDIOCLIP_YOUTUBE_URL_TEMPLATE", "AUDIOCLIP_TRAIN_PROFILE", "AUDIOCLIP_SEED", "MLFLOW_TRACKING_URI"]
DATA_MOUNT = "/data"


def deployment() -> str:
    name = os.environ.get("AUDIOCLIP_DEPLOYMENT", "local").strip() or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"AUDIOCLIP_DEPLOYMENT={name!r}: one of {', '.join(DEPLOYMENTS)}")
    return name


def k8s_settings() -> dict:
    return {"image": os.environ.get("AUDIOCLIP_K8S_IMAGE", ""),
            "namespace": os.environ.get("AUDIOCLIP_K8S_NAMESPACE", "audioclip"),
            "pvc": os.environ.get("AUDIOCLIP_K8S_DATA_PVC", "audioclip-data"),
            "max_concurrent": int(os.environ.get("AUDIOCLIP_K8S_MAX_STEPS", "8"))}


def k8s_volumes(pvc: str) -> tuple[list[dict], list[dict]]:
    """(volumes, volume mounts) of the shared data root."""
    return ([{"name": "data", "persistent_volume_claim": {"claim_name": pvc}}],
            [{"name": "data", "mount_path": DATA_MOUNT}])


def executor():
    """The executor of every job of the code location, for the deployment."""
    import dagster as dg

    if deployment() == "local":
        # one process per run: runs are the unit of parallelism (run queue, pools); a step
        # subprocess per asset would import the code location again for each step
        return dg.in_process_executor
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("AUDIOCLIP_DEPLOYMENT=k8s needs dagster-k8s: install the `k8s` extra "
                          "(uv sync --extra k8s)") from exc
    return k8s_job_executor.configured(k8s_executor_config(), name="k8s_job_executor")


def k8s_executor_config() -> dict:
    """The Kubernetes executor's configuration, from the environment (module docstring)."""
    s = k8s_settings()
    if not s["image"]:
        raise ValueError("AUDIOCLIP_DEPLOYMENT=k8s needs AUDIOCLIP_K8S_IMAGE (the image steps run in)")
    volumes, mounts = k8s_volumes(s["pvc"])
    return {
        "job_image": s["image"], "job_namespace": s["namespace"], "max_concurrent": s["max_concurrent"],
        # the pools (youtube, gpu) are the instance's: they bound steps across pods as they do locally
        "env_vars": FORWARDED_ENV, "volumes": volumes, "volume_mounts": mounts,
    }
