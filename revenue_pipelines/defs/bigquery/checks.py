"""What valid rows of the BigQuery sources are: the Pandera models behind their blocking checks."""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from revenue_pipelines.lib.validation import CURRENCY, EMAIL, SOFT, UTC_US

INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
CRM_SOURCES = ("salesforce", "hubspot")


class BillingInvoice(pa.DataFrameModel):
    """An invoice with its account's CRM id and its payments; money in minor units (cents)."""

    id: pl.Utf8 = pa.Field(nullable=False, unique=True)
    billing_account_id: pl.Utf8 = pa.Field(nullable=False)
    billing_account_name: pl.Utf8 = pa.Field(nullable=True)
    crm_source: pl.Utf8 = pa.Field(nullable=False, isin=CRM_SOURCES)  # null: the account is missing
    external_account_id: pl.Utf8 = pa.Field(nullable=True)
    billing_email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL, metadata=SOFT)
    crm_deal_id: pl.Utf8 = pa.Field(nullable=True)
    status: pl.Utf8 = pa.Field(nullable=False, isin=INVOICE_STATUSES)
    currency: pl.Utf8 = pa.Field(nullable=False, str_matches=CURRENCY)
    subtotal_cents: pl.Int64 = pa.Field(nullable=False, ge=0)
    tax_cents: pl.Int64 = pa.Field(nullable=False, ge=0)
    total_cents: pl.Int64 = pa.Field(nullable=False, ge=0)
    amount_paid_cents: pl.Int64 = pa.Field(nullable=False, ge=0)
    payment_count: pl.Int64 = pa.Field(nullable=False, ge=0)
    issued_at: UTC_US = pa.Field(nullable=False)
    due_date: pl.Date = pa.Field(nullable=True)
    last_paid_at: UTC_US = pa.Field(nullable=True)
    voided_at: UTC_US = pa.Field(nullable=True)
    changed_at: UTC_US = pa.Field(nullable=False)

    class Config:
        strict = False  # the partition column passes through

    @pa.dataframe_check(element_wise=False)
    @classmethod
    def total_is_subtotal_plus_tax(cls, data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("total_cents") == pl.col("subtotal_cents") + pl.col("tax_cents"))

    @pa.dataframe_check(element_wise=False)
    @classmethod
    def paid_at_most_the_total(cls, data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("amount_paid_cents") <= pl.col("total_cents"))


class GA4Event(pa.DataFrameModel):
    """An event of GA4's export. user_pseudo_id is null where consent was refused, as in real exports."""

    event_date: pl.Date = pa.Field(nullable=False)
    event_timestamp: pl.Int64 = pa.Field(nullable=False, gt=0)
    event_name: pl.Utf8 = pa.Field(nullable=False)
    user_pseudo_id: pl.Utf8 = pa.Field(nullable=True)
    user_id: pl.Utf8 = pa.Field(nullable=True)
    session_id: pl.Utf8 = pa.Field(nullable=True)
    ga_session_id: pl.Int64 = pa.Field(nullable=True)
    ga_session_number: pl.Int64 = pa.Field(nullable=True, ge=1)
    session_engaged: pl.Boolean = pa.Field(nullable=True)
    engagement_time_msec: pl.Int64 = pa.Field(nullable=True, ge=0)
    page_location: pl.Utf8 = pa.Field(nullable=True)
    value: pl.Float64 = pa.Field(nullable=True)
    currency: pl.Utf8 = pa.Field(nullable=True, str_matches=CURRENCY, metadata=SOFT)

    class Config:
        strict = False  # the other export fields and the partition column pass through
