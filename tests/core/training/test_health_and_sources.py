"""Training gates (collapse, non-finite weights) and the AudioSet lists: partitions from the
files that exist, rows that are not UTF-8."""

import math

import pytest
import torch
from safetensors.torch import save_file

from audioclip_core.data.audioset import available_partitions, read_segment_file
from audioclip_core.training.health import collapse, non_finite_tensors

HEADER = "# Segments csv\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n"


def _epoch(uniform, **terms):
    return {"epoch": 0, "loss": 1.0, "loss_uniform": uniform, **terms}


def test_uniform_logits_are_a_collapse_and_learning_is_not():
    u = 2 * math.log(16)
    assert collapse([_epoch(u, loss_audio_text=u * 1.004, loss_audio_image=u * 0.995, loss_image_text=u)])["collapsed"]
    # audio-text learnt (well below uniform): not collapsed, whatever the frozen image-text term does
    assert not collapse([_epoch(u, loss_audio_text=0.5 * u, loss_audio_image=u, loss_image_text=1.05 * u)])["collapsed"]
    # far above uniform: confidently wrong, a poor model but one that tells clips apart
    assert not collapse([_epoch(u, loss_audio_text=1.2 * u, loss_audio_image=1.1 * u)])["collapsed"]
    # near uniform while in-batch retrieval is well above chance (a demo fold: 0.99 of the
    # uniform value on its way down from 3x it, accuracy 0.60 against chance 0.17): not collapsed
    learning = _epoch(4.97, loss_audio_text=4.922, acc_audio_text=0.6, acc_chance=0.171, samples=180)
    assert not collapse([learning])["collapsed"] and collapse([learning])["retrieval_above_chance"]
    # ... and at chance it is
    assert collapse([{**learning, "acc_audio_text": 0.18}])["collapsed"]
    assert collapse([{"epoch": 0, "loss": 0.3}]) is None  # a classifier stage has no pair terms
    assert collapse([]) is None


def test_the_recorded_uniform_value_is_the_pair_term_at_uniform_logits():
    """What the training step records as loss_uniform is what a pair term gives when all
    logits are equal (2 ln n), so the gate compares like with like."""
    import torch.nn.functional as F

    n = 7
    logits = torch.full((n, n), 3.0, dtype=torch.float64)
    target = torch.arange(n)
    term = float(F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert term == pytest.approx(2 * math.log(n), rel=1e-12)


def test_non_finite_weights_are_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(
        {
            "a": torch.ones(3),
            "b": torch.tensor([1.0, float("nan")]),
            "c": torch.tensor([float("inf")]),
            "i": torch.tensor([1, 2]),
        },
        str(path),
    )
    assert non_finite_tensors(path) == ["b", "c"]


def test_partitions_are_the_lists_that_exist(tmp_path):
    assert available_partitions(tmp_path) == []
    (tmp_path / "eval_segments.csv").write_text(HEADER)
    assert available_partitions(tmp_path) == ["eval"]
    rows = "".join(f'abcdefghij{i % 10}, 0.000, 10.000, "/m/09x0r"\n' for i in range(50_001))
    (tmp_path / "unbalanced_train_segments.csv").write_text(HEADER + rows)
    assert available_partitions(tmp_path) == ["eval", "unbalanced_00", "unbalanced_01"]


def test_a_row_that_is_not_utf8_is_reported_and_the_rest_parsed(tmp_path):
    path = tmp_path / "eval_segments.csv"
    path.write_bytes(
        HEADER.encode() + b'--PJHxphWEs, 30.000, 40.000, "/m/09x0r"\n'
        b'bad\xff\xferow0, 1.000, 2.000, "/m/09x0r"\n'
        b'-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"\n'
    )
    parsed = read_segment_file(path)
    assert [s.ytid for s in parsed.segments] == ["--PJHxphWEs", "-0RWZT-miFs"]
    assert [(i.line, i.reason) for i in parsed.issues] == [(5, "not valid UTF-8")]
