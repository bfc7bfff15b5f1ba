"""`slack/outputs/daily_revenue_digest`: each day's revenue digest, posted to the team's channel by
the Slack IO manager (`lib/slack.py`)."""

from datetime import date

import dagster as dg
import polars as pl

from revenue_pipelines.defs.revenue.marts import PIPELINE_KEY
from revenue_pipelines.defs.revenue.metrics import METRICS_KEY
from revenue_pipelines.defs.slack import digest
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.raw_assets import OWNERS
from revenue_pipelines.lib.slack import DayDigest, Digests, PostedDigest

DIGEST_KEY = dg.AssetKey(["slack", "outputs", "daily_revenue_digest"])
DIGEST_IO_MANAGER = "slack_digest_io_manager"  # as the Environment names it
# The day and the 30 before it: the trailing averages and the chart's month.
TRAILING_MONTH = dg.TimeWindowPartitionMapping(
    start_offset=-max(digest.TRAILING), allow_nonexistent_upstream_partitions=True
)


def daily_revenue_digest_asset() -> dg.AssetsDefinition:
    """The digest asset; built only where Slack is on (`defs/slack/definitions.py`), since its IO
    manager is Slack's."""

    @dg.asset(
        key=DIGEST_KEY,
        description=(
            "The day's revenue digest in the team's Slack channel: new pipeline, won and lost deals, win rate and "
            "sales cycle against the trailing 7 and 30 days, the top deals won, the data-quality line, and a chart of "
            "the last 30 days by channel. One message per day: a re-run updates it."
        ),
        ins={
            "metrics": dg.AssetIn(
                METRICS_KEY, partition_mapping=TRAILING_MONTH, metadata={"allow_missing_partitions": True}
            ),
            "pipeline": dg.AssetIn(PIPELINE_KEY),
        },
        io_manager_key=DIGEST_IO_MANAGER,
        group_name="slack",
        kinds={"slack", "polars"},
        owners=OWNERS,
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="slack",
    )
    def daily_revenue_digest(
        context: dg.AssetExecutionContext, metrics: pl.DataFrame | None, pipeline: pl.DataFrame
    ) -> Digests:
        metrics = metrics if metrics is not None else pl.DataFrame(schema={PARTITION_COLUMN: pl.Date})
        days = []
        warnings = fired_warnings(context)  # checks keep their latest result, not one per day
        for partition_key in context.partition_keys:
            day = date.fromisoformat(partition_key)
            text, blocks = digest.blocks(day, metrics, pipeline, quality(context, day, warnings))
            png, channels = digest.chart(metrics, day)
            days.append(
                DayDigest(
                    day=partition_key,
                    text=text,
                    blocks=blocks,
                    chart_png=png,
                    chart_alt_text=f"New pipeline and won revenue per day for 30 days to {day}, by channel: "
                    + ", ".join(channels),
                    previous=previously_posted(context.instance, partition_key),
                )
            )
        return Digests(days)

    return daily_revenue_digest


def previously_posted(instance: dg.DagsterInstance, day: str) -> PostedDigest | None:
    """Where the day's digest was posted, from its latest materialization's metadata."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DIGEST_KEY, asset_partitions=[day]), limit=1
    ).records
    if not records:
        return None
    messages = records[0].asset_materialization.metadata.get("messages")
    sent = next((entry for entry in (messages.value if messages else []) if entry.get("day") == day), None)
    return PostedDigest(sent["ts"], sent.get("chart_file_id")) if sent else None


def fired_warnings(context: dg.AssetExecutionContext) -> list[str]:
    """The WARN checks whose latest result did not pass, over the checks the run's job knows (the
    daily job's, or the UI's: all of them)."""
    graph, warnings = context.job_def.asset_layer.asset_graph, []
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        record = context.instance.get_latest_asset_check_evaluation_record(check_key)
        evaluation = record.evaluation if record else None
        if evaluation and not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN:
            warnings.append(f"{check_key.asset_key.to_user_string()} {check_key.name}")
    return warnings


def quality(context: dg.AssetExecutionContext, day: date, warnings: list[str]) -> digest.Quality:
    """The day's quarantined rows and the sources whose raw tables have no materialization of it."""
    quarantined, stale = 0, set()
    for key in context.job_def.asset_layer.asset_graph.get_all_asset_keys():
        source, layer = (key.path[0], key.path[1]) if len(key.path) == 3 else (None, None)
        if layer not in ("raw", "quarantine"):
            continue
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]), limit=1
        ).records
        if layer == "raw" and not records:
            stale.add(source)
        if layer == "quarantine" and records:
            rows = records[0].asset_materialization.metadata.get("rows")
            quarantined += rows.value if rows else 0
    return digest.Quality(quarantined_rows=quarantined, warnings=warnings, stale_sources=sorted(stale))
