"""HubSpot's contacts, companies and deals as daily raw tables, each with quarantine and check, and the
current state of each."""

from datetime import datetime

import dagster as dg
import pandera.polars as pa
import polars as pl

from revenue_pipelines.defs.hubspot.checks import Company, Contact, Deal
from revenue_pipelines.defs.hubspot.resources import HubSpotObject, HubSpotResource
from revenue_pipelines.lib.current_state import current_state_asset
from revenue_pipelines.lib.raw_assets import WindowRead, raw_table_asset
from revenue_pipelines.lib.validation import schema_dtypes

ENVELOPE = {"id", "archived", "archived_at", "updated_at", "changed_at"}


def _properties(schema: type[pa.DataFrameModel]) -> tuple[str, ...]:
    """The HubSpot properties to request: every model column that is not part of the envelope."""
    return tuple(name for name in schema_dtypes(schema) if name not in ENVELOPE)


CONTACTS = HubSpotObject(
    name="contacts",
    modified_property="lastmodifieddate",
    properties=_properties(Contact),
    associations={"company_ids": "companies"},
)
COMPANIES = HubSpotObject(name="companies", modified_property="hs_lastmodifieddate", properties=_properties(Company))
DEALS = HubSpotObject(
    name="deals",
    modified_property="hs_lastmodifieddate",
    properties=_properties(Deal),
    associations={"company_ids": "companies", "contact_ids": "contacts"},
)


def _hubspot_table(obj: HubSpotObject, schema: type[pa.DataFrameModel], description: str) -> dg.AssetsDefinition:
    def read(context: dg.AssetExecutionContext, start: datetime, end: datetime):
        hubspot: HubSpotResource = context.resources.hubspot
        frame, stats = hubspot.read_window(obj, start, end)
        metadata = {
            "archived_rows": stats.archived,
            "api_requests": stats.requests,
            "api_retries": stats.retries,
        }
        return WindowRead(frame, metadata, missing_columns=stats.missing_properties)

    return raw_table_asset(
        source="hubspot",
        table=obj.name,
        description=description,
        schema=schema,
        read=read,
        resource_key="hubspot",
    )


hubspot_contacts = _hubspot_table(
    CONTACTS,
    Contact,
    "HubSpot contacts modified or archived during each UTC day, one row per contact, with the ids of "
    "their companies. Archived contacts are kept and flagged (`archived`, `archived_at`).",
)
hubspot_companies = _hubspot_table(
    COMPANIES,
    Company,
    "HubSpot companies modified or archived during each UTC day, one row per company. Archived "
    "companies are kept and flagged.",
)
hubspot_deals = _hubspot_table(
    DEALS,
    Deal,
    "HubSpot deals modified or archived during each UTC day, one row per deal: pipeline, stage, amount "
    "and currency, close date, and the ids of the associated companies and contacts.",
)


hubspot_states = [
    current_state_asset(raw=table.keys_by_output_name["raw"], removed=pl.col("archived"), removed_as="archived")
    for table in (hubspot_contacts, hubspot_companies, hubspot_deals)
]
