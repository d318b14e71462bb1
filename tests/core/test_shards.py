"""Training shards hold exactly what the files hold: a dataset over shards gives the per-file
dataset's items bit for bit, the stream covers every item once per epoch in a deterministic
order whatever the number of workers, and resumes at any batch."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from audioclip_core.data.datasets import AudioOptions, AudioSetDataset, ClipSetDataset
from audioclip_core.data.shards import ShardStore, ShardStream, verify_shards, write_shards


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A data root with 13 clips (WAV + 10 JPEG frames), one of them mono, one missing its audio."""
    root = tmp_path_factory.mktemp("root")
    folder = root / "audioset" / "clips" / "eval"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(13):
        sid = f"Clip{i:07d}_0"
        channels = 1 if i == 3 else 2
        sf.write(folder / f"{sid}.wav", rng.uniform(-0.5, 0.5, (int(44100 * 1.5), channels)).astype(np.float32),
                 44100, subtype="PCM_16")
        frames = []
        for k in range(10):
            img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            img.save(folder / f"{sid}_f{k:02d}.jpg", quality=90)
            frames.append(f"audioset/clips/eval/{sid}_f{k:02d}.jpg")
        rows.append({"segment_id": sid, "status": "ok", "audio_path": f"audioset/clips/eval/{sid}.wav",
                     "frame_paths": frames, "label_ids": ["/m/a"] if i % 2 else ["/m/a", "/m/b"],
                     "label_names": ["A"] if i % 2 else ["A", "B"], "class_id": i % 3,
                     "class_name": f"class {i % 3}", "path": f"{sid}.wav"})
    rows.append({**rows[0], "segment_id": "Gone0000000_0", "status": "unavailable", "audio_path": None,
                 "frame_paths": None})
    manifest = pd.DataFrame(rows)
    absolute = manifest.copy()
    absolute["audio_path"] = [None if p is None else str(root / p) for p in manifest["audio_path"]]
    absolute["frame_paths"] = [None if f is None else [str(root / p) for p in f] for f in manifest["frame_paths"]]
    return root, manifest, absolute


@pytest.fixture(scope="module")
def shards(clips, tmp_path_factory):
    root, manifest, _ = clips
    out = root / "shards" / "eval" / "v1"
    record = write_shards(manifest, root, out, target_bytes=900_000, source_sha256="abc")
    return out, record


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_record_index_and_digests(clips, shards):
    root, manifest, _ = clips
    out, record = shards
    assert record["samples"] == 13 and len(record["shards"]) >= 3 and record["source_sha256"] == "abc"
    assert sum(s["samples"] for s in record["shards"]) == 13
    index = pd.read_parquet(out / "index.parquet")
    # every file of every ok clip, under the path the manifest names it by; the auditor reaches clip ids
    ok = manifest[manifest["status"] == "ok"]
    files = set(ok["audio_path"]) | {f for fs in ok["frame_paths"] for f in fs}
    assert files <= set(index["path"]) and set(index["key"]) == set(ok["segment_id"])
    assert verify_shards(out) == []
    # plain tar files: any tar reader (or WebDataset) lists the members the index gives, in order
    import tarfile

    for shard in record["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            assert tar.getnames() == list(index[index["shard"] == shard["name"]]["member"])
    meta = json.loads(ShardStore(out, root).read("Clip0000004_0.json"))
    assert meta["segment_id"] == "Clip0000004_0" and meta["label_names"] == ["A", "B"]
    # packing the same manifest version again is a no-op
    assert write_shards(manifest, root, out, target_bytes=900_000, source_sha256="abc") == record


def _elsewhere(df: pd.DataFrame, old: Path, new: Path) -> pd.DataFrame:
    """The manifest resolved against a data root that holds no clip files: only shards can serve it."""
    out = df.copy()
    out["audio_path"] = [None if p is None else p.replace(str(old), str(new)) for p in df["audio_path"]]
    out["frame_paths"] = [None if f is None else [p.replace(str(old), str(new)) for p in f] for f in df["frame_paths"]]
    return out


@pytest.mark.parametrize("train", [True, False])
def test_a_dataset_over_shards_gives_the_per_file_items(clips, shards, train, tmp_path):
    root, _, absolute = clips
    out, _ = shards
    empty_root = tmp_path / "root"   # no audioset/ folder: a read that went to the files would fail
    moved = _elsewhere(absolute, root, empty_root)
    opts = AudioOptions(clip_seconds=1.0, channels=1, augment=True)
    files = AudioSetDataset(absolute, ["/m/a", "/m/b"], train=train, seed=5, audio=opts, image_size=32)
    packed = AudioSetDataset(moved, ["/m/a", "/m/b"], train=train, seed=5, audio=opts, image_size=32)
    packed.store = ShardStore(out, empty_root)
    for epoch in (0, 3):
        files.set_epoch(epoch)
        packed.set_epoch(epoch)
        for i in range(len(files)):
            assert "error" not in packed[i], packed[i]
            _same(files[i], packed[i])
    clip_files = ClipSetDataset(absolute, train=train, seed=1, audio=opts)
    clip_packed = ClipSetDataset(moved, train=train, seed=1, audio=opts)
    clip_packed.store = ShardStore(out, empty_root)
    for i in range(len(clip_files)):
        _same(clip_files[i], clip_packed[i])


def _stream(clips, shards, **kw):
    root, _, absolute = clips
    out, _ = shards
    ds = AudioSetDataset(absolute, ["/m/a", "/m/b"], train=True, seed=2,
                         audio=AudioOptions(clip_seconds=1.0), image_size=32)
    ds.store = ShardStore(out, root)
    shard_of = [ds.store.shard_of(p) for p in ds.df["audio_path"]]
    return ds, ShardStream(ds, shard_of, batch_size=4, seed=2, mix=2, **kw)


def test_the_stream_covers_every_item_once_in_the_same_order_with_any_number_of_workers(clips, shards):
    ds, stream = _stream(clips, shards)
    stream.set_epoch(1)
    batches = stream.epoch_batches()
    seen = [i for b in batches for i in b]
    # every item once; a last batch of one item (13 = 3 x 4 + 1) is dropped, as training drops it
    assert len(set(seen)) == len(seen) == len(ds) - (1 if len(ds) % 4 == 1 else 0) and set(seen) <= set(range(len(ds)))
    assert batches != stream.epoch_batches(2)  # another epoch, another order
    one = list(DataLoader(stream, batch_size=None, num_workers=0))
    two = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert [b["batch"] for b in two] == list(range(len(batches)))
    ds.set_epoch(1)
    for got0, got2, idx in zip(one, two, batches):
        assert got0["index"] == got2["index"] == idx
        expected = [ds[i] for i in idx]
        assert torch.equal(got2["audio"], torch.stack([e["audio"] for e in expected]))
        assert torch.equal(got2["image"], torch.stack([e["image"] for e in expected]))
        assert torch.equal(got0["target"], got2["target"])


def test_the_stream_resumes_mid_epoch_and_splits_over_ranks(clips, shards):
    _, stream = _stream(clips, shards)
    stream.set_epoch(0)
    full = [b["index"] for b in DataLoader(stream, batch_size=None, num_workers=2)]
    stream.set_epoch(0, batch=2)
    tail = [b["index"] for b in DataLoader(stream, batch_size=None, num_workers=2)]
    assert tail == full[2:]
    ranks = []
    for r in range(2):
        _, s = _stream(clips, shards, rank=r, world=2)
        s.set_epoch(0)
        ranks.append([b["index"] for b in s])
    assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, full))
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]


def test_damaged_shards_are_named(clips, shards, tmp_path):
    import shutil

    root, manifest, _ = clips
    out, record = shards
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = copy / record["shards"][0]["name"]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    assert verify_shards(copy) == [f"{first.name}: SHA-256 differs from the record"]
    store = ShardStore(copy, root)
    index = pd.read_parquet(copy / "index.parquet")
    last = index[index["shard"] == first.name].iloc[-2]
    with pytest.raises(OSError, match="truncated shard"):
        store.read(last["path"])
    with pytest.raises(FileNotFoundError, match="not in the shards"):
        store.read("audioset/clips/eval/Nope.wav")
