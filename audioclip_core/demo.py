"""The main job (`make demo`).

Today it exercises what exists: the model code, checkpoint formats and the file-level API,
on a tiny-preset model and synthetic clips written into the data root. The Dagster data
lineage, the four training stages and the evaluation tables are not built yet; when they
are, this command materialises the whole lineage on the built-in demo data instead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def data_root() -> Path:
    root = Path(os.environ.get("AUDIOCLIP_DATA_ROOT", Path.cwd() / "data"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _synthetic_clips(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sr = 44100
    t = np.arange(sr * 2) / sr
    rng = np.random.default_rng(0)
    clips = {
        "tone_440hz.wav": 0.4 * np.sin(2 * np.pi * 440 * t),
        "chirp.wav": 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t),
        "white_noise.wav": 0.2 * rng.standard_normal(t.shape),
    }
    paths = []
    for name, wave in clips.items():
        path = folder / name
        sf.write(path, wave.astype(np.float32), sr)
        paths.append(path)
    return paths


def main() -> None:
    import audioclip_core as ac
    from audioclip_core.inference import AudioEmbedder, embed_texts, zero_shot_probabilities

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.time()
    root = data_root()
    out = root / "demo"
    print("AudioCLIP demo - runs what exists today: models, checkpoints, the file-level API.")
    print("The Dagster lineage (download -> clips -> manifests -> training -> tables) is not built yet.\n")

    torch.manual_seed(0)
    model = ac.build_model("audioclip-tiny").eval()
    n_params = sum(p.numel() for p in model.parameters())
    ckpt = ac.save_checkpoint(model, out / "tiny.safetensors", metadata={"input_scale": "int16"})
    official = ac.export_official(model, out / "tiny-official.pt")
    reloaded = ac.load_model(official, preset="audioclip-tiny")
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    print(f"1. tiny AudioCLIP: {n_params:,} parameters; saved {ckpt.name} (safetensors + metadata) and "
          f"{official.name} (official layout); strict reload identical: {same}")

    clips = _synthetic_clips(out / "clips")
    labels = ["a pure tone", "a rising chirp", "static noise"]
    loaded = ac.load_model(ckpt)
    audio = AudioEmbedder(loaded).embed_files(clips, progress=False)
    probs = zero_shot_probabilities(loaded, audio, embed_texts(loaded, labels))
    print("2. zero-shot classification of synthetic clips with the UNTRAINED tiny model "
          "(labels are arbitrary until training exists):")
    for path, p in zip(clips, probs):
        print(f"   {path.name:<18s} -> {labels[int(p.argmax())]!r} ({float(p.max()):.2f})")
    print(f"\nDone in {time.time() - start:.1f} s. Outputs in {out}")
    print("Use real weights: audioclip classify --checkpoint AudioCLIP-Full-Training.pt --labels dog,rain FILE...")


if __name__ == "__main__":
    main()
