"""The main job (`make demo`): the whole lineage on the built-in demo data, on this machine.

Generates the demo dataset into the data root, starts the local media server that stands in
for YouTube, materialises every asset (each AudioSet partition the demo uses, every fold)
into the Dagster instance in DAGSTER_HOME, stops the server, and prints the four tables and
where to look. `make ui` then shows every asset materialised with its metadata and checks;
`make mlflow-ui` shows the training and evaluation runs.
"""
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    os.environ.setdefault("DAGSTER_HOME", str(REPO / "dagster_home"))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import dagster as dg

    from assets import audioset, clipsets, evaluation, training
    from assets.resources import DataRoot, DatasetSources, MlflowTracking, YoutubeDownloader
    from audioclip_core.acquisition.media_server import MediaServer

    from .instance import configure

    start = time.time()
    configure()
    data_root = DataRoot()
    layout = data_root.layout
    sources = DatasetSources()
    for var in ("AUDIOCLIP_AUDIOSET_DIR", "AUDIOCLIP_ESC50_DIR", "AUDIOCLIP_US8K_DIR"):
        if os.environ.get(var):
            print(f"note: {var} is set; the demo uses it instead of the built-in data")
    print(f"data root: {layout.root}\n[1/5] demo dataset ...", flush=True)
    audioset_dir = sources.audioset(layout)
    videos = audioset_dir / "videos"
    instance = dg.DagsterInstance.get()

    def run(assets, partition=None, label=""):
        t = time.time()
        result = dg.materialize(assets, instance=instance, resources=resources, partition_key=partition,
                                raise_on_error=False)
        keys = ", ".join(a.key.to_user_string() for a in assets)
        status = "ok" if result.success else "FAILED"
        print(f"      {label or keys}{f' [{partition}]' if partition else ''}: {status} ({time.time() - t:.1f} s)",
              flush=True)
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.event_specific_data is not None:
                    print(f"      {getattr(event.event_specific_data, 'error', '')}")
            raise SystemExit(f"demo stopped: {keys} failed")
        return result

    with MediaServer(videos) as server:
        resources = {"data_root": data_root, "sources": sources, "tracking": MlflowTracking(),
                     "youtube": YoutubeDownloader(url_template=server.url("{ytid}.mp4"), backoff_seconds=0.2)}
        print(f"[2/5] AudioSet lineage (videos served from {server.url()}) ...", flush=True)
        chain = [audioset.audioset_segments, audioset.audioset_downloads, audioset.audioset_clips,
                 audioset.audioset_manifest]
        for partition in ("balanced_train", "eval", "demo"):
            run(chain, partition, "segments -> downloads -> clips -> manifest")
    print("      media server stopped")
    print("[3/5] ESC-50 / UrbanSound8K manifests and folds ...", flush=True)
    run([clipsets.esc50_manifest, clipsets.us8k_manifest])
    for fold in range(1, 6):
        run([clipsets.esc50_folds], str(fold))
    for fold in range(1, 11):
        run([clipsets.us8k_folds], str(fold))
    print("[4/5] training (demo profile: tiny preset) ...", flush=True)
    for asset in (training.esresnext_audioset, training.audioclip_partial, training.audioclip_full):
        run([asset])
    for fold in range(1, 6):
        run([training.esresnext_esc50], str(fold))
        run([training.audioclip_esc50], str(fold))
    for fold in range(1, 11):
        run([training.esresnext_us8k], str(fold))
        run([training.audioclip_us8k], str(fold))
    print("[5/5] evaluation tables ...", flush=True)
    tables = (evaluation.table1_esresnext, evaluation.table2_audioclip, evaluation.table3_zero_shot,
              evaluation.table4_querying)
    for asset in tables:
        run([asset])
    for asset in tables:
        name = asset.key.to_user_string()
        print(f"\n## {name}\n")
        print(layout.table(name, ".md").read_text(encoding="utf-8").split("\n", 2)[2])
    print(f"Done in {(time.time() - start) / 60:.1f} min.\n"
          f"  Dagster UI (every asset, its metadata and checks):  make ui      -> http://127.0.0.1:3000\n"
          f"  MLflow runs (training and evaluation):              make mlflow-ui -> http://127.0.0.1:5000\n"
          f"  Tables in DuckDB: {layout.catalog} (table1_esresnext ... table4_querying)\n"
          f"  Trace a checkpoint: .venv/bin/audioclip lineage {layout.checkpoint('audioclip_full')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
