"""The root of the lineage: the source folders, and the AudioSet partitions that they hold.

`dataset_sources` resolves the AudioSet folder and those of the clip sets of
`audioclip_core.data.clipsets.SPECS` - ESC-50, UrbanSound8K - (generating the built-in demo
dataset once, under a lock, when none is configured; fetching an official archive when a
URL is given; with the demo dataset, its class names are written to
`<data root>/labels/demo_classes.txt` for `audioclip classify --labels-file`) and registers
one AudioSet partition per segment list that exists - `eval`, `balanced_train`, `demo`, and
`unbalanced_NN` per 50,000 rows of the unbalanced list - so nothing runs, or fails, for a list
that is absent. The sensor
`audioset_partitions_from_sources` (running by default) registers the partitions of a list
added later, e.g. `unbalanced_train_segments.csv`.
"""

import hashlib
import json

import dagster as dg

from audioclip_core.files import sha256_file

from .resources import DataRoot, DatasetSources

GROUP = "sources"
audioset_partitions = dg.DynamicPartitionsDefinition(name="audioset_partition")


def missing_audioset_partitions(
    instance: dg.DagsterInstance, sources: DatasetSources, data_root: DataRoot
) -> list[str]:
    """The partitions of the segment lists that exist and are not registered yet."""
    known = set(instance.get_dynamic_partitions(audioset_partitions.name))
    return [p for p in sources.audioset_partitions(data_root.layout) if p not in known]


def register_audioset_partitions(
    instance: dg.DagsterInstance, sources: DatasetSources, data_root: DataRoot
) -> list[str]:
    """Add the partitions of the segment lists that exist; returns the ones added."""
    new = missing_audioset_partitions(instance, sources, data_root)
    if new:
        instance.add_dynamic_partitions(audioset_partitions.name, new)
    return new


@dg.asset(
    group_name=GROUP,
    kinds={"csv"},
    description="The source folders (AudioSet lists, ESC-50, UrbanSound8K; the built-in demo dataset, generated "
    "once under a lock, when none is configured) and the AudioSet partitions they hold.",
)
def dataset_sources(
    context: dg.AssetExecutionContext, data_root: DataRoot, sources: DatasetSources
) -> dg.MaterializeResult:
    from audioclip_core.data.audioset import partition_file
    from audioclip_core.data.clipsets import SPECS

    layout = data_root.layout
    folders = {"audioset": sources.audioset(layout), **{name: sources.clipset(name, layout) for name in SPECS}}
    new = register_audioset_partitions(context.instance, sources, data_root)
    partitions = sources.audioset_partitions(layout)
    if new:
        context.log.info(f"AudioSet partitions registered: {', '.join(new)}")
    labels = {}
    if any(folder.is_relative_to(layout.demo_source) for folder in folders.values()):
        from audioclip_core.data.demo_dataset import write_labels_file

        # the demo's class names for `audioclip classify --labels-file` (the README's example)
        labels["labels_file"] = dg.MetadataValue.path(str(write_labels_file(layout.labels_file("demo_classes"))))
    digests = {}
    for p in partitions:
        name = partition_file(p)
        if name not in digests:
            digests[name] = sha256_file(folders["audioset"] / name)
    return dg.MaterializeResult(
        metadata={
            **{name: dg.MetadataValue.path(str(folder)) for name, folder in folders.items()},
            "demo": sources.audioset_is_demo(),
            "audioset_partitions": partitions,
            "segment_lists": digests,
            **labels,
        },
        data_version=dg.DataVersion(hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]),
    )


@dg.sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Registers an AudioSet partition for every segment list found in the AudioSet folder "
    "(e.g. the shards of a newly added unbalanced_train_segments.csv).",
)
def audioset_partitions_from_sources(context: dg.SensorEvaluationContext, data_root: DataRoot, sources: DatasetSources):
    new = missing_audioset_partitions(context.instance, sources, data_root)
    if not new:
        return dg.SkipReason("every AudioSet segment list present has its partition")
    return dg.SensorResult(dynamic_partitions_requests=[audioset_partitions.build_add_request(new)])
