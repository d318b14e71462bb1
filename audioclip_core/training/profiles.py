"""Named training profiles - the paper's values, and a small one for the demo data on a CPU -
and `resolve`, which turns a profile, a stage and a run's overrides into its `TrainConfig`.

A profile is a data file, `configs/<name>.json` beside this module (as the model presets are
`models/configs/<name>.json`): a `summary` and, per stage, `TrainConfig` values. Every key is
checked against `TrainConfig`'s fields and their types when the file is read: an unknown or
mistyped key is an error naming the file, the stage and the key, never ignored. Why the demo's
values are what they are (the measurements) is in docs/profiles.md.

Fine-tuning always follows the clip set's protocol (`data.clipsets.protocol`: ESC-50 5.0 s
mono, UrbanSound8K 4.0 s stereo; the input scale of its published loader - ESC-50 int16,
UrbanSound8K minmax - unless a run sets one), in every profile, so a model is fine-tuned on
the clips it is evaluated on.

The paper profile never starts from random weights without being told: stage 1 wants
ImageNet weights and stage 2 CLIP weights (`stages.require_initialisation`), unless
`allow_random_init` is set. The demo profile sets it: its towers are trained from scratch, the
image and text towers first by `clip_standin`, the demo's stand-in for CLIP's pre-training.

A run that sets no seed takes $AUDIOCLIP_SEED (`make demo SEED=n`), else 0.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Optional

from ..data.clipsets import protocol
from ..data.demo_dataset import demo_seed
from .config import TrainConfig
from .spec import STAGE_NAMES

PROFILE_DIR = Path(__file__).parent / "configs"
FINETUNE_STAGES = ("esresnext_finetune", "audioclip_finetune")


class ProfileError(ValueError):
    """A profile file that does not describe `TrainConfig` values."""


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def check_stage_values(values: Mapping[str, Any], where: str) -> dict:
    """`values` as `TrainConfig` fields of a stage: each key a field (not `stage`), each value of
    its type; else `ProfileError` naming `where` and the key."""
    import difflib

    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in fields(TrainConfig)} - {"stage"}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(key, sorted(names), n=1)
            raise ProfileError(
                f"{where}: unknown key {key!r}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + f"; a stage's keys are TrainConfig fields: {', '.join(sorted(names))}"
            )
        if not _type_ok(value, hints[key]):
            raise ProfileError(f"{where}: {key} = {value!r} is not of type {hints[key]}")
    return dict(values)


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict:
    path = PROFILE_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown training profile {name!r}; one of {available_profiles()}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) - {"summary", "stages"} or not isinstance(doc.get("stages"), dict):
        raise ProfileError(f"{path}: a profile is an object with 'summary' and 'stages' (stage -> TrainConfig values)")
    stages = {}
    for stage, values in doc["stages"].items():
        if stage not in STAGE_NAMES:
            raise ProfileError(f"{path}: unknown stage {stage!r}; one of {STAGE_NAMES}")
        if not isinstance(values, dict):
            raise ProfileError(f"{path}: stage {stage!r} must map TrainConfig fields to values")
        stages[stage] = check_stage_values(values, f"{path}, stage {stage!r}")
        try:  # the config's own checks (ranges, combinations)
            TrainConfig(stage=stage, **stages[stage])
        except ValueError as exc:
            raise ProfileError(f"{path}, stage {stage!r}: {exc}") from exc
    return stages


def profile_stages(profile: str) -> dict:
    """{stage: values} of a profile, read and checked (`configs/<profile>.json`)."""
    return {k: dict(v) for k, v in _load(profile).items()}


def profile_values(profile: str, stage: str) -> dict:
    stages = _load(profile)
    if stage not in stages:
        raise ProfileError(
            f"training profile {profile!r} has no values for stage {stage!r} ({PROFILE_DIR / profile}.json)"
        )
    return dict(stages[stage])


def resolve(
    profile: str, stage: str, overrides: Mapping[str, Any] = (), *, clipset: Optional[str] = None
) -> TrainConfig:
    """The `TrainConfig` of one run: the profile's values for `stage`, then every override
    that names a `TrainConfig` field and is not None (others are ignored: they configure the
    run, not the training), then - for fine-tuning on `clipset` - that set's clip length and
    channels."""
    values = profile_values(profile, stage)
    names = {f.name for f in fields(TrainConfig)} - {"stage"}
    given = {k: v for k, v in dict(overrides).items() if k in names and v is not None}
    values.update(given)
    if "seed" not in given:
        values.setdefault("seed", demo_seed())  # $AUDIOCLIP_SEED (make demo SEED=n), else 0
    if stage in FINETUNE_STAGES:
        if clipset is None:
            raise ValueError(f"{stage} fine-tunes on a clip set: give clipset='esc50' or 'us8k'")
        spec = protocol(clipset)
        values.update(clip_seconds=spec.clip_seconds, channels=spec.channels)
        if "input_scale" not in given:
            values["input_scale"] = spec.input_scale
    return TrainConfig(stage=stage, **values)
