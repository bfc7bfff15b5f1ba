"""HubSpot: raw contacts, companies and deals, their quarantines and checks, their current
state, and the connector."""

import dagster as dg

from revenue_pipelines.defs.hubspot.assets import hubspot_companies, hubspot_contacts, hubspot_deals, hubspot_states
from revenue_pipelines.environment import get_environment

defs = dg.Definitions(
    assets=[hubspot_contacts, hubspot_companies, hubspot_deals, *hubspot_states],
    resources={"hubspot": get_environment().hubspot},
)
