"""What a usable Salesforce record is: the Pandera models behind the `rows_match_schema` and
`fields_well_formed` checks.

Columns keep their Salesforce API names, so a field reads the same here, in SOQL and in Setup.
Salesforce ids are keys: one that is not a 15- or 18-character id quarantines its row. Descriptive
fields marked `SOFT` are kept as received and warned about.
"""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from revenue_pipelines.lib.identity import SALESFORCE_ID
from revenue_pipelines.lib.validation import CURRENCY, EMAIL, PHONE, SOFT, UTC_MS

OPPORTUNITY_STAGES = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
)


class SalesforceRecord(pa.DataFrameModel):
    """Columns every Salesforce object shares."""

    id: pl.Utf8 = pa.Field(nullable=False, unique=True, str_matches=SALESFORCE_ID)
    IsDeleted: pl.Boolean = pa.Field(nullable=False)
    changed_at: UTC_MS = pa.Field(nullable=False)
    CreatedDate: UTC_MS = pa.Field(nullable=False)
    LastModifiedDate: UTC_MS = pa.Field(nullable=False)

    class Config:
        strict = False  # the partition column passes through


class OwnedRecord(SalesforceRecord):
    OwnerId: pl.Utf8 = pa.Field(nullable=False, str_matches=SALESFORCE_ID)


class Account(OwnedRecord):
    Name: pl.Utf8 = pa.Field(nullable=False)
    Website: pl.Utf8 = pa.Field(nullable=True)
    Industry: pl.Utf8 = pa.Field(nullable=True)
    Type: pl.Utf8 = pa.Field(nullable=True)
    BillingCity: pl.Utf8 = pa.Field(nullable=True)
    BillingCountry: pl.Utf8 = pa.Field(nullable=True)
    AnnualRevenue: pl.Float64 = pa.Field(nullable=True, ge=0)
    NumberOfEmployees: pl.Int64 = pa.Field(nullable=True, ge=0)
    External_Account_Id__c: pl.Utf8 = pa.Field(nullable=True)


class Opportunity(OwnedRecord):
    AccountId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)
    Name: pl.Utf8 = pa.Field(nullable=False)
    # An org's own stages are legitimate; the stage mapping (revenue/marts/pipeline) is what must know them.
    StageName: pl.Utf8 = pa.Field(nullable=False, isin=OPPORTUNITY_STAGES, metadata=SOFT)
    Amount: pl.Float64 = pa.Field(nullable=True, ge=0)
    CurrencyIsoCode: pl.Utf8 = pa.Field(nullable=True, str_matches=CURRENCY, metadata=SOFT)
    CloseDate: pl.Date = pa.Field(nullable=True)
    IsClosed: pl.Boolean = pa.Field(nullable=False)
    IsWon: pl.Boolean = pa.Field(nullable=False)
    Probability: pl.Float64 = pa.Field(nullable=True, in_range={"min_value": 0, "max_value": 100})
    Type: pl.Utf8 = pa.Field(nullable=True)
    LeadSource: pl.Utf8 = pa.Field(nullable=True)

    @pa.dataframe_check(raise_warning=True)
    def CloseDate_present_when_IsClosed(cls, data: PolarsData) -> pl.LazyFrame:
        """A closed opportunity without a close date has no revenue period of its own: the pipeline
        converts it at its day's rate, and RevOps should set the date."""
        return data.lazyframe.select(~pl.col("IsClosed") | pl.col("CloseDate").is_not_null())


class Contact(OwnedRecord):
    AccountId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)
    FirstName: pl.Utf8 = pa.Field(nullable=True)
    LastName: pl.Utf8 = pa.Field(nullable=False)
    Email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL, metadata=SOFT)
    Title: pl.Utf8 = pa.Field(nullable=True)
    Phone: pl.Utf8 = pa.Field(nullable=True, str_matches=PHONE, metadata=SOFT)
    LeadSource: pl.Utf8 = pa.Field(nullable=True)


class Lead(OwnedRecord):
    FirstName: pl.Utf8 = pa.Field(nullable=True)
    LastName: pl.Utf8 = pa.Field(nullable=False)
    Email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL, metadata=SOFT)
    Company: pl.Utf8 = pa.Field(nullable=False)
    Status: pl.Utf8 = pa.Field(nullable=False)
    LeadSource: pl.Utf8 = pa.Field(nullable=True)
    IsConverted: pl.Boolean = pa.Field(nullable=False)
    ConvertedAccountId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)
    ConvertedContactId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)
    ConvertedOpportunityId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)


class User(SalesforceRecord):
    Username: pl.Utf8 = pa.Field(nullable=False)
    Name: pl.Utf8 = pa.Field(nullable=False)
    Email: pl.Utf8 = pa.Field(nullable=False, str_matches=EMAIL, metadata=SOFT)
    IsActive: pl.Boolean = pa.Field(nullable=False)
    UserType: pl.Utf8 = pa.Field(nullable=True)
