"""Dagster Definitions: resources, partitions, jobs, schedules and the asset modules of `assets/`.

The asset modules (data lineage, training stages, evaluation tables) are added here as
they are built; `dagster dev -w workspace.yaml` shows them.
"""
from dagster import Definitions

defs = Definitions(assets=[])
