"""The record of the image and text towers that stage 2 distils the audio head into: CLIP's
weights (the paper), the demo's stand-in checkpoint, or random (only when allowed), with the
file's sha256; written beside the clip_towers checkpoint, read by stage 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

TOWERS_RECORD = "towers.json"  # in the clip_towers checkpoint folder (layout.checkpoint_dir("clip_towers"))


def towers_record(kind: str, path: Optional[str] = None, sha256: Optional[str] = None, **more) -> dict:
    """What stage 2's image and text towers are: ``clip_weights`` (a CLIP file - OpenAI's RN50 or
    the release's CLIP.pt, the paper), ``standin`` (the demo's `clip_standin` checkpoint) or
    ``random`` (neither; only with `allow_random_init`), with the file's sha256 (computed unless
    given)."""
    from ..files import sha256_file

    if kind not in ("clip_weights", "standin", "random"):
        raise ValueError(f"unknown kind of towers {kind!r}")
    if kind != "random" and not path:
        raise ValueError(f"towers of kind {kind!r} need a file")
    return {
        "kind": kind,
        "path": str(path) if path else None,
        "sha256": sha256 or (sha256_file(Path(path)) if path else None),
        **more,
    }


def publish_towers(layout, record: dict) -> None:
    """Write `record` where stage 2 finds it (`layout.checkpoint_dir("clip_towers")`); a file
    under the data root is named relative to it, so the root can move."""
    from ..files import write_json

    path = Path(record["path"]) if record.get("path") else None
    if path is not None and path.is_relative_to(layout.root):
        record = {**record, "path": str(path.relative_to(layout.root))}
    write_json(record, layout.checkpoint_dir("clip_towers") / TOWERS_RECORD)


def published_towers(layout) -> dict:
    """The towers record `publish_towers` wrote, with an absolute path; a clear error when
    there is none or its file is gone."""
    path = layout.checkpoint_dir("clip_towers") / TOWERS_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialise clip_towers first (or set clip_weights)")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("path") and not Path(record["path"]).is_absolute():
        record["path"] = str(layout.root / record["path"])
    if record.get("path") and not Path(record["path"]).is_file():
        raise FileNotFoundError(f"clip_towers names {record['path']}, which is gone: materialise clip_towers again")
    return record
