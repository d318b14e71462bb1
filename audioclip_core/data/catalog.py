"""The DuckDB catalog of the data root: one view per manifest file (each AudioSet partition's
`audioset_<partition>`, `esc50`, `us8k` and their fold splits `<name>_fold<k>_<split>`),
`audioset` over every AudioSet partition, and one table per result table (`tables/*.parquet`).

The live catalog is never opened for writing. Each update builds a complete new catalog in a
temporary file beside it - every view and table the data root holds, found by the layout's
names, plus those the caller names - and renames it into place (under `catalog_lock`, so
writers take turns). So a process that holds the catalog open never blocks a pipeline step:
it keeps the catalog it opened (its views and tables; a view reads its manifest's current
version when queried, a table is a copy), and a new connection sees the new one. Read it
with ``duckdb.connect(path, read_only=True)``: a read-write connection works too, but what it
writes is lost at the next update (it writes to a file no longer in place).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import file_lock, point_to, store_version
from ..layout import DataLayout

if TYPE_CHECKING:
    import pandas as pd


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(con, source: str, root: Path) -> str:
    """SELECT of `source` with the manifest's relative file paths resolved against `root`
    (manifests keep them relative so that a root can move; the catalog lives in the root)."""
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    prefix = _quoted(Path(root)) + "/"
    fix = []
    if "audio_path" in cols:
        fix.append(
            f"CASE WHEN audio_path IS NULL OR starts_with(audio_path, '/') THEN audio_path "
            f"ELSE '{prefix}' || audio_path END AS audio_path"
        )
    if "frame_paths" in cols:
        fix.append(
            f"list_transform(frame_paths, lambda p: CASE WHEN starts_with(p, '/') THEN p "
            f"ELSE '{prefix}' || p END) AS frame_paths"
        )
    return f"SELECT * REPLACE ({', '.join(fix)}) FROM {source}" if fix else f"SELECT * FROM {source}"


def catalog_sources(layout: DataLayout) -> tuple[dict[str, Path], dict[str, Path]]:
    """(views, tables) the data root holds: name -> parquet file, by the names the assets give
    them (a view published under another name lasts until the next update)."""
    from .clipsets import SPECS

    views = {f"audioset_{p.stem}": p for p in sorted(layout.manifests_dir.glob("*.parquet")) if p.is_file()}
    for name in SPECS:
        if layout.clipset_manifest(name).is_file():
            views[name] = layout.clipset_manifest(name)
        folds = layout.folds_dir(name)
        for k in sorted((d.name for d in folds.iterdir() if d.name.isdigit()), key=int) if folds.is_dir() else []:
            for split in ("train", "test"):
                if layout.fold(name, k, split).is_file():
                    views[f"{name}_fold{k}_{split}"] = layout.fold(name, k, split)
    tables = (
        {p.stem: p for p in sorted(layout.tables_dir.glob("*.parquet")) if p.is_file()}
        if layout.tables_dir.is_dir()
        else {}
    )
    return views, tables


def _rebuild(layout: DataLayout, views: dict[str, Path], tables: dict[str, Path]) -> None:
    """Write the catalog of `views` and `tables` (plus `audioset`) to a temporary file and
    rename it onto the catalog. The caller holds `catalog_lock`."""
    import duckdb

    target = layout.catalog
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp*"):  # of writers killed mid-way (none is live)
        stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # DuckDB makes the file: an empty one is not a database to it
    try:
        con = duckdb.connect(str(tmp))
        try:
            for view, path in views.items():
                con.execute(
                    f"CREATE VIEW {_name(view)} AS " + _select(con, f"read_parquet('{_quoted(path)}')", layout.root)
                )
            if any(p.is_file() for p in layout.manifests_dir.glob("*.parquet")):
                con.execute(
                    "CREATE VIEW audioset AS "
                    + _select(
                        con,
                        f"read_parquet('{_quoted(layout.manifests_dir)}/*.parquet', union_by_name=true)",
                        layout.root,
                    )
                )
            # tables, not views: a result's parquet may be replaced while the catalog is read
            for table, path in tables.items():
                con.execute(f"CREATE TABLE {_name(table)} AS SELECT * FROM read_parquet('{_quoted(path)}')")
        finally:
            con.close()
        os.replace(tmp, target)
        # a WAL beside the catalog belongs to the file just replaced (left by a read-write
        # connection that did not close): DuckDB would refuse to open the new one with it
        Path(f"{target}.wal").unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)


def update_catalog(layout: DataLayout, views: dict[str, Path]) -> None:
    """Rebuild the catalog with one view per manifest file of the data root and of `views`
    (name -> parquet), plus `audioset` over every AudioSet partition; file paths in the views
    are absolute (resolved against the data root)."""
    with file_lock(layout.catalog_lock):
        found, tables = catalog_sources(layout)
        _rebuild(layout, {**found, **views}, tables)


def publish_table(layout: DataLayout, name: str, parquet: Path) -> None:
    """Rebuild the catalog with a DuckDB table `name` of a result (not a view: the parquet may
    be replaced while the catalog is read)."""
    with file_lock(layout.catalog_lock):
        views, tables = catalog_sources(layout)
        _rebuild(layout, views, {**tables, name: parquet})


def publish_manifests(
    layout: DataLayout, manifests: dict[str, tuple["pd.DataFrame", Path]]
) -> dict[str, tuple[str, Path]]:
    """Publish manifests and their catalog views as one step that cannot stop half-way:
    `manifests` maps a view name to (table, pointer). Each table is stored as an immutable
    version first; then, under the catalog lock, the pointers move and the catalog is rebuilt -
    and if the rebuild fails, the pointers are put back where they were before the error is
    raised. Returns view name -> (SHA-256, version path)."""
    stored = {view: store_version(df, layout.versions_dir) for view, (df, _) in manifests.items()}
    with file_lock(layout.catalog_lock):
        before = {
            view: (os.readlink(pointer) if pointer.is_symlink() else None) for view, (_, pointer) in manifests.items()
        }
        try:
            for view, (_, pointer) in manifests.items():
                point_to(pointer, stored[view][1])
            found, tables = catalog_sources(layout)
            _rebuild(layout, {**found, **{view: pointer for view, (_, pointer) in manifests.items()}}, tables)
        except BaseException:
            for view, (_, pointer) in manifests.items():
                if before[view] is None:
                    pointer.unlink(missing_ok=True)
                else:
                    point_to(pointer, pointer.parent / before[view])
            raise
    return stored
