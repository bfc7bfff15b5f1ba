"""revenue_pipelines: CRM, analytics and warehouse data, checked and unified, orchestrated by Dagster."""
