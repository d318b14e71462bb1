"""Dagster assets and asset checks, one module per step of the lineage."""

import warnings

import dagster as dg

# backfill policies (the fold assets batch their partitions into runs) are a beta parameter of
# `asset`; the warning would repeat in every process that loads the code location
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
