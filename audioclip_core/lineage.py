"""Provenance, written and read: the lineage record beside each checkpoint, and the audit
trail over those records - from a checkpoint to the data and code that made it, and from a
clip to every checkpoint that saw it.

A record (`<checkpoint>.lineage.json`) names the checkpoint's digest, its parent, the
manifests it trained on (path, digest, rows), its config and seed, the code version, and
the Dagster and MLflow runs. Clip queries run DuckDB over the manifests the records name
(parquet), so a question about one clip among millions takes about a second.

A checkpoint is checked against its record where it is used (`verify_checkpoint`): the CLI
warns when its bytes differ, `audioclip lineage` says VERIFIED or MISMATCH for every file of
the chain, and a training stage refuses a parent that differs (`stages.require_unchanged_parent`).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import LineageError, is_symlink_loop
from .files import read_version_parquet, sha256_file, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def code_version(repo: Path = REPO_ROOT) -> dict:
    """Git commit and whether the working tree had uncommitted changes."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    from . import __version__

    return {
        "git_commit": commit or "unknown",
        "git_dirty": bool(status) if status is not None else None,
        "package_version": __version__,
    }


def lineage_record(
    *,
    name: str,
    stage: str,
    checkpoint: Path,
    config: dict,
    manifests: dict[str, dict],
    parent: Optional[dict] = None,
    dagster: Optional[dict] = None,
    mlflow_run_id: Optional[str] = None,
    extra: Optional[dict] = None,
) -> dict:
    """`name`: the asset that wrote `checkpoint`; `stage`: the paper's step it ran;
    `manifests`: name -> {"path", "sha256", "rows"}; `parent`: {"path", "sha256", "name"}."""
    return {
        "name": name,
        "stage": stage,
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "parent": parent,
        "manifests": manifests,
        "config": config,
        "seed": config.get("seed"),
        "code": code_version(),
        "dagster": dagster or {},
        "mlflow_run_id": mlflow_run_id,
        **(extra or {}),
    }


def record_name(rec: dict) -> str:
    """The asset a record (or parent entry) names; records before `name` existed kept it in `stage`."""
    return rec.get("name") or rec.get("stage") or "external"


def record_path(checkpoint: Path) -> Path:
    """Where the lineage record of `checkpoint` lives."""
    return Path(checkpoint).with_suffix(".lineage.json")


def write_lineage(record: dict, checkpoint: Path) -> Path:
    path = record_path(checkpoint)
    write_json(record, path)
    return path


def read_record(checkpoint: Path) -> dict:
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        raise LineageError(f"{checkpoint}: is a directory; give a checkpoint file")
    if is_symlink_loop(checkpoint):
        raise LineageError(f"{checkpoint}: is a symbolic link loop; give a checkpoint file")
    path = record_path(checkpoint)
    if not path.is_file():
        if not checkpoint.exists():
            raise LineageError(f"{checkpoint}: no such checkpoint, and no lineage record ({path.name}) beside it")
        raise LineageError(
            f"{checkpoint}: no lineage record ({path.name}); only checkpoints written by this "
            "project's training stages carry one"
        )
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineageError(f"{path}: the lineage record cannot be read ({exc}); it is damaged") from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("checkpoint"), dict) or "sha256" not in rec["checkpoint"]:
        raise LineageError(f"{path}: not a lineage record (no checkpoint digest); it is damaged")
    return rec


VERIFIED, MISMATCH, UNRECORDED = "VERIFIED", "MISMATCH", "UNRECORDED"


@dataclass(frozen=True)
class Verification:
    """A checkpoint file against the sha256 its lineage records: VERIFIED (equal), MISMATCH
    (the file changed after it was recorded: damaged or replaced) or UNRECORDED (no record
    beside it, e.g. a released checkpoint; nothing is hashed then)."""

    path: Path
    state: str
    recorded: Optional[str] = None
    actual: Optional[str] = None

    def __str__(self) -> str:
        if self.state == MISMATCH:
            return (
                f"{self.path}: MISMATCH - its sha256 is {self.actual}, its lineage record says "
                f"{self.recorded}: the file changed after it was recorded (damaged or replaced)"
            )
        if self.state == VERIFIED:
            return f"{self.path}: VERIFIED - its sha256 {self.actual} is the one its lineage record says"
        return f"{self.path}: UNRECORDED - no lineage record to compare it with"


def compare_checkpoint(path: Path, recorded: str, sha256: Optional[str] = None) -> Verification:
    """`path` against the digest `recorded`; `sha256`, the file's digest when the caller has
    taken it already (it is not hashed again), else the file is hashed once."""
    actual = sha256 or sha256_file(Path(path))
    return Verification(Path(path), VERIFIED if actual == recorded else MISMATCH, recorded, actual)


def verify_checkpoint(path: Path, *, sha256: Optional[str] = None) -> Verification:
    """A checkpoint of ours against its lineage record (`<checkpoint>.lineage.json`); a damaged
    record raises `LineageError`."""
    path = Path(path)
    if not record_path(path).is_file():
        return Verification(path, UNRECORDED)
    return compare_checkpoint(path, read_record(path)["checkpoint"]["sha256"], sha256)


def verify_chain(checkpoint: Path, records: list[dict]) -> list[Optional[Verification]]:
    """For each entry of `chain(checkpoint)`, its file (the one the chain was followed through)
    against the digest the entry shows - a parent without a record of its own against what its
    child recorded of it; None where the file is gone (or there is none: random towers)."""
    out: list[Optional[Verification]] = []
    for i, rec in enumerate(records):
        file = rec.get("file") or (str(checkpoint) if i == 0 else None)
        recorded = rec["checkpoint"].get("sha256")
        if not file or not Path(file).is_file():
            out.append(None)
        elif recorded is None:
            out.append(Verification(Path(file), UNRECORDED))
        else:
            out.append(compare_checkpoint(Path(file), recorded))
    return out


TOWERS_ROLE = "towers"  # the image and text towers a stage distilled into (`clip_towers`)


def parents_of(rec: dict) -> list[tuple[str, dict]]:
    """(role, {"name", "path", "sha256"}) of every checkpoint `rec` was made from: "parent" (the
    weights it started from) and "towers" (the image and text towers stage 2 distilled the audio
    head into: the `clip_towers` entry of its record, else the CLIP file `clip_weights` names)."""
    out = []
    if isinstance(rec.get("parent"), dict):
        out.append(("parent", rec["parent"]))
    towers = rec.get("clip_towers")
    if isinstance(towers, dict):
        out.append(
            (
                TOWERS_ROLE,
                {
                    "name": "clip_towers",
                    "path": towers.get("path"),
                    "sha256": towers.get("sha256"),
                    "kind": towers.get("kind"),
                },
            )
        )
    elif isinstance(rec.get("clip_weights"), str) and rec["clip_weights"]:
        out.append((TOWERS_ROLE, {"name": "clip_weights", "path": rec["clip_weights"], "sha256": None}))
    return out


def chain(checkpoint: Path) -> list[dict]:
    """The record of `checkpoint`, then, depth first, those of every checkpoint it was made
    from (`parents_of`: its parent and the towers it distilled into), up to the first stage.
    Each entry carries `depth` (0 for `checkpoint`), `role` (None, "parent" or "towers") and
    `file` (the path it was followed through); a parent without a record of its own is an
    entry with `external: True` holding what its child recorded of it."""
    out: list[dict] = []
    seen: set[str] = set()

    def visit(path: Path, depth: int, role: Optional[str]) -> None:
        rec = read_record(path)
        key = rec["checkpoint"]["sha256"]
        if key in seen:  # already shown (or a loop)
            return
        seen.add(key)
        out.append({**rec, "depth": depth, "role": role, "file": str(path)})
        for parent_role, parent in parents_of(rec):
            p = parent.get("path")
            if p and record_path(Path(p)).is_file():
                visit(Path(p), depth + 1, parent_role)
                continue
            out.append(
                {
                    "name": record_name(parent),
                    "checkpoint": {"path": p, "sha256": parent.get("sha256")},
                    "external": True,
                    **({"kind": parent["kind"]} if parent.get("kind") else {}),
                    "depth": depth + 1,
                    "role": parent_role,
                    "file": p,
                }
            )

    visit(Path(checkpoint), 0, None)
    return out


def manifest_file(entry: dict) -> Optional[Path]:
    """The exact manifest a record names: its kept version, else the manifest path while its
    digest still matches; None when neither exists any more."""
    version = entry.get("version")
    if version and Path(version).is_file():
        return Path(version)
    path = Path(entry["path"])
    if path.is_file() and sha256_file(path) == entry["sha256"]:
        return path
    return None


HELD_OUT = "held out for validation"
TRAINED_ON_IT = "trained on it"  # a checkpoint whose own training data held the clip (`checkpoints_for_clip`)


def clips_of(checkpoint: Path) -> list[dict]:
    """The clips (AudioSet segment ids, ESC-50 / US8K file paths) with status ok in each
    manifest the checkpoint was trained on, read from the version its record names - the same
    list after the manifest has moved on. Rows: manifest, sha256, clip, use ("trained on", or
    `HELD_OUT`: a fine-tuning's validation clips, which chose its epoch but were not trained on)."""

    rec = read_record(checkpoint)
    held = set((rec.get("validation") or {}).get("clips") or [])
    out = []
    for name, m in (rec.get("manifests") or {}).items():
        src = manifest_file(m)
        if src is None:
            raise LineageError(
                f"{name}: the manifest version {m['sha256'][:16]} is no longer on disk "
                f"({m.get('version') or m['path']}); the record predates kept versions"
            )
        df = read_version_parquet(src)
        if "status" in df:
            df = df[df["status"] == "ok"]
        ids = df["segment_id"] if "segment_id" in df else df["path"]
        out += [
            {
                "manifest": name,
                "sha256": m["sha256"],
                "clip": str(c),
                "use": HELD_OUT if str(c) in held else "trained on",
            }
            for c in ids
        ]
    return out


def _kept_state(entry: dict) -> str:
    """Whether the exact version a stage read is still kept, and intact (its bytes hash to the
    digest the record names)."""
    version = Path(entry["version"]) if entry.get("version") else None
    if version is None or not version.is_file():
        return ""
    if sha256_file(version) != entry["sha256"]:
        return "  (version kept, but CHANGED IN PLACE: its bytes no longer hash to its name)"
    return "  (version kept, intact)"


def _manifest_status(entry: dict) -> str:
    path = Path(entry["path"])
    if not path.is_file():
        return "missing now"
    return "unchanged" if sha256_file(path) == entry["sha256"] else "CHANGED since training"


def _file_state(check: Optional[Verification]) -> str:
    if check is None:
        return "(file not found)"
    if check.state == MISMATCH:
        return f"MISMATCH: the file's sha256 is now {check.actual}"
    return check.state


def format_chain(records: list[dict], checks: Optional[list[Optional[Verification]]] = None) -> str:
    """The chain as text, a parent indented under its child; with `checks` (`verify_chain`),
    each file's state beside its digest."""
    lines = []
    for i, rec in enumerate(records):
        depth = rec.get("depth", i)
        pad = "  " * depth
        ck = rec["checkpoint"]
        role = " (towers distilled into)" if rec.get("role") == TOWERS_ROLE else ""
        arrow = "" if depth == 0 else "<- "
        if rec.get("external"):
            if not ck.get("path"):
                lines.append(f"{pad}{arrow}{record_name(rec)}{role}: random initialisation (no file)")
                continue
            state = f"  {_file_state(checks[i])}" if checks is not None else ""
            digest = f"sha256 {ck['sha256'][:16]}" if ck.get("sha256") else "no sha256 recorded"
            lines.append(f"{pad}{arrow}{record_name(rec)}{role}: {ck['path']}  {digest}  (no lineage record)" + state)
            continue
        state = f"  {_file_state(checks[i])}" if checks is not None else ""
        lines.append(f"{pad}{arrow}{record_name(rec)}{role}: {ck['path']}")
        lines.append(f"{pad}   sha256 {ck['sha256']}{state}")
        dag = rec.get("dagster") or {}
        lines.append(
            f"{pad}   dagster run {dag.get('run_id')}  asset {dag.get('asset_key')}"
            + (f" [{dag['partition']}]" if dag.get("partition") else "")
            + f"  mlflow run {rec.get('mlflow_run_id')}"
        )
        code = rec.get("code") or {}
        cfg = rec.get("config") or {}
        lines.append(
            f"{pad}   code {code.get('git_commit')}{' (dirty)' if code.get('git_dirty') else ''}  "
            f"preset {cfg.get('preset')}  seed {rec.get('seed')}  epochs {cfg.get('epochs')}"
        )
        val = rec.get("validation")
        if val and val.get("scores"):
            curve = ", ".join(f"{v['epoch']}: {100 * v['accuracy']:.1f} %" for v in val["scores"])
            lines.append(
                f"{pad}   validation on {len(val.get('clips', []))} held-out clips, accuracy after N epochs "
                f"(0: the start) {curve}; kept: {val.get('kept_epoch')}"
            )
        for name, m in (rec.get("manifests") or {}).items():
            kept = _kept_state(m)
            lines.append(
                f"{pad}   data {name}: {m['rows']} clips  sha256 {m['sha256'][:16]}  {m['path']}  "
                f"[{_manifest_status(m)}]{kept}"
            )
    return "\n".join(lines)


def natural_key(text: str) -> list:
    """Sort key that orders the numbers inside a name by value: fold2 before fold10."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


@dataclass
class ClipHit:
    checkpoint: str
    name: str  # the asset that wrote the checkpoint
    sha256: str
    via: str  # "trained on it" or "descends from <checkpoint>"


def find_records(root: Path, skipped: Optional[list[str]] = None) -> list[tuple[Path, dict]]:
    """The lineage records under `root`; damaged ones are left out, with the reason appended
    to `skipped` when given."""
    root = Path(root)
    if not root.is_dir():
        raise LineageError(f"{root}: no such data root directory (give --data-root or set AUDIOCLIP_DATA_ROOT)")
    out = []
    for p in sorted(root.rglob("*.lineage.json")):
        try:
            out.append((p, read_record(p.with_name(p.name[: -len(".lineage.json")] + ".safetensors"))))
        except LineageError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
    return out


def root_manifests(root: Path) -> list[Path]:
    """Every manifest the data root holds, named by a record or not: the kept versions, the
    AudioSet manifests, the clip sets' manifests and folds (`layout.py`)."""
    root = Path(root)
    found = [
        *root.glob("versions/*.parquet"),
        *root.glob("audioset/manifests/*.parquet"),
        *root.glob("*/manifest.parquet"),
        *root.glob("*/folds/*/*.parquet"),
    ]
    return [p for p in found if p.is_file()]


def checkpoints_for_clip(
    clip: str, root: Path, skipped: Optional[list[str]] = None, listed: Optional[list[str]] = None
) -> list[ClipHit]:
    """Every checkpoint under `root` whose training data held `clip` (an AudioSet ytid or
    segment id, or an ESC-50/US8K file name) with status ok, directly or through the checkpoints
    it was made from (`parents_of`: its parent, the towers it distilled into). Damaged records or
    manifests are left out, their reasons appended to `skipped` (else raised). `listed`, when
    given, receives every manifest under `root` (`root_manifests`, and those the records name)
    that lists `clip` in any status: empty, the id is unknown to this data root - told apart from
    a clip that is known but no checkpoint trained on. Sorted naturally (fold2 before fold10)."""
    import duckdb

    records = find_records(root, skipped)
    files = {id(m): manifest_file(m) for _, r in records for m in (r.get("manifests") or {}).values()}
    manifests = sorted({str(f) for f in files.values() if f is not None})
    if listed is not None:
        named = {str(Path(m).resolve()) for m in manifests}
        manifests += sorted(
            {str(p) for p in root_manifests(root) if str(p.resolve()) not in named and str(p) not in manifests}
        )
    hit_paths: set[str] = set()
    if manifests:
        con = duckdb.connect()
        try:
            for path in manifests:
                try:
                    cols = {row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()}
                except duckdb.Error as exc:
                    if skipped is None:
                        raise LineageError(f"{path}: manifest cannot be read: {exc}") from exc
                    skipped.append(f"{path}: manifest cannot be read: {str(exc).splitlines()[0]}")
                    continue
                conds = []
                if "ytid" in cols:
                    conds.append("ytid = $clip")
                if "segment_id" in cols:
                    conds.append("segment_id = $clip")
                if "path" in cols:
                    conds.append("(path = $clip OR regexp_extract(path, '[^/]+$') = $clip)")
                if not conds:
                    continue
                ok = "count(*) FILTER (WHERE status = 'ok')" if "status" in cols else "count(*)"
                q = f"SELECT {ok}, count(*) FROM read_parquet($p) WHERE ({' OR '.join(conds)})"
                n_ok, n_any = con.execute(q, {"p": path, "clip": clip}).fetchall()[0]
                if n_ok:
                    hit_paths.add(path)
                if n_any and listed is not None:
                    listed.append(path)
        finally:
            con.close()
    by_sha = {r["checkpoint"]["sha256"]: (p, r) for p, r in records}
    direct = {
        sha
        for sha, (_, r) in by_sha.items()
        if any(str(files.get(id(m))) in hit_paths for m in (r.get("manifests") or {}).values())
    }

    def held_out(r: dict) -> bool:
        clips = (r.get("validation") or {}).get("clips") or []
        return any(c == clip or Path(c).name == clip for c in clips)

    hits = [
        ClipHit(
            r["checkpoint"]["path"],
            record_name(r),
            sha,
            f"{HELD_OUT}; chose its epoch" if held_out(r) else TRAINED_ON_IT,
        )
        for sha, (_, r) in by_sha.items()
        if sha in direct
    ]
    for sha, (_, r) in by_sha.items():
        if sha in direct:
            continue
        # breadth first through every checkpoint it was made from: the nearest one trained on it
        queue = [p.get("sha256") for _, p in parents_of(r)]
        seen: set[str] = set()
        while queue:
            parent = queue.pop(0)
            if not parent or parent in seen or parent not in by_sha:
                continue
            seen.add(parent)
            if parent in direct:
                hits.append(
                    ClipHit(
                        r["checkpoint"]["path"],
                        record_name(r),
                        sha,
                        f"descends from {record_name(by_sha[parent][1])} ({parent[:12]})",
                    )
                )
                break
            queue += [p.get("sha256") for _, p in parents_of(by_sha[parent][1])]
    return sorted(hits, key=lambda h: natural_key(h.checkpoint))
