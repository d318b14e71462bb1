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
        """`tracking_uri`, else `registry.tracking_uri` (MLFLOW_TRACKING_URI, else the data root's
        sqlite database); the model registry is on the same store."""
        from audioclip_core.registry import tracking_uri

        return self.tracking_uri or tracking_uri(layout)

    def client(self, layout: DataLayout):
        from audioclip_core.registry import client

        return client(self.uri(layout))

    @contextlib.contextmanager
    def start_run(self, layout: DataLayout, run_name: str, tags: dict) -> Iterator["object"]:
        import mlflow

        self.client(layout)  # tracking and registry URIs set
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
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": asset,
            "dagster.partition": partition or "",
            "name": spec.name,
            "stage": spec.stage,
            "profile": profile,
            "git_commit": code["git_commit"],
            "git_dirty": str(code["git_dirty"]),
            "nproc_per_node": str(nproc),
        }
        spec.dagster = {"run_id": context.run.run_id, "asset_key": asset, "partition": partition}
        code_versions = getattr(context.assets_def, "code_versions_by_key", {}) or {}
        tags["dagster.code_version"] = code_versions.get(context.asset_key) or ""
        with self.start_run(layout, spec.name + (f"-fold{partition}" if partition else ""), tags) as run:
            spec.mlflow_run_id = run.info.run_id
            mlflow.log_params({k: v for k, v in spec.config.items() if k != "extra"} | {"nproc_per_node": nproc})
            datasets = {
                name: self.log_manifest(Path(m.get("version") or m["path"]), name, m["sha256"])  # the version read
                for name, m in spec.manifests.items()
            }
            if spec.parent:
                mlflow.log_param("parent_sha256", spec.parent["sha256"])
            try:
                yield StageTracker(self, run, spec, layout=layout, datasets=datasets, tags=tags)
            except Exception as exc:
                mlflow.set_tag("failure", str(exc)[:5000])
                raise

    def register(self, layout: DataLayout, registered: str, model_uri: str, tags: dict):
        """A new version of registered model `registered` from a logged model, alias `challenger`
        (the latest re-training; `model_promotion` decides whether it becomes `champion`)."""
        import mlflow

        from audioclip_core.registry import CHALLENGER

        cl = self.client(layout)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            version = mlflow.register_model(model_uri, registered, tags={k: str(v) for k, v in tags.items()})
        cl.set_registered_model_alias(registered, CHALLENGER, version.version)
        return version

    def model_id_for(self, layout: DataLayout, checkpoint) -> Optional[str]:
        """The newest logged model holding `checkpoint` (by its SHA-256), or None."""
        from audioclip_core.files import sha256_file

        if checkpoint is None or not Path(checkpoint).is_file():
            return None
        import mlflow

        cl = self.client(layout)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        found = cl.search_logged_models(
            experiment_ids=[exp.experiment_id],
            filter_string=f"tags.sha256 = '{sha256_file(Path(checkpoint))}'",
            order_by=[{"field_name": "creation_time", "ascending": False}],
            max_results=1,
        )
        return found[0].model_id if found else None

    @staticmethod
    def log_figures(rows, *, model_ids: dict, datasets: dict) -> int:
        """Table rows as metrics of the active run, in percent, named by `figure_name`, each against
        its model (`model_ids`: row model -> logged model id) and its evaluation dataset (`datasets`:
        row dataset -> MLflow dataset) where known; a fold mean's chance level as fold `chance`.
        One batch per model and dataset. Returns how many figures were logged."""
        import mlflow

        batches: dict[tuple, dict] = {}
        n = 0
        for r in rows.itertuples():
            if r.value is None or r.value != r.value:
                continue
            # a fine-tuned row is a figure of the fold models, not of the model it started from
            model_id = None if r.task == FINE_TUNED else model_ids.get(r.model)
            batch = batches.setdefault((model_id, r.dataset), {})
            batch[figure_name(r.model, r.dataset, r.task, r.metric, r.fold)] = 100.0 * float(r.value)
            if r.fold == FOLD_MEAN and r.chance is not None and r.chance == r.chance:
                batch[figure_name(r.model, r.dataset, r.task, r.metric, CHANCE)] = 100.0 * float(r.chance)
            n += 1
        for (model_id, dataset), metrics in batches.items():
            mlflow.log_metrics(metrics, model_id=model_id, dataset=datasets.get(dataset))
        return n

    def mark_rejected(self, layout: DataLayout, run_id: str, reason: str) -> None:
        """A stage that failed a gate: its run is FAILED, with the gate's figures as a tag."""
        client = self.client(layout)
        client.set_tag(run_id, "gate_failed", reason[:5000])
        client.set_terminated(run_id, status="FAILED")

    @staticmethod
    def manifest_dataset(path: Path, name: str, sha256: str):
        """A manifest version as an MLflow dataset: its source the immutable version file, its
        digest our SHA-256 (as much of it as MLflow keeps: `dataset_digest`; the whole one is the
        input's `sha256` tag and the version file's name), its rows the clips used (status ok)."""
        import mlflow

        from audioclip_core.files import read_version_parquet

        df = read_version_parquet(path)  # a version checked against its name (files.CorruptVersion)
        if "status" in df.columns:
            df = df[df["status"] == "ok"].reset_index(drop=True)
        for col in df.columns:  # mlflow's dataset schema wants flat columns
            if df[col].map(lambda v: isinstance(v, (list, tuple)) or hasattr(v, "tolist")).any():
                df[col] = df[col].map(lambda v: ", ".join(map(str, list(v))) if v is not None else None)
        with warnings.catch_warnings():
            # MLflow's hint that integer columns cannot hold missing values concerns a model's input
            # schema enforced at inference; a logged manifest is enforced nowhere (one hint per manifest)
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            ds = mlflow.data.from_pandas(
                df, source=_local_source(path), name=f"{name}@{sha256[:12]}", digest=dataset_digest(sha256)
            )
            ds.schema  # noqa: B018 - inferred here, inside the filter
        return ds

    @classmethod
    def log_manifest(cls, path: Path, name: str, sha256: str, context: str = "training"):
        """Log a manifest version as a dataset input of the active run (`manifest_dataset`)."""
        import mlflow

        ds = cls.manifest_dataset(path, name, sha256)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            mlflow.log_input(ds, context=context, tags={"sha256": sha256, "version": str(path)})
        return ds

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


# MLflow keeps at most 36 characters of a dataset's digest
DIGEST_CHARS = 36


def dataset_digest(sha256: str) -> str:
    """The digest an MLflow dataset of ours carries: the first 36 hex digits of our SHA-256."""
    return sha256[:DIGEST_CHARS]


def mlflow_name(text: str) -> str:
    """`text` as an MLflow metric or parameter name (alphanumerics, `_ - . : /` and spaces):
    `@` reads `at`, brackets and other signs go. `AudioCLIP (full)` -> `AudioCLIP full`."""
    import re

    text = re.sub(r"[^\w\-. :/]", "", str(text).replace("@", " at "))
    return re.sub(r" +", " ", text).strip()


FOLD_MEAN, CHANCE = "mean", "chance"
FINE_TUNED = "fine-tuned"  # the task of the tables' fine-tuning rows


def figure_name(model: str, dataset: str, task: str, metric: str, fold: str) -> str:
    """A table figure's MLflow metric name (its value in percent): `<model>/<dataset>/<task>/<metric>/<fold>`,
    e.g. `AudioCLIP full/ESC50/zero-shot/accuracy/mean`, `.../fold 1`, `.../chance` (the chance
    level of the mean); `parse_figure_name` reads it back."""
    fold = f"fold {fold}" if str(fold).isdigit() else str(fold)
    return "/".join(mlflow_name(x).replace("/", " ") for x in (model, dataset, task, metric, fold))[:250]


def parse_figure_name(name: str) -> Optional[tuple[str, str, str, str, str]]:
    """(model, dataset, task, metric, fold) of a `figure_name` (fold: `mean`, `chance` or the fold
    number), or None for any other metric."""
    parts = name.split("/")
    if len(parts) != 5 or not (parts[4] in (FOLD_MEAN, CHANCE) or parts[4].startswith("fold ")):
        return None
    return parts[0], parts[1], parts[2], parts[3], parts[4].removeprefix("fold ")


class StageTracker:
    """The MLflow side of one stage run (`MlflowTracking.stage_run`): its epochs as they end,
    then its files, curves and config."""

    def __init__(self, tracking: MlflowTracking, run, spec, *, layout: DataLayout, datasets: dict, tags: dict):
        self.tracking, self.run, self.spec, self._logged = tracking, run, spec, set()
        self.layout, self.datasets, self.tags = layout, datasets, tags

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        import mlflow

        # step = epochs trained (1 after the first), the validation scores' steps (0: the start)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
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
        if result.validation:  # step = epochs trained (0: the starting model), as the lineage has it
            scores = result.validation.get("scores", [])
            for v in scores:
                mlflow.log_metrics(
                    {"validation_accuracy": v["accuracy"], "validation_loss": v["loss"]}, step=int(v["epoch"])
                )
            kept = [v for v in scores if v["epoch"] == result.validation.get("kept_epoch")]
            if kept:  # the weights the checkpoint holds (validation_* end at the last epoch)
                mlflow.log_metrics(
                    {"kept_validation_accuracy": kept[0]["accuracy"], "kept_validation_loss": kept[0]["loss"]},
                    step=model_step(result),
                )
            mlflow.log_params(
                {
                    "validation_kept_epoch": result.validation.get("kept_epoch"),
                    "validation_clips": len(result.validation.get("clips", [])),
                }
            )
            mlflow.log_dict(result.validation, "validation.json")
        curve = plot_history(
            result.history,
            workdir / f"{self.spec.name}.curves.png",
            title=self.run.info.run_name or self.spec.name,  # a fine-tuning's names its fold
            validation=result.validation,
        )
        for path in [p for p in result.files() if p != Path(result.checkpoint)] + [curve]:
            mlflow.log_artifact(str(path))  # the checkpoint itself is in the logged model
        mlflow.log_dict(self.spec.config, "config.json")
        model = self.log_model(result)
        return {
            "run": self.tracking.run_link(self.run),
            "curves": self.tracking.artifact_link(self.run, curve.name),
            "curves_file": curve,
            "model_id": model.model_id,
            "model_uri": model.model_uri,
            "model": f"{ui_host()}/#/experiments/{self.run.info.experiment_id}/models/{model.model_id}",
        }

    def log_model(self, result):
        """The checkpoint as an MLflow LoggedModel (pyfunc; `audioclip_core.serving`) of this run,
        tagged with where it came from, its last training loss logged against it for each
        manifest it trained on (which links those datasets to it)."""
        import mlflow

        from audioclip_core.checkpoints import checkpoint_metadata
        from audioclip_core.serving import log_checkpoint_model

        spec, sha = self.spec, result.sha256
        kind = "audioclip" if checkpoint_metadata(result.checkpoint).get("kind") == "audioclip" else "classifier"
        tags = {
            **{k: v for k, v in self.tags.items() if k.startswith("dagster.") or k.startswith("git_")},
            "sha256": sha,
            "dagster.data_version": sha[:16],
            "stage": spec.stage,
            **{f"manifest.{n}": m["sha256"] for n, m in spec.manifests.items()},
            **{f"manifest_version.{n}": str(m.get("version") or m["path"]) for n, m in spec.manifests.items()},
            **{f"shards.{n}": m["shards"]["index_sha256"] for n, m in spec.manifests.items() if m.get("shards")},
        }
        labels = _example_labels(self.layout, spec)
        info = log_checkpoint_model(  # the checkpoint is the model's artifact (not the run's)
            Path(result.checkpoint),
            kind=kind,
            name=spec.name,
            card={"stage": spec.stage, "sha256": sha, "classes": list(spec.classes or spec.class_ids)},
            example_audio=_example_clip(self.layout, spec),
            labels=labels,
            tags=tags,
            lineage=Path(result.lineage_path),
            step=model_step(result),
        )
        loss = float(result.history[-1]["loss"])
        for ds in self.datasets.values():
            mlflow.log_metric(
                "training_loss_last_epoch", loss, model_id=info.model_id, dataset=ds, step=len(result.history)
            )
        return info


def model_step(result) -> int:
    """The step (epochs trained) of the weights a stage's checkpoint holds: the kept epoch of a
    fine-tuning that chose one on held-out clips, else the last. MLflow links a logged model to
    the run's metrics at its step, so the model page shows the kept weights' scores, not those
    of the starting model (step 0)."""
    kept = (result.validation or {}).get("kept_epoch")
    return int(kept) if kept is not None else len(result.history)


def _example_clip(layout: DataLayout, spec) -> Optional[Path]:
    """A clip the stage trained on (the input example of its model), or None."""
    from audioclip_core.files import read_version_parquet

    for table in spec.tables:
        df = read_version_parquet(layout.root / table if not Path(table).is_absolute() else Path(table))
        df = df[df["status"] == "ok"] if "status" in df.columns else df
        for rel in df.get("audio_path", []):
            path = layout.root / rel if not Path(rel).is_absolute() else Path(rel)
            if path.is_file():
                return path
    return None


def _example_labels(layout: DataLayout, spec) -> list[str]:
    """Class names for the input example: the clip set's, else the demo's labels file, else none."""
    if spec.classes:
        return list(spec.classes)[:3]
    demo = layout.labels_file("demo_classes")
    if demo.is_file():
        return [x.strip() for x in demo.read_text(encoding="utf-8").splitlines() if x.strip()][:3]
    return []
