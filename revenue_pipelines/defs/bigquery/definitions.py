"""BigQuery as a source: the billing system's invoices and GA4's event export."""

import dagster as dg

from revenue_pipelines.defs.bigquery.assets import billing_invoices, ga4_events
from revenue_pipelines.environment import get_environment

defs = dg.Definitions(
    assets=[billing_invoices, ga4_events],
    resources={"bigquery_source": get_environment().bigquery_source},
)
