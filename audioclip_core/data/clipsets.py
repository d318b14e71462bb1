"""ESC-50 and UrbanSound8K in their official layouts: metadata, file validation, folds.

* ESC-50: ``meta/esc50.csv`` (filename, fold, target, category, ...) + ``audio/<filename>``;
  5 folds of 400 clips, 50 classes of 40.
* UrbanSound8K: ``metadata/UrbanSound8K.csv`` (slice_file_name, fsID, start, end, salience,
  fold, classID, class) + ``audio/fold<N>/<slice_file_name>``; 10 folds, 10 classes.

Folds are always the datasets' own and never reshuffled: clips cut from one recording share
a fold, so a random split would leak recordings between train and test. Class names are the
text labels with underscores replaced by spaces.

The protocol of each set (`protocol(name)`) is what training, evaluation and the profiles
read: ESC-50 clips are fed as 5.0 s of mono, UrbanSound8K clips as 4.0 s of stereo, padded
or cropped (the longest track of each set; the reference code uses 220,500 and 176,400
samples at 44.1 kHz); k-fold cross-validation over the official folds, the mean reported.

A third clip set is one more `ClipSetSpec` in `SPECS` - its layout, the reader of one
metadata row (`row`) and its protocol. Everything else follows from it: the manifest, folds,
shards and fine-tuning assets (`assets/`), the source folder
(`DatasetSources.clipset`: AUDIOCLIP_<NAME>_DIR / _URL), the evaluation tables
(`evaluation.tables.CLIPSETS`), the variables forwarded to Kubernetes pods and the DuckDB views.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import soundfile as sf

from ..files import sha256_file


@dataclass(frozen=True)
class ClipSetSpec:
    """A dataset's layout and its evaluation protocol."""

    name: str  # lower case: asset names (`<name>_manifest`), folders, env variables
    title: str  # as the dataset calls itself ("UrbanSound8K"), in descriptions
    metadata: str  # path of the metadata CSV inside the root
    num_folds: int
    row: Callable[[dict], tuple[str, int, int, str]]  # -> (relative audio path, fold, class id, label)
    expected_clips: int
    expected_fold_counts: dict[int, int]
    clip_seconds: float  # every clip padded / cropped to this length
    channels: int  # channels fed to the model
    num_classes: int  # in the published set
    expected_per_class: int | None = None
    input_scale: str = "int16"  # how the published loader scales a clip (audioclip_core.audio)
    audio_layout: str = "audio/"  # where `row` finds the clips, as descriptions show it ("audio/foldN/")
    # the recording a clip was cut from, by its relative path (clips of one recording stay together)
    recording: Callable[[str], str] = lambda path: Path(path).stem

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(range(1, self.num_folds + 1))

    @property
    def dir_env(self) -> str:
        """The environment variable naming the set's folder (`assets.resources.DatasetSources`)."""
        return f"AUDIOCLIP_{self.name.upper()}_DIR"

    @property
    def url_env(self) -> str:
        """The environment variable naming an archive of the set to fetch when no folder is given."""
        return f"AUDIOCLIP_{self.name.upper()}_URL"


ESC50 = ClipSetSpec(
    name="esc50",
    title="ESC-50",
    metadata="meta/esc50.csv",
    num_folds=5,
    row=lambda r: (f"audio/{r['filename']}", int(r["fold"]), int(r["target"]), r["category"]),
    expected_clips=2000,
    expected_fold_counts={k: 400 for k in range(1, 6)},
    expected_per_class=40,
    clip_seconds=5.0,
    channels=1,
    num_classes=50,
    recording=lambda path: Path(path).stem.split("-")[1] if Path(path).stem.count("-") >= 3 else Path(path).stem,
)
US8K = ClipSetSpec(
    name="us8k",
    title="UrbanSound8K",
    metadata="metadata/UrbanSound8K.csv",
    num_folds=10,
    row=lambda r: (f"audio/fold{int(r['fold'])}/{r['slice_file_name']}", int(r["fold"]), int(r["classID"]), r["class"]),
    expected_clips=8732,
    expected_fold_counts={1: 873, 2: 888, 3: 925, 4: 990, 5: 936, 6: 823, 7: 838, 8: 806, 9: 816, 10: 837},
    clip_seconds=4.0,
    channels=2,
    num_classes=10,
    input_scale="minmax",
    audio_layout="audio/foldN/",
    recording=lambda path: Path(path).stem.split("-")[0],
)
SPECS = {"esc50": ESC50, "us8k": US8K}


def protocol(name: str) -> ClipSetSpec:
    """The protocol of a clip set of `SPECS` (`esc50`, `us8k`): clip length, channels, classes, folds."""
    if name not in SPECS:
        raise ValueError(f"unknown clip set {name!r}; one of {sorted(SPECS)}")
    return SPECS[name]


def validation_split(table, dataset: str, share: float, seed: int):
    """(train, validation) rows of a fine-tuning fold's training table: about `share` of each
    class's clips held out (at least one where the class has two), whole recordings at a time
    (ESC-50's source file, UrbanSound8K's fsID: takes of one recording never straddle the
    split), drawn with `seed`. A class keeps at least one clip for training; `share` 0 holds
    out nothing. Only `ok` rows are split."""
    import numpy as np

    if not 0 <= share < 1:
        raise ValueError(f"validation share must be in [0, 1), not {share}")
    rows = table[table["status"] == "ok"] if "status" in table.columns else table
    held: list = []
    if share > 0:
        spec = protocol(dataset)
        rng = np.random.default_rng(seed)
        for name in sorted(rows["class_name"].unique()):
            clips = rows[rows["class_name"] == name]
            by_rec: dict[str, list] = {}
            for idx, path in zip(clips.index, clips["path"]):
                by_rec.setdefault(spec.recording(str(path)), []).append(idx)
            want = int(round(share * len(clips)))
            recs = sorted(by_rec)
            taken: list = []
            for i in rng.permutation(len(recs)):
                group = by_rec[recs[int(i)]]
                if len(clips) - len(taken) - len(group) < 1:
                    continue  # a class keeps a clip to train on
                closer = abs(len(taken) + len(group) - want) < abs(len(taken) - want)
                if closer or (not taken and want >= 1):  # whole recordings, as near `want` as they go
                    taken += group
            held += taken
    val = rows.loc[sorted(held)]
    return rows.drop(index=val.index), val


def class_names(manifest) -> list[str]:
    """The class names of a manifest (DataFrame with class_id, class_name), in class-id order."""
    return [n for _, n in sorted(set(zip(manifest["class_id"], manifest["class_name"])))]


def class_name(label: str) -> str:
    return label.replace("_", " ").strip()


def read_metadata(root: Path, spec: ClipSetSpec) -> list[dict]:
    """Rows of the official metadata as dicts: path, fold, class_id, class_name, line."""
    path = Path(root) / spec.metadata
    if not path.is_file():
        raise FileNotFoundError(f"{spec.name}: metadata file {path} not found (expected the official layout)")
    rows = []
    with open(path, "r", encoding="utf-8", newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            try:
                rel, fold, cid, label = spec.row(r)
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{line}: malformed metadata row ({exc}): {r}") from exc
            if not 1 <= fold <= spec.num_folds:
                raise ValueError(f"{path}:{line}: fold {fold} outside 1..{spec.num_folds}")
            rows.append({"path": rel, "fold": fold, "class_id": cid, "class_name": class_name(label), "line": line})
    return rows


def validate(root: Path, spec: ClipSetSpec, rows: list[dict], *, hash_files: bool = True) -> tuple[list[dict], dict]:
    """Check every metadata row against its file; returns (manifest rows, report).

    Manifest rows gain status (`ok`, `missing`, `unreadable`), sample_rate, channels,
    duration, sha256. The report lists missing, extra (files no row names) and unreadable files.
    """
    root = Path(root)
    out, missing, unreadable = [], [], []
    named = set()
    for r in rows:
        path = root / r["path"]
        named.add(r["path"])
        rec = {
            **r,
            "status": "ok",
            "reason": "",
            "sample_rate": None,
            "channels": None,
            "duration": None,
            "sha256": None,
        }
        if not path.is_file():
            rec.update(status="missing", reason="file not found")
            missing.append(r["path"])
        else:
            try:
                info = sf.info(str(path))
                rec.update(
                    sample_rate=int(info.samplerate),
                    channels=int(info.channels),
                    duration=float(info.frames) / info.samplerate,
                )
                if info.frames == 0:
                    raise RuntimeError("no samples")
                if hash_files:
                    rec["sha256"] = sha256_file(path)
            except (RuntimeError, sf.LibsndfileError) as exc:
                rec.update(status="unreadable", reason=str(exc))
                unreadable.append(r["path"])
        out.append(rec)
    audio_dir = root / "audio"
    present = {str(p.relative_to(root)) for p in audio_dir.rglob("*") if p.is_file()} if audio_dir.is_dir() else set()
    extra = sorted(present - named)
    return out, {"missing": missing, "unreadable": unreadable, "extra": extra}


def fold_split(rows: list[dict], fold: int) -> tuple[list[dict], list[dict]]:
    """Official protocol: test = the given fold, train = all others."""
    return [r for r in rows if r["fold"] != fold], [r for r in rows if r["fold"] == fold]


def count_warnings(spec: ClipSetSpec, rows: list[dict]) -> list[str]:
    """Differences from the published counts (a subset is legitimate, so these are warnings)."""
    warnings = []
    if len(rows) != spec.expected_clips:
        warnings.append(f"{spec.name}: {len(rows)} clips, published {spec.expected_clips}")
    for fold, n in spec.expected_fold_counts.items():
        got = sum(1 for r in rows if r["fold"] == fold)
        if got != n:
            warnings.append(f"{spec.name}: fold {fold} has {got} clips, published {n}")
    if spec.expected_per_class:
        counts: dict[int, int] = {}
        for r in rows:
            counts[r["class_id"]] = counts.get(r["class_id"], 0) + 1
        off = {c: n for c, n in counts.items() if n != spec.expected_per_class}
        if off:
            warnings.append(f"{spec.name}: {len(off)} classes without {spec.expected_per_class} clips")
    return warnings
