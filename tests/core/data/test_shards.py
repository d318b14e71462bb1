"""Training shards hold exactly what the files hold: a dataset over shards gives the per-file
dataset's items bit for bit, the stream covers every item once per epoch in a deterministic
order whatever the number of workers, and resumes at any batch."""

import hashlib
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from audioclip_core.data.datasets import AudioOptions, AudioSetDataset, ClipSetDataset
from audioclip_core.data.shards import (
    INDEX,
    DigestMismatch,
    ShardStore,
    ShardStream,
    publish_shards,
    remove_abandoned,
    verify_shards,
    write_shards,
)
from audioclip_core.files import CorruptVersion, file_lock
from audioclip_core.layout import DataLayout


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
        sf.write(
            folder / f"{sid}.wav",
            rng.uniform(-0.5, 0.5, (int(44100 * 1.5), channels)).astype(np.float32),
            44100,
            subtype="PCM_16",
        )
        frames = []
        for k in range(10):
            img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            img.save(folder / f"{sid}_f{k:02d}.jpg", quality=90)
            frames.append(f"audioset/clips/eval/{sid}_f{k:02d}.jpg")
        rows.append(
            {
                "segment_id": sid,
                "status": "ok",
                "audio_path": f"audioset/clips/eval/{sid}.wav",
                "sha256": hashlib.sha256((folder / f"{sid}.wav").read_bytes()).hexdigest(),
                "frame_paths": frames,
                "label_ids": ["/m/a"] if i % 2 else ["/m/a", "/m/b"],
                "label_names": ["A"] if i % 2 else ["A", "B"],
                "class_id": i % 3,
                "class_name": f"class {i % 3}",
                "path": f"{sid}.wav",
            }
        )
    rows.append(
        {
            **rows[0],
            "segment_id": "Gone0000000_0",
            "status": "unavailable",
            "audio_path": None,
            "frame_paths": None,
            "sha256": None,
        }
    )
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
    empty_root = tmp_path / "root"  # no audioset/ folder: a read that went to the files would fail
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
    ds = AudioSetDataset(
        absolute, ["/m/a", "/m/b"], train=True, seed=2, audio=AudioOptions(clip_seconds=1.0), image_size=32
    )
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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_root(root: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(root / "audioset", to / "audioset")
    return to


def test_the_json_row_and_the_index_carry_the_digests_of_the_bytes_packed(clips, shards):
    root, manifest, _ = clips
    out, record = shards
    index = pd.read_parquet(out / INDEX)
    store = ShardStore(out, root)
    for shard in record["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        rows = index[index["shard"] == shard["name"]]
        assert list(rows["sha256"]) == [_sha(members[m]) for m in rows["member"]]
    wav = (root / "audioset/clips/eval/Clip0000004_0.wav").read_bytes()
    assert json.loads(store.read("Clip0000004_0.json"))["sha256"] == _sha(wav)
    assert store.read("audioset/clips/eval/Clip0000004_0.wav") == wav


def test_a_clip_changed_after_extraction_is_not_packed(clips, tmp_path):
    root, manifest, _ = clips
    root = _copy_root(root, tmp_path / "root")
    changed = []
    for sid in ("Clip0000002_0", "Clip0000009_0"):
        wav = root / "audioset/clips/eval" / f"{sid}.wav"
        data = bytearray(wav.read_bytes())
        data[-1] ^= 0xFF  # one sample, same size
        wav.write_bytes(bytes(data))
        changed.append((wav, _sha(bytes(data))))
    out = root / "shards" / "eval" / "v1"
    with pytest.raises(DigestMismatch) as err:
        write_shards(manifest, root, out, target_bytes=900_000)
    message = str(err.value)
    assert message.startswith("2 of 13 clips do not hash to the SHA-256 their manifest recorded at extraction")
    expected = dict(zip(manifest["segment_id"], manifest["sha256"]))
    for wav, actual in changed:
        assert f"{wav}: manifest {expected[wav.stem]}, file {actual}" in message.splitlines()
    # nothing published, nothing left behind
    assert sorted(p.name for p in out.parent.iterdir()) == [".v1.lock"]
    # a manifest that records no digest cannot be packed either
    with pytest.raises(ValueError, match=r"records no SHA-256 for 13 usable clip\(s\)"):
        write_shards(manifest.drop(columns=["sha256"]), root, out)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_member_damaged_after_packing_is_named_when_read(clips, shards, tmp_path):
    import shutil

    root, _, _ = clips
    out, record = shards
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    index = pd.read_parquet(copy / INDEX)
    hit = index[index["member"] == "Clip0000005_0.f03.jpg"].iloc[0]
    _flip(copy / hit["shard"], int(hit["offset"]) + 100)
    store = ShardStore(copy, root)
    with pytest.raises(DigestMismatch) as err:
        store.read(hit["path"])
    assert str(err.value).startswith(
        f"{copy / hit['shard']}: member Clip0000005_0.f03.jpg ({hit['path']}, "
        f"{hit['size']} bytes at offset {hit['offset']}) does not hash to the SHA-256"
    )
    assert (
        store.read("audioset/clips/eval/Clip0000005_0.wav")
        == (root / "audioset/clips/eval/Clip0000005_0.wav").read_bytes()
    )
    # a set packed before the index had member digests: each shard is checked whole, before its first read
    index.drop(columns=["sha256"]).to_parquet(copy / INDEX, index=False)
    legacy = ShardStore(copy, root)
    with pytest.raises(DigestMismatch, match=f"^{copy / hit['shard']}: the shard hashes to "):
        legacy.read("audioset/clips/eval/Clip0000005_0.wav")
    intact = index[index["shard"] != hit["shard"]].iloc[0]
    assert _sha(legacy.read(intact["path"])) == intact["sha256"]


KILLER = """
import os, signal, sys
import pandas as pd
from audioclip_core.data.shards import write_shards

def die(done, total):
    if done == 3:
        os.kill(os.getpid(), signal.SIGKILL)

write_shards(pd.read_parquet(sys.argv[1]), sys.argv[2], sys.argv[3], target_bytes=900_000, progress=die)
"""


def test_a_killed_packer_leaves_a_folder_the_next_packing_removes(clips, tmp_path):
    root, manifest, _ = clips
    manifest_file = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_file)
    parent = root / "shards" / "killed"
    out = parent / "v1"
    run = subprocess.run(
        [sys.executable, "-c", KILLER, str(manifest_file), str(root), str(out)],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = [p for p in parent.iterdir() if p.name.endswith(".packing")]
    assert len(left) == 1 and left[0].name.startswith(".v1.") and any(left[0].iterdir())
    # another set being packed right now (its lock held) is left alone
    live = parent / ".v0.abcdefgh.packing"
    live.mkdir()
    with file_lock(parent / ".v0.lock"):
        record = write_shards(manifest, root, out, target_bytes=900_000)
        assert record["samples"] == 13 and verify_shards(out) == []
        assert sorted(p.name for p in parent.iterdir() if p.name.endswith(".packing")) == [live.name]
        assert remove_abandoned(parent) == []
    assert remove_abandoned(parent) == [live]
    assert sorted(p.name for p in parent.iterdir()) == [".v0.lock", ".v1.lock", "v1"]


def test_publish_shards_names_the_manifest_bytes_it_packed(clips, tmp_path):
    from audioclip_core.data.manifests import relative_paths
    from audioclip_core.files import publish_version

    root, manifest, _ = clips
    root = _copy_root(root, tmp_path / "root")
    layout = DataLayout.at(root)
    pointer = layout.audioset_manifest("eval")
    sha, version = publish_version(relative_paths(manifest, root), layout.versions_dir, pointer)
    folder, record, fresh = publish_shards(layout, "audioset_eval", pointer, target_bytes=900_000)
    assert fresh and folder == layout.shards("audioset_eval") / sha[:16] and record["source_sha256"] == sha
    assert (layout.shards_pointer("audioset_eval").read_text().strip(), record["samples"]) == (sha[:16], 13)
    assert publish_shards(layout, "audioset_eval", pointer)[1:] == (record, False)
    # a version rewritten in place is refused before anything is packed from it
    version.chmod(0o644)
    relative_paths(manifest.iloc[:5], root).to_parquet(version)
    with pytest.raises(CorruptVersion, match=sha):
        publish_shards(layout, "audioset_eval", pointer)
    assert sorted(p.name for p in layout.shards("audioset_eval").iterdir()) == [
        f".{sha[:16]}.lock",
        "CURRENT",
        sha[:16],
    ]
