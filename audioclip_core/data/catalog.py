"""The DuckDB catalog of the data root: one view per manifest file, and `audioset` over every
AudioSet partition's manifest."""
from __future__ import annotations

from pathlib import Path

from ..files import file_lock
from ..layout import DataLayout


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _select(con, source: str, root: Path) -> str:
    """SELECT of `source` with the manifest's relative file paths resolved against `root`
    (manifests keep them relative so that a root can move; the catalog lives in the root)."""
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    prefix = _quoted(Path(root)) + "/"
    fix = []
    if "audio_path" in cols:
        fix.append(f"CASE WHEN audio_path IS NULL OR starts_with(audio_path, '/') THEN audio_path "
                   f"ELSE '{prefix}' || audio_path END AS audio_path")
    if "frame_paths" in cols:
        fix.append(f"list_transform(frame_paths, lambda p: CASE WHEN starts_with(p, '/') THEN p "
                   f"ELSE '{prefix}' || p END) AS frame_paths")
    return f"SELECT * REPLACE ({', '.join(fix)}) FROM {source}" if fix else f"SELECT * FROM {source}"


def update_catalog(layout: DataLayout, views: dict[str, Path]) -> None:
    """(Re)create one DuckDB view per manifest file, plus `audioset` over every AudioSet
    partition; file paths in the views are absolute (resolved against the data root)."""
    import duckdb

    with file_lock(layout.catalog_lock):
        con = duckdb.connect(str(layout.catalog))
        try:
            for name, path in views.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS "
                            + _select(con, f"read_parquet('{_quoted(path)}')", layout.root))
            if any(layout.manifests_dir.glob("*.parquet")):
                con.execute("CREATE OR REPLACE VIEW audioset AS " + _select(
                    con, f"read_parquet('{_quoted(layout.manifests_dir)}/*.parquet', union_by_name=true)", layout.root))
        finally:
            con.close()


def publish_table(layout: DataLayout, name: str, parquet: Path) -> None:
    """A DuckDB table (not a view: the parquet may be replaced while the catalog is read) of a result."""
    import duckdb

    with file_lock(layout.catalog_lock):
        con = duckdb.connect(str(layout.catalog))
        try:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet('{_quoted(parquet)}')")
        finally:
            con.close()
