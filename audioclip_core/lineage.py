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
    child recorded of it; None where the file is gone."""
    files = [Path(checkpoint)] + [Path(r["parent"]["path"]) for r in records[:-1]]
    return [compare_checkpoint(f, r["checkpoint"]["sha256"]) if f.is_file() else None for f, r in zip(files, records)]


def chain(checkpoint: Path) -> list[dict]:
    """The record of `checkpoint`, then its parent's, and so on up to the first stage."""
    out, seen = [], set()
    current: Optional[Path] = Path(checkpoint)
    while current is not None:
        rec = read_record(current)
        key = rec["checkpoint"]["sha256"]
        if key in seen:
            break
        seen.add(key)
        out.append(rec)
        parent = rec.get("parent")
        current = Path(parent["path"]) if parent and record_path(Path(parent["path"])).is_file() else None
        if parent and current is None:
            out.append(
                {
                    "name": record_name(parent),
                    "checkpoint": {"path": parent["path"], "sha256": parent["sha256"]},
                    "external": True,
                }
            )
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


def clips_of(checkpoint: Path) -> list[dict]:
    """The clips (AudioSet segment ids, ESC-50 / US8K file paths) with status ok in each
    manifest the checkpoint was trained on, read from the version its record names - the same
    list after the manifest has moved on. Rows: manifest, sha256, clip."""

    rec = read_record(checkpoint)
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
        out += [{"manifest": name, "sha256": m["sha256"], "clip": str(c)} for c in ids]
    return out


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
    """The chain as text; with `checks` (`verify_chain`), each file's state beside its digest."""
    lines = []
    for depth, rec in enumerate(records):
        pad = "  " * depth
        ck = rec["checkpoint"]
        state = f"  {_file_state(checks[depth])}" if checks is not None else ""
        if rec.get("external"):
            lines.append(
                f"{pad}<- {record_name(rec)}: {ck['path']}  sha256 {ck['sha256'][:16]}  (no lineage record)" + state
            )
            continue
        arrow = "" if depth == 0 else "<- "
        lines.append(f"{pad}{arrow}{record_name(rec)}: {ck['path']}")
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
        for name, m in (rec.get("manifests") or {}).items():
            kept = "  (version kept)" if m.get("version") and Path(m["version"]).is_file() else ""
            lines.append(
                f"{pad}   data {name}: {m['rows']} clips  sha256 {m['sha256'][:16]}  {m['path']}  "
                f"[{_manifest_status(m)}]{kept}"
            )
    return "\n".join(lines)


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


def checkpoints_for_clip(clip: str, root: Path, skipped: Optional[list[str]] = None) -> list[ClipHit]:
    """Every checkpoint under `root` whose training data held `clip` (an AudioSet ytid or
    segment id, or an ESC-50/US8K file name) with status ok, directly or through its parents.
    Damaged records or manifests are left out, their reasons appended to `skipped` (else raised)."""
    import duckdb

    records = find_records(root, skipped)
    files = {id(m): manifest_file(m) for _, r in records for m in (r.get("manifests") or {}).values()}
    manifests = sorted({str(f) for f in files.values() if f is not None})
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
                status = " AND status = 'ok'" if "status" in cols else ""
                q = f"SELECT count(*) FROM read_parquet($p) WHERE ({' OR '.join(conds)}){status}"
                if con.execute(q, {"p": path, "clip": clip}).fetchall()[0][0]:
                    hit_paths.add(path)
        finally:
            con.close()
    by_sha = {r["checkpoint"]["sha256"]: (p, r) for p, r in records}
    direct = {
        sha
        for sha, (_, r) in by_sha.items()
        if any(str(files.get(id(m))) in hit_paths for m in (r.get("manifests") or {}).values())
    }
    hits = [
        ClipHit(r["checkpoint"]["path"], record_name(r), sha, "trained on it")
        for sha, (_, r) in by_sha.items()
        if sha in direct
    ]
    for sha, (_, r) in by_sha.items():
        if sha in direct:
            continue
        parent = (r.get("parent") or {}).get("sha256")
        trail = []
        while parent and parent in by_sha:
            trail.append(parent)
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
            parent = (by_sha[parent][1].get("parent") or {}).get("sha256")
            if parent in trail:
                break
    return sorted(hits, key=lambda h: h.checkpoint)
