"""A checkpoint as an MLflow pyfunc model (audioclip_core/serving.py) and the registry's models:/
URIs (audioclip_core/registry.py): the logged model answers as the library does, bad requests are
the caller's error, and a registered version resolves to the very checkpoint file."""

import base64
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

pytest.importorskip("mlflow")


def wav_bytes(freq=440.0, seconds=1.0, rate=44100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def png_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # undone after the test
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(tmp_path / "data"))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("serving-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("serving-test")
    return tmp_path


@pytest.fixture
def logged(store, tiny_checkpoint):
    import mlflow

    from audioclip_core.serving import log_checkpoint_model

    clip = store / "clip.wav"
    clip.write_bytes(wav_bytes())
    with mlflow.start_run():
        info = log_checkpoint_model(
            tiny_checkpoint,
            kind="audioclip",
            name="tiny",
            card={"classes": []},
            example_audio=clip,
            labels=["a tone", "noise"],
            tags={"sha256": "x"},
        )
    return info


def test_the_logged_model_answers_as_the_library(logged, store, tiny_checkpoint):
    import mlflow

    import audioclip_core as ac
    from audioclip_core.inference import AudioEmbedder, embed_images, embed_texts, zero_shot_probabilities

    model = mlflow.pyfunc.load_model(logged.model_uri)
    audio, image = wav_bytes(), png_bytes()
    out = model.predict(
        pd.DataFrame(
            [
                {"audio": base64.b64encode(audio).decode()},
                {"image": base64.b64encode(image).decode()},
                {"text": "a tone"},
            ]
        ),
        params={"labels": ["a tone", "noise"]},
    )
    assert out["modality"].tolist() == ["audio", "image", "text"]
    ref = ac.load_model(tiny_checkpoint)
    (store / "a.wav").write_bytes(audio)
    (store / "i.png").write_bytes(image)
    a = AudioEmbedder(ref).embed_file(store / "a.wav")
    i = embed_images(ref, [store / "i.png"], progress=False)[0]
    t = embed_texts(ref, ["a tone"])[0]
    labels = embed_texts(ref, ["a tone", "noise"])
    # the same weights and the same code on the same machine: the same numbers
    assert torch.equal(torch.tensor(out["embedding"][0]), a)
    assert torch.equal(torch.tensor(out["embedding"][1]), i)
    assert torch.equal(torch.tensor(out["embedding"][2]), t)
    probs = zero_shot_probabilities(ref, a[None], labels)[0]
    assert torch.equal(torch.tensor(out["probabilities"][0]), probs)
    assert out["label"][0] == ["a tone", "noise"][int(probs.argmax())]
    assert out["probabilities"][2] is None  # a text is embedded, not classified


def test_the_stored_input_example_is_a_real_request(logged):
    import mlflow
    from mlflow.models import validate_serving_input
    from mlflow.models.utils import load_serving_example

    example = load_serving_example(logged.model_uri)
    body = json.loads(example)
    assert body["params"] == {"labels": ["a tone", "noise"]}
    audio = body["dataframe_split"]["data"][0][body["dataframe_split"]["columns"].index("audio")]
    assert base64.b64decode(audio) == wav_bytes()  # the clip itself, as bytes
    out = validate_serving_input(logged.model_uri, example)
    assert len(out) == 2 and np.isfinite(np.asarray(out["embedding"][0])).all()
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature.params.params[0].name == "labels"


@pytest.mark.parametrize(
    "rows,params,message",
    [
        ([{"audio": "bm90IGF1ZGlv"}], None, "could not decode audio"),
        ([{"image": "bm90IGFuIGltYWdl"}], None, "cannot read image"),
        ([{"audio": "%%%"}], None, "neither a readable file nor base64"),
        ([{"audio": "", "text": ""}], None, "give exactly one of"),
        ([{"audio": base64.b64encode(b"x").decode(), "text": "both"}], None, "give exactly one of"),
        ([{"text": "a"}], {"labels": [""]}, "labels must be non-empty strings"),
    ],
)
def test_bad_requests_are_the_callers_error(logged, rows, params, message):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(logged.model_uri)
    with pytest.raises(MlflowException, match=message) as err:
        model.predict(pd.DataFrame(rows), params=params)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 from the scoring server


def test_paths_are_refused_when_serving(logged, store, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    clip = store / "clip.wav"
    model = mlflow.pyfunc.load_model(logged.model_uri)
    assert model.predict(pd.DataFrame([{"audio": str(clip)}]))["modality"].tolist() == ["audio"]
    monkeypatch.setenv("AUDIOCLIP_SERVE_PATHS", "0")
    with pytest.raises(MlflowException, match="file paths are off"):
        model.predict(pd.DataFrame([{"audio": str(clip)}]))


def test_a_registered_version_resolves_to_its_checkpoint(logged, store, tiny_checkpoint, capsys):
    import mlflow

    from audioclip_core.cli import main
    from audioclip_core.errors import InputError
    from audioclip_core.files import sha256_file
    from audioclip_core.registry import aliases, client, model_id_of, resolve_checkpoint

    version = mlflow.register_model(logged.model_uri, "tiny")
    client().set_registered_model_alias("tiny", "champion", version.version)
    assert aliases("tiny")["champion"].version == version.version
    assert model_id_of("models:/tiny@champion") == logged.model_id
    path = resolve_checkpoint("models:/tiny@champion")
    assert sha256_file(path) == sha256_file(tiny_checkpoint)
    stamp = path.stat().st_mtime_ns
    assert resolve_checkpoint(f"models:/tiny/{version.version}") == path  # cached: not downloaded again
    assert path.stat().st_mtime_ns == stamp
    # one set of bytes: the artifact store's copy and the cache's are the checkpoint itself
    stored = next((store / "artifacts").rglob(tiny_checkpoint.name))
    assert os.path.samefile(stored, tiny_checkpoint) and os.path.samefile(path, tiny_checkpoint)
    with pytest.raises(InputError, match="nope"):
        resolve_checkpoint("models:/tiny@nope")
    clip = store / "clip.wav"
    assert main(["embed", "--checkpoint", "models:/tiny@champion", str(clip), "--out", str(store / "e.json")]) == 0
    rows = json.loads((store / "e.json").read_text())
    assert len(rows) == 1 and rows[0]["status"] == "ok"


def test_identical_files_are_shared_and_different_ones_kept(tmp_path):
    from audioclip_core.files import sha256_file, share_identical

    original = tmp_path / "a.safetensors"
    original.write_bytes(b"weights" * 1000)
    same, other = tmp_path / "copy1", tmp_path / "copy2"
    same.write_bytes(original.read_bytes())
    other.write_bytes(b"weightz" * 1000)  # same size, other bytes
    assert share_identical(same, original, sha256_file(original))
    assert os.path.samefile(same, original) and same.read_bytes() == original.read_bytes()
    assert not share_identical(other, original) and not os.path.samefile(other, original)
    assert other.read_bytes() == b"weightz" * 1000  # kept as it was
    assert share_identical(same, original)  # already one file: nothing to do
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_a_fine_tuning_that_stores_its_head_is_logged_with_its_parent(store, tiny_checkpoint, tmp_path):
    """A delta checkpoint (the audio head of a cooperative fine-tuning) is logged with its parent
    beside it, both hard links to the files of the data root; the served model answers as the
    library's model loaded from the data root, and models:/ resolves to the fold's own file."""
    import mlflow

    import audioclip_core as ac
    from audioclip_core.inference import AudioEmbedder
    from audioclip_core.registry import resolve_checkpoint
    from audioclip_core.serving import log_checkpoint_model

    tuned = ac.load_model(tiny_checkpoint)
    with torch.no_grad():
        for p in tuned.audio.parameters():
            p.add_(0.01)
    child = ac.save_checkpoint(tuned, tmp_path / "fold1" / "tiny_esc50.safetensors", parent=tiny_checkpoint)
    assert child.stat().st_size < tiny_checkpoint.stat().st_size / 2
    clip = store / "clip.wav"
    clip.write_bytes(wav_bytes())
    with mlflow.start_run():
        info = log_checkpoint_model(
            child, kind="audioclip", name="tiny_esc50", card={}, example_audio=clip, labels=["a"], tags={}
        )
    stored = {p.name: p for p in (store / "artifacts").rglob("*.safetensors") if info.model_id in str(p)}
    assert os.path.samefile(stored[child.name], child) and os.path.samefile(
        stored[tiny_checkpoint.name], tiny_checkpoint
    )
    out = mlflow.pyfunc.load_model(info.model_uri).predict(
        pd.DataFrame([{"audio": base64.b64encode(wav_bytes()).decode()}])
    )
    expected = AudioEmbedder(ac.load_model(child)).embed_file(clip)
    assert torch.equal(torch.tensor(out["embedding"][0]), expected)
    assert not torch.equal(expected, AudioEmbedder(ac.load_model(tiny_checkpoint)).embed_file(clip))  # the head's
    assert resolve_checkpoint(f"models:/{info.model_id}").name == child.name
