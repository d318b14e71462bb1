import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg

from audioclip_core.layout import DataLayout

# the MLflow UI opens an experiment of this kind in its training view (runs, metrics, charts),
# not the GenAI view that hides training runs
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# the query parameter that selects the UI's "Model training" view (MLflow 3.17 keeps the last
# view per browser and starts a fresh one in GenAI)
TRAINING_VIEW = "workflowType=machine_learning"


def ui_host() -> str:
    """The MLflow UI that metadata links point at: AUDIOCLIP_MLFLOW_UI, else `make mlflow-ui`'s address."""
    return os.environ.get("AUDIOCLIP_MLFLOW_UI") or f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"


def _local_source(path: Path):
    """The dataset source of a local file, named explicitly: given a plain path, MLflow finds
    two registered local sources (one per artifact scheme) and warns on every manifest logged."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    for source in get_registered_sources():
        if source._get_source_type() == "local":
            return source(str(path))
    return str(path)


class MlflowTracking(dg.ConfigurableResource):
    """MLflow with a sqlite backend in the data root (`tracking_uri` overrides it)."""

    tracking_uri: str = ""
    experiment: str = "audioclip"

    def uri(self, layout: DataLayout) -> str:
        if self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return self.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
        layout.ensure(layout.mlflow_dir)
        return f"sqlite:///{layout.mlflow_db}"

    @contextlib.contextmanager
    def start_run(self, layout: DataLayout, run_name: str, tags: dict) -> Iterator["object"]:
        import mlflow

        mlflow.set_tracking_uri(self.uri(layout))
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            artifacts = layout.ensure(layout.mlflow_artifacts)
            exp_id = mlflow.create_experiment(
                self.experiment, artifact_location=artifacts.as_uri(), tags={EXPERIMENT_KIND: TRAINING_KIND}
            )
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:
                mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING_KIND)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
            yield run

    @contextlib.contextmanager
    def stage_run(
        self, layout: DataLayout, context, spec, *, profile: str, partition: Optional[str] = None, nproc: int = 1
    ) -> Iterator["StageTracker"]:
        """One MLflow run of a training stage, tagged with the Dagster run, asset and partition and
        the code version; its parameters, the manifest versions it reads (as dataset inputs with
        our sha256) and its parent's digest logged before it trains. `spec` gets the MLflow run id
        and the Dagster identity its lineage records. A failure is tagged on the run."""
        import mlflow

        from audioclip_core.lineage import code_version

        code = code_version()
        asset = context.asset_key.to_user_string()
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": asset,
            "dagster.partition": partition or "",
            "name": spec.name,
            "stage": spec.stage,
            "profile": profile,
            "git_commit": code["git_commit"],
            "git_dirty": str(code["git_dirty"]),
            "nproc_per_node": str(nproc),
        }
        spec.dagster = {"run_id": context.run_id, "asset_key": asset, "partition": partition}
        with self.start_run(layout, spec.name + (f"-fold{partition}" if partition else ""), tags) as run:
            spec.mlflow_run_id = run.info.run_id
            mlflow.log_params({k: v for k, v in spec.config.items() if k != "extra"} | {"nproc_per_node": nproc})
            for name, m in spec.manifests.items():
                self.log_manifest(Path(m.get("version") or m["path"]), name, m["sha256"])  # the version it names
            if spec.parent:
                mlflow.log_param("parent_sha256", spec.parent["sha256"])
            try:
                yield StageTracker(self, run, spec)
            except Exception as exc:
                mlflow.set_tag("failure", str(exc)[:5000])
                raise

    def mark_rejected(self, layout: DataLayout, run_id: str, reason: str) -> None:
        """A stage that failed a gate: its run is FAILED, with the gate's figures as a tag."""
        import mlflow

        mlflow.set_tracking_uri(self.uri(layout))
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "gate_failed", reason[:5000])
        client.set_terminated(run_id, status="FAILED")

    @staticmethod
    def log_manifest(path: Path, name: str, sha256: str, context: str = "training") -> None:
        import mlflow

        from audioclip_core.files import read_version_parquet

        df = read_version_parquet(path)  # a version checked against its name (files.CorruptVersion)
        for col in df.columns:  # mlflow's dataset schema wants flat columns
            if df[col].map(lambda v: isinstance(v, (list, tuple)) or hasattr(v, "tolist")).any():
                df[col] = df[col].map(lambda v: ", ".join(map(str, list(v))) if v is not None else None)
        with warnings.catch_warnings():
            # MLflow's hint that integer columns cannot hold missing values concerns a model's input
            # schema enforced at inference; a logged manifest is enforced nowhere (one hint per manifest)
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            ds = mlflow.data.from_pandas(df, source=_local_source(path), name=f"{name}@{sha256[:12]}")
            mlflow.log_input(ds, context=context, tags={"sha256": sha256})  # the schema is inferred here too

    @staticmethod
    def run_link(run, host: Optional[str] = None) -> str:
        """The run's page in the MLflow UI, in its model-training view (the UI opens an
        experiment in its GenAI view otherwise, which lists no training run)."""
        return f"{host or ui_host()}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{TRAINING_VIEW}"

    @staticmethod
    def artifact_link(run, name: str, host: Optional[str] = None) -> str:
        """A URL the MLflow UI serves an artifact of `run` at (e.g. a PNG the browser shows)."""
        from urllib.parse import urlencode

        return f"{host or ui_host()}/get-artifact?" + urlencode({"path": name, "run_uuid": run.info.run_id})


class StageTracker:
    """The MLflow side of one stage run (`MlflowTracking.stage_run`): its epochs as they end,
    then its files, curves and config."""

    def __init__(self, tracking: MlflowTracking, run, spec):
        self.tracking, self.run, self.spec, self._logged = tracking, run, spec, set()

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)
        self._logged.add(epoch)

    def finish(self, result) -> dict:
        """Log what `result` (a `StageResult`) holds that is not logged yet - epochs trained before
        a resume or in torchrun workers - and its checkpoint, lineage, export, curves and config.
        Returns the links for the asset's metadata and the curves file."""
        import mlflow

        from audioclip_core.evaluation.plots import plot_history

        for h in result.history:
            if h["epoch"] not in self._logged:
                self.on_epoch(h["epoch"], h)
        workdir = Path(self.spec.workdir)
        curve = plot_history(result.history, workdir / f"{self.spec.name}.curves.png", title=self.spec.name)
        for path in result.files() + [curve]:
            mlflow.log_artifact(str(path))
        mlflow.log_dict(self.spec.config, "config.json")
        return {
            "run": self.tracking.run_link(self.run),
            "curves": self.tracking.artifact_link(self.run, curve.name),
            "curves_file": curve,
        }
