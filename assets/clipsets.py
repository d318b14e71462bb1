"""ESC-50 and UrbanSound8K: validated manifests and the official folds (never reshuffled)."""

import dagster as dg
import pandas as pd

from audioclip_core.data.catalog import publish_manifests
from audioclip_core.data.clipsets import SPECS, count_warnings, fold_split, read_metadata, validate
from audioclip_core.data.manifests import relative_paths
from audioclip_core.files import read_version_parquet

from .metadata import each_partition, markdown_table
from .resources import DataRoot, DatasetSources
from .sources import dataset_sources

GROUP = "downstream"
esc50_fold_partitions = dg.StaticPartitionsDefinition([str(k) for k in range(1, 6)])
us8k_fold_partitions = dg.StaticPartitionsDefinition([str(k) for k in range(1, 11)])


def _manifest(name: str, context, data_root: DataRoot, sources: DatasetSources) -> dg.MaterializeResult:
    spec, layout = SPECS[name], data_root.layout
    root = getattr(sources, name)(layout)
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
        dg.AssetCheckResult(check_name="every_row_has_its_file", passed=not report["missing"] and not report["unreadable"],
                            metadata={"missing": len(report["missing"]), "unreadable": len(report["unreadable"]),
                                      "extra": len(report["extra"]), "examples": (report["missing"] + report["unreadable"])[:10]}),
        dg.AssetCheckResult(check_name="published_counts", passed=not warnings, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"differences": warnings[:20] or ["none"]}),
    ]
    return dg.MaterializeResult(
        metadata={"clips": len(df), "ok": len(ok), "classes": int(df["class_id"].nunique()), "source": str(root),
                  "sha256": digest, "path": dg.MetadataValue.path(str(out)), "duckdb_view": name,
                  "version": dg.MetadataValue.path(str(version)),
                  "preview": dg.MetadataValue.md(markdown_table(df[["path", "fold", "class_name", "status", "duration"]]))},
        data_version=dg.DataVersion(digest[:16]), check_results=checks)


def _folds(name: str, context, data_root: DataRoot) -> dg.MaterializeResult:
    return each_partition(context, lambda key: _fold(name, int(key), data_root))


def _fold(name: str, fold: int, data_root: DataRoot) -> dg.MaterializeResult:
    layout = data_root.layout
    df = read_version_parquet(layout.clipset_manifest(name))
    usable = df[df["status"] == "ok"]
    train, test = fold_split(usable.to_dict("records"), fold)
    train_path, test_path = layout.fold(name, fold, "train"), layout.fold(name, fold, "test")
    published = publish_manifests(layout, {f"{name}_fold{fold}_train": (pd.DataFrame(train, columns=df.columns), train_path),
                                           f"{name}_fold{fold}_test": (pd.DataFrame(test, columns=df.columns), test_path)})
    (d_train, _), (d_test, _) = published.values()
    train_ids = {r["path"] for r in train}
    test_ids = {r["path"] for r in test}
    check = dg.AssetCheckResult(
        check_name="disjoint_and_covering", passed=not (train_ids & test_ids) and len(train_ids | test_ids) == len(usable),
        metadata={"train": len(train_ids), "test": len(test_ids), "usable": len(usable), "overlap": len(train_ids & test_ids)})
    return dg.MaterializeResult(
        metadata={"fold": fold, "train": len(train), "test": len(test),
                  "test_classes": len({r["class_id"] for r in test}),
                  "train_path": dg.MetadataValue.path(str(train_path)),
                  "test_path": dg.MetadataValue.path(str(test_path))},
        data_version=dg.DataVersion(f"{d_train[:8]}{d_test[:8]}"), check_results=[check])


_MANIFEST_CHECKS = lambda name: [  # noqa: E731
    dg.AssetCheckSpec("every_row_has_its_file", asset=name,
                      description="Every metadata row has a readable audio file (rows without one are left out of "
                                  "the folds and listed)"),
    dg.AssetCheckSpec("published_counts", asset=name,
                      description="Clip, fold and class counts against the published ones (a warning when they "
                                  "differ, as for a subset)")]


# all folds of a backfill in one run: writing a split takes less than starting a run
ALL_FOLDS_IN_ONE_RUN = dg.BackfillPolicy.single_run()
_FOLD_CHECK = "Train and test share no clip and together hold every usable clip; blocks fine-tuning when it fails"


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"}, check_specs=_MANIFEST_CHECKS("esc50_manifest"),
          deps=[dataset_sources],
          description="ESC-50 (meta/esc50.csv + audio/) validated file by file: sample rate, channels, duration.")
def esc50_manifest(context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources):
    return _manifest("esc50", context, data_root, sources)


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"}, check_specs=_MANIFEST_CHECKS("us8k_manifest"),
          deps=[dataset_sources],
          description="UrbanSound8K (metadata/UrbanSound8K.csv + audio/foldN/) validated file by file.")
def us8k_manifest(context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources):
    return _manifest("us8k", context, data_root, sources)


@dg.asset(group_name=GROUP, partitions_def=esc50_fold_partitions, deps=[esc50_manifest], kinds={"parquet"},
          backfill_policy=ALL_FOLDS_IN_ONE_RUN,
          check_specs=[dg.AssetCheckSpec("disjoint_and_covering", asset="esc50_folds", blocking=True,
                                       description=_FOLD_CHECK)],
          description="Official ESC-50 fold k: test = fold k, train = the other four.")
def esc50_folds(context: dg.AssetExecutionContext, data_root: DataRoot):
    return _folds("esc50", context, data_root)


@dg.asset(group_name=GROUP, partitions_def=us8k_fold_partitions, deps=[us8k_manifest], kinds={"parquet"},
          backfill_policy=ALL_FOLDS_IN_ONE_RUN,
          check_specs=[dg.AssetCheckSpec("disjoint_and_covering", asset="us8k_folds", blocking=True,
                                       description=_FOLD_CHECK)],
          description="Official UrbanSound8K fold k: test = fold k, train = the other nine.")
def us8k_folds(context: dg.AssetExecutionContext, data_root: DataRoot):
    return _folds("us8k", context, data_root)
