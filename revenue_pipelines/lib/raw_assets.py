"""One factory for every raw source table: read a window, validate, quarantine, check.

Each source says what to read and which Pandera model the rows must meet; this module turns that
into a daily-partitioned asset `[source, "raw", table]`, its quarantine `[source, "quarantine",
table]`, a blocking check on what was quarantined and, where the model has soft rules, a WARN check
on odd descriptive values, so every source behaves the same in the UI, in backfills and when data
is bad.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from revenue_pipelines.lib.metadata import describe_each_day, markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.validation import (
    DEFAULT_MAX_QUARANTINED_SHARE,
    MALFORMED_FIELDS,
    Schema,
    as_schema,
    fields_check,
    quarantine_check,
    split_rules,
    validate,
)

OWNERS = ["team:revops-data"]
SCHEMA_CHECK = "rows_match_schema"
FIELDS_CHECK = "fields_well_formed"
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
    max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE,
) -> dg.AssetsDefinition:
    """A raw table of `source`, partitioned by day, with its quarantine and checks.

    `partition_day` computes each row's day from the rows as received; `key` identifies a row
    within its day (the output is sorted by it); `check_specs` are the source's own checks,
    evaluated by `read`; `max_quarantined_share` is the table's tolerance, which the launchpad's
    config can override for a run.
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

    has_soft_rules = split_rules(as_schema(schema))[1] is not None
    fields_spec = dg.AssetCheckSpec(
        FIELDS_CHECK,
        asset=raw_key,
        description=(
            "Descriptive fields (e-mails, domains, phones, codes, ids of other systems) are well formed. Warns "
            f"only: rows with odd values are kept as received, and `{MALFORMED_FIELDS}` names their fields."
        ),
    )

    table_default = max_quarantined_share  # a class body cannot see a parameter of its own field's name

    class QuarantineTolerance(dg.Config):
        max_quarantined_share: float = Field(
            default=table_default,
            ge=0,
            le=1,
            description="The share of a day's rows that may be quarantined before the blocking check fails.",
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
                    f"Rows meet {as_schema(schema).name}'s hard rules. Fails, and blocks downstream, when a day "
                    f"lost more than {max_quarantined_share:.0%} of its rows (max_quarantined_share) or every row "
                    "failed; fewer quarantined rows are a warning."
                ),
            ),
            *([fields_spec] if has_soft_rules else []),
            *check_specs,
        ],
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=source,
        retry_policy=SOURCE_RETRY_POLICY,
        required_resource_keys={resource_key},
    )
    def _raw_table(context: dg.AssetExecutionContext, config: QuarantineTolerance):
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
        # A row whose own day cannot be told (its timestamp did not parse) is kept in the run's first day.
        quarantined = validated.quarantined.with_columns(pl.col(PARTITION_COLUMN).fill_null(start.date()))
        # A range run writes a file per day: each day's materialization counts that day.
        describe_each_day(context, valid, lambda rows, day: _day_of_raw(rows, quarantined, day), raw_key)
        describe_each_day(context, quarantined, lambda rows, _: {"rows": rows.height}, quarantine_key)
        yield dg.MaterializeResult(asset_key=raw_key, value=valid, metadata={**window_read.metadata, **missing})
        yield dg.MaterializeResult(asset_key=quarantine_key, value=quarantined)
        yield quarantine_check(raw_key, validated, SCHEMA_CHECK, config.max_quarantined_share)
        if has_soft_rules:
            yield fields_check(raw_key, validated, FIELDS_CHECK)
        yield from window_read.checks

    return _raw_table


def _day_of_raw(kept: pl.DataFrame, quarantined: pl.DataFrame, day: date) -> dict[str, object]:
    odd = {}
    if MALFORMED_FIELDS in kept.columns:
        odd = {"rows_with_malformed_fields": kept.filter(pl.col(MALFORMED_FIELDS).is_not_null()).height}
    return {
        "rows": kept.height,
        "quarantined_rows": quarantined.filter(pl.col(PARTITION_COLUMN) == day).height,
        **odd,
        "preview": dg.MetadataValue.md(markdown_table(kept)),
    }
