"""GA4 keeps processing a day for a while after it ends: recent days are pulled again each morning,
from the Data API and from the BigQuery export alike."""

from datetime import timedelta

import dagster as dg

from revenue_pipelines.defs.bigquery.assets import ga4_events
from revenue_pipelines.lib.partitions import DAILY_INGESTION

LATE_DATA_DAYS = 3

ga4_late_data_job = dg.define_asset_job(
    "ga4_late_data_job",
    selection=dg.AssetSelection.key_prefixes(["ga4"]) | dg.AssetSelection.assets(ga4_events),
    partitions_def=DAILY_INGESTION,
    description="Every GA4 report and GA4's BigQuery export over a range of days, as one run: the late-data re-pull.",
)


def late_data_schedule(days: int = LATE_DATA_DAYS) -> dg.ScheduleDefinition:
    """Every day at 05:00 UTC, the last `days` complete days again, in one run replacing their partitions."""

    @dg.schedule(
        name="ga4_late_data_schedule",
        job=ga4_late_data_job,
        cron_schedule="0 5 * * *",
        execution_timezone="UTC",
        description=f"Every day at 05:00 UTC, re-pulls the last {days} days of every GA4 report and of the "
        "BigQuery export: GA4 revises recent days for up to 72 hours, and each re-pull replaces those partitions.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        today = context.scheduled_execution_time.date()
        first, last = today - timedelta(days=days), today - timedelta(days=1)
        return dg.RunRequest(
            run_key=f"{first}..{last}",
            tags={
                "dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": last.isoformat(),
            },
        )

    return _schedule


ga4_late_data_schedule = late_data_schedule()
