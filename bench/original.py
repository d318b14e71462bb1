"""The original AudioCLIP implementation, loaded from a checkout, for side-by-side figures.

Point the benchmarks at a checkout of the published code with `--original DIR` or
`AUDIOCLIP_ORIGINAL_DIR=DIR` (`make bench ORIGINAL=DIR`). Nothing of it is bundled here.

Only the model code runs (`model/`, `utils/transforms.py`). What a forward/backward pass
does not need is replaced when it cannot be imported, and `STAND_INS` lists what was (the
benchmarks print it): `termcolor` (coloured log lines; a function that returns its text),
the training framework (`ignite_trainer`, which needs pytorch-ignite, visdom and termcolor:
two empty base classes), the dataset loaders (`utils.datasets`), and the BPE vocabulary file
(a plain clone holds a Git LFS pointer; open_clip's copy of the same CLIP vocabulary is
used). The model is built with `pretrained=False` and given our weights in the official
layout with `strict=True`, so both implementations compute with identical parameters.
"""

from __future__ import annotations

import abc
import importlib
import os
import sys
import types
from pathlib import Path
from typing import Optional

import torch


def original_dir(argv: Optional[list[str]] = None) -> Optional[Path]:
    argv = sys.argv[1:] if argv is None else argv
    value = os.environ.get("AUDIOCLIP_ORIGINAL_DIR") or None
    if "--original" in argv:
        i = argv.index("--original")
        if i + 1 >= len(argv):
            raise SystemExit("--original needs a directory")
        value = argv[i + 1]
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not (path / "model" / "audioclip.py").is_file():
        raise SystemExit(
            f"{path}: no model/audioclip.py there; --original wants a checkout of the published AudioCLIP code"
        )
    return path


STAND_INS: list[str] = []  # what `load_original` replaced, for the benchmarks to print


def _stand_in_termcolor() -> types.ModuleType:
    mod = types.ModuleType("termcolor")
    mod.colored = lambda text, *args, **kwargs: text
    mod.cprint = lambda text, *args, **kwargs: print(text)
    return mod


def _stand_in_trainer() -> types.ModuleType:
    mod = types.ModuleType("ignite_trainer")

    class AbstractNet(abc.ABC, torch.nn.Module):
        pass

    class AbstractTransform(abc.ABC):  # noqa: B024 - the original code's name, kept for its checkpoints
        pass

    mod.AbstractNet, mod.AbstractTransform = AbstractNet, AbstractTransform
    return mod


def _stand_in_tokenizer() -> types.ModuleType:
    from open_clip.tokenizer import SimpleTokenizer as OpenClipTokenizer

    class SimpleTokenizer(OpenClipTokenizer):
        """open_clip's tokenizer under the original's special-token names."""

        def __init__(self, *args, **kwargs):
            super().__init__()
            self.encoder["<|startoftext|>"] = self.sot_token_id
            self.encoder["<|endoftext|>"] = self.eot_token_id

    mod = types.ModuleType("utils.simple_tokenizer")
    mod.SimpleTokenizer = SimpleTokenizer
    return mod


def _import_audioclip(path: Path):
    sys.path.insert(0, str(path))
    try:
        importlib.import_module("termcolor")
    except ImportError:  # model/esresnet/base.py imports it for two coloured messages
        sys.modules["termcolor"] = _stand_in_termcolor()
        STAND_INS.append("termcolor (not installed)")
    try:
        importlib.import_module("ignite_trainer")
    except ImportError as exc:
        for name in [n for n in sys.modules if n == "ignite_trainer" or n.startswith("ignite_trainer.")]:
            del sys.modules[name]
        sys.modules["ignite_trainer"] = _stand_in_trainer()
        STAND_INS.append(f"ignite_trainer ({exc})")
    try:
        importlib.import_module("utils")
    except ImportError as exc:  # utils/__init__ imports the dataset loaders and their dependencies
        STAND_INS.append(f"utils.datasets ({exc})")
        for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
            del sys.modules[name]
        pkg = types.ModuleType("utils")
        pkg.__path__ = [str(path / "utils")]
        sys.modules["utils"] = pkg
    try:
        return importlib.import_module("model.audioclip").AudioCLIP
    except (ImportError, OSError, EOFError) as exc:  # no BPE vocabulary (an LFS pointer), or no ftfy/regex
        for name in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
            del sys.modules[name]
        sys.modules["utils.simple_tokenizer"] = _stand_in_tokenizer()
        STAND_INS.append(f"the BPE vocabulary: open_clip's copy ({type(exc).__name__}: {str(exc)[:80]})")
        return importlib.import_module("model.audioclip").AudioCLIP


def load_original(path: Path, ours: torch.nn.Module) -> torch.nn.Module:
    """The original AudioCLIP (paper configuration) holding `ours`'s weights."""
    from audioclip_core.checkpoints import official_state_dict

    audioclip_cls = _import_audioclip(path)
    print(
        f"original code: {path}; stood in for what a forward/backward never calls: "
        + ("; ".join(STAND_INS) if STAND_INS else "nothing"),
        flush=True,
    )
    model = audioclip_cls(pretrained=False)
    model.load_state_dict({k: v.detach().clone() for k, v in official_state_dict(ours).items()}, strict=True)
    return model.train(ours.training)
