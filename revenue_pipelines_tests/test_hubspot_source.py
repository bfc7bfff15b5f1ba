"""HubSpot end to end: the real hubspot-api-client against the sandbox, reconciled with its ground truth."""

import socket
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.hubspot.assets import CONTACTS, hubspot_contacts, hubspot_deals
from revenue_pipelines.defs.hubspot.resources import HubSpotResource, WindowStats
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines.lib.validation import QUARANTINE_REASON
from revenue_pipelines_tests.conftest import (
    END,
    expected_ids,
    hubspot_resource,
    materialize_hubspot,
    materialize_range,
    read_layer,
)

FIRST = END - timedelta(days=9)


def _reconcile(sandbox, data_dir, table, first=FIRST, last=END) -> pl.DataFrame:
    """Every expected record exactly once across raw + quarantine, in the partition of its change day."""
    raw = read_layer(data_dir, "hubspot", "raw", table)
    quarantined = read_layer(data_dir, "hubspot", "quarantine", table)
    assert quarantined.is_empty()
    assert raw["id"].is_duplicated().sum() == 0
    assert sorted(raw["id"].to_list()) == expected_ids(sandbox, table, first, last)
    assert (raw[PARTITION_COLUMN] == raw["changed_at"].dt.date()).all()
    return raw


def test_a_range_reconciles_with_ground_truth_including_archived_and_associations(sandbox, tmp_path):
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END)
    assert result.success

    for table in ("contacts", "companies", "deals"):
        raw = _reconcile(sandbox, tmp_path, table)
        truth = sandbox.hubspot.truth(table).filter(pl.col("id").is_in(raw["id"].to_list()))
        assert raw["archived"].sum() == truth["archived"].sum() > 0
        joined = raw.join(truth, on="id", suffix="_truth")
        assert (joined["archived"] == joined["archived_truth"]).all()
        assert (joined["createdate"] == joined["createdate_truth"].str.to_datetime(time_zone="UTC")).all()

    contacts = read_layer(tmp_path, "hubspot", "raw", "contacts").filter(~pl.col("archived"))
    links = sandbox.hubspot.truth_associations("contacts", "companies")
    expected = links.group_by("from_id").agg(pl.col("to_id").sort().alias("expected"))
    joined = contacts.join(expected, left_on="id", right_on="from_id", how="left")
    assert joined.height > 0 and (joined["company_ids"] == joined["expected"]).all()

    deals = read_layer(tmp_path, "hubspot", "raw", "deals").filter(~pl.col("archived"))
    deal_contacts = sandbox.hubspot.truth_associations("deals", "contacts")
    expected = deal_contacts.group_by("from_id").agg(pl.col("to_id").sort().alias("expected"))
    joined = deals.join(expected, left_on="id", right_on="from_id", how="left")
    assert (joined["contact_ids"] == joined["expected"]).all()

    [contacts_materialization, *_] = result.asset_materializations_for_node("hubspot_contacts")
    metadata = contacts_materialization.metadata
    assert metadata["archived_rows"].value == read_layer(tmp_path, "hubspot", "raw", "contacts")["archived"].sum()
    assert metadata["window_start"].value == "2026-11-11T00:00:00+00:00"
    assert "| id |" in metadata["preview"].value


def test_a_day_with_more_than_10000_changes_is_read_completely(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(seed=3, companies=50, contacts=12_000, deals=10, days=1)
    result = materialize_hubspot(sandbox, tmp_path, END, END, assets=[hubspot_contacts])
    assert result.success
    raw = _reconcile(sandbox, tmp_path, "contacts", END, END)
    assert raw.filter(~pl.col("archived")).height > 10_000
    assert not [r for r in sandbox.requests.log() if r.status == 400]


FAULTS = {
    "429 with Retry-After": {"kind": "rate_limit", "retry_after": 1, "times": 2},
    "429 without Retry-After": {"kind": "rate_limit", "retry_after": None, "times": 3},
    "500 burst": {"kind": "status", "status": 500, "times": 4},
    "502 burst": {"kind": "status", "status": 502, "times": 3},
    "503 burst": {"kind": "status", "status": 503, "times": 3},
    "dropped connection": {"kind": "drop", "times": 2},
    "dropped mid-body": {"kind": "drop_mid_body", "times": 2},
    "slow response": {"kind": "slow", "seconds": 0.5, "times": 2},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_each_injected_fault_ends_in_exact_reconciliation(sandbox, tmp_path, fault):
    fault = dict(fault)
    # Land the faults mid-run: on search pages after the first, and on an association read.
    handles = [
        sandbox.faults.add(path_contains="/search", skip=1, **fault),
        sandbox.faults.add(path_contains="/associations/", skip=0, **fault),
    ]
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts, hubspot_deals])
    assert result.success
    assert sum(handle.fired for handle in handles) == 2 * fault["times"]
    for table in ("contacts", "deals"):
        _reconcile(sandbox, tmp_path, table)
    retries = sum(
        result.asset_materializations_for_node(node)[0].metadata["api_retries"].value
        for node in ("hubspot_contacts", "hubspot_deals")
    )
    assert retries == (0 if fault["kind"] == "slow" else 2 * fault["times"])


@pytest.mark.parametrize("retry_after", [True, False], ids=["with Retry-After", "backing off"])
def test_the_burst_limit_is_waited_out(sandbox_factory, tmp_path, retry_after):
    sandbox = sandbox_factory(seed=5, companies=60, days=10, rate_limit_per_10s=3, rate_limit_retry_after=retry_after)
    # Backing off blindly has to outlast HubSpot's 10-second window: production-sized backoffs.
    resource = hubspot_resource(sandbox, backoff_factor_seconds=0.5, backoff_max_seconds=4.0)
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts], resource=resource)
    assert result.success
    assert any(r.status == 429 for r in sandbox.requests.log())
    _reconcile(sandbox, tmp_path, "contacts")


def test_unusable_rows_sit_in_quarantine_and_odd_emails_are_kept_and_warned(sandbox, tmp_path):
    window = (datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))
    bad_emails = sandbox.hubspot.malform("contacts", "bad_email", 3, within=window)
    missing_ids = sandbox.hubspot.malform("contacts", "missing_id", 1, within=window)
    negative = sandbox.hubspot.malform("deals", "negative_amount", 2, within=window)
    wrong_type = sandbox.hubspot.malform("deals", "wrong_type", 1, within=window)

    @dg.asset(deps=[dg.AssetKey(["hubspot", "raw", "deals"])])
    def downstream_of_deals() -> None: ...

    result = materialize_hubspot(
        sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts, hubspot_deals, downstream_of_deals]
    )
    # Three of a small sample's deals exceed the 1% tolerance: the blocking check stops what follows.
    assert not result.success
    assert not result.asset_materializations_for_node("downstream_of_deals")

    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    contacts_check = evaluations["hubspot/raw/contacts", "rows_match_schema"]
    assert contacts_check.description.startswith("hubspot/raw/contacts: 1 of ")
    assert contacts_check.description.endswith("id failed not_nullable in 1 row")
    deals_check = evaluations["hubspot/raw/deals", "rows_match_schema"]
    assert not deals_check.passed and deals_check.severity == dg.AssetCheckSeverity.ERROR
    assert "amount failed greater_than_or_equal_to(0) in 2 rows" in deals_check.description
    assert "amount failed dtype(Float64) in 1 row" in deals_check.description

    # An odd e-mail is no reason to drop a contact: kept as received, named, and warned about.
    fields_check = evaluations["hubspot/raw/contacts", "fields_well_formed"]
    assert not fields_check.passed and fields_check.severity == dg.AssetCheckSeverity.WARN
    assert "email failed str_matches in 3 rows (e.g. not-an-email)" in fields_check.description
    contacts = read_layer(tmp_path, "hubspot", "raw", "contacts")
    odd = contacts.filter(pl.col("malformed_fields").is_not_null())
    assert sorted(odd["id"].to_list()) == sorted(bad_emails)
    assert odd["email"].unique().to_list() == ["not-an-email"] and odd["malformed_fields"].unique().to_list() == [
        "email"
    ]

    for table, bad in (("contacts", set(missing_ids)), ("deals", set(negative) | set(wrong_type))):
        raw = read_layer(tmp_path, "hubspot", "raw", table)
        quarantined = read_layer(tmp_path, "hubspot", "quarantine", table)
        assert quarantined.height == len(bad)
        assert quarantined[QUARANTINE_REASON].null_count() == 0
        assert not set(raw["id"].to_list()) & bad
        assert raw.height + quarantined.height == len(expected_ids(sandbox, table, FIRST, END))


def test_the_tolerance_is_set_per_run_in_the_launchpad_config(sandbox, tmp_path):
    window = (datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))
    sandbox.hubspot.malform("deals", "negative_amount", 3, within=window)
    resources = {"hubspot": hubspot_resource(sandbox)}
    for share, succeeds in ((0.01, False), (0.5, True)):
        config = {"ops": {"hubspot_deals": {"config": {"max_quarantined_share": share}}}}
        result = materialize_range([hubspot_deals], resources, tmp_path, FIRST, END, run_config=config)
        [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "rows_match_schema"]
        assert result.success is succeeds and not check.passed
        assert check.severity == (dg.AssetCheckSeverity.WARN if succeeds else dg.AssetCheckSeverity.ERROR)
        assert f"max_quarantined_share {share:.1%}" in check.description
    assert read_layer(tmp_path, "hubspot", "quarantine", "deals").height == 3


def test_each_partition_of_a_range_is_described_by_its_own_days_rows(sandbox, tmp_path):
    window = (datetime(2026, 11, 15, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC))
    sandbox.hubspot.malform("contacts", "missing_id", 1, within=window)
    sandbox.hubspot.malform("contacts", "bad_email", 2, within=window)
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts])

    by_layer: dict[str, dict[str, dict]] = {"raw": {}, "quarantine": {}}
    for event in result.asset_materializations_for_node("hubspot_contacts"):
        by_layer[event.asset_key.path[1]][event.partition] = event.metadata
    days = [f"{FIRST + timedelta(days=n):%Y-%m-%d}" for n in range(10)]
    assert sorted(by_layer["raw"]) == sorted(by_layer["quarantine"]) == days
    raw = read_layer(tmp_path, "hubspot", "raw", "contacts")
    quarantined = read_layer(tmp_path, "hubspot", "quarantine", "contacts")
    for day in days:
        metadata, on_day = by_layer["raw"][day], pl.col(PARTITION_COLUMN) == date.fromisoformat(day)
        assert metadata["rows"].value == raw.filter(on_day).height
        assert metadata["quarantined_rows"].value == by_layer["quarantine"][day]["rows"].value
        assert metadata["quarantined_rows"].value == quarantined.filter(on_day).height == (day == "2026-11-15")
        assert metadata["rows_with_malformed_fields"].value == (2 if day == "2026-11-15" else 0)
        assert metadata["window_start"].value == f"{day}T00:00:00+00:00"
    assert len({metadata["rows"].value for metadata in by_layer["raw"].values()}) > 1  # not the run's total


def test_rerunning_a_range_gives_identical_output(sandbox, tmp_path):
    assert materialize_hubspot(sandbox, tmp_path, FIRST, END).success
    first = {table: read_layer(tmp_path, "hubspot", "raw", table) for table in ("contacts", "companies", "deals")}
    assert materialize_hubspot(sandbox, tmp_path, FIRST, END).success
    for table, frame in first.items():
        assert read_layer(tmp_path, "hubspot", "raw", table).equals(frame)


def test_schema_drift(sandbox, tmp_path):
    sandbox.hubspot.add_property("contacts", "hs_brand_new_field", value="surprise")
    sandbox.hubspot.remove_property("contacts", "jobtitle")
    sandbox.hubspot.remove_property("deals", "pipeline")

    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts, hubspot_deals])

    contacts = read_layer(tmp_path, "hubspot", "raw", "contacts")
    assert contacts["jobtitle"].null_count() == contacts.height
    assert "hs_brand_new_field" not in contacts.columns
    [materialization, *_] = result.asset_materializations_for_node("hubspot_contacts")
    assert materialization.metadata["missing_columns"].value == "jobtitle"

    # A required property that disappears quarantines every row and says which field.
    [deals_check] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "deals" and e.check_name == "rows_match_schema"
    ]
    assert not deals_check.passed
    total = len(expected_ids(sandbox, "deals", FIRST, END))
    assert f"pipeline failed not_nullable in {total} rows" in deals_check.description


@pytest.mark.parametrize("ids_as_text", [False, True], ids=["toObjectId as number", "toObjectId as string"])
def test_association_pages_are_followed_and_each_association_read_once(sandbox, tmp_path, ids_as_text):
    # Deals have up to three contacts: with two a page, some need a second page.
    sandbox.hubspot.page_associations(page_size=2, ids_as_text=ids_as_text)
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_deals])
    assert result.success

    deals = _reconcile(sandbox, tmp_path, "deals").filter(~pl.col("archived"))
    for column, to_type in (("contact_ids", "contacts"), ("company_ids", "companies")):
        links = sandbox.hubspot.truth_associations("deals", to_type)
        expected = links.group_by("from_id").agg(pl.col("to_id").sort().alias("expected"))
        joined = deals.join(expected, left_on="id", right_on="from_id", how="left")
        assert (joined[column] == joined["expected"]).all(), column
    assert deals["contact_ids"].list.len().max() == 3
    assert sandbox.requests.count(path_contains="/batch/read") > 2  # follow-up pages were asked for


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def _fails_at_once_without_step_retries(sandbox, tmp_path, resource: HubSpotResource, asset=hubspot_contacts) -> str:
    """Materializes `asset` with `resource`: the step fails and is not retried; its message. (How
    long that takes is measured in bench/fail_fast.py.)"""
    result = materialize_hubspot(sandbox, tmp_path, END, END, assets=[asset], resource=resource)
    assert not result.success
    events = [e.event_type for e in result.all_events]
    assert events.count(dg.DagsterEventType.STEP_FAILURE) == 1
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
    return str(result.get_step_failure_events()[0].event_specific_data.error)


UNREACHABLE = {
    "connection refused": (_closed_port_url, "the connection was refused"),
    "name does not resolve": (lambda: "https://api.hubspot.invalid", "the host name does not resolve"),
}


@pytest.mark.parametrize("address, reason", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_an_unreachable_host_fails_at_once_naming_hubspot_host(sandbox, tmp_path, address, reason):
    host = address()
    resource = HubSpotResource(access_token=sandbox.token, host=host)  # production retries and backoffs
    message = _fails_at_once_without_step_retries(sandbox, tmp_path, resource)
    assert f"HubSpot is unreachable at {host}: {reason}. Check HUBSPOT_HOST." in message
    assert "urllib3" not in message and sandbox.token not in message


def test_an_untrusted_certificate_fails_at_once_naming_hubspot_host(sandbox, tmp_path):
    # The sandbox's TLS listener presents a certificate from its own CA, which certifi does not trust.
    resource = HubSpotResource(access_token=sandbox.token, host=sandbox.salesforce_url)
    message = _fails_at_once_without_step_retries(sandbox, tmp_path, resource)
    assert "the TLS handshake failed" in message and "Check HUBSPOT_HOST." in message


def test_a_wrong_token_fails_at_once_naming_hubspot_access_token(sandbox, tmp_path):
    resource = HubSpotResource(access_token="not-the-token", host=sandbox.url)
    message = _fails_at_once_without_step_retries(sandbox, tmp_path, resource)
    assert "HubSpot refused do_search" in message and "401" in message
    assert "Check HUBSPOT_ACCESS_TOKEN." in message
    assert sandbox.token not in message and "not-the-token" not in message


def test_a_missing_scope_fails_at_once_naming_the_scope(sandbox, tmp_path):
    # Contacts are searchable, but reading their companies needs a scope the token lacks: the
    # refusal comes mid-read, after HubSpot has answered.
    sandbox.hubspot.withhold_scopes("crm.objects.companies.read")
    resource = HubSpotResource(access_token=sandbox.token, host=sandbox.url)
    message = _fails_at_once_without_step_retries(sandbox, tmp_path, resource)
    assert "HubSpot refused get_page" in message and "403" in message
    assert "Grant crm.objects.companies.read to the app whose token is in HUBSPOT_ACCESS_TOKEN." in message


def test_a_first_request_dropped_once_is_retried(sandbox, tmp_path):
    """A first contact gets few, quick retries, not none: a server that drops one connection is no wrong address."""
    fault = sandbox.faults.add("drop", times=1, path_contains="/search")
    result = materialize_hubspot(sandbox, tmp_path, END, END, assets=[hubspot_contacts])
    assert result.success and fault.fired == 1
    _reconcile(sandbox, tmp_path, "contacts", END, END)


def test_partition_window_comes_from_the_run(sandbox, tmp_path):
    assert materialize_hubspot(sandbox, tmp_path, END, END, assets=[hubspot_deals]).success
    raw = read_layer(tmp_path, "hubspot", "raw", "deals")
    assert set(raw[PARTITION_COLUMN].to_list()) <= {date(2026, 11, 20)}
    _reconcile(sandbox, tmp_path, "deals", END, END)


def test_a_record_edited_mid_read_hides_no_other(sandbox):
    """Keyset paging: a record that leaves the window between two pages cannot shift the next page."""
    start = datetime.combine(FIRST, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    with dg.build_resources({"hubspot": hubspot_resource(sandbox)}) as resources:
        pages = resources.hubspot._search_modified(CONTACTS, start, end, WindowStats())
        first_page = next(pages)
        moved = int(first_page["id"][0])
        sandbox.hubspot.touch("contacts", [moved], at=datetime.now(UTC))
        seen = pl.concat([first_page, *pages])["id"].cast(pl.Int64).to_list()

    assert len(seen) == len(set(seen))
    still_in_window = [i for i in expected_ids(sandbox, "contacts", FIRST, END) if i not in {moved}]
    archived = set(sandbox.hubspot.truth("contacts").filter(pl.col("archived"))["id"].to_list())
    assert sorted(set(seen) - {moved}) == [i for i in still_in_window if i not in archived]


def test_an_answer_slower_than_the_read_timeout_is_retried(sandbox, tmp_path):
    fault = sandbox.faults.add("slow", seconds=2.0, times=1, path_contains="/search", skip=1)
    resource = hubspot_resource(sandbox, timeout_seconds=0.5)
    result = materialize_hubspot(sandbox, tmp_path, FIRST, END, assets=[hubspot_contacts], resource=resource)
    assert result.success
    assert fault.fired == 1
    [materialization, *_] = result.asset_materializations_for_node("hubspot_contacts")
    assert materialization.metadata["api_retries"].value == 1
    _reconcile(sandbox, tmp_path, "contacts")
