"""One factory for every raw source table: read a window, validate, quarantine, check.

Each source says what to read and which Pandera model the rows must meet; this module turns that
into a daily-partitioned asset `[source, "raw", table]`, its quarantine `[source, "quarantine",
table]` and a blocking check, so every source behaves the same in the UI, in backfills and when
data is bad.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from revenue_pipelines.lib.metadata import markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.validation import Schema, as_schema, check_result, validate

OWNERS = ["team:revops-data"]
SCHEMA_CHECK = "rows_match_schema"
CHANGED_AT = "changed_at"

# Transient failures the connector's own retries did not absorb (a long outage, an expired
# session) get a few more tries of the whole step, spaced out and jittered.
SOURCE_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

# The day a row belongs to, for sources that stamp rows with the instant they changed.
CHANGED_DAY = pl.col(CHANGED_AT).str.to_datetime(strict=False, time_zone="UTC").dt.date()


@dataclass(frozen=True)
class WindowRead:
    """What a source read for one time window."""

    rows: pl.DataFrame
    """The rows as received (text columns)."""
    metadata: Mapping[str, Any]
    """About the read, for the materialization: requests, retries, what the API reported."""
    checks: Sequence[dg.AssetCheckResult] = ()
    """Verdicts of the source's own checks on what the API said of the data (declared as `check_specs`)."""
    missing_columns: Sequence[str] = ()
    """Requested columns the source no longer sends (deleted or renamed there): stored as empty, and warned of."""


ReadWindow = Callable[[dg.AssetExecutionContext, datetime, datetime], WindowRead]


def raw_table_asset(
    *,
    source: str,
    table: str,
    description: str,
    schema: Schema,
    read: ReadWindow,
    resource_key: str,
    partition_day: pl.Expr = CHANGED_DAY,
    key: Sequence[str] = ("id",),
    check_specs: Sequence[dg.AssetCheckSpec] = (),
) -> dg.AssetsDefinition:
    """A raw table of `source`, partitioned by day, with its quarantine and check.

    `partition_day` computes each row's day from the rows as received; `key` identifies a row
    within its day (the output is sorted by it); `check_specs` are the source's own checks,
    evaluated by `read`.
    """
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
                    f"Every row meets {as_schema(schema).name}; fails, and blocks downstream, when any row "
                    "is quarantined."
                ),
            ),
            *check_specs,
        ],
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=source,
        retry_policy=SOURCE_RETRY_POLICY,
        required_resource_keys={resource_key},
    )
    def _raw_table(context: dg.AssetExecutionContext):
        start, end = context.partition_time_window
        window_read = read(context, start, end)
        missing = {}
        if window_read.missing_columns:
            missing = {"missing_columns": ", ".join(window_read.missing_columns)}
            context.log.warning(
                f"{raw_key.to_user_string()}: {source} no longer sends {missing['missing_columns']}; they may "
                "have been deleted or renamed there, and are stored as empty."
            )
        raw = window_read.rows.with_columns(partition_day.alias(PARTITION_COLUMN))
        validated = validate(raw, schema)
        valid = validated.valid.sort(PARTITION_COLUMN, *key)
        window = {"window_start": start.isoformat(), "window_end": end.isoformat()}
        yield dg.MaterializeResult(
            asset_key=raw_key,
            value=valid,
            metadata={
                "rows": valid.height,
                "quarantined_rows": validated.quarantined.height,
                **window,
                **window_read.metadata,
                **missing,
                "preview": dg.MetadataValue.md(markdown_table(valid)),
            },
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key,
            value=validated.quarantined,
            metadata={"rows": validated.quarantined.height, **window},
        )
        yield check_result(raw_key, validated, SCHEMA_CHECK)
        yield from window_read.checks

    return _raw_table
