"""Whether a trained stage is usable: gates that stop a collapsed model from reaching the tables.

* Collapse: a contrastive pair term (audio-text, audio-image, image-text: cross-entropy in
  both directions) at uniform logits equals 2 ln(n) for a batch of n; the training step
  records that value per step as ``loss_uniform``, averaged over the epoch like the terms
  themselves. A model whose audio embeddings no longer tell one clip of a batch from
  another gives exactly that value, whatever it is compared with. A stage whose every pair
  term with audio (audio-text, audio-image) ends its last epoch within 1 % of the uniform
  value has collapsed. (A term far ABOVE it is a model that tells clips apart, wrongly - a
  poor model, not a collapsed one; the tables say how poor. The image-text term alone is
  not judged: the partial stage keeps both of its towers frozen - except in a stage without
  audio, the demo's image-text `clip_standin`, where it is the only term.) Near the uniform
  value is not enough when the step also records in-batch retrieval (below) and it is well
  above chance: uniform logits cannot retrieve, and a term that starts far above the uniform
  value (a fresh projection under a logit scale of 100) passes through it on its way down -
  seen once, in a demo fine-tuning fold at 0.99 of it with in-batch accuracy 0.60 against
  chance 0.17.
* At chance: the training step also records in-batch audio-to-caption retrieval
  (``acc_audio_text``: the best scoring caption of a clip is its own or an identical one)
  and its expectation for random scores (``acc_chance``: the mean share of identical
  captions per clip). A model that learned nothing scores chance: over the N samples of the
  last epoch the hits are independent Bernoulli draws whose mean has a standard deviation of
  at most sqrt(c (1 - c) / N) for a mean chance c (the variance of a sum of Bernoulli draws
  with mean probability c is at most N c (1 - c)). Accuracy within two of those of chance
  is at chance: a model that learned nothing passes with a probability of about 2 %, while
  a small run (the demo's 80 clips an epoch) that did learn is not failed for its size.
  The demo's image-text stand-in for CLIP (`clip_standin`, no audio) records the same for
  image-to-caption retrieval (``acc_image_text``), judged the same way.
* Non-finite weights: any NaN or Inf in the saved checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

PAIR_TERMS = ("loss_audio_image", "loss_audio_text", "loss_image_text")
AUDIO_TERMS = ("loss_audio_image", "loss_audio_text")
TOLERANCE = 0.01
RETRIEVAL_KEYS = ("acc_audio_text", "acc_image_text")


def collapse(history: list[dict]) -> Optional[dict]:
    """The pair terms of the last epoch against their uniform-logit value, or None when the
    history has no contrastive terms (a classifier stage). `collapsed` is True when every
    audio pair term is within TOLERANCE of the uniform value."""
    if not history or "loss_uniform" not in history[-1]:
        return None
    last = history[-1]
    uniform = float(last["loss_uniform"])
    terms = {k: float(last[k]) for k in PAIR_TERMS if k in last}
    if not terms:
        return None
    ratios = {k: v / uniform for k, v in terms.items()}
    # a stage without audio (the demo's image-text clip_standin) is judged by its image-text term
    judged = [ratios[k] for k in AUDIO_TERMS if k in ratios] or [ratios[k] for k in PAIR_TERMS if k in ratios]
    near_uniform = bool(judged) and all(abs(r - 1.0) <= TOLERANCE for r in judged)
    # uniform logits retrieve at chance: a term that only passes the uniform value on its way
    # down (from far above it) while in-batch retrieval is well above chance is not a collapse
    retrieval = at_chance(history)
    learned = retrieval is not None and not retrieval["at_chance"]
    return {
        "uniform": uniform,
        "terms": terms,
        "ratios": ratios,
        "retrieval_above_chance": learned,
        "collapsed": near_uniform and not learned,
    }


def at_chance(history: list[dict], sigmas: float = 2.0) -> Optional[dict]:
    """The last epoch's in-batch retrieval accuracy against chance, or None when it was not
    recorded. `at_chance` is True when the accuracy is within `sigmas` standard deviations of
    chance (see the module's text)."""
    key = next((k for k in RETRIEVAL_KEYS if history and k in history[-1]), None)
    if key is None:
        return None
    last = history[-1]
    acc, chance, n = float(last[key]), float(last["acc_chance"]), int(last.get("samples") or 0)
    bound = chance + sigmas * math.sqrt(chance * (1 - chance) / max(n, 1))
    return {
        "retrieval": key,
        "accuracy": acc,
        "chance": chance,
        "samples": n,
        "bound": min(bound, 1.0),
        "at_chance": acc <= bound,
    }


def non_finite_tensors(checkpoint: Path) -> list[str]:
    """Names of the tensors of a safetensors checkpoint that hold NaN or Inf (the check that
    strict loading applies, `checkpoints.non_finite_tensors`)."""
    from safetensors.torch import load_file

    from ..checkpoints import non_finite_tensors as counts

    return sorted(counts(load_file(str(checkpoint))))
