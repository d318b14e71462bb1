import open_clip
import pytest
import torch

import audioclip_core as ac
from audioclip_core.text import apply_template, get_tokenizer

TEXTS = [
    "cat",
    "Speech, Male speech, man speaking",
    "Dog's bark (loud!) & whimper",
    "Café ambience — crowd murmur",
    "猫が鳴いている",
    "Собака лает на улице",
    "صوت المطر",
    "  many   spaces\tand\nnewlines ",
    "&amp;lt;html&amp;gt; entities",
    "emoji 🐶🎸",
    "x" * 40,
    "The quick brown fox jumps over the lazy dog " * 5,
]


def test_matches_clip_tokenizer_on_varied_texts():
    ours = ac.tokenize(TEXTS)
    theirs = open_clip.tokenize(TEXTS)  # same BPE; identical when nothing is truncated
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), 77)
    assert torch.equal(ours, theirs)


def test_known_ids():
    t = ac.tokenize(["a dog"])[0]
    assert t[0] == 49406 and int(t.argmax()) == 3 and t[3] == 49407
    assert get_tokenizer().decode(t.tolist()) == "a dog"


def test_too_long_is_an_error_not_a_silent_cut():
    long = "word " * 100
    with pytest.raises(ValueError, match="context length"):
        ac.tokenize([long])
    cut = ac.tokenize([long], truncate=True)[0]
    assert cut[-1] == 49407 and (cut != 0).all()


def test_entities_joined_and_template():
    assert apply_template([["Dog", "Bark"], "rain"]) == ["Dog, Bark", "rain"]
    assert apply_template(["rain"], "the sound of {}") == ["the sound of rain"]
    with pytest.raises(ValueError):
        apply_template(["rain"], "no placeholder")
