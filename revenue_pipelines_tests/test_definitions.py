"""What every definition must carry, and what the schedule asks for."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from revenue_pipelines.definitions import defs
from revenue_pipelines.defs.ga4.reports import REPORTS, Report
from revenue_pipelines.lib.partitions import DAILY_INGESTION

RAW_TABLES = [
    *(f"hubspot/raw/{table}" for table in ("contacts", "companies", "deals")),
    *(f"salesforce/raw/{table}" for table in ("accounts", "opportunities", "contacts", "leads", "users")),
    *(f"ga4/raw/{report.name}" for report in REPORTS),
]
CORE_TABLES = [
    *(table.replace("/raw/", "/core/") for table in RAW_TABLES if table.startswith(("hubspot", "salesforce"))),
    "bigquery/core/billing_invoices",
]


def test_every_asset_is_documented_grouped_kinded_and_owned():
    repository = defs().get_repository_def()
    specs = [spec for assets in repository.assets_defs_by_key.values() for spec in assets.specs]
    keys = {spec.key.to_user_string() for spec in specs}
    assert keys >= {*RAW_TABLES, *(table.replace("/raw/", "/quarantine/") for table in RAW_TABLES), *CORE_TABLES}
    for spec in specs:
        source, layer, table = spec.key.path
        assert spec.description, spec.key
        assert spec.group_name == source
        assert "polars" in spec.kinds
        assert source in spec.kinds or source == "revenue"  # the unified model is no one source's
        assert spec.owners
        assert layer in {"raw", "quarantine", "core", "marts", "outputs"} and table  # outputs: deliveries


def test_each_current_state_builds_on_its_raw_changes_and_its_own_previous_day():
    asset_graph = defs().resolve_asset_graph()
    for table in CORE_TABLES:
        key = dg.AssetKey.from_user_string(table)
        raw = dg.AssetKey.from_user_string(table.replace("/core/", "/raw/"))
        assert asset_graph.get(key).parent_keys == {raw, key}
        mapping = asset_graph.get_partition_mapping(key, parent_asset_key=key)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)


def test_raw_tables_have_a_blocking_schema_check():
    assets_defs = set(defs().get_repository_def().assets_defs_by_key.values())
    checks = {
        (spec.asset_key.to_user_string(), spec.name): spec for assets in assets_defs for spec in assets.check_specs
    }
    for table in RAW_TABLES:
        assert checks[table, "rows_match_schema"].blocking
    for report in REPORTS:  # GA4's own flags warn; they do not block
        for name in ("not_sampled", "not_thresholded", "no_other_row"):
            assert not checks[f"ga4/raw/{report.name}", name].blocking


def test_the_daily_schedule_runs_the_previous_day():
    schedule = defs().get_schedule_def("daily_revenue_job_schedule")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 22, 1, 0, tzinfo=UTC),
        repository_def=defs().get_repository_def(),  # as the daemon gives it: the partition is checked against the job
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-21"
    assert request.run_key == "2026-11-21"  # one run per day, however often the tick is retried
    assert schedule.job_name == "daily_revenue_job"


def test_todays_partition_exists_so_a_change_made_today_can_be_ingested_today():
    now = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    assert DAILY_INGESTION.get_partition_keys(current_time=now)[-2:] == ["2026-11-21", "2026-11-22"]


def test_the_ga4_late_data_schedule_pulls_the_last_three_days_again_in_one_run():
    schedule = defs().get_schedule_def("ga4_late_data_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 22, 5, 0, tzinfo=UTC))
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key_range == dg.PartitionKeyRange("2026-11-19", "2026-11-21")
    assert schedule.job_name == "ga4_late_data_job"


def test_a_misconfigured_ga4_report_fails_at_load_naming_the_report_and_the_field():
    with pytest.raises(
        ValueError, match=r"GA4 report 'landing_pages': 'sesions' is not a GA4 metric; did you mean 'sessions'\?"
    ):
        Report("landing_pages", "Sessions by landing page.", ("landingPage",), ("sesions",))
    with pytest.raises(ValueError, match=r"'landingPag' is not a GA4 dimension"):
        Report("landing_pages", "Sessions by landing page.", ("landingPag",), ("sessions",))
