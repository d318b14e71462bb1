"""Training shards (`audioclip_core.data.shards`): each manifest's clips packed into tar files
of a few hundred MB with an index and digests, which the training stages read instead of
millions of small files. Packing checks every clip's audio against the SHA-256 its manifest
recorded (a clip changed since extraction fails the step, naming it). A blocking check
compares every shard with the digest its record gives (re-hashing a set kept from an earlier
run)."""

import dagster as dg

from audioclip_core.data.clipsets import SPECS, ClipSetSpec
from audioclip_core.data.shards import publish_shards, verify_shards

from .audioset import audioset_manifest
from .metadata import partitioned_check, progress_logger
from .resources import DataRoot
from .sources import audioset_partitions

GROUP = "shards"


def _check(name: str, partitions_def=None) -> list[dg.AssetCheckSpec]:
    return [
        partitioned_check(
            "shards_match_record",
            name,
            partitions_def,
            blocking=True,
            description="Every shard and the index are present and hash to the SHA-256 their "
            "record gives (a set packed now was hashed as written, from clips "
            "checked against their manifest's SHA-256; a set kept from an earlier "
            "run is re-hashed); blocks the training stages that read them",
        )
    ]


def _materialize(context, layout, name: str, manifest_path) -> dg.MaterializeResult:
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} missing: materialise its manifest first")
    folder, record, fresh = publish_shards(layout, name, manifest_path, progress=progress_logger(context, name))
    # a set packed now was hashed as it was written, its clips checked against the manifest's
    # digests (a mismatch raised); a set kept from before is hashed again
    problems = [] if fresh else verify_shards(folder)
    return dg.MaterializeResult(
        metadata={
            "samples": record["samples"],
            "shards": len(record["shards"]),
            "bytes": record["bytes"],
            "packed_now": fresh,
            "folder": dg.MetadataValue.path(str(folder)),
            "record": dg.MetadataValue.path(str(folder / "shards.json")),
            "manifest_sha256": record["source_sha256"],
            "index_sha256": record["index_sha256"],
        },
        data_version=dg.DataVersion(record["index_sha256"][:16]),
        check_results=[
            dg.AssetCheckResult(
                check_name="shards_match_record",
                passed=not problems,
                metadata={
                    "problems": problems[:20],
                    "how": "clips verified and hashed as packed" if fresh else "re-hashed",
                },
            )
        ],
    )


@dg.asset(
    partitions_def=audioset_partitions,
    group_name=GROUP,
    deps=[audioset_manifest],
    kinds={"tar", "parquet"},
    check_specs=_check("audioset_shards", audioset_partitions),
    description="The partition's usable clips (WAV, 10 JPEG frames, labels) packed into WebDataset-style tar "
    "shards with an index (member offsets, clip ids) and a record of digests; a new manifest "
    "version gets new shards, the same version is not packed twice.",
)
def audioset_shards(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    layout = data_root.layout
    p = context.partition_key
    return _materialize(context, layout, f"audioset_{p}", layout.audioset_manifest(p))


def clipset_shards(spec: ClipSetSpec) -> dg.AssetsDefinition:
    """The shards asset `<name>_shards` of a clip set. Its manifest is named by key, not
    imported: `assets/clipsets.py` builds the manifest, and `clipset_assets` these shards beside it."""
    dataset = spec.name

    @dg.asset(
        name=f"{dataset}_shards",
        group_name=GROUP,
        deps=[dg.AssetKey(f"{dataset}_manifest")],
        kinds={"tar", "parquet"},
        check_specs=_check(f"{dataset}_shards"),
        description=f"The {dataset} manifest's clips packed into tar shards with an index and digests; the "
        "fold fine-tunes read their split's clips from them.",
    )
    def _asset(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
        layout = data_root.layout
        return _materialize(context, layout, dataset, layout.clipset_manifest(dataset))

    return _asset


# clip-set name -> its shards asset; the list is what `load_assets_from_modules` finds
CLIPSET_SHARDS: dict[str, dg.AssetsDefinition] = {name: clipset_shards(spec) for name, spec in SPECS.items()}
CLIPSET_SHARD_ASSETS = list(CLIPSET_SHARDS.values())
# the names other modules import
esc50_shards = CLIPSET_SHARDS["esc50"]
us8k_shards = CLIPSET_SHARDS["us8k"]
