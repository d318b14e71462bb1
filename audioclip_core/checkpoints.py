"""Checkpoints: strict, code-free loading of every official layout, export, our own format.

Official layouts (all plain `torch.save` of a state dict unless noted):

* ``audioclip``  - AudioCLIP-Full-Training.pt / AudioCLIP-Partial-Training.pt: 861 keys,
  CLIP's keys at the root and the audio head under ``audio.``;
* ``clip``       - CLIP.pt: CLIP RN50's 489 keys, optionally with OpenAI's three metadata
  scalars ``input_resolution``, ``context_length``, ``vocab_size``; OpenAI's RN50.pt is the
  same layout inside a TorchScript archive (fp16);
* ``esrnxfbsp``  - ESRNXFBSP.pt: a stand-alone ESResNeXt-fbsp classifier (370 keys, no
  prefix, ``fc`` 527 x 2048).

Every pickle is read with ``weights_only=True``: a file that would run code is refused; a
TorchScript archive's tensors are read the same way, without compiling or running it. A
leading ``module.`` (DataParallel) is stripped. A missing, unexpected or mis-shaped key is
reported in one error listing all of them. Our own checkpoints are safetensors files with
a JSON metadata record (preset, architecture, and lineage when a training stage wrote them).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .models.audioclip import AudioCLIP
from .models.esresnext import AudioConfig, ESResNeXt
from .models.presets import available_presets, build_from_preset, get_preset

Source = Union[str, os.PathLike, Mapping[str, Any]]

FORMAT = "audioclip-safetensors/1"
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
AUDIO_PREFIX = "audio."
AUDIO_SCALES = ("logit_scale_ai", "logit_scale_at")
LAYOUTS = ("audioclip", "clip", "esrnxfbsp")
MAX_LISTED = 40

RELEASES = (
    "AudioCLIP-Full-Training.pt and AudioCLIP-Partial-Training.pt "
    "(https://github.com/AndreyGuzhov/AudioCLIP/releases/tag/v0.1), "
    "ESRNXFBSP.pt / ESResNeXtFBSP_AudioSet.pt "
    "(https://github.com/AndreyGuzhov/ESResNeXt-fbsp/releases/tag/v0.1) and CLIP.pt "
    "(AudioCLIP's assets) or OpenAI's RN50.pt"
)


from .errors import CheckpointError, is_symlink_loop  # noqa: E402  (CheckpointError re-exported)
from .files import atomic_write  # noqa: E402


# -- reading -------------------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _to_tensor(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return torch.from_numpy(np.array(value, copy=True))
    raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor or array")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file, each tensor read from the file straight into
    its own memory. Not memory-mapped: a mapped file's pages count in the process's resident
    set as they are touched, which would add the file's size to the peak while a model is
    filled from it. Offsets and sizes are checked against the header and the file's length."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= size - 8:
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        base = 8 + n
        raw_meta = header.pop("__metadata__", None) or {}
        sd = {}
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{name}: unsupported dtype {info['dtype']!r}")
            tensor = torch.empty([int(d) for d in info["shape"]], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            start, end = (int(o) for o in info["data_offsets"])
            nbytes = tensor.numel() * tensor.element_size()
            if end - start != nbytes or base + end > size:
                raise ValueError(
                    f"{name}: bytes {start}..{end} do not hold a {info['dtype']} tensor of shape "
                    f"{info['shape']} inside the {size - base}-byte data section"
                )
            f.seek(base + start)
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()) if nbytes else memoryview(b"")
            got = 0
            while got < nbytes:
                k = f.readinto(view[got:])
                if not k:
                    raise ValueError(f"{name}: the file ends inside the tensor")
                got += k
            sd[name] = tensor
    return sd, _parse_metadata(raw_meta)


def _parse_metadata(raw: Mapping[str, str]) -> dict:
    """A safetensors header's metadata: each value JSON-decoded where it is JSON, else as it is."""
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            meta[k] = v
    return meta


DELTA_KEY = "delta_of"  # metadata of a checkpoint that stores only what differs from its parent


def read_checkpoint(source: Source, *, parent: Optional[Source] = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read any supported file (or mapping) into (state dict, metadata) without running code.

    A checkpoint saved as a delta (`save_checkpoint(..., parent=...)`: a cooperative fine-tuning
    stores its audio head, not the whole model) is completed from its parent: `parent` when given,
    else a file of the parent's name beside it (a logged model's artifacts), else the path it
    recorded; the parent's SHA-256 must be the one recorded."""
    sd, meta = _read_checkpoint(source)
    if isinstance(meta.get(DELTA_KEY), dict):
        sd = {**read_checkpoint(find_parent(Path(source), meta[DELTA_KEY], parent))[0], **sd}
    return sd, meta


def find_parent(path: Path, record: Optional[dict] = None, given: Optional[Source] = None) -> Path:
    """The parent file of delta checkpoint `path` (its `delta_of` record), checked by digest:
    `given`, else a file of the parent's name beside it, else the recorded path."""
    from .files import file_digest

    record = record if record is not None else checkpoint_metadata(path).get(DELTA_KEY) or {}
    want, name = record.get("sha256"), record.get("file") or ""
    candidates = (
        [Path(given)]
        if given is not None
        else [c for c in (path.parent / name if name else None, _recorded(path, record.get("path"))) if c]
    )
    seen = []
    for cand in candidates:
        if cand.is_file() and cand.resolve() != path.resolve():
            got = file_digest(cand)
            if got == want:
                return cand
            seen.append(f"{cand} (sha256 {got[:16]})")
    where = "; found " + ", ".join(seen) if seen else f"; looked at {', '.join(map(str, candidates)) or 'nothing'}"
    raise CheckpointError(
        f"{path}: stores only what its training changed and needs its parent {name or '?'} "
        f"(sha256 {str(want)[:16]}), which is not there or has changed{where}. A logged model holds "
        "its parent beside it (models:/...); a data root keeps it at the recorded path until it is re-trained"
    )


def ancestors(path: Union[str, os.PathLike]) -> list[Path]:
    """The files a checkpoint needs besides itself: its parent if it is a delta, that one's, ..."""
    out, cur = [], Path(path)
    while cur.suffix == ".safetensors" and isinstance(checkpoint_metadata(cur).get(DELTA_KEY), dict):
        cur = find_parent(cur)
        out.append(cur)
    return out


def _recorded(path: Path, recorded: Optional[str]) -> Optional[Path]:
    """The recorded parent path: absolute as it is; relative (to the data root it was written
    in), against the folders above `path` - a data root moved whole keeps its checkpoints'
    relative places - then against the configured data root (`AUDIOCLIP_DATA_ROOT`)."""
    if not recorded:
        return None
    rec = Path(recorded)
    if rec.is_absolute():
        return rec
    from .layout import DataLayout

    # the folders above the file (a data root moved whole), then the configured data root (a copy)
    for up in [*path.resolve().parents, DataLayout.at(None).root]:
        if (up / rec).is_file():
            return up / rec
    return DataLayout.at(None).root / rec


def _read_checkpoint(source: Source) -> tuple[dict[str, torch.Tensor], dict]:
    if isinstance(source, Mapping):
        return _clean_keys({str(k): _to_tensor(str(k), v) for k, v in source.items()}), {}
    path = Path(source)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a directory; pass the checkpoint file inside it (.pt or .safetensors)"
        )
    if is_symlink_loop(path):
        raise CheckpointError(f"checkpoint {str(path)!r} is a symbolic link loop; give the checkpoint file itself")
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist. Weights are not shipped: "
            f"download {RELEASES} and pass the file's path."
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    if len(head) < 8:
        raise CheckpointError(f"{path}: file is empty or truncated ({path.stat().st_size} bytes)")
    if path.suffix == ".safetensors":
        try:
            sd, meta = _read_safetensors(path)
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
        return _clean_keys(sd), meta
    if _is_torchscript(path):
        # OpenAI's RN50.pt: a TorchScript archive. torch.jit.load would compile its code and
        # call its objects' __setstate__; only the tensors are read, nothing of it runs.
        from .torchscript import read_torchscript_state

        try:
            sd = read_torchscript_state(path)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: TorchScript archive could not be read (truncated?): {exc}") from exc
        return _clean_keys(sd), {"source_format": "torchscript"}
    if not zipfile.is_zipfile(path) and head[0] != 0x80:  # torch.save: a zip, or (legacy) a pickle
        raise CheckpointError(
            f"{path}: could not be read - not a PyTorch checkpoint or safetensors file "
            "(neither a zip archive nor a pickle: another format, or damaged)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused - the file contains pickled objects that could run code when "
            f"loaded (only tensors and plain containers are accepted): {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path}: could not be read - truncated or not a PyTorch checkpoint: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return _clean_keys({str(k): _to_tensor(str(k), v) for k, v in obj.items()}), {}


def _clean_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    keys = set(sd)
    has_clip = "token_embedding.weight" in keys or any(k.startswith("visual.") for k in keys)
    has_audio = any(k.startswith(AUDIO_PREFIX) for k in keys)
    if has_clip and has_audio:
        return "audioclip"
    if has_clip:
        return "clip"
    if "fbsp.m" in keys or ("conv1.weight" in keys and "fc.weight" in keys):
        return "esrnxfbsp"
    if has_audio:
        return "audioclip"
    return "unknown"


# -- strict loading ------------------------------------------------------------------------
def non_finite_tensors(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Name -> count of NaN/Inf entries, for the floating tensors of `sd` that have any."""
    bad = {}
    for k, v in sd.items():
        if v.is_floating_point() and v.numel():
            # a million entries at a time: the temporaries stay ~10 MB however large the tensor
            n = sum(int(c.numel() - torch.isfinite(c).sum()) for c in v.reshape(-1).split(1 << 20))
            if n:
                bad[k] = n
    return bad


def load_strict(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    what: str,
    allow_non_finite: bool = False,
    assign: bool = False,
) -> None:
    """`module.load_state_dict(sd, strict=True)` with ONE error that lists every problem.
    Tensors holding NaN or Inf are refused, named, unless `allow_non_finite` (for debugging).
    `assign=True` makes the module's tensors those of `sd` (see `_build_loaded`)."""
    expected = module.state_dict()
    given = dict(sd)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{what}: the checkpoint does not match the model ({len(given)} keys given, {len(expected)} expected)."
        ]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:MAX_LISTED])
                more = f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {shown}{more}")
        if len(mismatched) > MAX_LISTED // 2:
            parts.append(
                "Many shapes differ: is the preset right? (--preset / preset=; presets: "
                + ", ".join(available_presets())
                + ")"
            )
        raise CheckpointError("\n".join(parts))
    for k, v in given.items():
        if v.is_floating_point() != expected[k].is_floating_point():
            raise CheckpointError(f"{what}: {k} has dtype {v.dtype}, model expects {expected[k].dtype}")
    bad = {} if allow_non_finite else non_finite_tensors(given)
    if bad:
        shown = ", ".join(f"{k} ({n} of {given[k].numel()})" for k, n in list(bad.items())[:MAX_LISTED])
        more = f", ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise CheckpointError(
            f"{what}: {len(bad)} tensors hold NaN/Inf values: {shown}{more}. The file is "
            "damaged or comes from a diverged run (allow_non_finite=True / "
            "--allow-non-finite-weights loads it anyway, for debugging)"
        )
    module.load_state_dict(given, strict=True, assign=assign)


def _build_loaded(
    build,
    sd: dict[str, torch.Tensor],
    *,
    what: str,
    allow_non_finite: bool,
    dtype: Optional[torch.dtype] = None,
    owned: bool = True,
) -> nn.Module:
    """`build()` filled strictly from `sd`, peak memory one copy of the weights.

    The module is built on the meta device (no memory, no random initialisation) and takes
    the checkpoint's tensors as its own, cast to its dtype one tensor at a time; building it
    for real and copying in would hold the model and the checkpoint at once (2 x 512 MB for
    the RN50 preset). `owned=False` (tensors that belong to the caller, e.g. a mapping passed
    in) builds the module for real and copies, so the caller's arrays are never aliased."""
    if not owned:
        model = build()
        if dtype is not None:
            model.to(dtype=dtype)
        load_strict(model, sd, what=what, allow_non_finite=allow_non_finite)
        return model
    with torch.device("meta"):
        model = build()
        if dtype is not None:
            model.to(dtype=dtype)
    expected = model.state_dict()
    storages: set[int] = set()
    for k in list(sd):
        ref, v = expected.get(k), sd[k]
        if ref is None:
            continue  # load_strict names it
        if v.is_floating_point() and ref.is_floating_point() and v.dtype != ref.dtype:
            v = v.to(ref.dtype)
        ptr = v.untyped_storage().data_ptr()
        if not v.is_contiguous() or (v.numel() and ptr in storages):  # views: each parameter owns its memory
            v = v.contiguous().clone()
        storages.add(v.untyped_storage().data_ptr())
        sd[k] = v
    del expected
    load_strict(model, sd, what=what, allow_non_finite=allow_non_finite, assign=True)
    _materialise_non_persistent(model)
    return model


def _materialise_non_persistent(model: nn.Module) -> None:
    """Non-persistent buffers are not in a checkpoint, so a meta-built model computes them.
    AudioCLIP has one: open_clip's causal text mask."""
    if isinstance(model, AudioCLIP) and model.attn_mask is not None and model.attn_mask.is_meta:
        mask = model.attn_mask
        model.attn_mask = torch.full(mask.shape, float("-inf"), dtype=mask.dtype).triu_(1)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"no value for {left} after loading: a non-persistent buffer without a rule here")


def _clip_part(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP keys of a CLIP.pt / RN50.pt without OpenAI's metadata scalars."""
    return {k: v for k, v in sd.items() if k not in CLIP_METADATA_KEYS}


def _clip_module_keys(model: AudioCLIP) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith(AUDIO_PREFIX) and k not in AUDIO_SCALES]


def _check_layout(sd: Mapping[str, torch.Tensor], wanted: str, what: str) -> None:
    layout = detect_layout(sd)
    if layout == wanted:
        return
    hints = {
        "clip": "it is a CLIP-only checkpoint (image and text towers); build a model with "
        "build_model(preset, clip_weights=PATH) and add the audio head separately",
        "esrnxfbsp": "it is a stand-alone ESResNeXt-fbsp audio classifier; load it with "
        "load_audio_classifier(PATH) or use it as build_model(preset, audio_weights=PATH)",
        "audioclip": "it is a whole AudioCLIP checkpoint; load it with load_model(PATH)",
        "unknown": f"its keys match no known layout (first keys: {list(sd)[:5]})",
    }
    raise CheckpointError(f"{what}: expected the {wanted!r} layout but {hints[layout]}")


# -- public API ------------------------------------------------------------------------------
def load_model(
    source: Source, *, preset: Optional[str] = None, allow_non_finite: bool = False, dtype: Optional[torch.dtype] = None
) -> AudioCLIP:
    """An AudioCLIP from a checkpoint in the official 861-key layout, our safetensors format, or a
    mapping of tensors/arrays in the official layout; strict; returned in eval mode. Weights
    holding NaN/Inf are refused (naming the tensors) unless `allow_non_finite`. `dtype`
    builds the model in that dtype before loading (float64 keeps a float64 checkpoint exact;
    by default the model is float32 and the weights are cast to it).

    `preset` defaults to the one recorded in our own checkpoints, else "audioclip-rn50".
    """
    what = str(source) if not isinstance(source, Mapping) else "state dict"
    sd, meta = read_checkpoint(source)
    if meta.get("kind") not in (None, "audioclip"):
        raise CheckpointError(
            f"{what}: holds a {meta.get('kind')!r} model, not AudioCLIP; "
            "use load_audio_classifier for audio classifiers"
        )
    _check_layout(sd, "audioclip", what)
    preset = preset or meta.get("preset") or "audioclip-rn50"
    model = _build_loaded(
        lambda: build_from_preset(preset),
        sd,
        what=f"{what} (preset {preset})",
        allow_non_finite=allow_non_finite,
        dtype=dtype,
        owned=not isinstance(source, Mapping) and dtype is None,
    )
    del sd
    model.checkpoint_metadata = meta
    return model.eval()


def load_audio_classifier(source: Source, *, preset: Optional[str] = None, allow_non_finite: bool = False) -> ESResNeXt:
    """A stand-alone ESResNeXt-fbsp from the ESRNXFBSP layout (or ours); classes from `fc`.
    Weights holding NaN/Inf are refused unless `allow_non_finite`."""
    what = str(source) if not isinstance(source, Mapping) else "state dict"
    sd, meta = read_checkpoint(source)
    _check_layout(sd, "esrnxfbsp", what)
    if "fc.weight" not in sd:
        raise CheckpointError(f"{what}: missing fc.weight, cannot tell the number of classes")
    preset = preset or meta.get("preset") or "audioclip-rn50"
    config = AudioConfig.from_dict({**get_preset(preset)["audio_cfg"], "num_classes": int(sd["fc.weight"].shape[0])})
    model = _build_loaded(
        lambda: ESResNeXt(config),
        sd,
        what=f"{what} (audio classifier, preset {preset})",
        allow_non_finite=allow_non_finite,
        owned=not isinstance(source, Mapping),
    )
    del sd
    model.checkpoint_metadata, model.preset = {**meta, "preset": preset}, preset
    return model.eval()


def load_clip_weights(model: AudioCLIP, source: Source) -> None:
    """Strictly load CLIP.pt / OpenAI RN50.pt / any 'clip'-layout weights into the CLIP towers."""
    what = str(source) if not isinstance(source, Mapping) else "state dict"
    sd, _ = read_checkpoint(source)
    if detect_layout(sd) == "audioclip":  # take the towers of a whole AudioCLIP checkpoint
        sd = {k: v for k, v in sd.items() if not k.startswith(AUDIO_PREFIX) and k not in AUDIO_SCALES}
    _check_layout(sd, "clip", what)
    sd = _clip_part(sd)
    clip_keys = set(_clip_module_keys(model))
    audio_and_scales = tuple(k for k in model.state_dict() if k not in clip_keys)
    full = {**{k: v for k, v in model.state_dict().items() if k in audio_and_scales}, **sd}
    load_strict(model, full, what=f"{what} (CLIP towers)")


def load_audio_head(model: AudioCLIP, source: Source, *, include_fc: bool = False) -> None:
    """Strictly load an ESRNXFBSP-layout audio head into `model.audio`.

    The classifier layer is skipped (the 527-class AudioSet head does not fit the embedding
    projection; the projection stays freshly initialised, as in the paper) unless
    `include_fc` is set and the shapes agree.
    """
    what = str(source) if not isinstance(source, Mapping) else "state dict"
    sd, _ = read_checkpoint(source)
    if detect_layout(sd) == "audioclip":
        sd = {k[len(AUDIO_PREFIX) :]: v for k, v in sd.items() if k.startswith(AUDIO_PREFIX)}
    _check_layout(sd, "esrnxfbsp", what)
    if not include_fc:
        current = model.audio.state_dict()
        sd = {**sd, "fc.weight": current["fc.weight"], "fc.bias": current["fc.bias"]}
    load_strict(model.audio, sd, what=f"{what} (audio head)")


def build_model(
    preset: str = "audioclip-rn50",
    *,
    clip_weights: Optional[Source] = None,
    audio_weights: Optional[Source] = None,
    dtype: Optional[torch.dtype] = None,
) -> AudioCLIP:
    """A fresh AudioCLIP, optionally with CLIP towers and/or an audio head from weights files
    (the starting point of cooperative training). Returned in train mode. `dtype` builds it in
    that dtype before loading (float64 weights stay exact)."""
    model = build_from_preset(preset)
    if dtype is not None:
        model = model.to(dtype=dtype)
    if clip_weights is not None:
        load_clip_weights(model, clip_weights)
    if audio_weights is not None:
        load_audio_head(model, audio_weights)
    return model


# -- writing -------------------------------------------------------------------------------
def official_state_dict(module: nn.Module, layout: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The module's tensors under the official key names of `layout`."""
    sd = module.state_dict()
    if isinstance(module, AudioCLIP):
        layout = layout or "audioclip"
        if layout == "audioclip":
            return dict(sd)
        if layout == "clip":
            return {k: v for k, v in sd.items() if not k.startswith(AUDIO_PREFIX) and k not in AUDIO_SCALES}
        if layout == "esrnxfbsp":
            return {k[len(AUDIO_PREFIX) :]: v for k, v in sd.items() if k.startswith(AUDIO_PREFIX)}
    elif isinstance(module, ESResNeXt):
        if layout not in (None, "esrnxfbsp"):
            raise CheckpointError(f"an ESResNeXt can only be exported in the 'esrnxfbsp' layout, not {layout!r}")
        return dict(sd)
    raise CheckpointError(
        f"cannot export a {type(module).__name__} in layout {layout!r}; layouts: {', '.join(LAYOUTS)}"
    )


def export_official(module: nn.Module, path: Union[str, os.PathLike], layout: Optional[str] = None) -> Path:
    """Write the official `.pt` layout (plain `torch.save` of the state dict), atomically."""
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in official_state_dict(module, layout).items()}
    with atomic_write(path) as tmp:
        torch.save(sd, tmp)
    return path


def checkpoint_metadata(path: Union[str, os.PathLike]) -> dict:
    """The metadata record of one of our safetensors checkpoints (kind, preset, ...), read from
    its header alone; {} for a file without one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception:  # not a safetensors file (an official .pt), or unreadable: no record
        return {}
    return _parse_metadata(raw)


def save_checkpoint(
    module: nn.Module,
    path: Union[str, os.PathLike],
    *,
    metadata: Optional[Mapping[str, Any]] = None,
    parent: Optional[Union[str, os.PathLike]] = None,
    data_root: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Our own format: safetensors (loads without executing code) plus a metadata record.

    With `parent` (a checkpoint of the same architecture), only the tensors that differ from the
    parent's are stored, with the parent's name, SHA-256 and path (relative to `data_root` when
    it is under it) in the metadata: `read_checkpoint` completes them from the parent, so the
    model loaded is the same, bit for bit. A cooperative fine-tuning trains the audio head only:
    its checkpoint is that head, not a second copy of the towers."""
    from safetensors.torch import save_file

    path = Path(path)
    if isinstance(module, AudioCLIP):
        kind, preset = "audioclip", module.preset
        arch = {"embed_dim": module.embed_dim, "audio_cfg": module.audio.config.to_dict()}
    elif isinstance(module, ESResNeXt):
        kind = "esresnext"
        preset = module.checkpoint_metadata.get("preset") or module.preset
        arch = {"audio_cfg": module.config.to_dict()}
    else:
        raise CheckpointError(f"cannot save a {type(module).__name__}")
    record = {"format": FORMAT, "kind": kind, "preset": preset, "architecture": arch, **dict(metadata or {})}
    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if parent is not None:
        from .files import file_digest

        parent = Path(parent)
        base = read_checkpoint(parent)[0]
        changed = {k: v for k, v in sd.items() if k not in base or not _same(v, base[k])}
        if len(changed) < len(sd):  # a parent in another layout (a released .pt) shares nothing: saved whole
            sd = changed
            where = parent.resolve()
            if data_root is not None and where.is_relative_to(Path(data_root).resolve()):
                where = where.relative_to(Path(data_root).resolve())
            record[DELTA_KEY] = {"file": parent.name, "sha256": file_digest(parent), "path": str(where)}
    meta = {k: json.dumps(v, sort_keys=True, default=str) for k, v in record.items()}
    with atomic_write(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    return path


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def convert(
    src: Source,
    dst: Union[str, os.PathLike],
    *,
    layout: Optional[str] = None,
    preset: Optional[str] = None,
    allow_non_finite: bool = False,
) -> tuple[Path, str]:
    """Convert between layouts: `.safetensors` destination = our format, `.pt` = official."""
    sd, meta = read_checkpoint(src)
    kind = detect_layout(sd)
    if kind == "audioclip":
        module: nn.Module = load_model(sd, preset=preset or meta.get("preset"), allow_non_finite=allow_non_finite)
    elif kind == "esrnxfbsp":
        module = load_audio_classifier(sd, preset=preset or meta.get("preset"), allow_non_finite=allow_non_finite)
    elif kind == "clip":
        module = build_model(preset or "audioclip-rn50", clip_weights=sd)
        layout = layout or "clip"
        if str(dst).endswith(".safetensors"):
            raise CheckpointError("a CLIP-only checkpoint can only be converted to the official 'clip' .pt layout")
    else:
        raise CheckpointError(f"{src}: its keys match no known layout")
    if str(dst).endswith(".safetensors"):
        return save_checkpoint(
            module, dst, metadata={"converted_from": str(src) if not isinstance(src, Mapping) else "mapping"}
        ), "safetensors"
    out_layout = layout or ("audioclip" if kind == "audioclip" else "esrnxfbsp")
    return export_official(module, dst, out_layout), out_layout
