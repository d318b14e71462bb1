"""The DuckDB catalog of the data root: one view per manifest file, and `audioset` over every
AudioSet partition's manifest."""
from __future__ import annotations

from pathlib import Path

from ..files import file_lock
from ..layout import DataLayout


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def update_catalog(layout: DataLayout, views: dict[str, Path]) -> None:
    """(Re)create one DuckDB view per manifest file, plus `audioset` over every AudioSet partition."""
    import duckdb

    with file_lock(layout.catalog_lock):
        con = duckdb.connect(str(layout.catalog))
        try:
            for name, path in views.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{_quoted(path)}')")
            if any(layout.manifests_dir.glob("*.parquet")):
                con.execute("CREATE OR REPLACE VIEW audioset AS SELECT * FROM "
                            f"read_parquet('{_quoted(layout.manifests_dir)}/*.parquet', union_by_name=true)")
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
