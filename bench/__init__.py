"""The benchmarks, run by hand (`make bench`): each prints a table."""

import warnings

import dagster as dg

# The asset modules the benchmarks import use beta parameters (`backfill_policy`); pytest filters this too.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
