"""The built-in demo dataset, generated from nothing in a few seconds.

Ten real AudioSet classes whose sound can be synthesised - Sine wave, White noise, Pink
noise, Chirp tone, Clicking, Siren, Buzz, Drum, Beep, bleep and Whistle - become:

* ``audioset/``: official-format ``balanced_train_segments.csv``, ``eval_segments.csv`` and
  ``demo_segments.csv`` (three ``#`` header lines, quoted label ids), the label index and
  ontology, and ``videos/<ytid>.mp4``: short videos whose audio is the class's sound and
  whose frames carry a class colour and pattern (so images correlate with the class). Some
  listed ids have no video, as on YouTube; the local media server serves the folder and
  yt-dlp downloads from it through the production path.
* ``esc50/`` and ``us8k/``: small datasets in the official ESC-50 and UrbanSound8K layouts
  (5 and 10 folds) of the same sounds, named as AudioSet names them ("beep, bleep" with its
  comma): the demo's text tower knows only the texts it was trained on, so zero-shot transfer
  is to new clips of known words, not to words it never saw. As field recordings, they carry a
  background of rumble and mains hum that the AudioSet clips lack (`_field_recording`): a
  domain shift that zero-shot meets and fine-tuning adapts to.

Frames carry a real but partial class signal, as video does: every frame shows each class
the clip holds as a vertical colour band of varying width (occluded), beside the band of
another class drawn afresh per frame from all classes alike (`DISTRACTORS`), on a scene every
class shares (a backdrop and muted objects). Over a clip's frames the class is plain, so an
image tower can learn it (the demo's stand-in for CLIP pre-training, stage ``clip_standin``,
has image-caption pairs to align); one frame leaves two candidates, so the image rows of the
tables sit between chance and their ceiling and audio plus image can beat either. Everything
is seeded (`generate_all(root, seed=n)`: `make demo SEED=n`): the same seed writes the same
bytes.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from ..audio import ffmpeg_exe

SR = 44100


@dataclass(frozen=True)
class DemoClass:
    mid: str
    name: str  # AudioSet display name
    short: str  # ESC-50 / US8K style category (underscores)
    color: tuple[int, int, int]  # its band in the frames

    @property
    def category(self) -> str:
        """Its ESC-50 / UrbanSound8K category: the AudioSet name, lower case, spaces as underscores
        ("beep,_bleep"), so its class name there ("beep, bleep") is the text the towers were
        trained on. The demo's text tower knows no other text: a name it never saw (e.g. "beep
        bleep" without the comma) embeds anywhere, and in some runs drew most clips to it
        (docs/profiles.md)."""
        return self.name.lower().replace(" ", "_")


CLASSES = (
    DemoClass("/m/01v_m0", "Sine wave", "sine_wave", (230, 60, 60)),
    DemoClass("/m/0chx_", "White noise", "white_noise", (235, 235, 235)),
    DemoClass("/m/0cj0r", "Pink noise", "pink_noise", (240, 120, 200)),
    DemoClass("/m/0hdsk", "Chirp tone", "chirp_tone", (60, 200, 80)),
    DemoClass("/m/07qc9xj", "Clicking", "clicking", (60, 90, 230)),
    DemoClass("/m/03kmc9", "Siren", "siren", (240, 200, 40)),
    DemoClass("/m/07pjwq1", "Buzz", "buzz", (140, 70, 20)),
    DemoClass("/m/026t6", "Drum", "drum", (20, 20, 20)),
    DemoClass("/m/02fs_r", "Beep, bleep", "beep_bleep", (40, 220, 230)),
    DemoClass("/m/0l156k", "Whistle", "whistle", (150, 60, 200)),
)


def write_labels_file(path: Path) -> Path:
    """The demo's class names (AudioSet display names, commas kept: "Beep, bleep"), one per
    line, for `audioclip classify --labels-file`; written whole (atomically) and only when its
    text differs."""
    from ..files import atomic_write

    path = Path(path)
    text = "".join(f"{c.name}\n" for c in CLASSES)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
    return path


def synthesize(cls: DemoClass, seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A mono waveform in [-1, 1] with the character of the class, randomised per clip."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    amp = rng.uniform(0.2, 0.95)  # loudness varies per clip: a model meets quiet and full-scale clips
    if cls.short == "sine_wave":
        y = np.sin(2 * np.pi * rng.uniform(300, 1200) * t)
    elif cls.short == "white_noise":
        y = rng.standard_normal(n) / 3
    elif cls.short == "pink_noise":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
        y = np.fft.irfft(spec / np.sqrt(f), n)
        y = y / (np.abs(y).max() + 1e-9)
    elif cls.short == "chirp_tone":
        f0, f1 = rng.uniform(200, 600), rng.uniform(3000, 8000)
        period = rng.uniform(0.5, 1.0)
        phase_t = t % period
        y = np.sin(2 * np.pi * (f0 * phase_t + (f1 - f0) * phase_t**2 / (2 * period)))
    elif cls.short == "clicking":
        y = np.zeros(n)
        step = int(sr / rng.uniform(4, 12))
        for start in range(int(rng.integers(0, step)), n - 200, step):
            y[start : start + 200] = np.exp(-np.arange(200) / 25.0) * rng.choice([-1, 1])
    elif cls.short == "siren":
        rate = rng.uniform(0.3, 1.2)
        freq = 900 + 400 * np.sin(2 * np.pi * rate * t)
        y = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    elif cls.short == "buzz":  # a sawtooth: a dense comb of harmonics
        f0 = rng.uniform(90, 160)
        y = 2 * ((f0 * t) % 1.0) - 1
    elif cls.short == "drum":  # low decaying thumps with a falling pitch
        y = np.zeros(n)
        step = int(sr / rng.uniform(1.5, 3.5))
        hit = np.arange(int(0.25 * sr)) / sr
        f = rng.uniform(60, 110)
        thump = np.sin(2 * np.pi * f * hit * (1 + 1.5 * np.exp(-hit / 0.03))) * np.exp(-hit / 0.07)
        for start in range(int(rng.integers(0, step)), n - len(hit), step):
            y[start : start + len(hit)] += thump
    elif cls.short == "beep_bleep":  # short high tones with silence between
        f = rng.uniform(1500, 2500)
        on, period = rng.uniform(0.08, 0.15), rng.uniform(0.3, 0.5)
        y = np.sin(2 * np.pi * f * t) * ((t % period) < on)
    elif cls.short == "whistle":  # a high tone with vibrato
        f = rng.uniform(2500, 4000) + 150 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
        y = np.sin(2 * np.pi * np.cumsum(f) / sr)
    else:  # pragma: no cover - the class list is fixed
        raise ValueError(cls.short)
    return (amp * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


# how much of the class signal one frame carries (the image rows of the tables read it): every
# frame shows the colour band of each class the clip holds, but also a band of another class
# (`DISTRACTORS`: how many, drawn per frame), drawn afresh per frame from all classes alike - so
# over a clip's frames the class is plain, while a single frame leaves two candidates. Audio
# confuses other pairs than the frames do, so the two together can beat either (mAP both).
# With one or two distractors, seed 0 on an AMD EPYC gave audio-by-image R@1 7.5 % against a bar
# of 5 % and mAP both below mAP audio (docs/profiles.md).
DISTRACTORS = (1,)
_SCENE = ((120, 120, 130), (150, 140, 115), (95, 120, 100), (135, 105, 110), (105, 110, 145))


def _frames(classes: list[DemoClass], n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Frames `[n, H, W, 3]` uint8: a backdrop with two muted objects every class's scenes share;
    vertical bands, in random order per frame, of each class of the clip and of `DISTRACTORS`
    other classes, each a random width of its slot (occlusion); a moving bar, a per-clip
    brightness and pixel noise."""
    h, w = size
    img = np.empty((n, h, w, 3), dtype=np.float32)
    img[:] = rng.uniform(90, 150)  # the backdrop, per clip
    objects = []
    for _ in range(2):
        oh, ow = int(rng.integers(h // 5, h // 2)), int(rng.integers(w // 6, w // 3))
        y, x = int(rng.integers(0, h - oh)), int(rng.integers(0, w - ow))
        objects.append((y, x, oh, ow, int(rng.integers(-3, 4)), _SCENE[int(rng.integers(len(_SCENE)))]))
    others = [c for c in CLASSES if c not in classes]
    for k in range(n):
        for y, x, oh, ow, dx, colour in objects:
            x0 = int(np.clip(x + dx * k, 0, w - ow))
            img[k, y : y + oh, x0 : x0 + ow] = colour
        extra = rng.choice(len(others), size=int(rng.choice(DISTRACTORS)), replace=False)
        shown = list(classes) + [others[int(i)] for i in extra]
        band = w // len(shown)
        for i, j in enumerate(rng.permutation(len(shown))):
            lo, hi = i * band, (i + 1) * band if i < len(shown) - 1 else w
            width = max(2, int((hi - lo) * rng.uniform(0.5, 1.0)))
            start = lo + int(rng.integers(0, hi - lo - width + 1))
            img[k, :, start : start + width] = shown[int(j)].color
        x = int((k / max(n - 1, 1)) * (w - 10))
        img[k, :, x : x + 10] *= 0.5
    img *= rng.uniform(0.8, 1.1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(
    path: Path,
    classes: list[DemoClass],
    seconds: float,
    rng: np.random.Generator,
    fps: int = 10,
    size: tuple[int, int] = (120, 160),
    encoder=None,
) -> None:
    """A video of `classes`: their sounds mixed, their colours in the frames. The content is
    drawn from `rng` here; the encoding (ffmpeg) runs in `encoder` (an executor) if given."""
    audio = sum(synthesize(c, seconds, rng) for c in classes) / len(classes)
    frames = _frames(classes, int(seconds * fps), size, rng)
    if encoder is None:
        _encode(path, audio, frames, fps, size)
    else:
        return encoder.submit(_encode, path, audio, frames, fps, size)


def _encode(path: Path, audio: np.ndarray, frames: np.ndarray, fps: int, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".tmp.wav")
    sf.write(wav, audio, SR)
    cmd = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-threads",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{size[1]}x{size[0]}",
        "-r",
        str(fps),
        "-i",
        "-",
        "-i",
        str(wav),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        "-shortest",
        "-movflags",
        "+faststart",
        str(path),
    ]
    try:
        subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    finally:
        wav.unlink(missing_ok=True)


def _ytid(rng: np.random.Generator) -> str:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    return "".join(rng.choice(alphabet, 11))


GENERATOR_HEADER = "# Segments csv created by the audioclip demo generator"


def is_demo_folder(folder: Path) -> bool:
    """Whether an AudioSet folder holds this generator's lists (read from their header line)."""
    for name in ("balanced_train_segments.csv", "eval_segments.csv", "demo_segments.csv"):
        path = Path(folder) / name
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                return f.readline().strip() == GENERATOR_HEADER
    return False


def _segment_csv(path: Path, rows: list[tuple[str, float, float, list[str]]]) -> None:
    labels = {m for *_, ms in rows for m in ms}
    lines = [
        GENERATOR_HEADER,
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(labels)}, "
        f"num_positive_labels={sum(len(ms) for *_, ms in rows)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{y}, {s:.3f}, {e:.3f}, "{",".join(ms)}"' for y, s, e, ms in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def generate_audioset(
    root: Path,
    *,
    train_per_class: int = 12,
    eval_per_class: int = 4,
    missing_per_split: int = 2,
    seed: int = 0,
    video_seconds: float = 6.0,
    segment: tuple[float, float] = (1.0, 5.0),
) -> dict:
    """Write the demo AudioSet folder; returns counts."""
    from importlib.resources import files

    rng = np.random.default_rng(seed)
    root = Path(root)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    res = files("audioclip_core") / "resources" / "audioset"
    for name in ("class_labels_indices.csv", "ontology.json"):
        (root / name).write_bytes((res / name).read_bytes())
    splits = {"balanced_train": train_per_class, "eval": eval_per_class}
    counts = {}
    all_rows = {}
    # content is drawn in order from one generator (the same seed, the same bytes); ffmpeg
    # encodes on every core meanwhile
    encoder = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    pending = []
    for split, per_class in splits.items():
        rows = []
        for cls_i, cls in enumerate(CLASSES):
            for j in range(per_class):
                members = [cls]
                if j == per_class - 1 and split == "balanced_train":  # a multi-label clip per class
                    members.append(CLASSES[(cls_i + 1) % len(CLASSES)])
                ytid = _ytid(rng)
                pending.append(write_video(videos / f"{ytid}.mp4", members, video_seconds, rng, encoder=encoder))
                rows.append((ytid, segment[0], segment[1], [m.mid for m in members]))
        for _ in range(missing_per_split):  # listed, but "removed from YouTube"
            rows.append((_ytid(rng), segment[0], segment[1], [CLASSES[int(rng.integers(len(CLASSES)))].mid]))
        order = rng.permutation(len(rows))
        rows = [rows[i] for i in order]
        _segment_csv(root / f"{split}_segments.csv", rows)
        all_rows[split] = rows
        counts[split] = len(rows)
    with encoder:
        for job in pending:
            job.result()
    demo_rows = all_rows["eval"][:6]
    _segment_csv(root / "demo_segments.csv", demo_rows)
    counts["demo"] = len(demo_rows)
    return counts


# ESC-50 and UrbanSound8K are field recordings, AudioSet's demo clips are not: the demo's two
# clip sets carry a background - a low rumble and mains hum at 50-60 Hz with its harmonics -
# that the AudioSet clips the towers trained on never have. Zero-shot meets a shifted domain
# (the rumble is near pink noise, the hum near buzz) and fine-tuning on the set adapts to it,
# as in the paper, where zero-shot ESC-50 is 69 % and fine-tuned 97 %. Without it the demo's
# zero-shot sat at the ceiling and fine-tuning had nothing to add (docs/profiles.md).
RUMBLE, HUM = 0.3, 0.2


def _field_recording(y: np.ndarray, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """`y` with a background of rumble (brown noise, drawn at 1 kHz and interpolated) and hum,
    each at a random level up to `RUMBLE` / `HUM` of full scale, scaled back to `y`'s peak."""
    n = len(y)
    coarse = max(8, int(n * 1000 / sr))
    rumble = np.cumsum(rng.standard_normal(coarse))
    rumble -= np.convolve(rumble, np.ones(51) / 51, mode="same")  # no drift: above ~20 Hz
    rumble = np.interp(np.linspace(0, coarse - 1, n), np.arange(coarse), rumble)
    rumble /= np.abs(rumble).max() + 1e-9
    phase = 2 * np.pi * rng.uniform(50, 60) * np.arange(n) / sr + rng.uniform(0, 2 * np.pi)
    hum = np.sin(phase) + np.sin(2 * phase) / 2 + np.sin(3 * phase) / 3
    hum /= np.abs(hum).max() + 1e-9
    out = y + RUMBLE * rng.uniform(0.5, 1.0) * rumble + HUM * rng.uniform(0.5, 1.0) * hum
    return (out * (np.abs(y).max() / (np.abs(out).max() + 1e-9))).astype(np.float32)


def _csv(field: str) -> str:
    """A CSV field, quoted when it holds a comma or a quote."""
    return '"' + field.replace('"', '""') + '"' if ("," in field or '"' in field) else field


def generate_esc50(root: Path, *, per_fold_class: int = 4, seed: int = 1) -> int:
    """ESC-50 layout: meta/esc50.csv + audio/{fold}-{src}-{take}-{target}.wav, 5 s mono 44.1 kHz."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    src = 100000
    for fold in range(1, 6):
        for target, cls in enumerate(CLASSES):
            for take in "ABCDEFGH"[:per_fold_class]:
                src += 1
                name = f"{fold}-{src}-{take}-{target}.wav"
                sf.write(root / "audio" / name, _field_recording(synthesize(cls, 5.0, rng), rng), SR, subtype="PCM_16")
                lines.append(f"{name},{fold},{target},{_csv(cls.category)},False,{src},{take}")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def generate_us8k(root: Path, *, per_fold_class: int = 2, seed: int = 2) -> int:
    """UrbanSound8K layout: metadata/UrbanSound8K.csv + audio/fold{N}/{fsID}-{classID}-0-{i}.wav
    (<= 4 s, mixed sample rates and channel counts as in the real set)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    fsid = 200000
    rates = (22050, 44100, 48000)
    for fold in range(1, 11):
        folder = root / "audio" / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        for class_id, cls in enumerate(CLASSES):
            for i in range(per_fold_class):
                fsid += 1
                seconds = float(rng.uniform(2.5, 4.0))
                sr = int(rates[int(rng.integers(len(rates)))])
                y = _field_recording(synthesize(cls, seconds, rng, sr), rng, sr)
                if rng.random() < 0.5:
                    y = np.stack([y, 0.8 * y], 1)
                name = f"{fsid}-{class_id}-0-{i}.wav"
                sf.write(folder / name, y, sr, subtype="PCM_16")
                lines.append(f"{name},{fsid},0.0,{seconds:.6f},1,{fold},{class_id},{_csv(cls.category)}")
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


PARTITIONS = ("balanced_train", "eval", "demo")  # the AudioSet lists the demo writes


SEED_ENV = "AUDIOCLIP_SEED"


def demo_seed(seed: Optional[int] = None) -> int:
    """The demo's seed: `seed` if given, else $AUDIOCLIP_SEED (`make demo SEED=n` sets it), else 0.
    It seeds the generated data and every training stage of the demo."""
    if seed is not None:
        return int(seed)
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={value!r}: the demo's seed must be an integer") from None


def generated_seed(root: Path) -> Optional[int]:
    """The seed the demo dataset under `root` was generated with (None: not generated)."""
    marker = Path(root) / ".complete"
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    return int(text.split("seed=", 1)[1]) if "seed=" in text else 0


class SeedMismatch(RuntimeError):
    """The data root holds the demo dataset of another seed."""


def generate_all(root: Path, *, seed: Optional[int] = None, force: bool = False) -> dict:
    """Write the whole demo dataset under `root`, once, from `seed` (`demo_seed`): concurrent
    callers (runs of several partitions starting together) wait on a lock and find it
    complete; it is built in a temporary sibling folder and renamed into place, so a killed
    generation leaves nothing that looks complete. A root generated from another seed is an
    error (its downloads, manifests and checkpoints belong to that seed): use another data
    root. `force` rebuilds it."""
    from ..files import file_lock, publish_folder

    seed = demo_seed(seed)
    root = Path(root)
    marker = root / ".complete"
    with file_lock(root.parent / f".{root.name}.lock"):
        if marker.exists() and not force:
            have = generated_seed(root)
            if have != seed:
                raise SeedMismatch(
                    f"{root} holds the demo dataset of seed {have}, not {seed}: give this seed its "
                    f"own data root (AUDIOCLIP_DATA_ROOT) and Dagster home (DAGSTER_HOME)"
                )
            return {"skipped": True, "seed": seed}
        with publish_folder(root) as tmp:
            counts = generate_audioset(tmp / "audioset", seed=3 * seed)
            counts["esc50"] = generate_esc50(tmp / "esc50", seed=3 * seed + 1)
            counts["us8k"] = generate_us8k(tmp / "us8k", seed=3 * seed + 2)
            (tmp / ".complete").write_text(f"ok seed={seed}\n")
    counts["seed"] = seed
    return counts
