"""Google Analytics 4: one raw table per report, its quarantine and checks, and the late-data re-pull."""

import dagster as dg

from revenue_pipelines.defs.ga4.assets import ga4_report_assets
from revenue_pipelines.defs.ga4.schedules import ga4_late_data_job, ga4_late_data_schedule
from revenue_pipelines.environment import get_environment

defs = dg.Definitions(
    assets=ga4_report_assets,
    jobs=[ga4_late_data_job],
    schedules=[ga4_late_data_schedule],
    resources={"ga4": get_environment().ga4},
)
