"""The BigQuery sources: billing's invoices and GA4's raw event export, one daily partition each, and
the current state of the invoices."""

from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from revenue_pipelines.defs.bigquery.checks import BillingInvoice, GA4Event
from revenue_pipelines.defs.bigquery.queries import SqlFile
from revenue_pipelines.defs.bigquery.resources import BigQuerySource
from revenue_pipelines.lib.current_state import current_state_asset
from revenue_pipelines.lib.raw_assets import CHANGED_AT, WindowRead, raw_table_asset

BILLING_INVOICES = SqlFile.load("billing_invoices", {"window_start", "window_end"})
GA4_EVENTS = SqlFile.load("ga4_events", {"first_day", "last_day"})
INVOICES_KEY = dg.AssetKey(["bigquery", "raw", "billing_invoices"])
EVENTS_KEY = dg.AssetKey(["bigquery", "raw", "ga4_events"])


def _read_invoices(context: dg.AssetExecutionContext, start: datetime, end: datetime) -> WindowRead:
    source: BigQuerySource = context.resources.bigquery_source
    window = {"window_start": start, "window_end": end}
    rows, metadata = source.read(BILLING_INVOICES, source.billing_dataset, window, INVOICES_KEY, context.log)
    return WindowRead(rows, metadata)


def ga4_days(start: datetime, end: datetime) -> dict[str, str]:
    """The export tables' suffixes of the window's first and last day."""
    return {"first_day": start.strftime("%Y%m%d"), "last_day": (end - timedelta(days=1)).strftime("%Y%m%d")}


def _read_events(context: dg.AssetExecutionContext, start: datetime, end: datetime) -> WindowRead:
    source: BigQuerySource = context.resources.bigquery_source
    rows, metadata = source.read(GA4_EVENTS, source.ga4_export_dataset, ga4_days(start, end), EVENTS_KEY, context.log)
    return WindowRead(rows, metadata)


billing_invoices = raw_table_asset(
    source="bigquery",
    table="billing_invoices",
    description=(
        "Invoices from the billing system's BigQuery dataset, by the day they last changed (issued, paid, "
        "voided), with the billing account's CRM id (`external_account_id`) and payments summed: the finance "
        "truth for won revenue. Money in cents."
    ),
    schema=BillingInvoice,
    read=_read_invoices,
    resource_key="bigquery_source",
    partition_day=pl.col(CHANGED_AT).dt.date(),
)

ga4_events = raw_table_asset(
    source="bigquery",
    table="ga4_events",
    description=(
        "GA4's BigQuery export (`events_YYYYMMDD`) by event date, one row per event, with `event_params` "
        "flattened into columns and the session and traffic-source fields kept: the raw material of "
        "session-level attribution."
    ),
    schema=GA4Event,
    read=_read_events,
    resource_key="bigquery_source",
    partition_day=pl.col("event_date"),
    key=("event_timestamp", "user_pseudo_id", "event_name"),
)

# Invoices are voided, never deleted: the state keeps every invoice at its latest status.
billing_invoices_state = current_state_asset(raw=INVOICES_KEY)
