"""GA4 end to end: google-analytics-data's REST transport against the sandbox, reconciled with its truth."""

import json
import socket
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
import polars as pl
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
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


def failed_fast(sandbox, tmp_path, resource) -> str:
    """Read one report with `resource`; check the step failed without step retries, and return the
    failure's description. (How long that takes is measured in bench/fail_fast.py.)"""
    result = materialize_ga4(sandbox, tmp_path, END, END, [ASSET["traffic_by_channel"]], resource)
    assert not result.success
    assert not [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    [failure] = [event for event in result.all_events if event.is_step_failure]
    return failure.step_failure_data.user_failure_data.description


def service_account_key(token_uri: str = "https://oauth2.googleapis.com/token") -> dict[str, str]:
    """A well-formed service account key that no Google project knows."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "type": "service_account",
        "project_id": "revenue-tests",
        "private_key_id": "0123456789abcdef",
        "private_key": pem.decode(),
        "client_email": "pipelines@revenue-tests.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }


@pytest.fixture
def no_default_credentials(monkeypatch, tmp_path):
    """No Application Default Credentials anywhere google-auth looks (the variable, gcloud's files under
    HOME or CLOUDSDK_CONFIG); NO_GCE_CHECK keeps a CI runner on Google Cloud from finding its own."""
    empty = tmp_path / "empty-home"
    empty.mkdir()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    return empty


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


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
    assert failure.step_failure_data.user_failure_data.description == (
        f"GA4 property {sandbox.ga4.property_id} has used up its quota of property tokens per day. It refills "
        "within 24 hours, not within the hour, so the step stops instead of waiting; materialize these days "
        "again tomorrow."
    )
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
        # samplingMetadatas count events (samplesReadCount of samplingSpaceSize), not sessions
        assert sampled.description.startswith(f"ga4/raw/{report.name}: GA4 sampled the data; the metrics are ")
        assert sampled.description.endswith("% of the property's events in the date range.")
        assert "session" not in sampled.description
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


def test_a_malformed_service_account_key_fails_at_once_naming_the_setting_not_its_contents(sandbox, tmp_path):
    key = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----MIIEv0nlyInTheKey'
    resource = ga4_resource(sandbox, api_endpoint="analyticsdata.googleapis.com", service_account_json=key)
    message = failed_fast(sandbox, tmp_path, resource)

    assert message.startswith("GA4_SERVICE_ACCOUNT_JSON is not a service account key")
    assert "MIIEv0nlyInTheKey" not in message
    assert sandbox.requests.count(path_contains=":runReport") == 0


def test_no_credentials_fail_at_once_naming_the_setting(sandbox, tmp_path, no_default_credentials):
    resource = ga4_resource(sandbox, api_endpoint="analyticsdata.invalid")
    message = failed_fast(sandbox, tmp_path, resource)

    assert message.startswith(
        "GA4 has no credentials: GA4_SERVICE_ACCOUNT_JSON is unset, so Application Default Credentials are used"
    )


def test_default_credentials_that_cannot_be_refreshed_fail_at_once_naming_the_setting(
    sandbox, tmp_path, no_default_credentials, monkeypatch
):
    # gcloud's user credentials, refreshed at Google's token endpoint, which this machine cannot reach
    adc = no_default_credentials / "application_default_credentials.json"
    user = {"client_id": "id", "client_secret": "s3cret", "refresh_token": "1//0nlyInTheFile"}
    adc.write_text(json.dumps({"type": "authorized_user", **user}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port()}")
    resource = ga4_resource(sandbox, api_endpoint="analyticsdata.googleapis.com")
    message = failed_fast(sandbox, tmp_path, resource)

    assert message == (
        "The token endpoint of GA4's credentials is unreachable at https://oauth2.googleapis.com/token: the "
        "connection was refused. Check Application Default Credentials (GA4_SERVICE_ACCOUNT_JSON is unset)."
    )


def test_a_service_account_key_ga4_refuses_fails_at_once_naming_the_setting(sandbox, tmp_path):
    key = service_account_key()
    sandbox.faults.add("status", times=10, status=401, path_contains=":runReport")  # Google knows no such key
    resource = ga4_resource(sandbox, service_account_json=json.dumps(key))
    message = failed_fast(sandbox, tmp_path, resource)

    assert message.startswith(
        "GA4 refused the credentials of GA4_SERVICE_ACCOUNT_JSON: Request had invalid authentication credentials."
    )
    assert sandbox.url not in message  # GA4's words, not the request's URL
    assert key["private_key"].splitlines()[1] not in message
    assert sandbox.requests.count(path_contains=":runReport") <= 3  # google-auth's own re-signed tries only


def test_a_property_ga4_refuses_fails_at_once_naming_the_setting(sandbox, tmp_path):
    message = failed_fast(sandbox, tmp_path, ga4_resource(sandbox, property_id="1"))  # not this identity's
    assert message.startswith("GA4 refused access to property 1: User does not have sufficient permissions")
    assert "Check GA4_PROPERTY_ID" in message


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://127.0.0.1:{closed}", "the connection was refused"),
        ("https://127.0.0.1:{sandbox}", "the TLS handshake failed"),  # https to the sandbox's http
    ],
    ids=["connection-refused", "tls-to-http"],
)
def test_an_endpoint_that_cannot_be_reached_fails_at_once_naming_the_setting(sandbox, tmp_path, endpoint, reason):
    endpoint = endpoint.format(closed=closed_port(), sandbox=sandbox.url.rsplit(":", 1)[1])
    message = failed_fast(sandbox, tmp_path, ga4_resource(sandbox, api_endpoint=endpoint))

    assert message.startswith(f"GA4 is unreachable at {endpoint}: {reason}")
    assert message.endswith("Check GA4_API_ENDPOINT.")


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("{sandbox_host}", "has no scheme, so the client would speak https to this machine"),
        ("ftp://analyticsdata.googleapis.com", "must start with https:// or http://"),
        ("http://127.0.0.1:port", "has a port that is not a number"),
    ],
    ids=["bare-host-port", "unknown-scheme", "port-not-a-number"],
)
def test_an_endpoint_of_a_form_that_cannot_work_fails_before_any_request(sandbox, tmp_path, endpoint, problem):
    endpoint = endpoint.format(sandbox_host=sandbox.url.removeprefix("http://"))
    message = failed_fast(sandbox, tmp_path, ga4_resource(sandbox, api_endpoint=endpoint))

    assert message.startswith(f"GA4_API_ENDPOINT {endpoint!r} {problem}")
    assert sandbox.requests.count() == 0
