"""AudioSet's official segment lists, label index and ontology, parsed exactly.

Segment CSVs (`eval_segments.csv`, `balanced_train_segments.csv`,
`unbalanced_train_segments.csv`) start with three `#` header lines, then one row per
segment: ``YTID, start_seconds, end_seconds, "mid,mid,..."`` with a space after each comma.
A malformed row is reported with its line number and reason and skipped; it never stops
the file. The SHA-256 of a file's bytes is its data version.

Times are plain decimals (``30.000``: no exponent, underscore, sign other than a minus, inf,
nan or hex, all of which Python's float() accepts) and must make a segment: 0 <= start < end,
start within MAX_START_SECONDS of a video's beginning and at most MAX_SEGMENT_SECONDS long.
A time outside these limits is an error in the list, reported here, rather than a clip that
every later step would fail (and retry) to extract. The first valid row naming a (YTID,
start) - a segment id - claims it: any later valid row naming it, whatever its end or labels,
is reported as a duplicate of that line and skipped (across the shards of the unbalanced list
too: a shard's rows are checked against the rows before it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
# ASCII digits only: float() also takes "1_000", "1e15", "inf", "nan" and non-ASCII digits
TIME_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
MAX_SEGMENT_SECONDS = 60.0  # AudioSet's segments are 10 s at most; six times that is no AudioSet row
MAX_START_SECONDS = 24 * 3600.0  # no YouTube video is a day long (uploads stop at 12 h)
SEGMENT_FILES = {
    "eval": "eval_segments.csv",
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
}
UNBALANCED_SHARD_ROWS = 50_000
UNBALANCED_SHARDS = 41  # unbalanced_00 .. unbalanced_40 (~2.04M segments)
NUM_FRAMES = 10  # JPEG frames per clip, equally spaced over the segment
PARTITIONS = ["eval", "balanced_train"] + [f"unbalanced_{i:02d}" for i in range(UNBALANCED_SHARDS)] + ["demo"]


class InvalidYoutubeId(ValueError):
    pass


def validate_ytid(ytid: str) -> str:
    """A YouTube id must match [A-Za-z0-9_-]{11} before it becomes part of any path or URL."""
    if not isinstance(ytid, str) or not YTID_RE.fullmatch(ytid):
        raise InvalidYoutubeId(f"not a YouTube id (11 characters of A-Z a-z 0-9 _ -): {ytid!r}")
    return ytid


def segment_id(ytid: str, start: float) -> str:
    """The name a segment's files carry: id and start time in milliseconds, e.g. `abc_30000`."""
    return f"{validate_ytid(ytid)}_{int(round(start * 1000)):d}"


@dataclass(frozen=True)
class Segment:
    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]
    line: int

    @property
    def segment_id(self) -> str:
        return segment_id(self.ytid, self.start)


@dataclass
class ParseIssue:
    line: int
    reason: str
    text: str


@dataclass
class SegmentFile:
    path: Path
    sha256: str
    header: list[str]
    segments: list[Segment] = field(default_factory=list)
    issues: list[ParseIssue] = field(default_factory=list)


def parse_segment_rows(
    lines: Iterable[str], known_labels: Optional[set[str]] = None, first_line: int = 1
) -> Iterator[Segment | ParseIssue]:
    return _parse_numbered(enumerate(lines, start=first_line), known_labels)


def time_range_problem(start: float, end: float) -> Optional[str]:
    """Why (start, end) in seconds is not a segment AudioSet could list, or None."""
    if not (math.isfinite(start) and math.isfinite(end)):
        return "times are not finite"
    if start < 0:
        return "negative start"
    if start >= end:
        return "start is not before end"
    if end - start > MAX_SEGMENT_SECONDS:
        return f"longer than {MAX_SEGMENT_SECONDS:g} s"
    if start > MAX_START_SECONDS:
        return f"start beyond {MAX_START_SECONDS / 3600:g} h"
    return None


def _parse_numbered(
    lines: Iterable[tuple[int, str]], known_labels: Optional[set[str]], claimed: Optional[dict[str, int]] = None
) -> Iterator[Segment | ParseIssue]:
    """`claimed`: segment id -> line of the first valid row naming it, filled as rows are accepted
    (pass the rows before `lines` through it first to find duplicates of earlier rows)."""
    claimed = {} if claimed is None else claimed
    for lineno, raw in lines:
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        if text.startswith("#"):
            # only the three header lines are comments; '#' in the body is a damaged row
            # (spreadsheet tools turn ids starting with '-' into '#NAME?')
            yield ParseIssue(lineno, "malformed row starting with '#'", text)
            continue
        try:
            row = next(csv.reader([text], skipinitialspace=True))
        except csv.Error as exc:
            yield ParseIssue(lineno, f"unreadable CSV: {exc}", text)
            continue
        if len(row) != 4:
            yield ParseIssue(lineno, f"expected 4 fields (YTID, start, end, labels), got {len(row)}", text)
            continue
        ytid, start_s, end_s, labels_s = (x.strip() for x in row)
        if not YTID_RE.fullmatch(ytid):
            yield ParseIssue(lineno, f"invalid YouTube id {ytid!r}", text)
            continue
        if not (TIME_RE.fullmatch(start_s) and TIME_RE.fullmatch(end_s)):
            yield ParseIssue(
                lineno, f"start/end not numbers (plain decimals, e.g. 30.000): {start_s!r}, {end_s!r}", text
            )
            continue
        start, end = float(start_s), float(end_s)
        problem = time_range_problem(start, end)
        if problem:
            yield ParseIssue(lineno, f"bad time range {start_s}..{end_s}: {problem}", text)
            continue
        labels = tuple(x.strip() for x in labels_s.split(",") if x.strip())
        if not labels:
            yield ParseIssue(lineno, "no labels", text)
            continue
        if known_labels is not None:
            unknown = [m for m in labels if m not in known_labels]
            if unknown:
                yield ParseIssue(lineno, f"unknown label ids {unknown}", text)
                continue
        sid = segment_id(ytid, start)
        first = claimed.setdefault(sid, lineno)
        if first != lineno:
            yield ParseIssue(lineno, f"duplicate segment {sid}: line {first} has the same YouTube id and start", text)
            continue
        yield Segment(ytid, start, end, labels, lineno)


def _decode(raw: bytes) -> str | None:
    """The line as text, or None when it is not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_segment_file(path: Path, known_labels: Optional[set[str]] = None, rows: Optional[slice] = None) -> SegmentFile:
    """Parse a segment CSV; `rows` selects data rows (for shards of the unbalanced list). A
    line that is not valid UTF-8 is reported with its number; the others are parsed."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.splitlines()
    header = [t for t in map(_decode, lines[:3]) if t is not None and t.startswith("#")]
    numbered = list(enumerate(lines, start=1))[len(header) :]  # (line number, bytes) of the data rows
    claimed: dict[str, int] = {}
    if rows is not None:
        # a shard reports its own rows only, but a segment an earlier shard holds is a duplicate
        # here too: the rows before the shard are parsed for the ids they claim
        before = [(n, t) for n, t in ((n, _decode(raw)) for n, raw in numbered[: rows.start or 0]) if t is not None]
        for _ in _parse_numbered(before, known_labels, claimed):
            pass
        numbered = numbered[rows]  # a shard decodes only its own rows
    out = SegmentFile(path=path, sha256=hashlib.sha256(data).hexdigest(), header=header)
    good = []
    for n, raw in numbered:
        text = _decode(raw)
        if text is None:
            out.issues.append(ParseIssue(n, "not valid UTF-8", raw.decode("utf-8", "replace")))
        else:
            good.append((n, text))
    for item in _parse_numbered(good, known_labels, claimed):
        (out.segments if isinstance(item, Segment) else out.issues).append(item)
    out.issues.sort(key=lambda i: i.line)
    return out


def partition_file(partition: str) -> str:
    """The file name (in an AudioSet folder) that partition `partition` is read from."""
    key, _ = partition_source(partition)
    return "demo_segments.csv" if key == "demo" else SEGMENT_FILES[key]


def available_partitions(source_dir: Path) -> list[str]:
    """The partitions whose segment file exists in `source_dir`: `eval`, `balanced_train`,
    `demo`, and one `unbalanced_NN` per 50,000 data rows of the unbalanced list."""
    source_dir = Path(source_dir)
    out = [p for p in ("eval", "balanced_train", "demo") if (source_dir / partition_file(p)).is_file()]
    unbalanced = source_dir / SEGMENT_FILES["unbalanced_train"]
    if unbalanced.is_file():
        with open(unbalanced, "rb") as f:
            rows = sum(1 for line in f if line.strip() and not line.startswith(b"#"))
        shards = min(UNBALANCED_SHARDS, -(-rows // UNBALANCED_SHARD_ROWS))
        out += [f"unbalanced_{i:02d}" for i in range(shards)]
    return out


def partition_source(partition: str) -> tuple[str, Optional[slice]]:
    """(segment file key, row slice) of a static partition."""
    if partition in ("eval", "balanced_train"):
        return partition, None
    m = re.fullmatch(r"unbalanced_(\d{2})", partition)
    if m and int(m.group(1)) < UNBALANCED_SHARDS:
        i = int(m.group(1))
        return "unbalanced_train", slice(i * UNBALANCED_SHARD_ROWS, (i + 1) * UNBALANCED_SHARD_ROWS)
    if partition == "demo":
        return "demo", None
    raise ValueError(f"unknown AudioSet partition {partition!r}")


@dataclass(frozen=True)
class LabelIndex:
    mids: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def name_of(self) -> dict[str, str]:
        return dict(zip(self.mids, self.names))

    @property
    def index_of(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.mids)}


def read_class_labels(path: Path) -> LabelIndex:
    """`class_labels_indices.csv`: index,mid,display_name (names quoted, may hold commas)."""
    with open(path, "r", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: class indices are not 0..{len(rows) - 1}")
    return LabelIndex(tuple(r["mid"] for r in rows), tuple(r["display_name"] for r in rows))


def read_ontology(path: Path) -> dict[str, dict]:
    with open(path, "r", encoding="utf-8") as f:
        return {node["id"]: node for node in json.load(f)}
