"""A ready `StageSpec` from a data root and the records upstream of a stage: the checkpoint it
starts from (and that parent's digest), the exact manifest versions it reads, the shard sets
that hold their files (packed here when the shards asset has not caught up with a manifest),
the towers stage 2 distils into. What a training asset passes in is its resolved config and
names; everything about the data is worked out here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..files import keep_version, read_version_parquet, sha256_file, verified_version
from ..layout import DataLayout
from .config import TrainConfig
from .spec import StageSpec
from .towers import published_towers

Log = Optional[Callable[[str], None]]


def manifest_entry(path: Path, rows: int, store: Optional[Path] = None) -> dict:
    """A manifest a stage trains on: path, digest, usable rows; with `store`, the exact
    version is kept there (content-addressed) and named, so the clips stay listable after the
    manifest moves on (`audioclip lineage CKPT --clips`). A version (or a pointer to one) is
    checked against its name (`files.CorruptVersion`), never trusted."""
    if store is None:
        return {"path": str(path), "sha256": verified_version(Path(path))[0], "rows": int(rows)}
    sha, version = keep_version(Path(path), store)
    return {"path": str(path), "sha256": sha, "rows": int(rows), "version": str(version)}


def upstream_checkpoint(layout: DataLayout, name: str) -> Path:
    path = layout.checkpoint(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"upstream checkpoint {path} not found: materialise {name} first, or set "
            "init_checkpoint to start from a released checkpoint"
        )
    return path


def parent_record(path: Path, name: str) -> dict:
    """What a stage's lineage names as its parent: the file, its sha256 (taken once, here) and
    whose it is."""
    return {"path": str(path), "sha256": sha256_file(Path(path)), "name": name}


def start_from(
    layout: DataLayout, init_checkpoint: str, upstream: Optional[str]
) -> tuple[Optional[str], Optional[dict]]:
    """(init checkpoint, parent record): the released checkpoint asked for, else the upstream
    stage's, else none."""
    if init_checkpoint:
        return init_checkpoint, parent_record(Path(init_checkpoint), "released")
    if upstream:
        path = upstream_checkpoint(layout, upstream)
        return str(path), parent_record(path, upstream)
    return None, None


def shards_for(layout: DataLayout, name: str, entry: dict, asset: str, log: Log = None) -> str:
    """The shard set of `name` that holds the manifest version `entry` names - the current one,
    or, when `asset` was not re-materialised since the manifest changed (a scheduled
    re-training), packed here (the same version is never packed twice). `entry` records it:
    folder, the digests of its record and of every shard."""
    from ..data.shards import current_shards, publish_shards, shards_entry

    folder = current_shards(layout, name)
    shards = shards_entry(folder, layout.root) if folder is not None else None
    if shards is None or shards["source_sha256"] != entry["sha256"]:
        if log is not None:
            log(
                f"the shards of {name} do not hold manifest {entry['sha256'][:16]} ({asset} not re-materialised "
                "since it changed): packing them now"
            )
        folder, _, _ = publish_shards(layout, name, Path(entry.get("version") or entry["path"]))
        shards = shards_entry(folder, layout.root)
    entry["shards"] = shards
    return str(folder)


def training_partitions(asked: list[str], available: list[str], profile: str) -> list[str]:
    """The AudioSet partitions a stage trains on: those asked for; else every training
    partition with a segment list (all but eval and demo) for the paper profile, and
    balanced_train for the demo."""
    if asked:
        return list(asked)
    if profile == "demo":
        return ["balanced_train"]
    found = [p for p in available if p not in ("eval", "demo")]
    if not found:
        raise FileNotFoundError("no AudioSet training partition has a segment list")
    return found


def audioset_inputs(layout: DataLayout, partitions: list[str], log: Log = None):
    """(tables, manifest entries, shard sets) of the AudioSet partitions a stage trains on:
    each partition's manifest version kept and named, and the shard set holding it."""
    tables, entries, shards = [], {}, []
    for p in partitions:
        path = layout.audioset_manifest(p)
        if not path.is_file():
            raise FileNotFoundError(f"AudioSet manifest {path} missing: materialise audioset_manifest[{p}] first")
        entry = manifest_entry(path, 0, store=layout.versions_dir)
        status = read_version_parquet(Path(entry["version"]), columns=["status"])["status"]
        entry["rows"] = int((status == "ok").sum())  # the clips actually used
        tables.append(entry["version"])  # train on the version the lineage names
        shards.append(shards_for(layout, f"audioset_{p}", entry, f"audioset_shards[{p}]", log))
        entries[f"audioset_{p}"] = entry
    return tables, entries, shards


def audioset_spec(
    layout: DataLayout,
    stage: str,
    cfg: TrainConfig,
    *,
    name: str,
    partitions: list[str],
    class_ids: list[str],
    upstream: Optional[str] = None,
    init_checkpoint: str = "",
    clip_weights: str = "",
    imagenet_weights: str = "",
    profile: str = "paper",
    log: Log = None,
) -> StageSpec:
    """The spec of an AudioSet stage (stand-in towers, stages 1-3) run as `name`."""
    tables, manifests, shards = audioset_inputs(layout, partitions, log)
    init, parent = start_from(layout, init_checkpoint, upstream)
    towers, extra = clip_weights or None, {}
    if stage == "audioclip_partial" and not towers:  # the towers the clip_towers asset published
        record = published_towers(layout)
        if record["kind"] != "standin" or profile == "demo":  # the paper never distils into the stand-in
            towers, extra = record["path"], {"clip_towers": record}
    return StageSpec(
        name=name,
        stage=stage,
        config=cfg.to_dict(),
        workdir=str(layout.checkpoint_dir(name)),
        tables=tables,
        manifests=manifests,
        class_ids=list(class_ids),
        init=init,
        parent=parent,
        clip_weights=towers,
        imagenet_weights=imagenet_weights or None,
        data_root=str(layout.root),
        extra_lineage=extra,
        shards=shards,
    )


def finetune_spec(
    layout: DataLayout,
    name: str,
    dataset: str,
    fold: int,
    cfg: TrainConfig,
    *,
    upstream: Optional[str],
    init_checkpoint: str = "",
    log: Log = None,
) -> StageSpec:
    """The spec of fine-tuning `name` on fold `fold` of the clip set `dataset`: the fold's train
    split (its version kept), the clip set's shards, its classes, the parent checkpoint."""
    from ..data.clipsets import class_names

    train_path = layout.fold(dataset, fold, "train")
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} missing: materialise {dataset}_folds[{fold}] first")
    entry = manifest_entry(train_path, 0, store=layout.versions_dir)
    entry["rows"] = len(read_version_parquet(Path(entry["version"]), columns=["path"]))
    manifest = read_version_parquet(layout.clipset_manifest(dataset), columns=["class_id", "class_name"])
    classes = class_names(manifest)
    init, parent = start_from(layout, init_checkpoint, upstream)
    source = manifest_entry(layout.clipset_manifest(dataset), 0)
    shards = shards_for(layout, dataset, source, f"{dataset}_shards", log)
    entry["shards"] = source["shards"]
    return StageSpec(
        name=name,
        stage=cfg.stage,
        config=cfg.to_dict(),
        workdir=str(layout.checkpoint_dir(name, fold)),
        tables=[entry["version"]],
        manifests={f"{dataset}_fold{fold}_train": entry},
        classes=classes,
        init=init,
        parent=parent,
        extra_lineage={"fold": int(fold), "classes": classes, "dataset": dataset},
        data_root=str(layout.root),
        shards=[shards],
    )
