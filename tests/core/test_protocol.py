"""The paper's protocol: one dataset protocol, the paper's querying rule, one input-scale rule,
and no silent random initialisation in the paper profile."""

import pytest
import torch

from audioclip_core.audio import to_model_input
from audioclip_core.data.clipsets import protocol
from audioclip_core.evaluation.embeddings import AudioSetEmbeddings, set_captions, unique_label_sets
from audioclip_core.evaluation.retrieval import audioset_querying
from audioclip_core.inference import resolve_input_scale
from audioclip_core.training.profiles import resolve
from audioclip_core.training.spec import StageSpec
from audioclip_core.training.stages import InitialisationError, require_initialisation


def test_one_dataset_protocol_for_training_and_evaluation():
    us8k, esc50 = protocol("us8k"), protocol("esc50")
    assert (us8k.clip_seconds, us8k.channels, us8k.input_scale) == (4.0, 2, "minmax")
    assert (esc50.clip_seconds, esc50.channels, esc50.input_scale) == (5.0, 1, "int16")
    for profile in ("paper", "demo"):
        cfg = resolve(profile, "audioclip_finetune", {"clip_seconds": 10.0}, clipset="us8k")
        assert (cfg.clip_seconds, cfg.channels, cfg.input_scale) == (4.0, 2, "minmax")
        cfg = resolve(profile, "esresnext_finetune", {}, clipset="esc50")
        assert (cfg.clip_seconds, cfg.channels, cfg.input_scale) == (5.0, 1, "int16")
    # a scale a run asks for is kept
    assert resolve("paper", "audioclip_finetune", {"input_scale": "int16"}, clipset="us8k").input_scale == "int16"


def test_minmax_scales_each_clip_to_the_int16_range():
    wave = torch.tensor([[[0.0, 0.5, -0.25]], [[0.1, 0.1, 0.1]]])  # two clips, one constant
    out = to_model_input(wave, "minmax")
    assert out[0].min() == -32768.0 and out[0].max() == 32767.0
    assert float(out[0, 0, 0]) == pytest.approx(0.25 / 0.75 * 65535 - 32768)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(to_model_input(wave, "int16"), wave * 32768)


def test_one_input_scale_rule():
    class Released(torch.nn.Module):  # a released checkpoint records no scale
        checkpoint_metadata = {}

    class Trained(torch.nn.Module):
        checkpoint_metadata = {"input_scale": "int16"}

    assert resolve_input_scale(Released(), "us8k") == "minmax"
    assert resolve_input_scale(Released(), "esc50") == "int16"
    assert resolve_input_scale(Released()) == "int16"
    assert resolve_input_scale(Trained(), "us8k") == "int16"  # what it was trained with
    assert resolve_input_scale(Trained(), "us8k", "unit") == "unit"  # asked for
    with pytest.raises(ValueError, match="input_scale must be one of"):
        resolve_input_scale(Released(), None, "x100")


def _toy():
    """Three clips: A {dog}, B {dog, bark}, C {cat}; audio embeddings are axes, so every
    score below is 0 or 1 and the figures can be worked out by hand."""
    e = torch.eye(4)
    targets = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])  # classes: dog, bark, cat
    sets, set_of_clip = unique_label_sets(targets)
    assert set_captions(sets, ["dog", "bark", "cat"]) == ["dog", "dog, bark", "cat"]
    assert set_of_clip.tolist() == [0, 1, 2]
    again, ids = unique_label_sets(targets[[2, 0, 2, 1]])  # first appearance order, repeated sets
    assert set_captions(again, ["dog", "bark", "cat"]) == ["cat", "dog", "dog, bark"] and ids.tolist() == [0, 1, 0, 2]
    return AudioSetEmbeddings(
        audio=e[[0, 1, 2]],
        image=e[[0, 1, 2]],
        text=e[[1, 1, 2]],  # "dog" and "bark" both point at B
        targets=targets,
        class_names=["dog", "bark", "cat"],
        set_text=e[[1, 1, 2]],
    )  # "dog" at B, "dog, bark" at B, "cat" at C


def test_querying_by_the_papers_rule_differs_from_any_shared_label():
    emb = _toy()
    same = audioset_querying(emb, "same_labels")["audio by text"]
    anyl = audioset_querying(emb, "any_label")["audio by text"]
    # same label set: queries {dog} -> B (its set is {dog, bark}: not relevant), {dog, bark} -> B,
    # {cat} -> C. P@1 = R@1 = 2/3. AP of {dog}: B scores 1, A and C tie at 0 (one threshold):
    # precision 1/3 at recall 1 -> 1/3; the other two are 1: mAP = (1/3 + 1 + 1) / 3 = 7/9.
    assert same == pytest.approx({"P@1": 2 / 3, "R@1": 2 / 3, "mAP": 7 / 9})
    # any shared label: queries dog (A, B relevant) -> B, bark (B) -> B, cat (C) -> C: P@1 = 1;
    # R@1 = (1/2 + 1 + 1) / 3 = 5/6; AP of dog = 1/2 * 1 + 1/2 * 2/3 = 5/6: mAP = (5/6 + 2) / 3.
    assert anyl == pytest.approx({"P@1": 1.0, "R@1": 5 / 6, "mAP": 17 / 18})
    # clip queries: the clip's own image is the only clip with the same set; A and B share "dog"
    clips_same = audioset_querying(emb, "same_labels")["audio by image"]
    clips_any = audioset_querying(emb, "any_label")["audio by image"]
    assert clips_same["R@1"] == pytest.approx(1.0) and clips_any["R@1"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    with pytest.raises(ValueError, match="unknown query rule"):
        audioset_querying(emb, "nearest")


def _spec(stage, **kw):
    return StageSpec(name=stage, stage=stage, config={}, workdir="/tmp/x", tables=[], manifests={}, **kw)


def test_the_paper_profile_never_starts_from_random_weights_silently():
    cfg = resolve("paper", "audioclip_partial", {})
    with pytest.raises(InitialisationError) as err:
        require_initialisation(_spec("audioclip_partial", init="stage1.safetensors"), cfg)
    msg = str(err.value)
    assert "`clip_weights`" in msg and "CLIP.pt" in msg and "AudioCLIP/releases" in msg and "allow_random_init" in msg
    with pytest.raises(InitialisationError, match="`imagenet_weights`.*resnext50_32x4d"):
        require_initialisation(_spec("esresnext_audioset"), resolve("paper", "esresnext_audioset", {}))
    # given weights, an explicit allowance, or the demo profile: it starts
    require_initialisation(_spec("audioclip_partial", clip_weights="CLIP.pt"), cfg)
    require_initialisation(
        _spec("esresnext_audioset", imagenet_weights="r.pth"), resolve("paper", "esresnext_audioset", {})
    )
    require_initialisation(
        _spec("audioclip_partial"), resolve("paper", "audioclip_partial", {"allow_random_init": True})
    )
    require_initialisation(_spec("audioclip_partial"), resolve("demo", "audioclip_partial", {}))
    require_initialisation(_spec("audioclip_full"), resolve("paper", "audioclip_full", {}))  # starts from stage 2


def test_label_set_relevance_equals_its_definition_on_random_labels():
    """Relevance by label-set ids (what scales to AudioSet: clips x clips, not x classes) is
    exactly 'the label sets are equal', checked element by element on random multi-labels."""
    from audioclip_core.evaluation.retrieval import clip_relevance, text_queries

    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(300, 12, generator=g) < 0.15).float()
    sets, _ = unique_label_sets(targets)
    emb = AudioSetEmbeddings(
        audio=torch.zeros(300, 4),
        image=torch.zeros(300, 4),
        text=torch.zeros(12, 4),
        targets=targets,
        class_names=[str(i) for i in range(12)],
        set_text=torch.zeros(len(sets), 4),
    )
    t = targets.bool()
    assert torch.equal(clip_relevance(emb, "same_labels"), (t[:, None, :] == t[None, :, :]).all(-1))
    _, rel = text_queries(emb, "same_labels")
    assert torch.equal(rel, (sets.bool()[:, None, :] == t[None, :, :]).all(-1))
    assert len(sets) == len({tuple(r) for r in t.tolist()}) and rel.sum(0).eq(1).all()
