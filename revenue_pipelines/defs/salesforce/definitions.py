"""Salesforce: raw accounts, opportunities, contacts, leads and users, their quarantines and checks,
and their current state."""

import dagster as dg

from revenue_pipelines.defs.salesforce.assets import (
    salesforce_accounts,
    salesforce_contacts,
    salesforce_leads,
    salesforce_opportunities,
    salesforce_states,
    salesforce_users,
)
from revenue_pipelines.environment import get_environment

defs = dg.Definitions(
    assets=[
        salesforce_accounts,
        salesforce_opportunities,
        salesforce_contacts,
        salesforce_leads,
        salesforce_users,
        *salesforce_states,
    ],
    resources={"salesforce": get_environment().salesforce},
)
