import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import audioclip_core as ac
from audioclip_core.checkpoints import CheckpointError, detect_layout, official_state_dict, read_checkpoint
from audioclip_core.torchscript import write_torchscript_state


def _official(model, layout=None):
    return {k: v.clone() for k, v in official_state_dict(model, layout).items()}


def test_official_roundtrip_is_byte_identical(tmp_path, tiny_model):
    path = ac.export_official(tiny_model, tmp_path / "full.pt")
    model = ac.load_model(path, preset="audioclip-tiny")
    assert not model.training
    out = ac.export_official(model, tmp_path / "again.pt")
    a = torch.load(path, weights_only=True)
    b = torch.load(out, weights_only=True)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k
    assert "audio.fbsp.bias" in a and a["audio.fbsp.bias"].shape == (0,)
    assert "audio.window" in a and any(k.endswith("num_batches_tracked") for k in a)


def test_mapping_of_numpy_arrays_loads(tiny_model):
    sd = {k: v.numpy() for k, v in _official(tiny_model).items()}
    model = ac.load_model(sd, preset="audioclip-tiny")
    x = torch.randn(1, 1, 8000) * 1000
    with torch.no_grad():
        assert torch.equal(model.encode_audio(x), tiny_model.encode_audio(x))


def test_module_prefix_is_stripped(tiny_model):
    sd = {f"module.{k}": v for k, v in _official(tiny_model).items()}
    ac.load_model(sd, preset="audioclip-tiny")


def test_missing_unexpected_and_misshaped_keys_in_one_error(tiny_model):
    sd = _official(tiny_model)
    sd.pop("audio.layer1.0.conv1.weight")
    sd.pop("visual.attnpool.q_proj.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["audio.fc.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        ac.load_model(sd, preset="audioclip-tiny")
    msg = str(err.value)
    assert "audio.layer1.0.conv1.weight" in msg and "visual.attnpool.q_proj.bias" in msg
    assert "2 missing" in msg and "1 unexpected: extra.weight" in msg
    assert "audio.fc.bias: checkpoint (7,) vs model (128,)" in msg


def test_wrong_preset_is_refused_with_shapes(tiny_model):
    with pytest.raises(CheckpointError, match="wrong shape"):
        ac.load_model(_official(tiny_model))  # default preset: the paper's RN50 sizes


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/audioclip-pwned-marker",))


def test_code_running_pickle_is_refused(tmp_path):
    marker = "/tmp/audioclip-pwned-marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        ac.load_model(path)
    assert not os.path.exists(marker)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        ac.load_audio_classifier(raw)
    assert not os.path.exists(marker)


def test_truncated_and_missing_files(tmp_path, tiny_model):
    path = ac.export_official(tiny_model, tmp_path / "full.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ac.load_model(cut, preset="audioclip-tiny")
    st = tmp_path / "cut.safetensors"
    ac.save_checkpoint(tiny_model, tmp_path / "ok.safetensors")
    st.write_bytes((tmp_path / "ok.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        ac.load_model(st)
    with pytest.raises(CheckpointError, match="does not exist.*releases"):
        ac.load_model(tmp_path / "nope.pt")


def test_safetensors_reader_matches_the_library_and_checks_offsets(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "f64": torch.randn(4, dtype=torch.float64),
        "i64": torch.arange(5),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False, True]),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"preset": '"audioclip-tiny"', "note": "plain text"})
    sd, meta = read_checkpoint(path)
    ref = load_file(str(path))
    assert sd.keys() == ref.keys()
    assert all(sd[k].dtype == ref[k].dtype and sd[k].shape == ref[k].shape and torch.equal(sd[k], ref[k]) for k in ref)
    assert meta == {"preset": "audioclip-tiny", "note": "plain text"}
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")  # where the tensors' bytes begin
    for cut in (12, start + 2, len(data) - 1):  # inside the header, inside the first and the last tensor
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            read_checkpoint(tmp_path / "cut.safetensors")


def test_loading_builds_once_and_matches_a_copy_into_a_built_model(tmp_path, tiny_model):
    """load_model builds on the meta device and takes the file's tensors (one copy of the
    weights in memory); the result must equal building for real and copying in, exactly,
    including the causal text mask that no checkpoint holds."""
    path = ac.save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    loaded = ac.load_model(path)
    copied = ac.load_model(dict(tiny_model.state_dict()), preset="audioclip-tiny")  # a mapping: copied in
    a, b = loaded.state_dict(), copied.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert torch.equal(loaded.attn_mask, tiny_model.attn_mask) and not loaded.attn_mask.is_meta
    assert all(p.requires_grad and not p.is_meta for p in loaded.parameters())
    ptrs = [p.untyped_storage().data_ptr() for p in loaded.parameters() if p.numel()]
    assert len(ptrs) == len(set(ptrs))  # no two parameters share memory
    # the mapping's own tensors are not aliased by the model built from it
    src = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    ac.load_model(src, preset="audioclip-tiny").logit_scale.data.add_(1.0)
    assert torch.equal(src["logit_scale"], tiny_model.state_dict()["logit_scale"])
    # dtype= builds in that dtype; an fp16 file is cast to the model's float32
    assert ac.load_model(path, dtype=torch.float64).visual.conv1.weight.dtype == torch.float64
    half = tmp_path / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in _official(tiny_model).items()}, half)
    w = ac.load_model(half, preset="audioclip-tiny").visual.conv1.weight
    assert w.dtype == torch.float32 and torch.equal(w, tiny_model.visual.conv1.weight.half().float())
    x = torch.randn(1, 1, 22050)
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(x), copied.encode_audio(x))
        assert torch.equal(loaded.encode_text(["a dog"]), copied.encode_text(["a dog"]))


def test_safetensors_carries_metadata_and_preset(tmp_path, tiny_model):
    path = ac.save_checkpoint(
        tiny_model, tmp_path / "m.safetensors", metadata={"lineage": {"manifest": "abc"}, "input_scale": "int16"}
    )
    assert not list(tmp_path.glob("*.tmp"))
    model = ac.load_model(path)  # preset read from the metadata
    assert model.preset == "audioclip-tiny"
    meta = model.checkpoint_metadata
    assert meta["kind"] == "audioclip" and meta["lineage"] == {"manifest": "abc"}
    assert meta["input_scale"] == "int16"


def test_clip_layout_with_and_without_metadata_scalars(tiny_model):
    clip_sd = _official(tiny_model, "clip")
    assert detect_layout(clip_sd) == "clip"
    with pytest.raises(CheckpointError, match="CLIP-only"):
        ac.load_model(clip_sd, preset="audioclip-tiny")
    for extra in (
        {},
        {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)},
    ):
        model = ac.build_model("audioclip-tiny", clip_weights={**clip_sd, **extra})
        for k, v in clip_sd.items():
            assert torch.equal(model.state_dict()[k], v), k
    bad = dict(clip_sd)
    bad.pop("ln_final.weight")
    with pytest.raises(CheckpointError, match="ln_final.weight"):
        ac.build_model("audioclip-tiny", clip_weights=bad)


def test_esrnxfbsp_layout_classifier_and_audio_head(tiny_model):
    cfg = ac.get_preset("audioclip-tiny")["audio_cfg"]
    torch.manual_seed(1)
    cls = ac.ESResNeXt(ac.AudioConfig.from_dict({**cfg, "num_classes": 527}))
    sd = {k: v.clone() for k, v in cls.state_dict().items()}
    assert detect_layout(sd) == "esrnxfbsp"
    loaded = ac.load_audio_classifier(sd, preset="audioclip-tiny")
    assert loaded.fc.out_features == 527 and not loaded.training
    with pytest.raises(CheckpointError, match="load_audio_classifier"):
        ac.load_model(sd, preset="audioclip-tiny")
    model = ac.build_model("audioclip-tiny", audio_weights=sd)
    msd = model.state_dict()
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        assert torch.equal(msd[f"audio.{k}"], v), k
    assert model.audio.fc.out_features == model.embed_dim  # fresh projection, not the 527 head
    sd.pop("layer4.0.bn3.running_var")
    with pytest.raises(CheckpointError, match="layer4.0.bn3.running_var"):
        ac.load_audio_classifier(sd, preset="audioclip-tiny")


def test_openai_torchscript_rn50_layout(tmp_path, tiny_model):
    clip_sd = _official(tiny_model, "clip")
    clip_sd.update(
        {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    )
    path = tmp_path / "RN50.pt"
    write_torchscript_state(clip_sd, path)
    sd, meta = read_checkpoint(path)
    assert meta["source_format"] == "torchscript"
    model = ac.build_model("audioclip-tiny", clip_weights=path)
    w = model.state_dict()["visual.conv1.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, clip_sd["visual.conv1.weight"].half().float())


@torch.library.custom_op("audioclip_test::leave_marker", mutates_args=())
def _leave_marker(path: str, x: torch.Tensor) -> torch.Tensor:
    Path(path).write_text("code from the archive ran")
    return x.clone()


class _SetstateRunsCode(nn.Module):
    """A module whose TorchScript __setstate__ calls an op that writes a file."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str]:
        return (self.weight, self.marker)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str]) -> None:
        self.marker = state[1]
        self.training = False
        self.weight = torch.ops.audioclip_test.leave_marker(state[1], state[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_torchscript_archive_is_read_without_running_its_code(tmp_path, tiny_model):
    marker = tmp_path / "marker"
    path = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.script(_SetstateRunsCode(str(marker))), str(path))
    torch.jit.load(str(path))  # torch's own loader runs the archive's code: the file is a real threat
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="custom __getstate__"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        ac.build_model("audioclip-tiny", clip_weights=path)
    assert not marker.exists()
    # the plain RN50 layout (parameters and buffers only) still loads, tensors bit for bit
    plain = tmp_path / "plain.pt"
    write_torchscript_state(_official(tiny_model, "clip"), plain)
    sd, _ = read_checkpoint(plain)
    ref = torch.jit.load(str(plain)).state_dict()  # torch's own reader, on an archive of ours
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype for k in ref)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        read_checkpoint(truncated)


def test_convert_cli_roundtrip(tmp_path, tiny_model):
    from audioclip_core.cli import main

    src = ac.export_official(tiny_model, tmp_path / "full.pt")
    assert main(["convert", str(src), str(tmp_path / "full.safetensors"), "--preset", "audioclip-tiny"]) == 0
    assert main(["convert", str(tmp_path / "full.safetensors"), str(tmp_path / "back.pt")]) == 0
    a = torch.load(src, weights_only=True)
    b = torch.load(tmp_path / "back.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        main(["convert", str(src), str(tmp_path / "head.pt"), "--layout", "esrnxfbsp", "--preset", "audioclip-tiny"])
        == 0
    )
    head = torch.load(tmp_path / "head.pt", weights_only=True)
    assert detect_layout(head) == "esrnxfbsp" and "fbsp.m" in head


def test_a_delta_checkpoint_stores_what_changed_and_loads_the_same_model(tmp_path, tiny_model):
    """`save_checkpoint(parent=...)` stores only the tensors that differ from the parent (a
    cooperative fine-tuning's audio head); reading it completes them from the parent, verified by
    digest, bit for bit - from the recorded path, a file of the parent's name beside it, or one
    given; a changed or missing parent is an error that names it."""
    import shutil

    from audioclip_core.checkpoints import checkpoint_metadata
    from audioclip_core.files import sha256_file

    parent = ac.save_checkpoint(tiny_model, tmp_path / "root" / "full" / "full.safetensors")
    child_model = ac.load_model(parent)
    with torch.no_grad():
        for p in child_model.audio.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the head trains; the towers stay
    child = ac.save_checkpoint(
        child_model, tmp_path / "root" / "ft" / "fold1" / "ft.safetensors", parent=parent, data_root=tmp_path / "root"
    )
    meta = checkpoint_metadata(child)
    assert meta["delta_of"] == {
        "file": "full.safetensors",
        "sha256": sha256_file(parent),
        "path": "full/full.safetensors",
    }
    from audioclip_core.checkpoints import _read_checkpoint

    stored = _read_checkpoint(child)[0]
    assert stored and all(k.startswith("audio.") for k in stored)  # the head only
    assert child.stat().st_size < parent.stat().st_size / 2
    full = child_model.state_dict()
    got = read_checkpoint(child)[0]
    assert set(got) == set(full) and all(torch.equal(got[k], full[k]) for k in full)
    loaded = ac.load_model(child)
    assert all(torch.equal(v, full[k]) for k, v in loaded.state_dict().items())

    # the data root moved whole: the relative record still finds the parent
    shutil.move(tmp_path / "root", tmp_path / "moved")
    moved = tmp_path / "moved" / "ft" / "fold1" / "ft.safetensors"
    assert torch.equal(read_checkpoint(moved)[0]["logit_scale"], full["logit_scale"])
    # a logged model keeps the parent beside the child; or a caller names it
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(moved, alone / "ft.safetensors")
    with pytest.raises(CheckpointError, match=r"needs its parent full.safetensors \(sha256 [0-9a-f]{16}\)"):
        read_checkpoint(alone / "ft.safetensors")
    assert set(
        read_checkpoint(alone / "ft.safetensors", parent=tmp_path / "moved" / "full" / "full.safetensors")[0]
    ) == set(full)
    shutil.copy(tmp_path / "moved" / "full" / "full.safetensors", alone / "full.safetensors")
    assert set(read_checkpoint(alone / "ft.safetensors")[0]) == set(full)
    # a parent re-trained since: refused, naming what was found
    ac.save_checkpoint(ac.build_model("audioclip-tiny"), alone / "full.safetensors")
    with pytest.raises(CheckpointError, match="not there or has changed; found .*full.safetensors"):
        read_checkpoint(alone / "ft.safetensors")


def test_a_copied_delta_finds_its_parent_in_the_configured_data_root(tmp_path, tiny_model, monkeypatch):
    """A fold checkpoint copied out of its data root records its parent relative to that root:
    found again through AUDIOCLIP_DATA_ROOT."""
    import shutil

    root = tmp_path / "root"
    parent = ac.save_checkpoint(tiny_model, root / "checkpoints" / "full" / "full.safetensors")
    tuned = ac.load_model(parent)
    with torch.no_grad():
        next(tuned.audio.parameters()).add_(1.0)
    child = ac.save_checkpoint(tuned, root / "checkpoints" / "ft" / "ft.safetensors", parent=parent, data_root=root)
    copy = tmp_path / "elsewhere" / "ft.safetensors"
    copy.parent.mkdir()
    shutil.copy(child, copy)
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="needs its parent full.safetensors"):
        read_checkpoint(copy)
    monkeypatch.setenv("AUDIOCLIP_DATA_ROOT", str(root))
    got = read_checkpoint(copy)[0]
    assert all(torch.equal(got[k], v) for k, v in tuned.state_dict().items())
