"""The MLflow side of a model that people use: where the tracking store is, the registered
models (`audioclip`, the full model; `esresnext`, the stand-alone classifier) and their
aliases (`champion`: the model in use; `challenger`: the latest re-training), and `models:/`
URIs resolved to a checkpoint file with its lineage record beside it.

The store is the data root's sqlite database (`DataLayout.mlflow_db`) unless
MLFLOW_TRACKING_URI names another; the registry lives in the same store. MLflow is imported
when a function here is called (the `pipeline` extra installs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import InputError
from .files import share_identical
from .layout import DataLayout

MODELS_SCHEME = "models:/"
CHAMPION, CHALLENGER = "champion", "challenger"
# the registered model of each stage whose model people use
REGISTERED = {"audioclip_full": "audioclip", "esresnext_audioset": "esresnext"}
WEIGHTS_DIR = "artifacts"  # the folder of a logged pyfunc model that holds its checkpoint and lineage record


def tracking_uri(layout: Optional[DataLayout] = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite database in the data root (created on use)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    layout = layout or DataLayout.at(None)
    layout.ensure(layout.mlflow_dir)
    return f"sqlite:///{layout.mlflow_db}"


def client(uri: Optional[str] = None, layout: Optional[DataLayout] = None):
    """An MlflowClient on `uri` (default `tracking_uri(layout)`), the registry on the same store."""
    import mlflow

    uri = uri or tracking_uri(layout)
    _pin(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _pin(uri: str) -> None:
    """Make `uri` the tracking and registry URI of this process's MLflow calls (runs, logged
    models, registrations, downloads). Set in MLflow's module state rather than with
    `mlflow.set_tracking_uri`, which also writes MLFLOW_TRACKING_URI into the environment: that
    echo would then read as the user's setting in `tracking_uri` for every later data root."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    if tracking_state._tracking_uri != uri:
        tracking_state._tracking_uri = uri
        try:  # MLflow's tracer keeps the URI it exports to; it is reset when the URI changes
            from mlflow.tracing.provider import reset

            reset()
        except ImportError:
            pass
    registry_state._registry_uri = uri


def is_model_uri(text: str) -> bool:
    return str(text).startswith(MODELS_SCHEME)


def _version_of(cl, uri: str):
    """The registered model version a `models:/name/version` or `models:/name@alias` URI names;
    None for `models:/<model id>` (a logged model, not a registered version)."""
    from mlflow.exceptions import MlflowException

    rest = uri[len(MODELS_SCHEME) :].strip("/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return cl.get_model_version_by_alias(name, alias)
        if "/" in rest:
            name, version = rest.split("/", 1)
            return cl.get_model_version(name, version)
    except MlflowException as exc:
        raise InputError(f"{uri}: {exc.message}") from exc
    return None


def model_id_of(uri: str, layout: Optional[DataLayout] = None, store: Optional[str] = None) -> str:
    """The logged model id behind a `models:/` URI (a registered version's, or the id itself);
    `store`: the tracking URI (default `tracking_uri(layout)`)."""
    cl = client(store, layout=layout)
    version = _version_of(cl, uri)
    if version is None:
        return uri[len(MODELS_SCHEME) :].strip("/")
    return version_model_id(version)


def version_model_id(version) -> str:
    """The logged model id of a registered `ModelVersion` (its `model_id`, which the registry
    leaves empty on some reads, else the `models:/<id>` of its source)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source[len(MODELS_SCHEME) :].strip("/") if source.startswith(MODELS_SCHEME) else source


def resolve_checkpoint(text: str, layout: Optional[DataLayout] = None, store: Optional[str] = None) -> Path:
    """A checkpoint argument as a file: a path as it is; a `models:/` URI (`models:/audioclip@champion`,
    `models:/audioclip/3`, `models:/m-<id>`) as the checkpoint of that logged model, downloaded once
    into the data root's model cache (`mlflow/models/<model id>/`) with its lineage record beside it.
    `store`: the tracking URI (default `tracking_uri(layout)`)."""
    if not is_model_uri(text):
        return Path(text)
    layout = layout or DataLayout.at(None)
    model_id = model_id_of(text, layout, store)
    if not model_id or "/" in model_id or model_id in (".", ".."):
        raise InputError(f"{text}: not a model this store holds")
    dest = layout.mlflow_dir / "models" / model_id
    found = sorted((dest / WEIGHTS_DIR).glob("*.safetensors")) if dest.is_dir() else []
    if not found:
        import shutil

        import mlflow
        from mlflow.exceptions import MlflowException

        client(store, layout=layout)  # downloads go through the global tracking URI
        tmp = layout.ensure(dest.parent) / f".{model_id}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{MODELS_SCHEME}{model_id}", dst_path=str(tmp))
        except MlflowException as exc:
            raise InputError(f"{text}: {exc.message}") from exc
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)  # whole or not at all
        found = sorted((dest / WEIGHTS_DIR).glob("*.safetensors"))
        stored = local_folder(client(store, layout=layout).get_logged_model(model_id).artifact_location)
        for f in found if stored is not None else []:  # the cache holds no second copy of the bytes
            share_identical(f, stored / WEIGHTS_DIR / f.name)
    if not found:
        raise InputError(f"{text}: the model {model_id} holds no checkpoint under {WEIGHTS_DIR}/")
    return _model_weights(found)


def _model_weights(files: list[Path]) -> Path:
    """The model's own checkpoint among a logged model's safetensors files: the one no other
    names as its parent (a fine-tuning that stores its head keeps its parent beside it)."""
    from .checkpoints import DELTA_KEY, checkpoint_metadata

    parents = {(checkpoint_metadata(f).get(DELTA_KEY) or {}).get("file") for f in files}
    own = [f for f in files if f.name not in parents]
    return own[0] if own else files[0]


def local_folder(location: str) -> Optional[Path]:
    """An artifact location (a logged model's `artifact_location`) as a local folder, or None for
    a remote store."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(location)
    if parts.scheme not in ("", "file"):
        return None
    path = Path(url2pathname(parts.path) if parts.scheme == "file" else location)
    return path if path.is_dir() else None


def aliases(name: str, layout: Optional[DataLayout] = None, store: Optional[str] = None) -> dict:
    """alias -> ModelVersion of registered model `name` ({} when it is not registered)."""
    from mlflow.exceptions import MlflowException

    cl = client(store, layout=layout)
    try:
        model = cl.get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: cl.get_model_version(name, version) for alias, version in (model.aliases or {}).items()}


def model_example_request(uri: str, layout: Optional[DataLayout] = None) -> Optional[Path]:
    """The stored serving example of a `models:/` model (`serving_input_example.json`: a real
    request for its scoring server), from the model cache; None if it has none."""
    checkpoint = resolve_checkpoint(uri, layout)
    example = checkpoint.parent.parent / "serving_input_example.json"
    return example if example.is_file() else None
