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

from assets.resources.launcher import DATA_MOUNT, k8s_volumes
from audioclip_core.data.clipsets import SPECS

DEPLOYMENTS = ("local", "k8s")
# what a step's pod needs from the run's environment; each clip set's folder and archive URL
# (AUDIOCLIP_ESC50_DIR, AUDIOCLIP_ESC50_URL, ...) come from its spec
FORWARDED_ENV = [
    "AUDIOCLIP_DATA_ROOT",
    "AUDIOCLIP_AUDIOSET_DIR",
    *(env for spec in SPECS.values() for env in (spec.dir_env, spec.url_env)),
    "AUDIOCLIP_YOUTUBE_URL_TEMPLATE",
    "AUDIOCLIP_TRAIN_PROFILE",
    "AUDIOCLIP_SEED",
    "MLFLOW_TRACKING_URI",
]


def deployment() -> str:
    name = os.environ.get("AUDIOCLIP_DEPLOYMENT", "local").strip() or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"AUDIOCLIP_DEPLOYMENT={name!r}: one of {', '.join(DEPLOYMENTS)}")
    return name


def k8s_settings() -> dict:
    return {
        "image": os.environ.get("AUDIOCLIP_K8S_IMAGE", ""),
        "namespace": os.environ.get("AUDIOCLIP_K8S_NAMESPACE", "audioclip"),
        "pvc": os.environ.get("AUDIOCLIP_K8S_DATA_PVC", "audioclip-data"),
        "max_concurrent": int(os.environ.get("AUDIOCLIP_K8S_MAX_STEPS", "8")),
    }


def launcher_settings() -> dict:
    """The `launcher` resource's fields for this deployment (the resource reads no environment)."""
    s = k8s_settings()
    return {
        "deployment": deployment(),
        "forwarded_env": list(FORWARDED_ENV),
        "k8s_image": s["image"],
        "k8s_namespace": s["namespace"],
        "k8s_data_pvc": s["pvc"],
    }


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
        raise ImportError(
            "AUDIOCLIP_DEPLOYMENT=k8s needs dagster-k8s: install the `k8s` extra (uv sync --extra k8s)"
        ) from exc
    return k8s_job_executor.configured(k8s_executor_config(), name="k8s_job_executor")


def k8s_executor_config() -> dict:
    """The Kubernetes executor's configuration, from the environment (module docstring)."""
    s = k8s_settings()
    if not s["image"]:
        raise ValueError("AUDIOCLIP_DEPLOYMENT=k8s needs AUDIOCLIP_K8S_IMAGE (the image steps run in)")
    volumes, mounts = k8s_volumes(s["pvc"], DATA_MOUNT)
    return {
        "job_image": s["image"],
        "job_namespace": s["namespace"],
        "max_concurrent": s["max_concurrent"],
        # the pools (youtube, gpu) are the instance's: they bound steps across pods as they do locally
        "env_vars": FORWARDED_ENV,
        "volumes": volumes,
        "volume_mounts": mounts,
    }
