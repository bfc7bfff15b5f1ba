"""What every definition must carry, and what the schedule asks for."""

from datetime import UTC, datetime

import dagster as dg

from revenue_pipelines.definitions import defs


def test_every_asset_is_documented_grouped_kinded_and_owned():
    repository = defs().get_repository_def()
    specs = [spec for assets in repository.assets_defs_by_key.values() for spec in assets.specs]
    assert {spec.key.to_user_string() for spec in specs} >= {
        f"hubspot/{layer}/{table}" for layer in ("raw", "quarantine") for table in ("contacts", "companies", "deals")
    }
    for spec in specs:
        source, layer, table = spec.key.path
        assert spec.description, spec.key
        assert spec.group_name == source
        assert source in spec.kinds
        assert spec.owners
        assert layer in {"raw", "quarantine"} and table


def test_raw_tables_have_a_blocking_schema_check():
    assets_defs = set(defs().get_repository_def().assets_defs_by_key.values())
    checks = {spec.asset_key.to_user_string(): spec for assets in assets_defs for spec in assets.check_specs}
    for table in ("contacts", "companies", "deals"):
        check = checks[f"hubspot/raw/{table}"]
        assert check.name == "rows_match_schema" and check.blocking


def test_the_daily_schedule_runs_the_previous_day():
    schedule = defs().get_schedule_def("daily_revenue_job_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 22, 1, 0, tzinfo=UTC))
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-21"
    assert schedule.job_name == "daily_revenue_job"
