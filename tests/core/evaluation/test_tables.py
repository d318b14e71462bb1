"""The table functions with hand-made embeddings, against figures computed by hand.

An oracle model reads each clip's number from its constant level (clip i holds 0.01 * i)
and returns the embedding written for it below: one class direction (the class it is
*predicted* to be) plus a small per-clip offset on a spare axis, so every ranking is known.
Texts embed as their class direction. With those, every row of Table 3, Table 4's ESC-50
row and Table 1's fine-tuned rows follow from the definitions in evaluation/metrics.py.
"""

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch import nn

from audioclip_core.evaluation import tables

CLASSES = ["dog", "rain", "siren"]
# clip i: (fold, true class, predicted class, offset on the spare axis)
CLIPS = {
    1: (1, "dog", "dog", 0.1),
    2: (1, "rain", "rain", 0.2),
    3: (1, "siren", "dog", 0.3),
    4: (2, "dog", "dog", 0.4),
    5: (2, "rain", "rain", 0.5),
    6: (2, "siren", "siren", 0.6),
}
LEVEL = 0.01


def _clip_number(audio: torch.Tensor) -> list[int]:
    # the loaders feed int16-scaled audio (x32768); each clip is one constant level
    return [round(float(v) / (LEVEL * 32768.0)) for v in audio.flatten(1).mean(1)]


class Oracle(nn.Module):
    embed_dim = len(CLASSES) + 1

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(audio.shape[0], self.embed_dim)
        for row, i in enumerate(_clip_number(audio)):
            _, _, predicted, offset = CLIPS[i]
            out[row, CLASSES.index(predicted)] = 1.0
            out[row, -1] = offset
        return out

    def encode_text(self, texts) -> torch.Tensor:
        return torch.stack([torch.eye(self.embed_dim)[CLASSES.index(t)] for t in texts])


class OracleClassifier(nn.Module):
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.eye(len(CLASSES))[CLASSES.index(CLIPS[i][2])] for i in _clip_number(audio)])


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> pd.DataFrame:
    """Six 5 s ESC-50 clips (its protocol length: no padding or cropping changes the level)."""
    root = tmp_path_factory.mktemp("esc50")
    rows = []
    for i, (fold, true, _, _) in CLIPS.items():
        path = root / f"{fold}-{i}-A-{CLASSES.index(true)}.wav"
        sf.write(path, np.full(5 * 44100, LEVEL * i, dtype=np.float32), 44100, subtype="FLOAT")
        rows.append(
            {
                "path": path.name,
                "audio_path": str(path),
                "fold": fold,
                "class_id": CLASSES.index(true),
                "class_name": true,
                "status": "ok",
            }
        )
    return pd.DataFrame(rows)


def _values(result: tables.TableResult, **where) -> dict:
    df = result.rows
    for k, v in where.items():
        df = df[df[k] == v]
    return {(r.metric, r.fold): (r.value, r.n) for r in df.itertuples()}


def test_table3_zero_shot_by_hand(esc50):
    result = tables.table3_zero_shot({"full": Oracle(), "partial": None}, {"esc50": esc50, "us8k": None})
    full = _values(result, model="AudioCLIP (full)", dataset="ESC50")
    # clip 3 (a siren) is taken for a dog: 5 of 6 right; fold 1 holds it (2 of 3), fold 2 none
    assert full[("accuracy", "mean")] == (pytest.approx(5 / 6), 6)
    assert full[("accuracy", "1")] == (pytest.approx(2 / 3), 3)
    assert full[("accuracy", "2")] == (pytest.approx(1.0), 3)
    # three class names: a random scorer picks the true one a third of the time, per fold too
    esc50_rows = result.rows[(result.rows["model"] == "AudioCLIP (full)") & (result.rows["dataset"] == "ESC50")]
    assert esc50_rows["chance"].tolist() == [pytest.approx(1 / 3)] * 3
    missing = result.rows[result.rows["model"] == "AudioCLIP (partial)"]
    assert missing["value"].isna().all() and set(missing["note"]) == {"not available"}
    us8k = result.rows[(result.rows["dataset"] == "US8K")]
    assert us8k["value"].isna().all() and len(us8k) == 2


def test_table4_audio_by_text_by_hand(esc50):
    result = tables.table4_querying({"full": Oracle()}, None, None, {"esc50": esc50})
    got = _values(result, dataset="ESC50", task="audio by text")
    # "dog" ranks clips 1 (dog), 3 (siren), 4 (dog), then ties at 0: AP = (1/1 + 2/3) / 2;
    # "rain" ranks 2, 5 first: AP = 1; "siren" ranks 6, then the other five tied at 0 with
    # clip 3 among them (one threshold: precision 2/6 at recall 1): AP = 1/2 * 1 + 1/2 * 2/6.
    ap = [(1 + 2 / 3) / 2, 1.0, 0.5 + 0.5 * 2 / 6]
    assert got[("P@1", "mean")][0] == pytest.approx(1.0)
    assert got[("R@1", "mean")][0] == pytest.approx(0.5)
    assert got[("mAP", "mean")][0] == pytest.approx(sum(ap) / 3)
    assert got[("mAP", "mean")][1] == 6
    # chance: each of the 3 class names has 2 relevant clips among 6. P@1 2/6; R@1 1/6; AP of
    # a random ranking with relevant items at ranks (i, j) averaged over the 15 rank pairs:
    # (1/i + 2/j) / 2 summed over i < j <= 6, / 15
    pairs = [(i, j) for i in range(1, 7) for j in range(i + 1, 7)]
    expected_ap = sum((1 / i + 2 / j) / 2 for i, j in pairs) / len(pairs)
    rows = result.rows[(result.rows["dataset"] == "ESC50")].set_index("metric")["chance"]
    assert rows["P@1"] == pytest.approx(2 / 6) and rows["R@1"] == pytest.approx(1 / 6)
    assert rows["mAP"] == pytest.approx(expected_ap)
    audioset = result.rows[result.rows["dataset"] == "AudioSet"]
    assert audioset["value"].isna().all() and audioset["chance"].isna().all()
    # ImageNet is evaluated only when configured; the protocol says how
    assert (result.rows["dataset"] != "ImageNet").all()
    assert "AUDIOCLIP_IMAGENET_DIR" in result.protocol["imagenet"]


def test_table1_fine_tuned_folds_by_hand(esc50):
    tests = {str(f): esc50[esc50["fold"] == f].reset_index(drop=True) for f in (1, 2)}
    ft = tables.FineTuned("esc50", CLASSES, tests, {"1": OracleClassifier(), "2": OracleClassifier()})
    result = tables.table1_esresnext(None, None, [], [ft])
    got = _values(result, dataset="ESC50")
    assert got[("accuracy", "1")] == (pytest.approx(2 / 3), 3)
    assert got[("accuracy", "2")] == (pytest.approx(1.0), 3)
    assert got[("accuracy", "mean")] == (pytest.approx((2 / 3 + 1.0) / 2), 2)  # the mean over folds
    conf = {f.name: f.matrix for f in result.figures}
    assert conf["confusion_esresnext_esc50_fold1"].tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    audioset = result.rows[result.rows["dataset"] == "AudioSet"]
    assert len(audioset) == 1 and math.isnan(audioset["value"].iloc[0]) and audioset["note"].iloc[0] == "not trained"


def test_untrained_fold_is_left_out_of_the_mean(esc50):
    tests = {str(f): esc50[esc50["fold"] == f].reset_index(drop=True) for f in (1, 2)}
    ft = tables.FineTuned("esc50", CLASSES, tests, {"1": OracleClassifier()})
    got = _values(tables.table1_esresnext(None, None, [], [ft]), dataset="ESC50")
    assert ("accuracy", "2") not in got
    assert got[("accuracy", "mean")] == (pytest.approx(2 / 3), 1)
