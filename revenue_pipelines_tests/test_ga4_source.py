"""GA4 end to end: google-analytics-data's REST transport against the sandbox, reconciled with its truth."""

from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from revenue_pipelines.definitions import defs
from revenue_pipelines.defs.ga4.assets import ga4_report_assets
from revenue_pipelines.defs.ga4.reports import REPORTS, Report
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines_tests.conftest import END, ga4_resource, materialize_ga4, read_layer

FIRST = END - timedelta(days=4)
REPORT = {report.name: report for report in REPORTS}
ASSET = {report.name: asset for report, asset in zip(REPORTS, ga4_report_assets, strict=True)}
WARN_CHECKS = ("not_sampled", "not_thresholded", "no_other_row")


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory(seed=3, companies=40, days=8)


def expected(sandbox, report: Report, first: date, last: date, settled: bool = False) -> pl.DataFrame:
    """What GA4 holds for the report's days, typed as the raw table stores it."""
    truth = sandbox.ga4.truth(report.all_dimensions, report.metrics, first, last, settled=settled)
    return truth.with_columns(pl.col("date").str.to_date("%Y%m%d")).sort(report.all_dimensions)


def stored(data_dir, report: Report) -> pl.DataFrame:
    raw = read_layer(data_dir, "ga4", "raw", report.name)
    assert (raw[PARTITION_COLUMN] == raw["date"]).all()  # each row in the partition of its report date
    return raw.select(*report.all_dimensions, *report.metrics).sort(report.all_dimensions)


def _metadata(result: dg.ExecuteInProcessResult, report: Report) -> dict[str, object]:
    [materialization, *_] = result.asset_materializations_for_node(ASSET[report.name].node_def.name)
    return {name: value.value for name, value in materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult, report: Report) -> dict[str, dg.AssetCheckEvaluation]:
    key = dg.AssetKey(["ga4", "raw", report.name])
    return {check.check_name: check for check in result.get_asset_check_evaluations() if check.asset_key == key}


def test_every_report_over_a_range_reconciles_with_ground_truth(sandbox, tmp_path):
    result = materialize_ga4(sandbox, tmp_path, FIRST, END)
    assert result.success

    for report in REPORTS:
        truth = expected(sandbox, report, FIRST, END)
        assert truth.height > 0
        assert_frame_equal(stored(tmp_path, report), truth)
        assert read_layer(tmp_path, "ga4", "quarantine", report.name).is_empty()
        checks = _checks(result, report)
        assert all(checks[name].passed for name in ("rows_match_schema", *WARN_CHECKS))
        metadata = _metadata(result, report)
        assert metadata["api_requests"] == 1  # the whole window in one request
        assert metadata["property_tokens_remaining_today"] < sandbox.ga4.tokens_per_day
        assert metadata["property_quota"]["tokens_per_hour"]["consumed"] >= 1


def test_a_report_past_250000_rows_is_paged_and_every_row_arrives_once(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(seed=4, companies=10, days=3, ga4_rows_per_day=150_000)
    sandbox.ga4.today = END + timedelta(days=30)  # every row of the three days is in
    report = REPORT["landing_pages"]
    first, last = END - timedelta(days=2), END
    truth = expected(sandbox, report, first, last)
    assert truth.height > 250_000

    resource = ga4_resource(sandbox, page_size=250_000)  # GA4's most per request
    result = materialize_ga4(sandbox, tmp_path, first, last, [ASSET[report.name]], resource)
    assert result.success
    assert _metadata(result, report)["api_requests"] == 2
    assert_frame_equal(stored(tmp_path, report), truth)


def test_an_exhausted_hourly_quota_is_waited_out_and_nothing_is_lost(sandbox, tmp_path):
    sandbox.ga4.hour_seconds = 1.0  # GA4's hour, compressed
    sandbox.ga4.tokens_per_hour = 2  # every report costs a token here: the third waits for the refill
    result = materialize_ga4(sandbox, tmp_path, FIRST, END)
    assert result.success

    assert sandbox.ga4.quota_exhaustions > 0
    assert sum(_metadata(result, report)["quota_waits"] for report in REPORTS) == sandbox.ga4.quota_exhaustions
    for report in REPORTS:
        assert_frame_equal(stored(tmp_path, report), expected(sandbox, report, FIRST, END))


def test_an_exhausted_daily_quota_fails_at_once_saying_why(sandbox, tmp_path):
    sandbox.ga4.tokens_per_day = 0
    report = REPORT["traffic_by_channel"]
    result = materialize_ga4(sandbox, tmp_path, END, END, [ASSET[report.name]])

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "Exhausted property tokens per day" in str(failure.step_failure_data.error)
    assert sandbox.requests.count(path_contains=":runReport") == 1  # no waiting, no retries


def test_late_data_is_corrected_by_the_late_data_schedules_re_pull(sandbox, tmp_path):
    report = REPORT["traffic_by_channel"]
    first = END - timedelta(days=2)
    sandbox.ga4.today = END + timedelta(days=1)  # the morning after END: GA4 is still processing
    assert materialize_ga4(sandbox, tmp_path, first, END, [ASSET[report.name]]).success
    early = stored(tmp_path, report)
    settled = expected(sandbox, report, first, END, settled=True)
    assert_frame_equal(early, expected(sandbox, report, first, END))
    assert early["sessions"].sum() < settled["sessions"].sum()

    sandbox.ga4.today = END + timedelta(days=4)  # GA4 has finished with those days
    schedule = defs().get_schedule_def("ga4_late_data_schedule")
    morning = datetime.combine(END + timedelta(days=1), time(5), tzinfo=UTC)
    [request] = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=morning)).run_requests
    result = dg.materialize(
        [ASSET[report.name]],
        resources={"ga4": ga4_resource(sandbox), "io_manager": PartitionedParquetIOManager(base_dir=str(tmp_path))},
        tags=request.tags,
    )
    assert result.success
    assert_frame_equal(stored(tmp_path, report), settled)  # replaced, not appended


def test_thresholding_and_other_rows_are_warnings_with_their_details(sandbox, tmp_path):
    sandbox.ga4.thresholding = True
    sandbox.ga4.other_row_limit = 20
    result = materialize_ga4(sandbox, tmp_path, FIRST, END)
    assert result.success  # GA4's caveats warn; they do not stop the data

    by_country = _checks(result, REPORT["traffic_by_channel"])  # country is thresholded
    assert not by_country["not_thresholded"].passed
    assert by_country["not_thresholded"].severity == dg.AssetCheckSeverity.WARN
    by_page = _checks(result, REPORT["landing_pages"])  # landing pages overflow into "(other)"
    assert not by_page["no_other_row"].passed
    assert by_page["no_other_row"].metadata["other_rows"].value > 0
    assert by_page["not_thresholded"].passed
    for report in REPORTS:
        assert _checks(result, report)["rows_match_schema"].passed
        assert _checks(result, report)["not_sampled"].passed


def test_sampled_reports_are_flagged_with_the_sampled_share(sandbox, tmp_path):
    sandbox.ga4.sampling_threshold_sessions = 100
    result = materialize_ga4(sandbox, tmp_path, FIRST, END)
    assert result.success

    for report in REPORTS:
        sampled = _checks(result, report)["not_sampled"]
        assert not sampled.passed and sampled.severity == dg.AssetCheckSeverity.WARN
        assert "GA4 sampled the data" in sampled.description
        assert _metadata(result, report)["sampled"] is True


@pytest.mark.parametrize(
    "fault",
    [{"kind": "status", "times": 3, "status": 503}, {"kind": "drop", "times": 2}],
    ids=["503-burst", "dropped-connection"],
)
def test_transient_failures_are_retried_and_nothing_is_lost(sandbox, tmp_path, fault):
    options = dict(fault)
    sandbox.faults.add(options.pop("kind"), path_contains=":runReport", **options)
    report = REPORT["key_events_by_campaign"]
    assert materialize_ga4(sandbox, tmp_path, FIRST, END, [ASSET[report.name]]).success
    assert_frame_equal(stored(tmp_path, report), expected(sandbox, report, FIRST, END))
    assert not sandbox.faults.pending


def test_a_malformed_service_account_key_fails_naming_the_setting_not_its_contents(sandbox, tmp_path):
    key = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----MIIEv0nlyInTheKey'
    resource = ga4_resource(sandbox, api_endpoint="analyticsdata.googleapis.com", service_account_json=key)
    result = materialize_ga4(sandbox, tmp_path, END, END, [ASSET["traffic_by_channel"]], resource)

    assert not result.success
    logged = "\n".join(str(event) for event in result.all_events)
    assert "GA4_SERVICE_ACCOUNT_JSON is not a service account key" in logged
    assert "MIIEv0nlyInTheKey" not in logged
    assert sandbox.requests.count(path_contains=":runReport") == 0
