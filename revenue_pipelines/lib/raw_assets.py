"""One factory for every raw source table: read a window, validate, quarantine, check.

Each source says what to read and which Pandera model the rows must meet; this module turns that
into a daily-partitioned asset `[source, "raw", table]`, its quarantine `[source, "quarantine",
table]` and a blocking check, so every source behaves the same in the UI, in backfills and when
data is bad.
"""

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import pandera.polars as pa
import polars as pl

from revenue_pipelines.lib.metadata import markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.validation import check_result, validate

OWNERS = ["team:revops-data"]
SCHEMA_CHECK = "rows_match_schema"
CHANGED_AT = "changed_at"

# Transient failures the connector's own retries did not absorb (a long outage, an expired
# session) get a few more tries of the whole step, spaced out and jittered.
SOURCE_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

ReadWindow = Callable[[dg.AssetExecutionContext, datetime, datetime], tuple[pl.DataFrame, Mapping[str, Any]]]
"""Reads one time window from a source: the rows as received, with an `id` and a `changed_at`
column (when the row entered the window), and metadata about the read."""


def raw_table_asset(
    *,
    source: str,
    table: str,
    description: str,
    schema: type[pa.DataFrameModel],
    read: ReadWindow,
    resource_key: str,
) -> dg.AssetsDefinition:
    """A raw table of `source`, partitioned by ingestion day, with its quarantine and check."""
    raw_key = dg.AssetKey([source, "raw", table])
    quarantine_key = dg.AssetKey([source, "quarantine", table])
    common = {
        "group_name": source,
        "kinds": {source, "polars"},
        "owners": OWNERS,
        "partitions_def": DAILY_INGESTION,
        "metadata": {"partition_expr": PARTITION_COLUMN},
    }

    raw_spec = dg.AssetSpec(
        raw_key,
        description=description,
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=timedelta(hours=48), warn_window=timedelta(hours=26)
        ),
        **common,
    )
    quarantine_spec = dg.AssetSpec(
        quarantine_key,
        description=(
            f"Rows of {raw_key.to_user_string()} that failed validation, exactly as received, "
            "with the reason per row. Rows in = rows out + rows quarantined."
        ),
        **common,
    )

    @dg.multi_asset(
        name=f"{source}_{table}",
        # Outs rather than bare specs: the frames go through the IO manager, so they need a type.
        outs={
            "raw": dg.AssetOut.from_spec(raw_spec, dagster_type=pl.DataFrame),
            "quarantine": dg.AssetOut.from_spec(quarantine_spec, dagster_type=pl.DataFrame),
        },
        check_specs=[
            dg.AssetCheckSpec(
                SCHEMA_CHECK,
                asset=raw_key,
                blocking=True,
                description=(
                    f"Every row meets {schema.__name__}; fails, and blocks downstream, when any row is quarantined."
                ),
            )
        ],
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=source,
        retry_policy=SOURCE_RETRY_POLICY,
        required_resource_keys={resource_key},
    )
    def _raw_table(context: dg.AssetExecutionContext):
        start, end = context.partition_time_window
        raw, read_metadata = read(context, start, end)
        raw = raw.with_columns(
            pl.col(CHANGED_AT).str.to_datetime(strict=False, time_zone="UTC").dt.date().alias(PARTITION_COLUMN)
        )
        validated = validate(raw, schema)
        valid = validated.valid.sort(PARTITION_COLUMN, "id")
        window = {"window_start": start.isoformat(), "window_end": end.isoformat()}
        yield dg.MaterializeResult(
            asset_key=raw_key,
            value=valid,
            metadata={
                "rows": valid.height,
                "quarantined_rows": validated.quarantined.height,
                **window,
                **read_metadata,
                "preview": dg.MetadataValue.md(markdown_table(valid)),
            },
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key,
            value=validated.quarantined,
            metadata={"rows": validated.quarantined.height, **window},
        )
        yield check_result(raw_key, validated, SCHEMA_CHECK)

    return _raw_table
