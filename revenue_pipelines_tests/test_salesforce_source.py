"""Salesforce end to end: the real simple-salesforce client against the TLS sandbox, reconciled with its truth."""

import json
import os
import re
import socket
import stat
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs

import certifi
import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.salesforce.assets import salesforce_opportunities
from revenue_pipelines.defs.salesforce.resources import SalesforceResource
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines.lib.token_store import FileTokenStore
from revenue_pipelines.lib.validation import QUARANTINE_REASON
from revenue_pipelines_tests.conftest import (
    END,
    materialize_range,
    materialize_salesforce,
    read_layer,
    salesforce_resource,
)

FIRST = END - timedelta(days=4)
SOBJECTS = {
    "accounts": "Account",
    "opportunities": "Opportunity",
    "contacts": "Contact",
    "leads": "Lead",
    "users": "User",
}


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory(seed=5, companies=80, days=8, opportunities=2400)


def _window(first: date, last: date) -> tuple[datetime, datetime]:
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=(last - first).days + 1)


def expected(sandbox, table: str, first: date = FIRST, last: date = END) -> pl.DataFrame:
    """Ground truth: every record, deleted ones included, whose SystemModstamp falls in [first, last]."""
    start, end = _window(first, last)
    truth = sandbox.salesforce.truth(SOBJECTS[table])
    return truth.filter(pl.col("SystemModstamp").is_between(start, end, closed="left")).sort("Id")


def _reconcile(sandbox, data_dir, table: str, first: date = FIRST, last: date = END) -> pl.DataFrame:
    """Every expected record exactly once, deleted ones flagged, each in the partition of its change day."""
    raw = read_layer(data_dir, "salesforce", "raw", table)
    assert read_layer(data_dir, "salesforce", "quarantine", table).is_empty()
    assert raw["id"].is_duplicated().sum() == 0
    truth = expected(sandbox, table, first, last)
    assert sorted(raw["id"].to_list()) == truth["Id"].to_list()
    joined = raw.join(truth, left_on="id", right_on="Id", suffix="_truth")
    deleted_in_truth = joined["IsDeleted_truth"] if "IsDeleted" in truth.columns else False  # User has none
    assert (joined["IsDeleted"] == deleted_in_truth).all()
    assert (joined["changed_at"] == joined["SystemModstamp"]).all()
    assert (raw[PARTITION_COLUMN] == raw["changed_at"].dt.date()).all()
    return raw


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, object]:
    [materialization, *_] = result.asset_materializations_for_node(node)
    return {name: value.value for name, value in materialization.metadata.items()}


def test_a_range_of_every_object_reconciles_with_ground_truth_including_deletes(sandbox, tmp_path):
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END)
    assert result.success

    for table in SOBJECTS:
        raw = _reconcile(sandbox, tmp_path, table)
        assert raw.height > 0
        if table != "users":
            assert raw["IsDeleted"].sum() > 0, f"{table}: the range should include deleted records"
    opportunities = read_layer(tmp_path, "salesforce", "raw", "opportunities")
    truth = expected(sandbox, "opportunities")
    joined = opportunities.join(truth, left_on="id", right_on="Id", suffix="_truth")
    assert (joined["Amount"] == joined["Amount_truth"]).all()
    assert (joined["StageName"] == joined["StageName_truth"]).all()
    assert (joined["CloseDate"].eq_missing(joined["CloseDate_truth"])).all()

    metadata = _metadata(result, "salesforce_opportunities")
    assert metadata["deleted_rows"] == truth["IsDeleted"].sum()
    assert metadata["session_renewals"] == 0
    assert "of 100,000 daily requests" in str(metadata["org_api_usage"])


def test_a_session_that_expires_again_and_again_mid_run_is_renewed_and_nothing_is_lost(sandbox, tmp_path):
    sandbox.salesforce.session_max_calls = 3
    resource = salesforce_resource(sandbox, tmp_path / "tokens", batch_size=200)
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities], resource)
    assert result.success

    _reconcile(sandbox, tmp_path, "opportunities")
    renewals = _metadata(result, "salesforce_opportunities")["session_renewals"]
    assert renewals >= 2
    assert sandbox.salesforce.token_grants == renewals + 1  # the first session, then one per expiry


def test_rotated_refresh_tokens_are_kept_owner_only_and_used_by_the_next_run(sandbox, tmp_path):
    sandbox.salesforce.rotate_refresh_tokens = True
    sandbox.salesforce.session_max_calls = 3
    configured = sandbox.env()["SALESFORCE_REFRESH_TOKEN"]
    token_dir = tmp_path / "tokens"
    resource = salesforce_resource(sandbox, token_dir, batch_size=200)
    assert materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities], resource).success
    _reconcile(sandbox, tmp_path, "opportunities")

    assert sandbox.salesforce.token_grants >= 3
    assert sandbox.salesforce.refresh_token != configured  # the configured token no longer works
    [token_file] = token_dir.glob("*.json")
    assert json.loads(token_file.read_text())["refresh_token"] == sandbox.salesforce.refresh_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_dir.stat().st_mode) == 0o700

    # The next run starts from the store, not from the configured (now dead) refresh token.
    sandbox.salesforce.expire_sessions()
    again = salesforce_resource(sandbox, token_dir, refresh_token=configured)
    assert materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], again).success

    # Without the store, the configured token is refused, and the error says what to do, not the token.
    lost = salesforce_resource(sandbox, tmp_path / "empty_store", refresh_token=configured)
    failed = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], lost)
    assert not failed.success
    message = _failure_message(failed)
    assert "invalid_grant" in message and "SALESFORCE_REFRESH_TOKEN" in message
    assert configured not in message


def test_ties_on_systemmodstamp_across_batch_boundaries_are_read_exactly_once(sandbox, tmp_path):
    batch = 200
    # A bulk job stamps more records than a batch holds with one instant, so the tie must straddle
    # a batch boundary whatever else the day holds.
    job_at = datetime.combine(END, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12, microseconds=123_000)
    live = sandbox.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))
    for record_id in live["Id"].head(batch + 50):
        sandbox.salesforce.touch("Opportunity", record_id, job_at)
    stamps = expected(sandbox, "opportunities", END, END).sort("SystemModstamp", "Id")["SystemModstamp"]
    assert any(stamps[i - 1] == stamps[i] for i in range(batch, len(stamps), batch))

    sandbox.salesforce.session_max_calls = 2  # and renew sessions right at those boundaries
    resource = salesforce_resource(sandbox, tmp_path / "tokens", batch_size=batch)
    assert materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], resource).success
    _reconcile(sandbox, tmp_path, "opportunities", END, END)


def test_a_query_timeout_splits_the_window_until_each_half_answers(sandbox, tmp_path):
    sandbox.salesforce.query_timeout_rows = 100  # a day holds about 300; no instant more than 100
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities])
    assert result.success

    _reconcile(sandbox, tmp_path, "opportunities")
    assert sandbox.salesforce.query_timeouts > 0
    assert _metadata(result, "salesforce_opportunities")["window_splits"] == sandbox.salesforce.query_timeouts


def _bulk_stamp(sandbox, records: int, at: datetime) -> None:
    """Stamp `records` live opportunities with one instant, as a bulk job does."""
    live = sandbox.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))
    for record_id in live["Id"].head(records):
        sandbox.salesforce.touch("Opportunity", record_id, at)


def test_a_cursor_dropped_mid_read_resumes_after_the_last_record_read_and_nothing_is_lost(sandbox, tmp_path):
    batch = 200
    # A tie wider than a batch, so some cursor is lost in the middle of one SystemModstamp.
    _bulk_stamp(sandbox, batch + 50, datetime.combine(END, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9))
    # Salesforce drops a cursor left idle (15 minutes; here 0.2 s): every next batch arrives too late.
    sandbox.salesforce.cursor_idle_seconds = 0.2
    sandbox.faults.add("slow", path_contains="/queryAll/01g", times=20, seconds=0.4)
    resource = salesforce_resource(sandbox, tmp_path / "tokens", batch_size=batch)
    result = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], resource)
    assert result.success

    _reconcile(sandbox, tmp_path, "opportunities", END, END)
    resumes = _metadata(result, "salesforce_opportunities")["query_resumes"]
    assert resumes == sandbox.salesforce.cursors_expired >= 2
    assert any("Id >" in text for text in _queries(sandbox))


def test_a_query_that_outlasts_the_read_timeout_splits_the_window(sandbox, tmp_path):
    # Salesforce answers QUERY_TIMEOUT only after its own 2 minutes, when the client has stopped waiting.
    sandbox.faults.add("slow", path_contains="/queryAll/?q=", seconds=2.5)
    resource = salesforce_resource(sandbox, tmp_path / "tokens", timeout_seconds=1.0)
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities], resource)
    assert result.success

    _reconcile(sandbox, tmp_path, "opportunities")
    metadata = _metadata(result, "salesforce_opportunities")
    assert metadata["window_splits"] == 1
    assert metadata["query_window_seconds"] == 5 * 86_400 // 2
    assert not sandbox.faults.pending


def test_the_next_run_starts_from_the_window_that_answered(sandbox, tmp_path):
    sandbox.salesforce.query_timeout_rows = 100
    instance = dg.DagsterInstance.ephemeral()
    resources = {"salesforce": salesforce_resource(sandbox, tmp_path / "tokens")}

    def run() -> dg.ExecuteInProcessResult:
        result = materialize_range([salesforce_opportunities], resources, tmp_path, FIRST, END, instance=instance)
        assert result.success
        _reconcile(sandbox, tmp_path, "opportunities")
        return result

    first = run()
    first_timeouts = sandbox.salesforce.query_timeouts
    remembered = _metadata(first, "salesforce_opportunities")["query_window_seconds"]
    assert first_timeouts > 0 and remembered < 86_400

    sandbox.requests.clear()
    run()
    start, end = re.findall(r"SystemModstamp [<>]=? (\S+)", _queries(sandbox)[0])[:2]
    assert datetime.fromisoformat(end) - datetime.fromisoformat(start) == timedelta(seconds=remembered)
    assert sandbox.salesforce.query_timeouts - first_timeouts < first_timeouts


def _queries(sandbox) -> list[str]:
    """The SOQL of every query the sandbox was sent, in order."""
    return [parse_qs(entry.query)["q"][0] for entry in sandbox.requests.log() if "q=" in entry.query]


def test_the_budget_guard_stops_before_the_share_of_the_daily_limit_is_used(sandbox, tmp_path):
    sandbox.salesforce.daily_api_limit = 10_000
    sandbox.salesforce.api_usage = 7_999
    resource = salesforce_resource(sandbox, tmp_path / "tokens", batch_size=200, max_api_usage_share=0.8)
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities], resource)

    assert not result.success
    message = _failure_message(result)
    assert "8,000 of its 10,000 daily API requests" in message and "stops at about 80%" in message
    assert sandbox.salesforce.api_usage == 8_000  # stopped at the line, not past it


def test_an_exhausted_org_budget_fails_clearly_without_retrying(sandbox, tmp_path):
    sandbox.salesforce.daily_api_limit = 1_000
    sandbox.salesforce.api_usage = 1_000
    resource = salesforce_resource(sandbox, tmp_path / "tokens", max_api_usage_share=1.0)
    result = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], resource)

    assert not result.success
    assert "REQUEST_LIMIT_EXCEEDED" in _failure_message(result)
    assert sandbox.requests.count(status=403) == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "rate_limit", "times": 3, "retry_after": 1},
        {"kind": "rate_limit", "times": 3},
        {"kind": "status", "times": 4, "status": 503},
        {"kind": "drop", "times": 2},
        {"kind": "drop_mid_body", "times": 2},
    ],
    ids=["429-retry-after", "429-backoff", "503-burst", "dropped-connection", "dropped-mid-body"],
)
def test_transport_faults_mid_read_lose_and_duplicate_nothing(sandbox, tmp_path, fault):
    options = dict(fault)
    sandbox.faults.add(options.pop("kind"), path_contains="/query", skip=2, **options)
    resource = salesforce_resource(sandbox, tmp_path / "tokens", batch_size=200)
    assert materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities], resource).success
    _reconcile(sandbox, tmp_path, "opportunities")
    assert not sandbox.faults.pending


def test_unusable_rows_are_quarantined_and_odd_values_kept_with_a_warning(sandbox, tmp_path):
    malformed = {
        kind: sandbox.salesforce.malform("Opportunity", kind, within=_window(FIRST, END))
        for kind in ("short_id", "truncated_id", "negative_amount", "unknown_stage", "closed_without_close_date")
    }
    result = materialize_salesforce(sandbox, tmp_path, FIRST, END, [salesforce_opportunities])
    assert result.success  # two unusable rows of about 1,500 stay within the 1% tolerance

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    schema_check = checks["rows_match_schema"]
    assert not schema_check.passed and schema_check.severity == dg.AssetCheckSeverity.WARN
    assert schema_check.description.startswith("salesforce/raw/opportunities: 2 of ")
    assert "id failed str_matches" in schema_check.description
    assert "Amount failed greater_than_or_equal_to(0) in 1 row" in schema_check.description
    fields_check = checks["fields_well_formed"]
    assert fields_check.severity == dg.AssetCheckSeverity.WARN
    assert "StageName failed isin" in fields_check.description and "(e.g. Closed Maybe)" in fields_check.description
    assert "CloseDate_present_when_IsClosed failed in 1 row" in fields_check.description

    quarantined = read_layer(tmp_path, "salesforce", "quarantine", "opportunities")
    raw = read_layer(tmp_path, "salesforce", "raw", "opportunities")
    assert quarantined.height == 2 and quarantined[QUARANTINE_REASON].is_not_null().all()
    assert set(quarantined["id"]) == {malformed["truncated_id"], malformed["negative_amount"]}
    # A 15-character id is a Salesforce id too; odd descriptive values are kept as received.
    kept = dict(zip(raw["id"], raw["malformed_fields"], strict=True))
    assert kept[malformed["short_id"]] is None
    assert kept[malformed["unknown_stage"]] == "StageName"
    assert kept[malformed["closed_without_close_date"]] == "CloseDate_present_when_IsClosed"
    assert raw.height + quarantined.height == expected(sandbox, "opportunities").height


def test_the_ca_bundle_is_pinned_against_the_callers_environment(sandbox, tmp_path, monkeypatch):
    # Some machines point REQUESTS_CA_BUNDLE at a bundle that knows nothing of this server.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities]).success

    untrusted = _production_resource(sandbox, tmp_path / "tokens", ca_bundle=None)
    result = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], untrusted)
    message = _failed_once_without_retries(result)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "SALESFORCE_CA_BUNDLE" in message and "SALESFORCE_TOKEN_URL" in message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("host", "reason"),
    [(f"127.0.0.1:{_closed_port()}", "refused"), ("login.salesforce.invalid", "does not resolve")],
    ids=["connection-refused", "unknown-host"],
)
def test_an_unreachable_token_url_fails_without_retries_naming_the_variable(sandbox, tmp_path, host, reason):
    resource = _production_resource(sandbox, tmp_path / "tokens", token_url=f"https://{host}/services/oauth2/token")
    result = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], resource)

    message = _failed_once_without_retries(result)
    assert "SALESFORCE_TOKEN_URL" in message and reason in message and host in message


def test_wrong_client_credentials_fail_fast_and_no_secret_reaches_the_logs(sandbox, tmp_path):
    env = sandbox.env()
    resource = salesforce_resource(sandbox, tmp_path / "tokens", client_secret="not-the-secret")
    result = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities], resource)
    message = _failed_once_without_retries(result)
    assert "invalid_client" in message
    for variable in ("SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET", "SALESFORCE_REFRESH_TOKEN"):
        assert variable in message

    ok = materialize_salesforce(sandbox, tmp_path, END, END, [salesforce_opportunities])
    assert ok.success
    logged = "\n".join(str(event) for run in (result, ok) for event in run.all_events)
    for secret in (env["SALESFORCE_CLIENT_SECRET"], env["SALESFORCE_REFRESH_TOKEN"], "not-the-secret"):
        assert secret not in logged
    for path in (tmp_path / ".tokens").glob("*.json"):
        assert json.loads(path.read_text())["access_token"] not in logged


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures, "the step should have failed"
    return "\n".join(str(event.step_failure_data.error) for event in failures) + os.linesep


def _failed_once_without_retries(result: dg.ExecuteInProcessResult) -> str:
    """The failure message of a run whose step failed once, Dagster's retry policy not applied."""
    assert not result.success
    types = [event.event_type for event in result.all_events]
    assert types.count(dg.DagsterEventType.STEP_FAILURE) == 1
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in types
    return _failure_message(result)


def _production_resource(sandbox, token_dir, **overrides) -> SalesforceResource:
    """The resource with the sandbox's credentials and every other setting at its production default."""
    env = sandbox.env()
    config = {
        "token_url": env["SALESFORCE_TOKEN_URL"],
        "client_id": env["SALESFORCE_CLIENT_ID"],
        "client_secret": env["SALESFORCE_CLIENT_SECRET"],
        "refresh_token": env["SALESFORCE_REFRESH_TOKEN"],
        "ca_bundle": sandbox.ca_bundle,
        "token_store": FileTokenStore(directory=str(token_dir)),
        **overrides,
    }
    return SalesforceResource(**config)
