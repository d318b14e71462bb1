"""The DuckDB catalog: rebuilt whole and renamed into place, so a process holding it open
(read-only, or even read-write) never blocks a step and keeps the catalog it opened, while a
new connection sees the new views and tables."""

import json
import subprocess
import sys

import duckdb
import pandas as pd
import pytest

from audioclip_core.data.catalog import publish_table, update_catalog
from audioclip_core.data.manifests import relative_paths
from audioclip_core.files import publish_version, write_parquet
from audioclip_core.layout import DataLayout


def _manifest(root, ids, partition="eval"):
    folder = root / "audioset" / "clips" / partition
    return relative_paths(
        pd.DataFrame(
            {
                "segment_id": ids,
                "status": ["ok"] * len(ids),
                "audio_path": [str(folder / f"{i}.wav") for i in ids],
                "frame_paths": [[str(folder / f"{i}_f00.jpg")] for i in ids],
            }
        ),
        root,
    )


@pytest.fixture
def layout(tmp_path):
    layout = DataLayout.at(tmp_path / "data")
    publish_version(_manifest(layout.root, ["A", "B"]), layout.versions_dir, layout.audioset_manifest("eval"))
    publish_version(
        pd.DataFrame({"path": ["x.wav", "y.wav"], "fold": [1, 2], "status": "ok"}),
        layout.versions_dir,
        layout.clipset_manifest("esc50"),
    )
    for split, n in (("train", 3), ("test", 1)):
        publish_version(
            pd.DataFrame({"path": [f"{split}{i}.wav" for i in range(n)]}),
            layout.versions_dir,
            layout.fold("esc50", 1, split),
        )
    return layout


def _state(con) -> dict:
    return {
        "views": sorted(
            r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        ),
        "tables": sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()),
        "table1": con.execute("SELECT count(*) FROM table1").fetchone()[0],
        "eval": con.execute("SELECT list(segment_id ORDER BY segment_id) FROM audioset_eval").fetchone()[0],
    }


HOLDER = """
import duckdb, json, sys
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read_only")
state = lambda: {
    "views": sorted(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()),
    "tables": sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()),
    "table1": con.execute("SELECT count(*) FROM table1").fetchone()[0],
    "eval": con.execute("SELECT list(segment_id ORDER BY segment_id) FROM audioset_eval").fetchone()[0]}
print(json.dumps(state()), flush=True)
sys.stdin.readline()
print(json.dumps(state()), flush=True)
"""


def test_views_and_tables_of_the_data_root(layout):
    update_catalog(layout, {"audioset_eval": layout.audioset_manifest("eval")})
    write_parquet(pd.DataFrame({"model": ["m"], "value": [0.5]}), layout.table("table1"))
    publish_table(layout, "table1", layout.table("table1"))
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        assert _state(con) == {
            "views": ["audioset", "audioset_eval", "esc50", "esc50_fold1_test", "esc50_fold1_train"],
            "tables": ["table1"],
            "table1": 1,
            "eval": ["A", "B"],
        }
        # file paths resolved against the data root
        assert con.execute("SELECT audio_path, frame_paths FROM audioset WHERE segment_id = 'A'").fetchone() == (
            f"{layout.root}/audioset/clips/eval/A.wav",
            [f"{layout.root}/audioset/clips/eval/A_f00.jpg"],
        )
        assert con.execute("SELECT count(*) FROM esc50_fold1_train").fetchone()[0] == 3
    # a view named by the caller outside the layout's names is made too
    extra = layout.root / "elsewhere.parquet"
    pd.DataFrame({"x": [1, 2, 3]}).to_parquet(extra)
    update_catalog(layout, {"my_view": extra})
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        assert con.execute("SELECT sum(x) FROM my_view").fetchone()[0] == 6
        assert "table1" in _state(con)["tables"]


@pytest.mark.parametrize("mode", ["read_only", "read_write"])
def test_a_held_catalog_blocks_no_step_and_its_holder_keeps_what_it_opened(layout, mode):
    write_parquet(pd.DataFrame({"value": [1.0, 2.0]}), layout.table("table1"))
    publish_table(layout, "table1", layout.table("table1"))
    update_catalog(layout, {"audioset_eval": layout.audioset_manifest("eval")})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(layout.catalog), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before = json.loads(holder.stdout.readline())
        old = {
            "views": ["audioset", "audioset_eval", "esc50", "esc50_fold1_test", "esc50_fold1_train"],
            "tables": ["table1"],
            "table1": 2,
            "eval": ["A", "B"],
        }
        assert before == old
        # while it is held: a new partition, a new version of a manifest, a result table
        # published again with other rows and a new one - none blocks, none fails
        publish_version(
            _manifest(layout.root, ["C"], "balanced_train"),
            layout.versions_dir,
            layout.audioset_manifest("balanced_train"),
        )
        update_catalog(layout, {"audioset_balanced_train": layout.audioset_manifest("balanced_train")})
        write_parquet(pd.DataFrame({"value": [1.0, 2.0, 3.0]}), layout.table("table1"))
        publish_table(layout, "table1", layout.table("table1"))
        write_parquet(pd.DataFrame({"value": [9.0]}), layout.table("table2"))
        publish_table(layout, "table2", layout.table("table2"))
        with duckdb.connect(str(layout.catalog), read_only=True) as con:
            assert _state(con) == {
                "views": [
                    "audioset",
                    "audioset_balanced_train",
                    "audioset_eval",
                    "esc50",
                    "esc50_fold1_test",
                    "esc50_fold1_train",
                ],
                "tables": ["table1", "table2"],
                "table1": 3,
                "eval": ["A", "B"],
            }
            assert con.execute("SELECT list(segment_id ORDER BY segment_id) FROM audioset").fetchone()[0] == [
                "A",
                "B",
                "C",
            ]
        # the holder's catalog is the one it opened, whole: same views, the table as it was
        out, err = holder.communicate("\n", timeout=60)
        assert holder.returncode == 0, err
        assert json.loads(out) == old
    finally:
        if holder.poll() is None:
            holder.kill()
    # once the holder is gone, the catalog opens either way and still holds everything
    with duckdb.connect(str(layout.catalog)) as con:
        assert _state(con)["tables"] == ["table1", "table2"]
    update_catalog(layout, {})
    assert sorted(p.name for p in layout.catalog.parent.iterdir() if "catalog" in p.name) == [
        "catalog.duckdb",
        "catalog.lock",
    ]


def test_leftovers_of_a_killed_writer_or_an_unclosed_connection_are_cleared(layout):
    update_catalog(layout, {})
    stale = layout.catalog.parent / f".{layout.catalog.name}.abcd1234.tmp"
    stale.write_bytes(b"half a catalog")
    (layout.catalog.parent / f"{stale.name}.wal").write_bytes(b"x")
    layout.catalog.with_name(layout.catalog.name + ".wal").write_bytes(b"not this catalog's WAL")
    update_catalog(layout, {})
    assert sorted(p.name for p in layout.catalog.parent.iterdir() if "catalog" in p.name) == [
        "catalog.duckdb",
        "catalog.lock",
    ]
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM audioset").fetchone()[0] == 2


def test_a_publish_that_fails_half_way_moves_no_pointer(tmp_path, monkeypatch):
    """The catalog rebuild fails after the new version is stored: the pointer still names the
    version it named before, and a first publish leaves no pointer at all."""
    import os

    import pandas as pd

    from audioclip_core.data import catalog
    from audioclip_core.layout import DataLayout

    layout = DataLayout.at(tmp_path / "data")
    pointer = layout.audioset_manifest("eval")
    first = pd.DataFrame({"segment_id": ["a"], "status": ["ok"]})
    ((sha, version),) = catalog.publish_manifests(layout, {"audioset_eval": (first, pointer)}).values()
    assert pointer.resolve() == version.resolve() and version.stem == sha

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(catalog, "_rebuild", broken)
    second = pd.DataFrame({"segment_id": ["a", "b"], "status": ["ok", "ok"]})
    with pytest.raises(OSError, match="No space"):
        catalog.publish_manifests(layout, {"audioset_eval": (second, pointer)})
    assert pointer.resolve() == version.resolve() and not os.path.isabs(os.readlink(pointer))
    fresh = layout.audioset_manifest("demo")
    with pytest.raises(OSError):
        catalog.publish_manifests(layout, {"audioset_demo": (second, fresh)})
    assert not fresh.exists() and not fresh.is_symlink()
