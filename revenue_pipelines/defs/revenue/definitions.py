"""The cross-source job and its schedule: every source's raw tables, one partition per day."""

import dagster as dg

from revenue_pipelines.lib.partitions import DAILY_INGESTION

SOURCES = ["hubspot", "salesforce", "ga4", "bigquery"]

daily_revenue_job = dg.define_asset_job(
    "daily_revenue_job",
    selection=dg.AssetSelection.key_prefixes(*([source] for source in SOURCES)),
    partitions_def=DAILY_INGESTION,
    description=(
        "Ingests, checks and stores one day of every source; as a single-run backfill, a whole range of days."
    ),
)

daily_revenue_schedule = dg.build_schedule_from_partitioned_job(
    daily_revenue_job,
    hour_of_day=1,
    description="Every day at 01:00 UTC, the previous day's partition.",
)

defs = dg.Definitions(jobs=[daily_revenue_job], schedules=[daily_revenue_schedule])
