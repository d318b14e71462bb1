"""Code versions: a digest of what determines an output besides its data, so an orchestrator can
tell a checkpoint or a table made by other code from one made by this code (Dagster's
`code_version`; an asset whose code version changed shows as unsynced).

A training stage's output is determined by its resolved configuration in every profile
(`training.profiles`: preset, epochs, learning rate, ...), its architecture presets, and the
core's source that builds, feeds and trains it; a table's by the evaluation source and the same
models and data code. Text only: the digest is the same on every machine and for every checkout
of the same files (line endings aside), and changes when one of those files does.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

CORE = Path(__file__).resolve().parent
# what builds, reads and trains a model (every stage)
MODEL_SOURCES = ("models", "checkpoints.py", "audio.py", "images.py", "text.py", "losses.py", "data")
TRAINING_SOURCES = (*MODEL_SOURCES, "training")
EVALUATION_SOURCES = (*MODEL_SOURCES, "evaluation", "inference.py")


@lru_cache(maxsize=None)
def source_digest(parts: tuple[str, ...]) -> str:
    """SHA-256 over the Python and JSON files under `parts` (files or folders of the core), in
    path order, each as its relative path and its text with normalised line endings."""
    h = hashlib.sha256()
    files = []
    for part in parts:
        p = CORE / part
        files += sorted(p.rglob("*")) if p.is_dir() else [p]
    for f in sorted(set(files)):
        if f.suffix in (".py", ".json") and f.is_file() and "__pycache__" not in f.parts:
            h.update(f.relative_to(CORE).as_posix().encode())
            h.update(b"\0" + f.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def stage_code_version(stage: str) -> str:
    """The code version of a training stage (`training.spec.STAGE_NAMES`): its values in every
    profile and the training source (which holds the profiles and the presets' JSON files)."""
    return _digest({"stage": stage, "source": source_digest(TRAINING_SOURCES)})


@lru_cache(maxsize=None)
def evaluation_code_version(table: str) -> str:
    """The code version of an evaluation table: the evaluation source and what it loads."""
    return _digest({"table": table, "source": source_digest(EVALUATION_SOURCES)})
