"""The clip sets of `audioclip_core.data.clipsets.SPECS` (ESC-50, UrbanSound8K): validated
manifests and the official folds (never reshuffled), built from each set's spec.

Every spec gets `<name>_manifest` (the metadata validated file by file), `<name>_folds` (one
static partition per official fold, from the spec's fold count) and, in `assets/shards.py`,
`<name>_shards`. A set added to `SPECS` gets all three, and its folder from
`DatasetSources.clipset`; `clipset_assets(specs)` builds them for a spec entered in `SPECS`
after this module was imported (as a test does).
"""

from typing import Iterable, Iterator

import dagster as dg
import pandas as pd

from audioclip_core.data.catalog import publish_manifests
from audioclip_core.data.clipsets import SPECS, ClipSetSpec, count_warnings, fold_split, read_metadata, validate
from audioclip_core.data.manifests import relative_paths
from audioclip_core.files import read_version_parquet

from .metadata import each_partition, partitioned_check, status_preview
from .resources import DataRoot, DatasetSources
from .shards import clipset_shards
from .sources import dataset_sources

GROUP = "downstream"


def _manifest(spec: ClipSetSpec, context, data_root: DataRoot, sources: DatasetSources) -> dg.MaterializeResult:
    name, layout = spec.name, data_root.layout
    root = sources.clipset(name, layout)
    rows = read_metadata(root, spec)
    manifest, report = validate(root, spec, rows)
    df = pd.DataFrame(manifest)
    df["audio_path"] = [str((root / p).resolve()) for p in df["path"]]
    df = relative_paths(df, layout.root)
    out = layout.clipset_manifest(name)
    ((digest, version),) = publish_manifests(layout, {name: (df, out)}).values()
    for kind in ("missing", "unreadable", "extra"):
        if report[kind]:
            context.log.warning(f"{name}: {len(report[kind])} {kind} files, e.g. {report[kind][:3]}")
    ok = df[df["status"] == "ok"]
    warnings = count_warnings(spec, rows)
    checks = [
        dg.AssetCheckResult(
            check_name="every_row_has_its_file",
            passed=not report["missing"] and not report["unreadable"],
            metadata={
                "missing": len(report["missing"]),
                "unreadable": len(report["unreadable"]),
                "extra": len(report["extra"]),
                "examples": (report["missing"] + report["unreadable"])[:10],
            },
        ),
        dg.AssetCheckResult(
            check_name="published_counts",
            passed=not warnings,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"differences": warnings[:20] or ["none"]},
        ),
    ]
    return dg.MaterializeResult(
        metadata={
            "clips": len(df),
            "ok": len(ok),
            "classes": int(df["class_id"].nunique()),
            "source": str(root),
            "sha256": digest,
            "path": dg.MetadataValue.path(str(out)),
            "duckdb_view": name,
            "version": dg.MetadataValue.path(str(version)),
            "preview": dg.MetadataValue.md(status_preview(df, ["path", "fold", "class_name", "status", "duration"])),
        },
        data_version=dg.DataVersion(digest[:16]),
        check_results=checks,
    )


def _folds(name: str, context, data_root: DataRoot) -> Iterator:
    yield from each_partition(context, lambda key: _fold(name, int(key), data_root))


def _fold(name: str, fold: int, data_root: DataRoot) -> dg.MaterializeResult:
    layout = data_root.layout
    df = read_version_parquet(layout.clipset_manifest(name))
    usable = df[df["status"] == "ok"]
    train, test = fold_split(usable.to_dict("records"), fold)
    train_path, test_path = layout.fold(name, fold, "train"), layout.fold(name, fold, "test")
    published = publish_manifests(
        layout,
        {
            f"{name}_fold{fold}_train": (pd.DataFrame(train, columns=df.columns), train_path),
            f"{name}_fold{fold}_test": (pd.DataFrame(test, columns=df.columns), test_path),
        },
    )
    (d_train, _), (d_test, _) = published.values()
    train_ids = {r["path"] for r in train}
    test_ids = {r["path"] for r in test}
    check = dg.AssetCheckResult(
        check_name="disjoint_and_covering",
        passed=not (train_ids & test_ids) and len(train_ids | test_ids) == len(usable),
        metadata={
            "train": len(train_ids),
            "test": len(test_ids),
            "usable": len(usable),
            "overlap": len(train_ids & test_ids),
        },
    )
    return dg.MaterializeResult(
        metadata={
            "fold": fold,
            "train": len(train),
            "test": len(test),
            "test_classes": len({r["class_id"] for r in test}),
            "train_path": dg.MetadataValue.path(str(train_path)),
            "test_path": dg.MetadataValue.path(str(test_path)),
        },
        data_version=dg.DataVersion(f"{d_train[:8]}{d_test[:8]}"),
        check_results=[check],
    )


def _manifest_checks(name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "every_row_has_its_file",
            asset=name,
            description="Every metadata row has a readable audio file (rows without one are left "
            "out of the folds and listed)",
        ),
        dg.AssetCheckSpec(
            "published_counts",
            asset=name,
            description="Clip, fold and class counts against the published ones (a warning when "
            "they differ, as for a subset)",
        ),
    ]


# all folds of a backfill in one run: writing a split takes less than starting a run
ALL_FOLDS_IN_ONE_RUN = dg.BackfillPolicy.single_run()
_FOLD_CHECK = "Train and test share no clip and together hold every usable clip; blocks fine-tuning when it fails"
_COUNTS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def fold_partitions(spec: ClipSetSpec) -> dg.StaticPartitionsDefinition:
    """One partition per official fold of `spec`: "1" .. str(num_folds)."""
    return dg.StaticPartitionsDefinition([str(k) for k in spec.folds])


def manifest_asset(spec: ClipSetSpec) -> dg.AssetsDefinition:
    """`<name>_manifest`: the set's metadata validated file by file, from the folder that
    `DatasetSources.clipset` resolves."""
    name = f"{spec.name}_manifest"

    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"parquet", "duckdb"},
        check_specs=_manifest_checks(name),
        deps=[dataset_sources],
        description=f"{spec.title} ({spec.metadata} + {spec.audio_layout}) validated file by file: sample "
        "rate, channels, duration.",
    )
    def _asset(context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources):
        return _manifest(spec, context, data_root, sources)

    return _asset


def folds_asset(
    spec: ClipSetSpec, manifest: dg.AssetsDefinition, partitions: dg.StaticPartitionsDefinition
) -> dg.AssetsDefinition:
    """`<name>_folds`: fold k's train and test splits of `manifest`, one partition per fold."""
    name, others = f"{spec.name}_folds", spec.num_folds - 1

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=partitions,
        deps=[manifest],
        kinds={"parquet"},
        backfill_policy=ALL_FOLDS_IN_ONE_RUN,
        check_specs=[
            partitioned_check("disjoint_and_covering", name, partitions, blocking=True, description=_FOLD_CHECK)
        ],
        description=f"Official {spec.title} fold k: test = fold k, train = the other "
        f"{_COUNTS[others] if others < len(_COUNTS) else others}.",
    )
    def _asset(context: dg.AssetExecutionContext, data_root: DataRoot):
        yield from _folds(spec.name, context, data_root)

    return _asset


def clipset_assets(specs: Iterable[ClipSetSpec]) -> list[dg.AssetsDefinition]:
    """The manifest, folds and shards assets of each of `specs`, built anew: for Definitions
    with a clip set entered in `SPECS` after this module was imported (those of `SPECS` at import
    are the modules' own). The folder, the protocol and the DuckDB views find a set in `SPECS`."""
    out = []
    for spec in specs:
        manifest = manifest_asset(spec)
        out += [manifest, folds_asset(spec, manifest, fold_partitions(spec)), clipset_shards(spec)]
    return out


# clip-set name -> its assets and fold partitions, for the modules that build on them
# (fine-tuning, evaluation); the list is what `load_assets_from_modules` finds
MANIFESTS: dict[str, dg.AssetsDefinition] = {}
FOLD_PARTITIONS: dict[str, dg.StaticPartitionsDefinition] = {}
FOLDS: dict[str, dg.AssetsDefinition] = {}
for _name, _spec in SPECS.items():
    MANIFESTS[_name] = manifest_asset(_spec)
    FOLD_PARTITIONS[_name] = fold_partitions(_spec)
    FOLDS[_name] = folds_asset(_spec, MANIFESTS[_name], FOLD_PARTITIONS[_name])
CLIPSET_ASSETS = [*MANIFESTS.values(), *FOLDS.values()]

# the names other modules import
esc50_manifest, us8k_manifest = MANIFESTS["esc50"], MANIFESTS["us8k"]
esc50_fold_partitions, us8k_fold_partitions = FOLD_PARTITIONS["esc50"], FOLD_PARTITIONS["us8k"]
esc50_folds, us8k_folds = FOLDS["esc50"], FOLDS["us8k"]
