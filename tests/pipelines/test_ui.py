"""The Dagster UI on 127.0.0.1, opened in headless Chromium, shows the materialised lineage: the
latest result of each partition's blocking checks, and figures embedded in an asset's metadata."""

import base64
import itertools
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

from assets import audioset, clipsets
from assets.evaluation import figure_metadata
from assets.resources import DataRoot, DatasetSources, YoutubeDownloader
from audioclip_core.acquisition.media_server import MediaServer
from audioclip_core.data.demo_dataset import generate_audioset, generate_esc50
from audioclip_core.evaluation.plots import plot_confusion
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


class _Page:
    """One tab of headless Chromium driven over the DevTools protocol: navigate, run a script,
    wait for a condition of the page, screenshot."""

    def __init__(self, chromium: str, profile: Path):
        import websocket  # websocket-client, installed with dagster-k8s

        port = free_port()
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    target = next(t for t in json.loads(resp.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                assert self.proc.poll() is None and time.time() < deadline, "Chromium did not start"
                time.sleep(0.5)
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait(self, expr: str, what: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(
            f"not shown within {timeout:.0f} s: {what}; the page reads:\n{self.js('document.body.innerText')}"
        )

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def shot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=20)


def _text_shows(*parts: str) -> str:
    return " && ".join(f"document.body.innerText.includes({json.dumps(p)})" for p in parts)


_EMBEDDED_IMAGES = (
    "[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png;base64,') "
    "&& i.complete && i.naturalWidth > 100).length"
)


def _show_markdown(key: str) -> str:
    """A script that opens the markdown of metadata entry `key` (long markdown sits behind a link)."""
    return (
        "(() => { const row = [...document.querySelectorAll('tr')]"
        f".find(r => r.innerText.includes({json.dumps(key)}));"
        " if (!row) return false;"
        " const link = [...row.querySelectorAll('*')].find(e => e.children.length === 0"
        " && e.textContent.includes('Show Markdown'));"
        " if (link) link.click(); return true; })()"
    )


def _figures_table(tmp_path: Path) -> dict:
    """The metadata `table3_zero_shot` publishes (assets.evaluation.figure_metadata), for a small
    made-up table: the asset itself needs trained checkpoints."""
    import numpy as np
    import pandas as pd

    folder = tmp_path / "plots"
    folder.mkdir()
    rows = pd.DataFrame(
        [
            {
                "model": m,
                "task": "zero-shot",
                "dataset": d,
                "metric": "accuracy",
                "value": v,
                "chance": c,
                "fold": "mean",
            }
            for m, d, v, c in [
                ("AudioCLIP (partial)", "esc50", 0.42, 0.02),
                ("AudioCLIP (partial)", "us8k", 0.55, 0.1),
                ("AudioCLIP (full)", "esc50", 0.61, 0.02),
                ("AudioCLIP (full)", "us8k", 0.64, 0.1),
            ]
        ]
    )
    rng = np.random.default_rng(0)
    images = [
        plot_confusion(
            rng.integers(0, 5, (4, 4)), list("abcd"), folder / f"confusion_full_us8k_fold{k}.png", f"fold {k}"
        )
        for k in (1, 2)
    ]
    return figure_metadata("table3_zero_shot", rows, images, folder)


@pytest.mark.slow
def test_dagster_ui_shows_materialised_lineage(tmp_path, monkeypatch):
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
        # every fold in one run, as a backfill writes them: each fold's check result is its own
        assert dg.materialize(
            [clipsets.esc50_folds],
            resources=res,
            instance=instance,
            tags={"dagster/asset_partition_range_start": "1", "dagster/asset_partition_range_end": "5"},
        ).success
        # an AudioSet partition from the demo generator, its videos served from 127.0.0.1: one
        # segment of a removed video, so the downloads preview has a failure to show first
        audioset_dir = tmp_path / "audioset"
        generate_audioset(audioset_dir, train_per_class=0, eval_per_class=1, missing_per_split=1)
        instance.add_dynamic_partitions(audioset.audioset_partitions.name, ["eval"])
        with MediaServer(audioset_dir / "videos") as media:
            aset = {
                "data_root": res["data_root"],
                "sources": DatasetSources(audioset_dir=str(audioset_dir)),
                "youtube": YoutubeDownloader(
                    url_template=media.url("{ytid}.mp4"), backoff_seconds=0.01, max_attempts=1
                ),
            }
            lineage = [
                audioset.audioset_segments,
                audioset.audioset_downloads,
                audioset.audioset_clips,
                audioset.audioset_manifest,
            ]
            assert dg.materialize(lineage, resources=aset, instance=instance, partition_key="eval").success
        instance.report_runless_asset_event(
            dg.AssetMaterialization("table3_zero_shot", metadata=_figures_table(tmp_path))
        )
    # what the demo's terminal says of checks that warned (the small set against the published counts)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    from pipelines.demo import warned_checks

    assert "esc50_manifest published_counts: differences: esc50: 50 clips, published 2000 (and 6 more)" in (
        warned_checks()
    )
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
        page = _Page(chromium, tmp_path / "chromium-cdp")
        try:
            # each blocking check of a partitioned asset: its latest result, with its partition
            for asset, checks, partition in [
                ("audioset_downloads", ["download_success_rate"], "eval"),
                ("audioset_clips", ["no_empty_or_silent_clips", "ten_frames_per_clip"], "eval"),
                ("audioset_manifest", ["usable_share"], "eval"),
                ("esc50_folds", ["disjoint_and_covering"], "usable"),  # the folds' ranged run; its figures
            ]:
                page.open(f"http://127.0.0.1:{port}/assets/{asset}?view=checks")
                page.wait(_text_shows(*checks, "Latest execution", "Passed", "Partition", partition), f"{asset} checks")
                assert "Not evaluated" not in page.js("document.body.innerText")
                if asset == "esc50_folds":
                    page.shot(ARTIFACTS / "dagster_ui_fold_checks.png")
                    # the check's partitions: all five folds evaluated and passed
                    page.js(
                        "[...document.querySelectorAll('button, a, [role=tab]')]"
                        ".find(e => e.innerText.trim() === 'Partitions' && e.getBoundingClientRect().left > 800)"
                        ".click()"
                    )
                    page.wait(
                        r"/Passed\s*\(5\)/.test(document.body.innerText) && "
                        r"/Missing\s*\(0\)/.test(document.body.innerText)",
                        "five folds passed, none missing",
                    )
                    page.shot(ARTIFACTS / "dagster_ui_fold_check_partitions.png")
                if asset == "audioset_downloads":
                    page.wait(_text_shows("success_rate_pct", "90.9"), "the success rate as a percentage")
                    page.shot(ARTIFACTS / "dagster_ui_partition_checks.png")
            # the downloads preview: the counts per status, the failed segment first
            page.open(f"http://127.0.0.1:{port}/assets/audioset_downloads")
            page.wait(_text_shows("ok: 10, unavailable: 1", "HTTP Error 404"), "the downloads preview")
            # a figure embedded in the metadata, shown without any server behind it
            page.open(f"http://127.0.0.1:{port}/assets/table3_zero_shot")
            page.wait(_show_markdown("summary_plot"), "the summary_plot entry")
            assert page.wait(_EMBEDDED_IMAGES, "the embedded summary plot") >= 1
            page.shot(ARTIFACTS / "dagster_ui_embedded_figure.png")
        finally:
            page.close()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
