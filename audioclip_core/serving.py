"""A checkpoint as an MLflow model people can load and serve (`mlflow.pyfunc`), and the logging
of one: its weights as the safetensors file (no pickle), its lineage record beside them, a
signature, a real input example, requirements pinned from what is installed (no environment
freezing), tags that say where it came from.

`predict` takes a DataFrame with one item per row in one of the columns `audio` (a file path,
or base64 WAV/FLAC/OGG bytes), `image` (a path, or base64 PNG/JPEG bytes) or `text`, and returns
a row per input: `modality`, `embedding` (L2-normalised; cosine = dot product) and, when the
`labels` parameter lists class names, `probabilities` over them (zero-shot: softmax of the
model's scaled similarities) and the best `label`. A stand-alone ESResNeXt (a classifier, no
embedding space) takes audio only and returns its class `scores` (sigmoid: AudioSet is
multi-label) and the best `label`.

Bad input is the caller's error: an MLflow INVALID_PARAMETER_VALUE (HTTP 400 from the scoring
server), naming the row and the reason. File paths are refused when AUDIOCLIP_SERVE_PATHS=0
(`make serve` sets it: a request must not read the server's files); send base64 bytes then.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

COLUMNS = ("audio", "image", "text")
PATHS_ENV = "AUDIOCLIP_SERVE_PATHS"
MODEL_CARD = "model.json"


def _bad(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value) != ""


def _materialise(value: str, row: int, column: str, folder: Path, suffix: str) -> Path:
    """A cell as a file: an existing path (when paths are allowed), else base64 bytes written to `folder`."""
    text = str(value)
    allow_paths = os.environ.get(PATHS_ENV, "1") != "0"
    if allow_paths and len(text) < 4096 and not text.startswith("data:"):
        p = Path(text).expanduser()
        try:
            if p.is_file():
                return p
        except OSError:
            pass
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        where = "neither a readable file nor base64 bytes" if allow_paths else "not base64 bytes (file paths are off)"
        raise _bad(f"row {row}: {column} is {where}: {text[:60]!r}") from None
    if not raw:
        raise _bad(f"row {row}: {column} is empty")
    out = folder / f"row{row}.{column}{suffix}"
    out.write_bytes(raw)
    return out


_MODEL_CLASS = None


def _model_class():
    """The pyfunc model class, made on first use (this module imports without MLflow). It is
    logged as code (MLflow's models-from-code: `MODEL_CODE`), so nothing of it is pickled; its
    artifacts are the checkpoint, its lineage record and a card (`model.json`: kind, name,
    class names)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    import mlflow.pyfunc

    class AudioClipModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from .checkpoints import load_audio_classifier, load_model

            self.card = json.loads(Path(context.artifacts["card"]).read_text(encoding="utf-8"))
            weights = context.artifacts["weights"]
            self.kind = self.card["kind"]
            self.model = load_model(weights) if self.kind == "audioclip" else load_audio_classifier(weights)

        def predict(self, context, model_input, params: Optional[dict] = None):
            import pandas as pd

            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            labels = list((params or {}).get("labels") or [])
            if any(not isinstance(x, str) or not x.strip() for x in labels):
                raise _bad("labels must be non-empty strings")
            unknown = [c for c in df.columns if c not in COLUMNS]
            if unknown:
                raise _bad(f"unknown column(s) {unknown}; one of {list(COLUMNS)} per row")
            if len(df.index) == 0:
                raise _bad("no rows: give one of audio, image or text per row")
            return pd.DataFrame(predict_rows(self.model, self.kind, self.card, df, labels))

    _MODEL_CLASS = AudioClipModel
    return AudioClipModel


def __getattr__(name: str):
    if name == "AudioClipModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# the model's code as MLflow loads it (models from code: written beside the artifacts of every
# logged model and run on load)
MODEL_CODE = """\"\"\"The pyfunc model of an AudioCLIP checkpoint (audioclip_core/serving.py).\"\"\"

import mlflow

from audioclip_core.serving import AudioClipModel

mlflow.models.set_model(AudioClipModel())
"""


def predict_rows(model, kind: str, card: dict, df, labels: list[str]) -> list[dict]:
    """The answer to each row of `df` (see the module's docstring)."""
    from .errors import InputError

    kinds = []
    for i, row in enumerate(df.to_dict(orient="records")):
        given = [c for c in COLUMNS if _present(row.get(c))]
        if len(given) != 1:
            raise _bad(f"row {i}: give exactly one of {list(COLUMNS)}, got {given or 'none'}")
        kinds.append((given[0], row[given[0]]))
    with tempfile.TemporaryDirectory(prefix="audioclip-serve-") as tmp:
        try:
            if kind != "audioclip":
                return [_classify_row(model, card, i, m, v, Path(tmp)) for i, (m, v) in enumerate(kinds)]
            return _embed_rows(model, kinds, labels, Path(tmp))
        except InputError as exc:  # an unreadable clip or image: the request's fault
            raise _bad(str(exc).replace(tmp + os.sep, "")) from None


def _embed_rows(model, kinds, labels: list[str], tmp: Path) -> list[dict]:
    from .inference import AudioEmbedder, embed_images, embed_texts, zero_shot_probabilities

    out = []
    label_emb = embed_texts(model, labels) if labels else None
    audio = AudioEmbedder(model)
    for i, (modality, value) in enumerate(kinds):
        if modality == "audio":
            emb = audio.embed_file(_materialise(value, i, "audio", tmp, ".audio"))
        elif modality == "image":
            emb = embed_images(model, [_materialise(value, i, "image", tmp, ".image")], progress=False)[0]
        else:
            emb = embed_texts(model, [str(value)], truncate=True)[0]
        row = {"modality": modality, "embedding": emb.tolist(), "label": None, "probabilities": None}
        if label_emb is not None and modality != "text":
            probs = zero_shot_probabilities(model, emb[None], label_emb, modality=modality)[0]
            row["probabilities"] = probs.tolist()
            row["label"] = labels[int(probs.argmax())]
        out.append(row)
    return out


def _classify_row(model, card: dict, i: int, modality: str, value, tmp: Path) -> dict:
    import torch

    from .audio import AudioStream, to_model_input

    if modality != "audio":
        raise _bad(f"row {i}: this model ({card.get('name')}) is an audio classifier; it takes audio only")
    path = _materialise(value, i, "audio", tmp, ".audio")
    with AudioStream(path) as stream:
        wave = stream.read(0, stream.frames)
    scale = (getattr(model, "checkpoint_metadata", None) or {}).get("input_scale") or "int16"
    with torch.no_grad():
        scores = torch.sigmoid(model(to_model_input(wave, scale)[None]))[0]
    classes = card.get("classes") or []
    best = int(scores.argmax())
    return {
        "modality": "audio",
        "scores": scores.tolist(),
        "label": classes[best] if best < len(classes) else str(best),
    }


# -- logging --------------------------------------------------------------------------------
def _requirements() -> list[str]:
    """The installed versions of what the model needs at load time, read from the package
    metadata (cheap: MLflow's inference would import and freeze the whole environment)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in (
        "audioclip",
        "torch",
        "torchaudio",
        "torchvision",
        "open_clip_torch",
        "safetensors",
        "soundfile",
        "pillow",
        "pandas",
        "mlflow",
    ):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return out


def signature(kind: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", c, required=False) for c in (COLUMNS if kind == "audioclip" else ("audio",))])
    params = ParamSchema([ParamSpec("labels", "string", default=[], shape=(-1,))]) if kind == "audioclip" else None
    return ModelSignature(inputs=inputs, params=params)


def input_example(audio_file: Optional[Path], kind: str, labels: list[str]):
    """A real request: one audio clip as base64 bytes (the scoring server refuses paths under
    `make serve`), a text, and - for AudioCLIP - the labels to score it against."""
    import pandas as pd

    rows = []
    if audio_file is not None:
        rows.append({"audio": base64.b64encode(Path(audio_file).read_bytes()).decode("ascii")})
    if kind == "audioclip":
        rows.append({"text": labels[0] if labels else "a sound"})
        df = pd.DataFrame(rows)  # the columns given (an all-empty column would not be strings)
        return (df, {"labels": labels}) if labels else df
    return pd.DataFrame(rows, columns=["audio"])


def log_checkpoint_model(
    checkpoint: Path,
    *,
    kind: str,
    name: str,
    card: dict,
    example_audio: Optional[Path],
    labels: list[str],
    tags: dict,
    params: Optional[dict] = None,
    lineage: Optional[Path] = None,
    step: int = 0,
):
    """Log `checkpoint` as an MLflow LoggedModel with the pyfunc flavour, in the active run.
    Returns the `ModelInfo` (its `model_id`, `model_uri`)."""
    with tempfile.TemporaryDirectory(prefix="audioclip-model-") as tmp:
        code = Path(tmp) / "audioclip_model.py"
        code.write_text(MODEL_CODE, encoding="utf-8")
        card_path = Path(tmp) / MODEL_CARD
        card_path.write_text(json.dumps({**card, "kind": kind, "name": name}, indent=2), encoding="utf-8")
        artifacts = {"weights": str(checkpoint), "card": str(card_path)}
        from .checkpoints import ancestors

        # a fine-tuning that stores its head only: the model it completes it from, beside it
        parents = ancestors(checkpoint)
        artifacts.update({f"parent_{i}": str(p) for i, p in enumerate(parents)})
        if lineage is not None and Path(lineage).is_file():
            artifacts["lineage"] = str(lineage)
        with warnings.catch_warnings():  # type hints would replace the signature given here
            warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
            info = _log(
                name=name,
                python_model=str(code),
                artifacts=artifacts,
                signature=signature(kind),
                input_example=input_example(example_audio, kind, labels),
                pip_requirements=_requirements(),
                tags=tags,
                params=params,
                model_type=kind,
                step=step,  # the run's metrics at this step are the model's (its epochs trained)
            )
    _share_weights(info.model_id, Path(checkpoint), card.get("sha256"))
    for p in parents:  # the parents' copies too: each one set of bytes
        _share_weights(info.model_id, p, None)
    return info


def _share_weights(model_id: str, checkpoint: Path, sha256: Optional[str]) -> None:
    """The artifact store's copy of the checkpoint becomes a hard link to the content-addressed
    checkpoint (same bytes, checked by digest): one set of bytes per model, where MLflow's copy
    doubled every checkpoint. Left a copy where the store is remote or on another device."""
    import mlflow

    from .files import share_identical
    from .registry import WEIGHTS_DIR, local_folder

    stored = local_folder(mlflow.get_logged_model(model_id).artifact_location)  # the active store
    if stored is not None:
        share_identical(stored / WEIGHTS_DIR / checkpoint.name, checkpoint, sha256)


def _log(**kwargs):
    import logging

    import mlflow

    env_log = logging.getLogger("mlflow.utils.environment")
    level = env_log.level
    env_log.setLevel(logging.ERROR)  # "Failed to resolve installed pip version": the venv has no pip, by design
    try:
        return mlflow.pyfunc.log_model(**kwargs)
    finally:
        env_log.setLevel(level)
