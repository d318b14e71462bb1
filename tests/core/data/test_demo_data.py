"""The demo dataset's seed, and the image-caption pairs of the demo's stand-in for CLIP."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from audioclip_core.data import demo_dataset
from audioclip_core.data.datasets import ImageCaptionDataset, collate
from audioclip_core.training.health import at_chance, collapse


def test_the_seed_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("AUDIOCLIP_SEED", raising=False)
    assert demo_dataset.demo_seed() == 0
    monkeypatch.setenv("AUDIOCLIP_SEED", "7")
    assert demo_dataset.demo_seed() == 7 and demo_dataset.demo_seed(3) == 3
    monkeypatch.setenv("AUDIOCLIP_SEED", "seven")
    with pytest.raises(ValueError, match="AUDIOCLIP_SEED='seven'"):
        demo_dataset.demo_seed()


def test_a_root_of_another_seed_is_refused_not_regenerated(tmp_path):
    root = tmp_path / "demo_source"
    root.mkdir()
    (root / ".complete").write_text("ok seed=1\n")
    assert demo_dataset.generate_all(root, seed=1) == {"skipped": True, "seed": 1}
    with pytest.raises(demo_dataset.SeedMismatch, match="seed 1, not 2.*AUDIOCLIP_DATA_ROOT"):
        demo_dataset.generate_all(root, seed=2)
    (root / ".complete").write_text("ok\n")  # written before seeds were recorded: seed 0
    assert demo_dataset.generated_seed(root) == 0


def test_the_same_seed_draws_the_same_sounds_and_another_does_not():
    cls = demo_dataset.CLASSES[6]
    a = demo_dataset.synthesize(cls, 1.0, np.random.default_rng(4))
    b = demo_dataset.synthesize(cls, 1.0, np.random.default_rng(4))
    c = demo_dataset.synthesize(cls, 1.0, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({c.mid for c in demo_dataset.CLASSES}) == len({c.short for c in demo_dataset.CLASSES}) == 10


def test_image_caption_pairs_are_every_frame_with_its_clip_caption(tmp_path):
    frames = []
    for i in range(3):
        path = tmp_path / f"f{i}.jpg"
        Image.fromarray(np.full((12, 16, 3), 40 * i, dtype=np.uint8)).save(path)
        frames.append(str(path))
    df = pd.DataFrame(
        [
            {"segment_id": "a", "status": "ok", "label_names": ["Siren"], "frame_paths": frames[:2]},
            {"segment_id": "b", "status": "ok", "label_names": ["Drum", "Buzz"], "frame_paths": frames[2:]},
            {"segment_id": "c", "status": "missing", "label_names": ["Drum"], "frame_paths": []},
        ]
    )
    ds = ImageCaptionDataset(df, train=False, image_size=32)
    assert len(ds) == 3 and [ds[i]["text"] for i in range(3)] == [["Siren"], ["Siren"], ["Drum", "Buzz"]]
    batch = collate([ds[0], ds[2]])
    assert batch["image"].shape == (2, 3, 32, 32) and "audio" not in batch and batch["index"] == [0, 2]
    # a frame that cannot be read costs one pair, named
    (tmp_path / "f0.jpg").write_bytes(b"not a jpeg")
    item = ds[0]
    assert "error" in item and "a " in item["error"]
    # augmented in training: seeded by (seed, epoch, index)
    train = ImageCaptionDataset(df, train=True, seed=3, image_size=32)
    assert torch.equal(train[1]["image"], train[1]["image"])


def test_the_gates_judge_an_image_text_stage_by_its_image_text_figures():
    history = [
        {"loss_image_text": 6.93, "loss_uniform": 6.931, "acc_image_text": 0.11, "acc_chance": 0.1, "samples": 800}
    ]
    assert collapse(history)["collapsed"] and at_chance(history)["at_chance"]
    assert at_chance(history)["retrieval"] == "acc_image_text"
    history = [
        {"loss_image_text": 2.4, "loss_uniform": 6.931, "acc_image_text": 0.93, "acc_chance": 0.1, "samples": 800}
    ]
    assert not collapse(history)["collapsed"] and not at_chance(history)["at_chance"]


def test_the_towers_record_follows_a_moved_data_root(tmp_path):
    import json
    import shutil

    from audioclip_core.layout import DataLayout
    from audioclip_core.training.towers import TOWERS_RECORD, publish_towers, published_towers, towers_record

    old = DataLayout.at(tmp_path / "old")
    ckpt = old.checkpoint("clip_towers")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    publish_towers(old, towers_record("standin", str(ckpt)))
    stored = json.loads((old.checkpoint_dir("clip_towers") / TOWERS_RECORD).read_text())
    assert stored["path"] == "checkpoints/clip_towers/clip_towers.safetensors"  # relative to the root
    shutil.move(str(old.root), str(tmp_path / "new"))
    new = DataLayout.at(tmp_path / "new")
    got = published_towers(new)
    assert got["path"] == str(new.checkpoint("clip_towers")) and got["sha256"] == stored["sha256"]
    new.checkpoint("clip_towers").unlink()
    with pytest.raises(FileNotFoundError, match="which is gone"):
        published_towers(new)
