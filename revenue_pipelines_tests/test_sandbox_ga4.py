"""The GA4 sandbox speaks the Data API's REST dialect: checked with the real BetaAnalyticsDataClient
(REST transport, anonymous credentials) against the property's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import polars as pl
import pytest
import urllib3
from google.analytics.data_v1beta import BetaAnalyticsDataClient
from google.analytics.data_v1beta.types import (
    DateRange,
    Dimension,
    Metric,
    MetricType,
    OrderBy,
    RunReportRequest,
    RunReportResponse,
)
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from polars.testing import assert_frame_equal

from revenue_pipelines.sandbox.ga4 import TOKEN_ROWS
from revenue_pipelines.sandbox.ga4_data import CHANNELS, DIMENSIONS, METRICS, generate_property
from revenue_pipelines.sandbox.hubspot_data import SOURCE_DETAILS
from revenue_pipelines.sandbox.salesforce_data import LEAD_SOURCES

END = date(2026, 11, 20)  # the sandbox's last day of traffic (conftest's END); its today is the 21st
TRAFFIC = ("sessionSource", "sessionMedium", "sessionCampaignName")


def client(sb) -> BetaAnalyticsDataClient:
    return BetaAnalyticsDataClient(
        credentials=AnonymousCredentials(), transport="rest", client_options={"api_endpoint": sb.url}
    )


def run(sb, dimensions, metrics, start=END - timedelta(days=6), end=END, **fields) -> RunReportResponse:
    """One runReport through the real client; dates as GA4 takes them (YYYY-MM-DD or keywords)."""
    fields.setdefault("date_ranges", [DateRange(start_date=str(start), end_date=str(end))])
    request = RunReportRequest(
        property=f"properties/{sb.ga4.property_id}",
        dimensions=[Dimension(name=name) for name in dimensions],
        metrics=[Metric(name=name) for name in metrics],
        **fields,
    )
    return client(sb).run_report(request)


def rows(response: RunReportResponse) -> pl.DataFrame:
    """A response as truth() shapes it: dimensions as text, integer metrics Int64, others Float64."""
    message = RunReportResponse.pb(response)
    schema = {header.name: pl.String for header in message.dimension_headers}
    schema |= {
        header.name: pl.Int64 if header.type_ == MetricType.TYPE_INTEGER else pl.Float64
        for header in message.metric_headers
    }
    values = [
        [value.value for value in row.dimension_values] + [value.value for value in row.metric_values]
        for row in message.rows
    ]
    text = pl.DataFrame(values, schema=dict.fromkeys(schema, pl.String), orient="row")
    return text.with_columns(pl.col(name).cast(dtype) for name, dtype in schema.items())


def google_error(raised: pytest.ExceptionInfo) -> dict:
    """The JSON error body the sandbox sent, as the client received it."""
    return raised.value.response.json()["error"]


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory(seed=5, companies=5, days=10)


def test_a_report_is_its_truth_with_typed_headers(sb):
    dimensions = ("date", *TRAFFIC, "deviceCategory")
    response = run(sb, dimensions, tuple(METRICS))

    assert [header.name for header in response.dimension_headers] == list(dimensions)
    assert {header.name: MetricType(header.type_).name for header in response.metric_headers} == METRICS
    assert METRICS["keyEvents"] == "TYPE_FLOAT" and METRICS["totalRevenue"] == "TYPE_CURRENCY"
    truth = sb.ga4.truth(dimensions, tuple(METRICS), END - timedelta(days=6), END)
    assert response.row_count == truth.height > 200
    assert_frame_equal(rows(response), truth)
    assert response.kind == "analyticsData#runReport" and response.metadata.currency_code == "USD"


def test_rows_follow_order_bys_and_dates_take_keywords(sb):
    by_date_desc = OrderBy(dimension=OrderBy.DimensionOrderBy(dimension_name="date"), desc=True)
    by_source = OrderBy(dimension=OrderBy.DimensionOrderBy(dimension_name="sessionSource"))
    response = run(
        sb, ("date", "sessionSource"), ("sessions",), "3daysAgo", "yesterday", order_bys=[by_date_desc, by_source]
    )
    truth = sb.ga4.truth(("date", "sessionSource"), ("sessions",), END - timedelta(days=2), END)
    assert_frame_equal(rows(response), truth.sort("date", "sessionSource", descending=[True, False]))

    by_sessions = OrderBy(metric=OrderBy.MetricOrderBy(metric_name="sessions"))
    ascending = rows(run(sb, ("sessionSource",), ("sessions",), order_bys=[by_sessions]))
    assert ascending["sessions"].is_sorted() and ascending.height == len({c.session_source for c in CHANNELS})
    default = rows(run(sb, ("sessionSource",), ("sessions",)))
    assert default["sessions"].is_sorted(descending=True)  # GA4's default: first metric descending


def test_several_date_ranges_add_the_date_range_dimension(sb):
    ranges = [
        DateRange(start_date="2026-11-18", end_date="2026-11-20", name="recent"),
        DateRange(start_date="2026-11-11", end_date="2026-11-17"),
    ]
    response = run(sb, ("sessionMedium",), ("sessions",), date_ranges=ranges)

    assert [header.name for header in response.dimension_headers] == ["sessionMedium", "dateRange"]
    got = rows(response)
    for label, start, end in (
        ("recent", date(2026, 11, 18), END),
        ("date_range_1", date(2026, 11, 11), date(2026, 11, 17)),
    ):
        in_range = got.filter(pl.col("dateRange") == label).drop("dateRange")
        assert_frame_equal(in_range, sb.ga4.truth(("sessionMedium",), ("sessions",), start, end))


def test_traffic_arrives_through_the_crm_lead_sources(sb):
    dimensions = (*TRAFFIC, "sessionDefaultChannelGroup")
    served = rows(run(sb, dimensions, ("sessions",), END - timedelta(days=9), END)).drop("sessions")
    declared = pl.DataFrame(
        [(c.session_source, c.session_medium, c.session_campaign, c.channel_group) for c in CHANNELS],
        schema=list(dimensions),
        orient="row",
    )
    assert_frame_equal(served, declared, check_row_order=False)
    hubspot_details = {detail for details in SOURCE_DETAILS.values() for detail in details}
    assert {channel.hubspot_detail for channel in CHANNELS} == hubspot_details
    assert {channel.salesforce_lead_source for channel in CHANNELS} == set(LEAD_SOURCES) - {"Trade Show"}
    # Every HubSpot drill-down is a GA4 campaign, or the search engine of organic traffic.
    campaigns_and_engines = set(served["sessionCampaignName"]) | set(
        served.filter(sessionMedium="organic")["sessionSource"]
    )
    assert hubspot_details - {None} <= campaigns_and_engines


def test_total_users_are_not_additive_but_sessions_are(sb):
    daily = sb.ga4.truth(("date",), ("sessions", "totalUsers"), END - timedelta(days=9), END)
    by_page = sb.ga4.truth(("date", "landingPage"), ("sessions", "totalUsers"), END - timedelta(days=9), END)
    summed = by_page.group_by("date").agg(pl.col("sessions", "totalUsers").sum()).sort("date")
    daily = daily.sort("date")

    assert daily["sessions"].to_list() == summed["sessions"].to_list()
    assert (daily["totalUsers"] < summed["totalUsers"]).all()
    assert (daily["totalUsers"] <= daily["sessions"]).all()
    assert (
        daily["totalUsers"] >= by_page.group_by("date").agg(pl.col("totalUsers").max()).sort("date")["totalUsers"]
    ).all()


def test_offset_paging_over_250000_rows_returns_every_row_once(sandbox_factory):
    sb = sandbox_factory(seed=2, companies=5, days=3, ga4_rows_per_day=110_000)
    sb.ga4.today = END + timedelta(days=30)  # settled: every row of the three days is in
    dimensions = ("date", "landingPage", "sessionCampaignName")
    truth = sb.ga4.truth(dimensions, (), END - timedelta(days=2), END)
    assert truth.height > 250_000

    first = run(sb, dimensions, (), END - timedelta(days=2), END, limit=300_000)
    assert len(first.rows) == 250_000 and first.row_count == truth.height  # a limit above 250,000 is cut to it
    rest = run(sb, dimensions, (), END - timedelta(days=2), END, limit=250_000, offset=250_000)
    paged = pl.concat([rows(first), rows(rest)])
    assert_frame_equal(paged, truth)
    assert paged.n_unique() == paged.height


@pytest.mark.parametrize(
    ("dimension", "metric", "message"),
    [
        (
            "date",
            "sesions",
            "Field sesions is not a valid metric.  For a list of valid dimensions and metrics, see "
            "https://developers.google.com/analytics/devguides/reporting/data/v1/api-schema ",
        ),
        (
            "sessionsource",
            "sessions",
            "Field sessionsource is not a valid dimension. For a list of valid dimensions and metrics, see "
            "https://developers.google.com/analytics/devguides/reporting/data/v1/api-schema ",
        ),
    ],
)
def test_unknown_names_are_rejected_in_googles_words(sb, dimension, metric, message):
    with pytest.raises(exceptions.BadRequest) as raised:
        run(sb, (dimension,), (metric,))
    assert google_error(raised) == {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}
    assert raised.value.message.endswith(message)
    # Over REST, google-api-core picks the class by HTTP status: BadRequest, never InvalidArgument.
    assert not isinstance(raised.value, exceptions.InvalidArgument)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"date_ranges": []}, "A dateRange is required."),
        (
            {"date_ranges": [DateRange(start_date="2026-13-01", end_date="today")]},
            "Invalid startDate : 2026-13-01. startDate must be YYYY-MM-DD, NdaysAgo, yesterday, or today.",
        ),
        (
            {"date_ranges": [DateRange(start_date="today", end_date="yesterday")]},
            "start_date must be less than or equal to end_date. start_date = 2026-11-21 and end_date = 2026-11-20",
        ),
        ({"limit": -1}, "limit must be positive. The API received limit = -1"),
        (
            {"order_bys": [OrderBy(dimension=OrderBy.DimensionOrderBy(dimension_name="country"))]},
            "Field country exists in OrderBy but is not defined in input Dimensions/Metrics list",
        ),
    ],
)
def test_invalid_requests_are_rejected_in_googles_words(sb, fields, message):
    with pytest.raises(exceptions.BadRequest) as raised:
        run(sb, ("date",), ("sessions",), **fields)
    assert google_error(raised) == {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}


def test_another_property_is_forbidden(sb):
    request = RunReportRequest(
        property="properties/987654321",
        metrics=[Metric(name="sessions")],
        date_ranges=[DateRange(start_date="yesterday", end_date="today")],
    )
    with pytest.raises(exceptions.Forbidden) as raised:
        client(sb).run_report(request)
    assert google_error(raised)["status"] == "PERMISSION_DENIED"


def test_spent_hourly_tokens_answer_429_until_the_hour_has_passed(sb):
    sb.ga4.tokens_per_hour = 3
    sb.ga4.hour_seconds = 1.5  # a compressed clock
    for _ in range(3):
        run(sb, ("date",), ("sessions",))  # one token each: few rows scanned
    with pytest.raises(exceptions.TooManyRequests) as raised:
        run(sb, ("date",), ("sessions",))

    assert google_error(raised) == {
        "code": 429,
        "message": "Exhausted property tokens per hour. These quota tokens will return in under an hour. "
        "To learn more, see https://developers.google.com/analytics/devguides/reporting/data/v1/quotas",
        "status": "RESOURCE_EXHAUSTED",
    }
    assert not isinstance(raised.value, exceptions.ResourceExhausted)  # REST: by HTTP status only
    assert sb.ga4.quota_exhaustions == 1 and sb.ga4.tokens_consumed_hour == 3
    time.sleep(1.5)
    assert run(sb, ("date",), ("sessions",)).row_count == 7
    assert sb.ga4.tokens_consumed_hour == 1


def test_reset_quota_refills_a_spent_day(sb):
    sb.ga4.tokens_per_day = 1
    run(sb, ("date",), ("sessions",))
    with pytest.raises(exceptions.TooManyRequests, match="Exhausted property tokens per day"):
        run(sb, ("date",), ("sessions",))
    sb.ga4.reset_quota()
    assert run(sb, ("date",), ("sessions",)).row_count == 7


def test_property_quota_says_what_each_request_spent(sandbox_factory):
    sb = sandbox_factory(seed=5, companies=5, days=10, ga4_rows_per_day=2_500)
    facts = sb.ga4.facts.filter(pl.col("day") >= END - timedelta(days=6))
    cost = 1 + facts.height // TOKEN_ROWS
    assert cost == 2

    first = run(sb, ("date",), ("sessions",), return_property_quota=True).property_quota
    second = run(sb, ("date",), ("sessions",), return_property_quota=True).property_quota
    for name, limit in (
        ("tokens_per_day", 200_000),
        ("tokens_per_hour", 40_000),
        ("tokens_per_project_per_hour", 14_000),
    ):
        assert (getattr(first, name).consumed, getattr(first, name).remaining) == (cost, limit - cost)
        assert (getattr(second, name).consumed, getattr(second, name).remaining) == (cost, limit - 2 * cost)
    assert (second.concurrent_requests.consumed, second.concurrent_requests.remaining) == (0, 10)
    assert second.server_errors_per_project_per_hour.remaining == 10
    assert second.potentially_thresholded_requests_per_hour.remaining == 120
    assert "propertyQuota" not in RunReportResponse.to_dict(run(sb, ("date",), ("sessions",)))


def test_requests_beyond_the_concurrency_limit_are_refused(sb):
    sb.ga4.concurrent_requests = 2
    sb.ga4.latency_seconds = 1.0  # each report holds its slot this long

    def attempt(_: int) -> str:
        try:
            run(sb, ("date",), ("sessions",))
        except exceptions.TooManyRequests as error:
            return error.response.json()["error"]["message"]
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(attempt, range(4)))
    assert outcomes == ["Exhausted concurrent requests quota."] * 2 + ["ok"] * 2
    sb.ga4.latency_seconds = 0.0
    assert run(sb, ("date",), ("sessions",)).row_count == 7


def test_late_days_fill_in_as_today_moves_on(sandbox_factory):
    sb = sandbox_factory(seed=5, companies=5, days=10, ga4_rows_per_day=3_000)
    start = END - timedelta(days=3)
    early = rows(run(sb, ("date",), ("sessions",), start, END))
    assert_frame_equal(early, sb.ga4.truth(("date",), ("sessions",), start, END))
    settled = sb.ga4.truth(("date",), ("sessions",), start, END, settled=True)
    share = early.join(settled, on="date", suffix="_settled").select(
        "date", share=pl.col("sessions") / pl.col("sessions_settled")
    )
    expected = {"20261117": 1.0, "20261118": 0.973, "20261119": 0.91, "20261120": 0.7}  # 1 - 0.3**age
    for day, share_of_day in share.iter_rows():
        assert share_of_day == pytest.approx(expected[day], abs=0.03)

    sb.ga4.today = END + timedelta(days=5)
    assert_frame_equal(rows(run(sb, ("date",), ("sessions",), start, END)), settled, check_row_order=False)
    assert run(sb, ("date",), ("sessions",), "yesterday", "today").row_count == 0  # no traffic after END


def test_days_beyond_the_cardinality_limit_fold_into_other(sb):
    plain = run(sb, ("date", "landingPage"), ("sessions",), limit=100_000)
    assert not plain.metadata.data_loss_from_other_row
    assert "(other)" not in rows(plain)["landingPage"]

    sb.ga4.other_row_limit = 40
    folded = run(sb, ("date", "landingPage"), ("sessions",), limit=100_000)
    got = rows(folded)
    assert folded.metadata.data_loss_from_other_row
    per_day = got.group_by("date").agg(
        pl.len(), other=(pl.col("landingPage") == "(other)").sum(), sessions=pl.col("sessions").sum()
    )
    assert per_day["len"].to_list() == [41] * 7 and per_day["other"].to_list() == [1] * 7
    daily = sb.ga4.truth(("date",), ("sessions",), END - timedelta(days=6), END)
    assert_frame_equal(per_day.select("date", "sessions"), daily, check_row_order=False)
    assert not run(sb, ("date", "deviceCategory"), ("sessions",)).metadata.data_loss_from_other_row


def test_sampled_reports_estimate_and_say_so(sandbox_factory):
    sb = sandbox_factory(seed=5, companies=5, days=10, ga4_rows_per_day=2_000)
    truth = sb.ga4.truth(("sessionMedium",), ("sessions", "totalUsers"), END - timedelta(days=6), END)
    total = truth["sessions"].sum()
    assert not run(sb, ("sessionMedium",), ("sessions",)).metadata.sampling_metadatas

    sb.ga4.sampling_threshold_sessions = total // 5
    sampled = run(sb, ("sessionMedium",), ("sessions", "totalUsers"))
    [sampling] = sampled.metadata.sampling_metadatas
    assert sampling.sampling_space_size == total
    assert sampling.samples_read_count == pytest.approx(total / 5, rel=0.1)
    estimate = rows(sampled)
    assert estimate["sessions"].sum() == pytest.approx(total, rel=0.1)
    assert not estimate.equals(truth)
    assert_frame_equal(rows(run(sb, ("sessionMedium",), ("sessions", "totalUsers"))), estimate)  # deterministic


def test_thresholding_drops_country_rows_with_few_users(sb):
    dimensions = ("date", "country", "deviceCategory")
    truth = sb.ga4.truth(dimensions, ("sessions", "totalUsers"), END - timedelta(days=6), END)
    assert not run(sb, dimensions, ("sessions", "totalUsers")).metadata.subject_to_thresholding

    sb.ga4.thresholding = True
    thresholded = run(sb, dimensions, ("sessions", "totalUsers"), return_property_quota=True)
    assert thresholded.metadata.subject_to_thresholding
    assert thresholded.property_quota.potentially_thresholded_requests_per_hour.consumed == 1
    assert truth.filter(pl.col("totalUsers") < 10).height > 0
    assert_frame_equal(rows(thresholded), truth.filter(pl.col("totalUsers") >= 10))

    without_country = run(sb, ("date", "deviceCategory"), ("sessions",), return_property_quota=True)
    assert not without_country.metadata.subject_to_thresholding
    assert without_country.property_quota.potentially_thresholded_requests_per_hour.consumed == 0


def test_scripted_faults_answer_in_googles_dialect(sb):
    sb.faults.add("status", status=503, path_contains=":runReport")
    with pytest.raises(exceptions.ServiceUnavailable) as raised:
        run(sb, ("date",), ("sessions",))
    assert google_error(raised) == {
        "code": 503,
        "message": "The service is currently unavailable.",
        "status": "UNAVAILABLE",
    }
    sb.faults.add("rate_limit", path_contains=":runReport")
    with pytest.raises(exceptions.TooManyRequests) as raised:
        run(sb, ("date",), ("sessions",))
    assert google_error(raised)["status"] == "RESOURCE_EXHAUSTED"

    quota = run(sb, ("date",), ("sessions",), return_property_quota=True).property_quota
    assert quota.server_errors_per_project_per_hour.remaining == 9  # the 503 counts against the hour
    assert sb.requests.count(path_contains=":runReport", status=503) == 1


def test_ga4_shares_hubspots_listener_but_not_its_token_or_rate_limit(sandbox_factory):
    sb = sandbox_factory(seed=5, companies=5, rate_limit_per_10s=2)
    env = sb.env()
    assert env["GA4_API_ENDPOINT"] == sb.url and env["GA4_PROPERTY_ID"] == sb.ga4.property_id == "123456789"
    for _ in range(4):
        run(sb, ("date",), ("sessions",))
    http = urllib3.PoolManager(retries=False)
    assert http.request("GET", f"{sb.url}/crm/v3/objects/deals").status == 401
    auth = {"Authorization": f"Bearer {sb.token}"}
    statuses = [http.request("GET", f"{sb.url}/crm/v3/objects/deals", headers=auth).status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_the_wire_without_the_client_is_proto3_json(sb):
    """Without `$alt=json;enum-encoding=int` enums are names; int64 may be numbers or strings."""
    body = {
        "dimensions": [{"name": "date"}],
        "metrics": [{"name": "sessions"}, {"name": "keyEvents"}],
        "date_ranges": [{"startDate": "2026-11-14", "endDate": "2026-11-20"}],
        "limit": 3,
        "offset": "1",
    }
    url = f"{sb.url}/v1beta/properties/{sb.ga4.property_id}:runReport"
    reply = json.loads(urllib3.request("POST", url, body=json.dumps(body).encode()).data)

    assert reply["metricHeaders"] == [
        {"name": "sessions", "type": "TYPE_INTEGER"},
        {"name": "keyEvents", "type": "TYPE_FLOAT"},
    ]
    assert reply["rowCount"] == 7 and len(reply["rows"]) == 3
    truth = sb.ga4.truth(("date",), ("sessions", "keyEvents"), "2026-11-14", "2026-11-20").slice(1, 3)
    assert reply["rows"][0] == {
        "dimensionValues": [{"value": truth["date"][0]}],
        "metricValues": [{"value": str(truth["sessions"][0])}, {"value": str(int(truth["keyEvents"][0]))}],
    }
    unknown = urllib3.request("POST", url, body=b'{"metric": []}')
    assert json.loads(unknown.data)["error"]["message"].startswith(
        'Invalid JSON payload received. Unknown name "metric"'
    )


def test_300000_generated_rows_are_one_per_dimension_combination_and_depend_only_on_the_seed():
    """How fast they are generated is bench/ga4_generate.py's to say."""
    facts = generate_property(7, 3, END, 100_000)
    assert facts.height > 270_000 and facts.select(*DIMENSIONS).n_unique() == facts.height
    assert generate_property(7, 10, END, 500).equals(generate_property(7, 10, END, 500))
    assert not generate_property(8, 10, END, 500).equals(generate_property(7, 10, END, 500))


def test_cli_run_passes_the_ga4_environment():
    check = (
        "import json, os, sys, urllib3; "
        "body = {'dimensions': [{'name': n} for n in ('date', 'landingPage', 'sessionCampaignName', 'country')], "
        "'dateRanges': [{'startDate': '30daysAgo', 'endDate': 'yesterday'}]}; "
        "url = os.environ['GA4_API_ENDPOINT'] + '/v1beta/properties/' + os.environ['GA4_PROPERTY_ID'] + ':runReport'; "
        "count = json.loads(urllib3.request('POST', url, body=json.dumps(body)).data)['rowCount']; "
        "sys.exit(3 if 0 < count <= 30 * 50 else 1)"
    )
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "run", "--companies", "5", "--ga4-rows-per-day", "50"]
    result = subprocess.run([*command, "--", sys.executable, "-c", check], capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr
