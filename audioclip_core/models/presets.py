"""Architecture presets: one JSON file per model in `configs/`, or any JSON file by path.

A preset gives `embed_dim`, `quick_gelu`, `vision_cfg` and `text_cfg` (open_clip's
format) and `audio_cfg` (`AudioConfig`). Instead of the two tower configs it may name an
open_clip architecture with `"open_clip_model"` (e.g. a stronger backbone); the audio
projection then follows that model's embedding size.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_preset(name: str) -> dict:
    """Resolve a preset name (or a path to a JSON file) into a complete config dict."""
    path = Path(name)
    if not (path.suffix == ".json" and path.is_file()):
        path = CONFIG_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(
                f"unknown preset {name!r}; available: {', '.join(available_presets())} "
                "(or give a path to a preset .json file)"
            )
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.setdefault("name", path.stem)
    if "open_clip_model" in cfg:
        import open_clip

        base = open_clip.get_model_config(cfg["open_clip_model"])
        if base is None:
            raise ValueError(f"preset {name!r}: open_clip has no model {cfg['open_clip_model']!r}")
        for key in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu"):
            cfg.setdefault(key, copy.deepcopy(base.get(key, False if key == "quick_gelu" else None)))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if cfg.get(k) is None]
    if missing:
        raise ValueError(f"preset {name!r} lacks {missing}")
    cfg.setdefault("audio_cfg", {})
    return cfg


def build_from_preset(name: str = "audioclip-rn50"):
    from .audioclip import AudioCLIP

    cfg = get_preset(name)
    return AudioCLIP(
        cfg["embed_dim"],
        cfg["vision_cfg"],
        cfg["text_cfg"],
        cfg["audio_cfg"],
        quick_gelu=bool(cfg.get("quick_gelu", False)),
        preset=cfg["name"],
    )
