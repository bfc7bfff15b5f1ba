"""One daily raw table per GA4 report (reports.py), each with quarantine, schema check and GA4's own flags."""

from datetime import datetime

import dagster as dg
import polars as pl

from revenue_pipelines.defs.ga4.checks import ga4_check_results, ga4_check_specs, report_schema
from revenue_pipelines.defs.ga4.reports import REPORTS, Report
from revenue_pipelines.defs.ga4.resources import GA4Resource, report_days
from revenue_pipelines.lib.raw_assets import WindowRead, raw_table_asset


def ga4_report_asset(report: Report) -> dg.AssetsDefinition:
    asset_key = dg.AssetKey(["ga4", "raw", report.name])

    def read(context: dg.AssetExecutionContext, start: datetime, end: datetime) -> WindowRead:
        ga4: GA4Resource = context.resources.ga4
        result = ga4.read_report(report, *report_days(start, end))
        metadata = {
            "api_requests": result.requests,
            "quota_waits": result.quota_waits,
            "sampled": bool(result.sampled),
            "subject_to_thresholding": result.thresholded,
            "data_loss_from_other_row": result.other_row,
        }
        if result.quota:
            metadata["property_tokens_remaining_today"] = result.quota["tokens_per_day"][1]
            metadata["property_quota"] = dg.MetadataValue.json(
                {
                    name: {"consumed": consumed, "remaining": remaining}
                    for name, (consumed, remaining) in result.quota.items()
                }
            )
        return WindowRead(result.rows, metadata, ga4_check_results(asset_key, result))

    return raw_table_asset(
        source="ga4",
        table=report.name,
        description=f"GA4 report `{report.name}` per report date: {report.description} Dimensions: "
        f"{', '.join(report.all_dimensions)}; metrics: {', '.join(report.metrics)}. Recent days are "
        "pulled again by `ga4_late_data_schedule`, as GA4 keeps processing them.",
        schema=report_schema(report),
        read=read,
        resource_key="ga4",
        partition_day=pl.col("date").str.to_date("%Y-%m-%d", strict=False),
        key=report.all_dimensions,
        check_specs=ga4_check_specs(asset_key),
    )


ga4_report_assets = [ga4_report_asset(report) for report in REPORTS]
