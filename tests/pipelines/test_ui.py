"""The Dagster UI on 127.0.0.1, opened in headless Chromium, shows the materialised lineage."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from conftest import REPO

from assets import clipsets
from assets.resources import DataRoot, DatasetSources
from audioclip_core.data.demo_dataset import generate_esc50
from audioclip_core.net import free_port

ARTIFACTS = REPO / "tests" / "artifacts"


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-chromium.sh")], capture_output=True, text=True)
        exe = shutil.which("chromium")
        assert exe is not None, f"scripts/install-chromium.sh could not install Chromium: {proc.stderr[-300:]}"
    return exe


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_dagster_ui_shows_materialised_lineage(tmp_path):
    chromium = _chromium()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    generate_esc50(tmp_path / "esc50", per_fold_class=1)
    from pipelines.backfill import env as dagster_env

    # the checkout importable (dagster.yaml's run launcher lives in pipelines/)
    env = dict(
        dagster_env(),
        DAGSTER_HOME=str(home),
        AUDIOCLIP_DATA_ROOT=str(tmp_path / "data"),
        AUDIOCLIP_ESC50_DIR=str(tmp_path / "esc50"),
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        res = {
            "data_root": DataRoot(root=env["AUDIOCLIP_DATA_ROOT"]),
            "sources": DatasetSources(esc50_dir=env["AUDIOCLIP_ESC50_DIR"]),
        }
        assert dg.materialize([clipsets.esc50_manifest], resources=res, instance=instance).success
        assert dg.materialize([clipsets.esc50_folds], resources=res, instance=instance, partition_key="1").success
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "dagster dev did not start"
                time.sleep(1)
        data = _graphql(
            port,
            "{ assetNodes { assetKey { path } dependencyKeys { path } description } "
            'assetOrError(assetKey: {path: ["esc50_manifest"]}) '
            "{ ... on Asset { assetMaterializations(limit: 1) { runId } } } }",
        )
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
        keys = set(nodes)
        assert {"audioset_segments", "audioset_manifest", "esc50_folds", "audioclip_full", "table4_querying"} <= keys
        # the demo's stand-in for CLIP's pre-training: its own asset, upstream of the partial stage
        assert {"path": ["clip_towers"]} in nodes["audioclip_partial"]["dependencyKeys"]
        assert {"path": ["audioset_manifest"]} in nodes["clip_towers"]["dependencyKeys"]
        assert "STAND-IN FOR CLIP'S PRE-TRAINING" in nodes["clip_towers"]["description"]
        assert data["data"]["assetOrError"]["assetMaterializations"][0]["runId"]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dagster_ui_esc50_manifest.png"
        shot.unlink(missing_ok=True)
        profile = tmp_path / "chromium-profile"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                "--virtual-time-budget=15000",
                f"--screenshot={shot}",
                f"http://127.0.0.1:{port}/assets/esc50_manifest",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert shot.is_file() and shot.stat().st_size > 20_000
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
