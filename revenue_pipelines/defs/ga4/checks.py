"""What a valid GA4 report row is, and what GA4 itself says about the numbers.

The schema check is blocking: a row without its dimensions or with a negative count must not flow
on. Sampling, thresholding and the "(other)" row are GA4's choices, not bad data, so they are WARN
checks whose metadata says how much of the report they touched.
"""

import dagster as dg
import pandera.polars as pa
import polars as pl

from revenue_pipelines.defs.ga4.reports import SIGNED_METRICS, Report, metric_is_integer
from revenue_pipelines.defs.ga4.resources import ReportRead

OTHER = "(other)"
NOT_SAMPLED = "not_sampled"
NOT_THRESHOLDED = "not_thresholded"
NO_OTHER_ROW = "no_other_row"


def report_schema(report: Report) -> pa.DataFrameSchema:
    """One row per date and dimension combination; metrics typed, counts never negative."""
    columns = {"date": pa.Column(pl.Date, nullable=False)}
    columns |= {name: pa.Column(pl.Utf8, nullable=False) for name in report.dimensions}
    columns |= {
        name: pa.Column(
            pl.Int64 if metric_is_integer(name) else pl.Float64,
            checks=[] if name in SIGNED_METRICS else [pa.Check.ge(0)],
            nullable=False,
        )
        for name in report.metrics
    }
    return pa.DataFrameSchema(
        columns, unique=list(report.all_dimensions), strict=False, name=f"GA4Report[{report.name}]"
    )


def ga4_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            NOT_SAMPLED, asset=asset_key, description="GA4 computed the report from all the data, not a sample."
        ),
        dg.AssetCheckSpec(
            NOT_THRESHOLDED,
            asset=asset_key,
            description="GA4 withheld no rows for privacy thresholds (Google signals, demographics).",
        ),
        dg.AssetCheckSpec(
            NO_OTHER_ROW,
            asset=asset_key,
            description='GA4 folded no rows into "(other)" because a day had more distinct values than it keeps.',
        ),
    ]


def ga4_check_results(asset_key: dg.AssetKey, read: ReportRead) -> list[dg.AssetCheckResult]:
    """WARN verdicts from the response metadata of every page of the read."""
    label = asset_key.to_user_string()
    other_rows = read.rows.filter(pl.any_horizontal(pl.exclude("date").cast(pl.String) == OTHER)).height
    sampled_share = [
        item["events_read"] / item["events_in_sampling_space"]
        for item in read.sampled
        if item["events_in_sampling_space"]
    ]
    return [
        _warn_unless(
            asset_key,
            NOT_SAMPLED,
            passed=not read.sampled,
            description=f"{label}: GA4 sampled the data; the metrics are estimates from as little as "
            f"{min(sampled_share, default=0):.1%} of the property's events in the date range.",
            metadata={"sampling": str(read.sampled)},
        ),
        _warn_unless(
            asset_key,
            NOT_THRESHOLDED,
            passed=not read.thresholded,
            description=f"{label}: GA4 applied privacy thresholds; rows with few users are missing.",
            metadata={"subject_to_thresholding": read.thresholded},
        ),
        _warn_unless(
            asset_key,
            NO_OTHER_ROW,
            passed=not read.other_row,
            description=f'{label}: GA4 folded rows into "(other)" ({other_rows} rows carry it); '
            "use fewer or less granular dimensions, or the BigQuery export, for the full detail.",
            metadata={"data_loss_from_other_row": read.other_row, "other_rows": other_rows},
        ),
    ]


def _warn_unless(
    asset_key: dg.AssetKey, check_name: str, passed: bool, description: str, metadata: dict
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else description,
        metadata=metadata,
    )
