"""Dagster assets and asset checks, one module per step of the lineage."""
