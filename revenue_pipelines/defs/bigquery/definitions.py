"""BigQuery as a source: the billing system's invoices (raw and current) and GA4's event export."""

import dagster as dg

from revenue_pipelines.defs.bigquery.assets import billing_invoices, billing_invoices_state, ga4_events
from revenue_pipelines.environment import get_environment

defs = dg.Definitions(
    assets=[billing_invoices, billing_invoices_state, ga4_events],
    resources={"bigquery_source": get_environment().bigquery_source},
)
