"""The original AudioCLIP implementation, loaded from a checkout, for side-by-side figures.

Point the benchmarks at a checkout of the published code with `--original DIR` or
`AUDIOCLIP_ORIGINAL_DIR=DIR` (`make bench ORIGINAL=DIR`). Nothing of it is bundled here.

Only the model code runs (`model/`, `utils/transforms.py`). What a forward/backward pass
does not need is replaced when it cannot be imported: the training framework
(`ignite_trainer`: two empty base classes), the dataset loaders (`utils.datasets`), and the
BPE vocabulary file (open_clip's copy of the same CLIP vocabulary). The model is built with
`pretrained=False` and given our weights in the official layout with `strict=True`, so both
implementations compute with identical parameters.
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
        raise SystemExit(f"{path}: no model/audioclip.py there; --original wants a checkout of the "
                         "published AudioCLIP code")
    return path


def _stand_in_trainer() -> types.ModuleType:
    mod = types.ModuleType("ignite_trainer")

    class AbstractNet(abc.ABC, torch.nn.Module):
        pass

    class AbstractTransform(abc.ABC):
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
        importlib.import_module("ignite_trainer")
    except ImportError:
        sys.modules["ignite_trainer"] = _stand_in_trainer()
    try:
        importlib.import_module("utils")
    except ImportError:  # utils/__init__ imports the dataset loaders and their dependencies
        for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
            del sys.modules[name]
        pkg = types.ModuleType("utils")
        pkg.__path__ = [str(path / "utils")]
        sys.modules["utils"] = pkg
    try:
        return importlib.import_module("model.audioclip").AudioCLIP
    except (ImportError, OSError):  # no BPE vocabulary file, or no ftfy/regex
        for name in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
            del sys.modules[name]
        sys.modules["utils.simple_tokenizer"] = _stand_in_tokenizer()
        return importlib.import_module("model.audioclip").AudioCLIP


def load_original(path: Path, ours: torch.nn.Module) -> torch.nn.Module:
    """The original AudioCLIP (paper configuration) holding `ours`'s weights."""
    from audioclip_core.checkpoints import official_state_dict

    audioclip_cls = _import_audioclip(path)
    model = audioclip_cls(pretrained=False)
    model.load_state_dict({k: v.detach().clone() for k, v in official_state_dict(ours).items()}, strict=True)
    return model.train(ours.training)
