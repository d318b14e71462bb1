"""AudioSet lists, ESC-50 / UrbanSound8K metadata and folds, on the real files."""

import pytest

from audioclip_core.data.audioset import (
    PARTITIONS,
    InvalidYoutubeId,
    partition_source,
    read_class_labels,
    read_ontology,
    read_segment_file,
    segment_id,
    validate_ytid,
)
from audioclip_core.data.clipsets import ESC50, US8K, count_warnings, fold_split, read_metadata, validate


@pytest.fixture(scope="module")
def labels(shared_data):
    return read_class_labels(shared_data / "audioset" / "class_labels_indices.csv")


def test_real_segment_lists(shared_data, labels):
    assert len(labels.mids) == 527 and labels.names[1] == "Male speech, man speaking"
    known = set(labels.mids)
    ev = read_segment_file(shared_data / "audioset" / "eval_segments.csv", known)
    bal = read_segment_file(shared_data / "audioset" / "balanced_train_segments.csv", known)
    assert (len(ev.segments), len(bal.segments)) == (20371, 22160)
    assert not ev.issues and not bal.issues and len(ev.header) == 3
    first = ev.segments[0]
    assert (first.ytid, first.start, first.end, first.line) == ("--4gqARaEJE", 0.0, 10.0, 4)
    assert first.labels == ("/m/068hy", "/m/07q6cd_", "/m/0bt9lr", "/m/0jbk")
    used = {m for s in ev.segments + bal.segments for m in s.labels}
    assert len(used) == 527
    ontology = read_ontology(shared_data / "audioset" / "ontology.json")
    assert used <= set(ontology)
    assert len(ev.sha256) == 64 and ev.sha256 != bal.sha256


def test_malformed_rows_reported_with_line_and_skipped(tmp_path, labels):
    csv = tmp_path / "seg.csv"
    csv.write_text(
        "# Segments csv\n# num_ytids=5\n# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_"\n'
        '#NAME?, 30.000, 40.000, "/m/09x0r"\n'
        'abcdefghijk, x, 10.000, "/m/09x0r"\n'
        "abcdefghij2, 5.000, 15.000\n"
        'abcdefghij3, 5.000, 15.000, "/m/nope"\n'
        '../../etc/x, 5.000, 15.000, "/m/09x0r"\n'
        'abcdefghij4, 5.000, 15.000, "/m/09x0r"\n'
    )
    parsed = read_segment_file(csv, set(labels.mids))
    assert [s.ytid for s in parsed.segments] == ["--4gqARaEJE", "abcdefghij4"]
    assert [i.line for i in parsed.issues] == [5, 6, 7, 8, 9]
    reasons = [i.reason for i in parsed.issues]
    assert "starting with '#'" in reasons[0] and "not numbers" in reasons[1] and "4 fields" in reasons[2]
    assert "unknown label" in reasons[3] and "invalid YouTube id" in reasons[4]


HEADER = "# Segments csv\n# num_ytids=9\n# YTID, start_seconds, end_seconds, positive_labels\n"


def test_times_are_strict_decimals_that_make_a_segment(tmp_path, labels):
    rows = [
        'aaaaaaaaaa1, 30.000, 40.000, "/m/09x0r"',  # 4: fine
        'aaaaaaaaaa2, 1_000, 1_010, "/m/09x0r"',  # 5: float() reads 1000.0
        'aaaaaaaaaa3, 1e15, 1.00000000000001e15, "/m/09x0r"',
        'aaaaaaaaaa4, inf, inf, "/m/09x0r"',
        'aaaaaaaaaa5, nan, 10.000, "/m/09x0r"',
        'aaaaaaaaaa6, 0x10, 0x20, "/m/09x0r"',
        'aaaaaaaaaa7, -5.000, 5.000, "/m/09x0r"',  # 10
        'aaaaaaaaaa8, 10.000, 10.000, "/m/09x0r"',
        'aaaaaaaaaa9, 0.000, 61.000, "/m/09x0r"',
        'aaaaaaaaa10, 86401.000, 86411.000, "/m/09x0r"',
        'aaaaaaaaa11, 86400.000, 86410.000, "/m/09x0r"',  # 14: a day in is still a video
        'aaaaaaaaa12, 0.000, 60.000, "/m/09x0r"',  # 15: the longest segment taken
        "aaaaaaaaa13, " + "9" * 400 + ", " + "9" * 401 + ', "/m/09x0r"',  # decimal, but float() gives inf
        'aaaaaaaaa14, \u0663.000, 10.000, "/m/09x0r"',  # an Arabic-Indic 3: float() reads it
    ]
    csv = tmp_path / "seg.csv"
    csv.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    parsed = read_segment_file(csv, set(labels.mids))
    assert [(s.ytid, s.start, s.end, s.line) for s in parsed.segments] == [
        ("aaaaaaaaaa1", 30.0, 40.0, 4),
        ("aaaaaaaaa11", 86400.0, 86410.0, 14),
        ("aaaaaaaaa12", 0.0, 60.0, 15),
    ]
    reasons = {i.line: i.reason for i in parsed.issues}
    assert sorted(reasons) == [5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17]
    for line in (5, 6, 7, 8, 9, 17):
        assert reasons[line].startswith("start/end not numbers (plain decimals, e.g. 30.000): "), reasons[line]
    assert reasons[5].endswith("'1_000', '1_010'")
    assert reasons[10] == "bad time range -5.000..5.000: negative start"
    assert reasons[11] == "bad time range 10.000..10.000: start is not before end"
    assert reasons[12] == "bad time range 0.000..61.000: longer than 60 s"
    assert reasons[13] == "bad time range 86401.000..86411.000: start beyond 24 h"
    assert reasons[16].endswith(": times are not finite")
    assert {i.line: i.text for i in parsed.issues}[7] == rows[3]


def test_duplicate_segments_are_reported_with_the_first_line(tmp_path, labels):
    rows = [
        'bbbbbbbbbb1, 30.000, 40.000, "/m/09x0r"',  # 4
        'bbbbbbbbbb2, 0.000, 10.000, "/m/09x0r"',  # 5
        'bbbbbbbbbb1, 30.000, 38.000, "/m/04rlf"',  # 6: same id and start, other end and labels
        'bbbbbbbbbb1, 30.000, 40.000, "/m/09x0r"',  # 7: the same row again
        'bbbbbbbbbb1, 30.0004, 40.000, "/m/09x0r"',  # 8: the same segment id (start in ms)
        'bbbbbbbbbb1, 20.000, 30.000, "/m/09x0r"',  # 9: another segment of the video
        'bbbbbbbbbb3, 0.000, 10.000, "/m/nope"',  # 10: invalid, claims nothing
        'bbbbbbbbbb3, 0.000, 10.000, "/m/09x0r"',  # 11: so this one is the segment
    ]
    csv = tmp_path / "seg.csv"
    csv.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    parsed = read_segment_file(csv, set(labels.mids))
    assert [(s.segment_id, s.line) for s in parsed.segments] == [
        ("bbbbbbbbbb1_30000", 4),
        ("bbbbbbbbbb2_0", 5),
        ("bbbbbbbbbb1_20000", 9),
        ("bbbbbbbbbb3_0", 11),
    ]
    assert [(i.line, i.reason) for i in parsed.issues] == [
        (6, "duplicate segment bbbbbbbbbb1_30000: line 4 has the same YouTube id and start"),
        (7, "duplicate segment bbbbbbbbbb1_30000: line 4 has the same YouTube id and start"),
        (8, "duplicate segment bbbbbbbbbb1_30000: line 4 has the same YouTube id and start"),
        (10, "unknown label ids ['/m/nope']"),
    ]
    assert parsed.issues[0].text == rows[2]
    # a shard of the file (as the unbalanced list is cut) reports a duplicate of a row in an
    # earlier shard, and only its own rows
    tail = read_segment_file(csv, set(labels.mids), rows=slice(2, 6))
    assert [(s.segment_id, s.line) for s in tail.segments] == [("bbbbbbbbbb1_20000", 9)]
    assert [i.line for i in tail.issues] == [6, 7, 8]  # lines 6..9
    assert tail.issues[0].reason == "duplicate segment bbbbbbbbbb1_30000: line 4 has the same YouTube id and start"


def test_ids_are_validated_before_paths():
    assert segment_id("--4gqARaEJE", 30.0) == "--4gqARaEJE_30000"
    for bad in ("../../etc/x", "abc", "abcdefghij/", "abcdefghijkl", ""):
        with pytest.raises(InvalidYoutubeId):
            validate_ytid(bad)


def test_partitions():
    assert len(PARTITIONS) == 44 and PARTITIONS[2] == "unbalanced_00" and PARTITIONS[-2] == "unbalanced_40"
    assert partition_source("unbalanced_02") == ("unbalanced_train", slice(100000, 150000))
    with pytest.raises(ValueError):
        partition_source("unbalanced_41")


def test_esc50_metadata_files_and_folds(shared_data):
    root = shared_data / "esc50"
    rows = read_metadata(root, ESC50)
    assert len(rows) == 2000 and not count_warnings(ESC50, rows)
    assert {r["class_name"] for r in rows} >= {"dog", "chirping birds", "crying baby"}
    manifest, report = validate(root, ESC50, rows)
    ok = [m for m in manifest if m["status"] == "ok"]
    assert len(ok) == 20 and len(report["missing"]) == 1980 and report["extra"] == []
    assert all(m["sample_rate"] == 44100 and m["channels"] == 1 and m["duration"] == 5.0 for m in ok)
    for k in range(1, 6):
        train, test = fold_split(rows, k)
        assert len(test) == 400 and len(train) == 1600
        assert not {r["path"] for r in train} & {r["path"] for r in test}
    warnings = count_warnings(ESC50, ok)
    assert any("20 clips" in w for w in warnings)


def test_us8k_metadata_and_official_fold_counts(shared_data):
    rows = read_metadata(shared_data / "urbansound8k", US8K)
    assert len(rows) == 8732 and not count_warnings(US8K, rows)
    assert rows[0]["path"] == "audio/fold5/100032-3-0-0.wav" and rows[0]["class_name"] == "dog bark"
    assert len({r["class_id"] for r in rows}) == 10


def test_extra_and_unreadable_files(tmp_path, shared_data):
    root = tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    src = sorted((shared_data / "esc50" / "audio").glob("*.wav"))[:2]
    (root / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        f"{src[0].name},4,0,dog,True,1,A\n{src[1].name},4,1,rooster,True,2,A\nbroken.wav,4,0,dog,True,3,A\n"
    )
    (root / "audio" / src[0].name).write_bytes(src[0].read_bytes())
    (root / "audio" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    (root / "audio" / "stray.wav").write_bytes(src[1].read_bytes())
    manifest, report = validate(root, ESC50, read_metadata(root, ESC50))
    assert [m["status"] for m in manifest] == ["ok", "missing", "unreadable"]
    assert report["extra"] == ["audio/stray.wav"]
