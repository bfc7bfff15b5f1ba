"""The one partitioning scheme of the raw layer: a day of ingestion, in UTC."""

import dagster as dg

# A partition holds what changed in the source during that UTC day; history before this date
# is loaded by a backfill of the first partition's window, never by widening the scheme.
DAILY_INGESTION = dg.DailyPartitionsDefinition(start_date="2025-01-01", timezone="UTC")

# The column that ties each row to its partition; IO managers split and replace by it.
PARTITION_COLUMN = "ingestion_date"
