"""What a usable HubSpot record is: the Pandera models behind the `rows_match_schema` and
`fields_well_formed` checks.

A model declares each column's type (text from the API is parsed into it) and its rules. Rows that
break a type or a hard rule land in the table's quarantine with the reason; a descriptive field
marked `SOFT` (an e-mail, a domain, a phone, a code, a Salesforce id) is kept as received and
warned about.
"""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from revenue_pipelines.lib.identity import SALESFORCE_ID
from revenue_pipelines.lib.validation import CURRENCY, DOMAIN, EMAIL, PHONE, SOFT, UTC_MS

# HubSpot's closed stages of the default pipeline (custom pipelines name their own).
CLOSED_STAGES = frozenset({"closedwon", "closedlost"})


class HubSpotRecord(pa.DataFrameModel):
    """Columns every HubSpot object shares."""

    id: pl.Int64 = pa.Field(nullable=False, unique=True, gt=0)
    archived: pl.Boolean = pa.Field(nullable=False)
    archived_at: UTC_MS = pa.Field(nullable=True)
    updated_at: UTC_MS = pa.Field(nullable=False)
    changed_at: UTC_MS = pa.Field(nullable=False)
    createdate: UTC_MS = pa.Field(nullable=False)
    hubspot_owner_id: pl.Int64 = pa.Field(nullable=True)

    class Config:
        strict = False  # association lists and the partition column pass through


class Contact(HubSpotRecord):
    email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL, metadata=SOFT)
    firstname: pl.Utf8 = pa.Field(nullable=True)
    lastname: pl.Utf8 = pa.Field(nullable=True)
    phone: pl.Utf8 = pa.Field(nullable=True, str_matches=PHONE, metadata=SOFT)
    company: pl.Utf8 = pa.Field(nullable=True)
    jobtitle: pl.Utf8 = pa.Field(nullable=True)
    lifecyclestage: pl.Utf8 = pa.Field(nullable=True)
    hs_lead_status: pl.Utf8 = pa.Field(nullable=True)
    hs_analytics_source: pl.Utf8 = pa.Field(nullable=True)
    hs_analytics_source_data_1: pl.Utf8 = pa.Field(nullable=True)
    lastmodifieddate: UTC_MS = pa.Field(nullable=False)


class Company(HubSpotRecord):
    name: pl.Utf8 = pa.Field(nullable=True)
    domain: pl.Utf8 = pa.Field(nullable=True, str_matches=DOMAIN, metadata=SOFT)
    industry: pl.Utf8 = pa.Field(nullable=True)
    city: pl.Utf8 = pa.Field(nullable=True)
    country: pl.Utf8 = pa.Field(nullable=True)
    numberofemployees: pl.Int64 = pa.Field(nullable=True, ge=0)
    annualrevenue: pl.Float64 = pa.Field(nullable=True, ge=0)
    lifecyclestage: pl.Utf8 = pa.Field(nullable=True)
    hs_lastmodifieddate: UTC_MS = pa.Field(nullable=False)


class Deal(HubSpotRecord):
    dealname: pl.Utf8 = pa.Field(nullable=True)
    pipeline: pl.Utf8 = pa.Field(nullable=False)
    dealstage: pl.Utf8 = pa.Field(nullable=False)
    amount: pl.Float64 = pa.Field(nullable=True, ge=0)
    deal_currency_code: pl.Utf8 = pa.Field(nullable=True, str_matches=CURRENCY, metadata=SOFT)
    closedate: UTC_MS = pa.Field(nullable=True)
    # Typed in by hand or synced: 15 or 18 characters, matched in the 18-character form.
    hs_salesforceopportunityid: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID, metadata=SOFT)
    hs_analytics_source: pl.Utf8 = pa.Field(nullable=True)  # Original Source Type, from the deal's contacts
    hs_analytics_source_data_1: pl.Utf8 = pa.Field(nullable=True)
    hs_lastmodifieddate: UTC_MS = pa.Field(nullable=False)

    @pa.dataframe_check(raise_warning=True)
    def closedate_present_when_closed(cls, data: PolarsData) -> pl.LazyFrame:
        """A deal in a closed stage of the default pipeline without a close date has no revenue
        period of its own: the pipeline converts it at its day's rate, and RevOps should set it."""
        closed = (pl.col("pipeline") == "default") & pl.col("dealstage").is_in(sorted(CLOSED_STAGES))
        return data.lazyframe.select(~closed | pl.col("closedate").is_not_null())
