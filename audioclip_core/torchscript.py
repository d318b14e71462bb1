"""The parameters and buffers of a TorchScript archive, read without running any of it.

``torch.jit.load`` rebuilds the module: it compiles the archive's ``code/`` and calls every
object's ``__setstate__``, which may do anything an op can (write files, loop for ever). Here
the archive's ``data.pkl`` goes through torch's weights-only unpickler instead: each
TorchScript class is a stand-in that only records its pickled state, tensors come from the
archive's storages, and the parameter and buffer names of a class are read from the
``__parameters__`` / ``__buffers__`` lists of its definition in ``code/`` (parsed with ``ast``,
never executed). A class whose pickled state is not a plain attribute dict (a custom
``__getstate__``) has no names to read: the archive is refused.
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler as wou

from .errors import CheckpointError


class ScriptObject:
    """A TorchScript object as pickled: its class name and state, nothing run."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _passthrough(value: Any, *_: Any) -> Any:
    return value  # restore_type_tag / build_*list: the value itself, the type tag dropped


_HELPERS = [
    (_passthrough, f"torch.jit._pickle.{name}")
    for name in ("restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
]


def _archive_prefix(names: list[str]) -> str:
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError("not a TorchScript archive: no single <name>/data.pkl in it")
    return pickles[0][: -len("data.pkl")]


def _slots(zf: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Qualified class name -> its parameter and buffer names, from the archive's code/."""
    slots: dict[str, set[str]] = {}
    for name in zf.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".py")):
            continue
        module = name[len(prefix + "code/") : -len(".py")].replace("/", ".")
        try:
            tree = ast.parse(zf.read(name).decode("utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            names: set[str] = set()
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id in ("__parameters__", "__buffers__")
                ):
                    try:
                        names.update(str(x) for x in ast.literal_eval(stmt.value))
                    except ValueError:
                        pass
            slots[f"{module}.{node.name}"] = names
    return slots


def _script_globals(data: bytes) -> list[str]:
    """The `__torch__` class names a pickle refers to (scanned, not loaded)."""
    import pickletools

    found = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL" and str(arg).startswith("__torch__"):
            module, _, name = str(arg).partition(" ")
            found.append(f"{module}.{name}")
    return sorted(set(found))


def read_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """`state_dict()` of the TorchScript module in `path`, without compiling or running it."""
    with zipfile.ZipFile(path) as zf:
        prefix = _archive_prefix(zf.namelist())
        order = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in zf.namelist() else "little"
        if order != "little":
            raise CheckpointError(f"{path}: a {order}-endian TorchScript archive is not supported")
        data = zf.read(prefix + "data.pkl")
        slots = _slots(zf, prefix)
        stand_ins = {
            name: type(name.rsplit(".", 1)[-1], (ScriptObject,), {"qualified_name": name})
            for name in _script_globals(data)
        }

        def persistent_load(pid):
            _, storage_type, key, _location, numel = pid
            dtype = storage_type.dtype if hasattr(storage_type, "dtype") else storage_type
            raw = zf.read(f"{prefix}data/{key}")
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            expected = int(numel) * torch._utils._element_size(dtype)
            if untyped.nbytes() != expected:
                raise CheckpointError(
                    f"{path}: storage {key} holds {untyped.nbytes()} bytes, {expected} expected (truncated archive?)"
                )
            return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

        import io

        allowed = [(cls, name) for name, cls in stand_ins.items()] + _HELPERS
        try:
            with torch.serialization.safe_globals(allowed):
                unpickler = wou.Unpickler(io.BytesIO(data), encoding="utf-8")
                unpickler.persistent_load = persistent_load
                root = unpickler.load()
        except CheckpointError:
            raise
        except Exception as exc:  # UnpicklingError and what a malformed pickle raises
            raise CheckpointError(
                f"{path}: refused - the TorchScript archive holds more than tensors and modules: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
    if not isinstance(root, ScriptObject):
        raise CheckpointError(f"{path}: the TorchScript archive's root is a {type(root).__name__}, not a module")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", slots, out, path)
    return out


def _collect(obj: ScriptObject, prefix: str, slots: dict[str, set[str]], out: dict, path: Path) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: refused - {obj.qualified_name} has a custom __getstate__/__setstate__; its state "
            f"({type(state).__name__}) names no tensors and reading it would mean running the archive's code"
        )
    names = slots.get(obj.qualified_name)
    for key, value in state.items():
        if isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{key}.", slots, out, path)
        elif isinstance(value, torch.Tensor) and (names is None or key in names):
            out[f"{prefix}{key}"] = value.detach().clone()


def write_torchscript_state(state: dict[str, torch.Tensor], path) -> Path:
    """A TorchScript archive holding `state` under its names, as OpenAI's RN50.pt holds CLIP's
    weights: floating-point tensors as half-precision parameters, the rest (OpenAI's scalars
    `input_resolution`, `context_length`, `vocab_size`) as buffers, and a `forward` that returns
    its input. For files in that layout without OpenAI's (a rehearsal's random weights, tests)."""
    from torch import nn

    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        if value.is_floating_point() and value.dim() > 0:
            module.register_parameter(leaf, nn.Parameter(value.half(), requires_grad=False))
        else:
            module.register_buffer(leaf, value)

    class Archive(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            for name, child in inner.named_children():
                self.add_module(name, child)
            for name, p in inner.named_parameters(recurse=False):
                self.register_parameter(name, p)
            for name, b in inner.named_buffers(recurse=False):
                self.register_buffer(name, b)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = Path(path)
    torch.jit.save(torch.jit.script(Archive(root)), str(path))
    return path
