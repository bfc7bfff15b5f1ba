"""Salesforce's accounts, opportunities, contacts, leads and users as daily raw tables, each with
quarantine and check, and the current state of each."""

from datetime import datetime

import dagster as dg
import pandera.polars as pa
import polars as pl

from revenue_pipelines.defs.salesforce.checks import Account, Contact, Lead, Opportunity, User
from revenue_pipelines.defs.salesforce.resources import SalesforceObject, SalesforceResource
from revenue_pipelines.lib.current_state import current_state_asset
from revenue_pipelines.lib.raw_assets import WindowRead, raw_table_asset
from revenue_pipelines.lib.validation import schema_dtypes

ENVELOPE_COLUMNS = {"id", "IsDeleted", "changed_at"}
QUERY_WINDOW_SECONDS = "query_window_seconds"


def _fields_of(schema: type[pa.DataFrameModel]) -> tuple[str, ...]:
    """The fields to query: every model column that is not part of the envelope."""
    return tuple(name for name in schema_dtypes(schema) if name not in ENVELOPE_COLUMNS)


ACCOUNTS = SalesforceObject("Account", _fields_of(Account))
OPPORTUNITIES = SalesforceObject("Opportunity", _fields_of(Opportunity))
CONTACTS = SalesforceObject("Contact", _fields_of(Contact))
LEADS = SalesforceObject("Lead", _fields_of(Lead))
USERS = SalesforceObject("User", _fields_of(User), deletable=False)


def _remembered_window_seconds(instance: dg.DagsterInstance, key: dg.AssetKey) -> int | None:
    """The query window the table's last materialization ended with: where a new read starts, so
    queries that timed out last time are not sent again whole."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    remembered = materialization.metadata.get(QUERY_WINDOW_SECONDS) if materialization else None
    return remembered.value if isinstance(remembered, dg.IntMetadataValue) else None


def _salesforce_table(
    table: str, obj: SalesforceObject, schema: type[pa.DataFrameModel], description: str
) -> dg.AssetsDefinition:
    def read(context: dg.AssetExecutionContext, start: datetime, end: datetime):
        salesforce: SalesforceResource = context.resources.salesforce
        remembered = _remembered_window_seconds(context.instance, context.assets_def.keys_by_output_name["raw"])
        frame, stats = salesforce.read_window(obj, start, end, query_window_seconds=remembered)
        metadata = {
            "deleted_rows": stats.deleted,
            "api_requests": stats.requests,
            "api_retries": stats.retries,
            "session_renewals": stats.session_renewals,
            "window_splits": stats.window_splits,
            "query_resumes": stats.query_resumes,
        }
        if stats.query_window_seconds is not None:
            metadata[QUERY_WINDOW_SECONDS] = stats.query_window_seconds
        if salesforce.api_usage:
            used, limit = salesforce.api_usage
            metadata["org_api_usage"] = f"{used:,} of {limit:,} daily requests"
        return WindowRead(frame, metadata, missing_columns=stats.missing_fields)

    return raw_table_asset(
        source="salesforce",
        table=table,
        description=description,
        schema=schema,
        read=read,
        resource_key="salesforce",
    )


salesforce_accounts = _salesforce_table(
    "accounts",
    ACCOUNTS,
    Account,
    "Salesforce accounts changed or deleted during each UTC day (by SystemModstamp), one row per account, "
    "with the External_Account_Id__c that links them to other systems. Deleted accounts are kept and flagged "
    "(`IsDeleted`).",
)
salesforce_opportunities = _salesforce_table(
    "opportunities",
    OPPORTUNITIES,
    Opportunity,
    "Salesforce opportunities changed or deleted during each UTC day: account, stage, amount and currency, "
    "close date, won/closed flags and lead source. Deleted opportunities are kept and flagged.",
)
salesforce_contacts = _salesforce_table(
    "contacts",
    CONTACTS,
    Contact,
    "Salesforce contacts changed or deleted during each UTC day, with their account. Deleted contacts are "
    "kept and flagged.",
)
salesforce_leads = _salesforce_table(
    "leads",
    LEADS,
    Lead,
    "Salesforce leads changed or deleted during each UTC day: status, lead source, and what a converted "
    "lead became (account, contact, opportunity). Deleted leads are kept and flagged.",
)
salesforce_users = _salesforce_table(
    "users",
    USERS,
    User,
    "Salesforce users changed during each UTC day: the owners that accounts, opportunities and leads point to.",
)

salesforce_states = [
    current_state_asset(raw=table.keys_by_output_name["raw"], removed=pl.col("IsDeleted"), removed_as="deleted")
    for table in (
        salesforce_accounts,
        salesforce_opportunities,
        salesforce_contacts,
        salesforce_leads,
        salesforce_users,
    )
]
