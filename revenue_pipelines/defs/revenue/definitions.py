"""The unified revenue model (account identity, marts), and the cross-source job and its schedule."""

from datetime import UTC, timedelta

import dagster as dg

from revenue_pipelines.defs.revenue.identity import account_identity
from revenue_pipelines.defs.revenue.marts import account_records, accounts, pipeline
from revenue_pipelines.defs.revenue.metrics import channel_attribution, daily_revenue_metrics
from revenue_pipelines.environment import get_environment
from revenue_pipelines.lib.partitions import DAILY_INGESTION

# Every source, the unified model built on them, the Slack digest of it (when Slack is on) and the routes
# that deliver it.
GROUPS = ["hubspot", "salesforce", "ga4", "bigquery", "revenue", "slack", "routes"]

daily_revenue_job = dg.define_asset_job(
    "daily_revenue_job",
    selection=dg.AssetSelection.key_prefixes(*([group] for group in GROUPS)),
    partitions_def=DAILY_INGESTION,
    description=(
        "Ingests, checks and stores one day of every source, brings the current state up to that day and "
        "builds the unified revenue model on it, then posts the day's digest to Slack and delivers the routes; "
        "as a single-run backfill, a whole range of days."
    ),
)


@dg.schedule(
    name="daily_revenue_job_schedule",
    job=daily_revenue_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    description="Every day at 01:00 UTC, the previous day's partition.",
)
def daily_revenue_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Yesterday, named from the tick's time: the partitions now run to today (`end_offset=1`, for
    the webhook-driven runs), so the last partition is no longer the day to complete."""
    day = (context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=day, partition_key=day)


defs = dg.Definitions(
    assets=[account_identity, pipeline, accounts, account_records, daily_revenue_metrics, channel_attribution],
    jobs=[daily_revenue_job],
    schedules=[daily_revenue_schedule],
    resources={"reference": get_environment().reference},
)
