"""What a valid Salesforce record is: the Pandera models behind the blocking `rows_match_schema` checks.

Columns keep their Salesforce API names, so a field reads the same here, in SOQL and in Setup.
"""

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from revenue_pipelines.lib.validation import CURRENCY, EMAIL, UTC_MS

SALESFORCE_ID = r"^[a-zA-Z0-9]{18}$"  # the case-safe form the API returns; 15-character ids are case-sensitive
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
    StageName: pl.Utf8 = pa.Field(nullable=False, isin=OPPORTUNITY_STAGES)
    Amount: pl.Float64 = pa.Field(nullable=True, ge=0)
    CurrencyIsoCode: pl.Utf8 = pa.Field(nullable=True, str_matches=CURRENCY)
    CloseDate: pl.Date = pa.Field(nullable=True)
    IsClosed: pl.Boolean = pa.Field(nullable=False)
    IsWon: pl.Boolean = pa.Field(nullable=False)
    Probability: pl.Float64 = pa.Field(nullable=True, in_range={"min_value": 0, "max_value": 100})
    Type: pl.Utf8 = pa.Field(nullable=True)
    LeadSource: pl.Utf8 = pa.Field(nullable=True)

    @pa.dataframe_check
    def CloseDate_present_when_IsClosed(cls, data: PolarsData) -> pl.LazyFrame:
        """A closed opportunity without a close date cannot be placed in any revenue period."""
        return data.lazyframe.select(~pl.col("IsClosed") | pl.col("CloseDate").is_not_null())


class Contact(OwnedRecord):
    AccountId: pl.Utf8 = pa.Field(nullable=True, str_matches=SALESFORCE_ID)
    FirstName: pl.Utf8 = pa.Field(nullable=True)
    LastName: pl.Utf8 = pa.Field(nullable=False)
    Email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL)
    Title: pl.Utf8 = pa.Field(nullable=True)
    Phone: pl.Utf8 = pa.Field(nullable=True)
    LeadSource: pl.Utf8 = pa.Field(nullable=True)


class Lead(OwnedRecord):
    FirstName: pl.Utf8 = pa.Field(nullable=True)
    LastName: pl.Utf8 = pa.Field(nullable=False)
    Email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL)
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
    Email: pl.Utf8 = pa.Field(nullable=False, str_matches=EMAIL)
    IsActive: pl.Boolean = pa.Field(nullable=False)
    UserType: pl.Utf8 = pa.Field(nullable=True)
