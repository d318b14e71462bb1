"""Training profiles are data files checked against TrainConfig: a wrong key is an error."""

import json

import pytest

from audioclip_core.training import profiles
from audioclip_core.training.config import TrainConfig
from audioclip_core.training.spec import STAGE_NAMES


def test_every_profile_file_resolves_for_its_stages():
    assert profiles.available_profiles() == ["demo", "paper"]
    for name in profiles.available_profiles():
        for stage in profiles.profile_stages(name):
            clipset = "esc50" if stage in profiles.FINETUNE_STAGES else None
            cfg = profiles.resolve(name, stage, {}, clipset=clipset)
            assert isinstance(cfg, TrainConfig) and cfg.stage == stage
    # the demo keeps the best fine-tuned epoch on held-out clips; the paper runs its schedule to the end
    assert profiles.resolve("demo", "audioclip_finetune", {}, clipset="us8k").validation_share == 0.2
    assert profiles.resolve("paper", "audioclip_finetune", {}, clipset="us8k").validation_share == 0.0
    assert set(profiles.profile_stages("demo")) == set(STAGE_NAMES)


@pytest.mark.parametrize(
    "stages, message",
    [
        ({"esresnext_finetune": {"epoch": 3}}, "unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"),
        ({"esresnext_finetune": {"epochs": "3"}}, "epochs = '3' is not of type"),
        ({"esresnext_finetune": {"amp": 1}}, "amp = 1 is not of type"),
        ({"esresnext_finetune": {"keep_epochs": [1.5]}}, "keep_epochs = \\[1.5\\] is not of type"),
        ({"esresnext_finetune": {"stage": "audioclip_full"}}, "unknown key 'stage'"),
        ({"stage_five": {"epochs": 3}}, "unknown stage 'stage_five'"),
        ({"esresnext_finetune": {"epochs": 0}}, "must be positive"),
        ({"audioclip_full": {"validation_share": 0.2}}, "only fine-tuning holds out validation clips"),
    ],
)
def test_a_wrong_profile_file_is_an_error_naming_file_stage_and_key(tmp_path, monkeypatch, stages, message):
    (tmp_path / "mine.json").write_text(json.dumps({"summary": "x", "stages": stages}))
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    profiles._load.cache_clear()
    try:
        with pytest.raises(ValueError, match=message) as err:
            profiles.profile_stages("mine")
        assert "mine.json" in str(err.value)
    finally:
        profiles._load.cache_clear()


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown training profile 'papr'; one of \\['demo', 'paper'\\]"):
        profiles.resolve("papr", "audioclip_full", {})
