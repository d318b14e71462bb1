"""`make serve`: MLflow's real scoring server for `models:/audioclip@champion` on 127.0.0.1 answers a
real ESC-50 clip, sent as bytes, with the model's zero-shot probabilities; its stored serving
example is a real request; a malformed request is a 4xx with a message, never a 500."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[2]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(lineage, stage_outputs, tmp_path_factory):
    """The champion of the lineage's registry (the first model becomes champion), served as
    `make serve` serves it."""
    from assets import promotion
    from audioclip_core.net import free_port

    with dg.instance_for_test() as instance:  # a whole instance (not a weak ephemeral one) for this run
        result = dg.materialize(
            [promotion.model_promotion], resources=lineage["res"], instance=instance, raise_on_error=False
        )
        said = {c.check_name: c.metadata.get("reason") for c in result.get_asset_check_evaluations()}
        assert result.success, said
    uri = f"sqlite:///{lineage['data'] / 'mlflow' / 'mlflow.db'}"
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "AUDIOCLIP_SERVE_PATHS": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                Path(sys.executable).parent / "mlflow",
                "models",
                "serve",
                "-m",
                "models:/audioclip@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the scoring server did not start: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"url": base + "/invocations", "uri": uri}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_real_esc50_clip_is_classified_over_http(server, shared_data):
    clip = sorted((shared_data / "esc50" / "audio").glob("*.wav"))[0]
    labels = ["dog", "rain", "crying baby", "door knock", "helicopter"]
    body = {
        "dataframe_records": [{"audio": base64.b64encode(clip.read_bytes()).decode("ascii")}],
        "params": {"labels": labels},
    }
    status, answer = post(server["url"], json.dumps(body).encode())
    assert status == 200, answer
    (pred,) = answer["predictions"]
    assert pred["modality"] == "audio" and pred["label"] in labels
    assert len(pred["probabilities"]) == len(labels) and abs(sum(pred["probabilities"]) - 1.0) < 1e-5
    norm = sum(x * x for x in pred["embedding"]) ** 0.5
    assert abs(norm - 1.0) < 1e-5  # L2-normalised (float32)


def test_the_stored_serving_example_is_answered(server, lineage):
    from audioclip_core.layout import DataLayout
    from audioclip_core.registry import model_example_request

    os.environ["MLFLOW_TRACKING_URI"] = server["uri"]
    try:
        example = model_example_request("models:/audioclip@champion", DataLayout.at(lineage["data"]))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    status, answer = post(server["url"], example.read_bytes())
    assert status == 200, answer
    assert [p["modality"] for p in answer["predictions"]] == ["audio", "text"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"bogus": 1}',
        b'{"dataframe_records": [{"audio": "/etc/passwd"}]}',
        b'{"dataframe_records": [{"audio": "bm90IGF1ZGlv"}]}',
        b'{"dataframe_records": [{"text": "a", "image": "eA=="}]}',
        b'{"dataframe_records": [{"text": "a"}], "params": {"labels": "dog"}}',
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(server, body):
    status, answer = post(server["url"], body)
    assert 400 <= status < 500, (status, answer)
    assert answer.get("message") and "stack_trace" not in answer
