"""The one partitioning scheme of the raw layer: a day of ingestion, in UTC."""

import dagster as dg

# A partition holds what changed in the source during that UTC day; history before this date
# is loaded by a backfill of the first partition's window, never by widening the scheme.
# `end_offset=1`: today's partition exists, so a change made today (a webhook, `crm_change_sensor`)
# is ingested today; it is re-run whole by the next morning's schedule once the day is complete.
DAILY_INGESTION = dg.DailyPartitionsDefinition(start_date="2025-01-01", timezone="UTC", end_offset=1)

# The column that ties each row to its partition; IO managers split and replace by it.
PARTITION_COLUMN = "ingestion_date"
