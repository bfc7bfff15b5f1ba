"""HubSpot write-back against the sandbox: the real hubspot-api-client over HTTP, checked with ground truth."""

import logging
import math
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from pydantic import ValidationError

from revenue_pipelines.lib.destinations.hubspot import HubSpotDestination, HubSpotWriteBack
from revenue_pipelines_tests.conftest import hubspot_resource

LOG = logging.getLogger(__name__)
DESTINATION = HubSpotDestination(
    kind="hubspot",
    id_column="hubspot_company_id",
    properties={"arr_usd": "arr_usd", "revenue_segment": "segment", "renewal_date": "renewal_on"},
)
UPDATES = "/crm/v3/objects/companies/batch/update"
READS = "/crm/v3/objects/companies/batch/read"


def _portal(sandbox) -> pl.DataFrame:
    """The sandbox's live companies, with the custom properties write-back fills."""
    sandbox.hubspot.add_property("companies", "arr_usd", None, type="number")
    sandbox.hubspot.add_property("companies", "revenue_segment", None, type="string")
    sandbox.hubspot.add_property("companies", "renewal_date", None, type="date")
    return sandbox.hubspot.truth("companies").filter(~pl.col("archived"))


def _accounts(ids: list[int | None]) -> pl.DataFrame:
    """Rows shaped like revenue/marts/accounts, with the HubSpot company id each account maps to."""
    return pl.DataFrame(
        {
            "account_id": [f"acc_{n:04d}" for n in range(len(ids))],
            "hubspot_company_id": ids,
            "arr_usd": [1000.0 + n * 0.5 for n in range(len(ids))],
            "segment": [("SMB", "Mid-Market", None)[n % 3] for n in range(len(ids))],
            "renewal_on": [date(2027, 1, 1) + timedelta(days=n) for n in range(len(ids))],
        },
        schema_overrides={"hubspot_company_id": pl.Int64},
    )


def _deliver(sandbox, frame: pl.DataFrame, destination: HubSpotDestination = DESTINATION, **overrides):
    writer = HubSpotWriteBack(hubspot=hubspot_resource(sandbox, **overrides))
    with dg.build_resources({"writer": writer}) as resources:
        return resources.writer.deliver(frame, destination, route="accounts_to_hubspot", partition_key="p", log=LOG)


def test_only_changed_rows_are_sent_they_land_in_ground_truth_and_a_rerun_sends_nothing(sandbox):
    companies = _portal(sandbox)
    frame = _accounts(companies["id"].to_list())
    # Ten companies already hold the mart's values, as HubSpot might spell them.
    in_sync = frame.head(10).rows(named=True)
    for name, spelled in {
        "arr_usd": lambda row: f"{row['arr_usd']:.2f}",  # 1000.50 for 1000.5
        "revenue_segment": lambda row: row["segment"],
        "renewal_date": lambda row: row["renewal_on"].isoformat(),
    }.items():
        sandbox.hubspot.set_values("companies", name, {row["hubspot_company_id"]: spelled(row) for row in in_sync})
    before = sandbox.hubspot.truth("companies").select("id", "updated_at")
    notified: list[int] = []
    sandbox.hubspot.on_change = lambda object_type, ids, at: notified.extend(ids)

    delivery = _deliver(sandbox, frame)

    changed = frame.height - 10
    assert delivery.answer == {
        "read": frame.height,
        "changed": changed,
        "updated": changed,
        "unknown_ids": 0,
        "missing_ids": 0,
        "batches": 1,
        "attempts": 2,
    }
    assert delivery.rows == frame.height
    assert delivery.uri == f"hubspot://{sandbox.url.removeprefix('http://')}/companies"
    assert sandbox.requests.count("POST", UPDATES, 200) == 1
    truth = sandbox.hubspot.truth("companies").join(frame, left_on="id", right_on="hubspot_company_id")
    assert truth["arr_usd"].cast(pl.Float64).to_list() == truth["arr_usd_right"].to_list()
    assert (truth["revenue_segment"].eq_missing(truth["segment"])).all()
    assert truth["renewal_date"].to_list() == [day.isoformat() for day in truth["renewal_on"]]
    assert truth.sort("id")["arr_usd"][10:12].to_list() == ["1005", "1005.5"]  # as written: no float noise
    moved = truth.join(before, on="id", suffix="_before").filter(pl.col("updated_at") > pl.col("updated_at_before"))
    assert sorted(moved["id"]) == sorted(frame["hubspot_company_id"][10:]) == sorted(notified)

    rerun = _deliver(sandbox, frame)

    assert sandbox.requests.count("POST", UPDATES) == 1
    assert rerun.answer["changed"] == rerun.answer["updated"] == rerun.answer["batches"] == 0
    assert rerun.rows == frame.height
    assert rerun.bytes < delivery.bytes


def test_values_hubspot_spells_differently_are_equal_and_stay_unwritten(sandbox):
    """Datetimes (aware or naive UTC) against ISO or epoch milliseconds, integers and booleans."""
    ids = _portal(sandbox)["id"].head(4).to_list()
    sandbox.hubspot.add_property("companies", "arr_checked_at", None, type="datetime")
    sandbox.hubspot.add_property("companies", "open_deals", None, type="number")
    sandbox.hubspot.add_property("companies", "is_customer", None, type="enumeration")
    moment = datetime(2026, 11, 20, 9, 30, 15, 250_000, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "hubspot_company_id": ids,
            "checked_at": [moment, moment, moment + timedelta(hours=1), None],
            "open_deals": [3, 3, 4, 0],
            "customer": [True, False, True, None],
        }
    )
    destination = HubSpotDestination(
        kind="hubspot",
        id_column="hubspot_company_id",
        properties={"arr_checked_at": "checked_at", "open_deals": "open_deals", "is_customer": "customer"},
    )
    epoch_ms = str(int(moment.timestamp() * 1000))
    sandbox.hubspot.set_values("companies", "arr_checked_at", {ids[0]: epoch_ms, ids[1]: "2026-11-20T09:30:15.250Z"})
    sandbox.hubspot.set_values("companies", "open_deals", {ids[0]: "3.0", ids[1]: "3"})
    sandbox.hubspot.set_values("companies", "is_customer", {ids[0]: "true", ids[1]: "false"})

    first = _deliver(sandbox, frame, destination)
    naive = _deliver(sandbox, frame.with_columns(pl.col("checked_at").dt.replace_time_zone(None)), destination)

    assert (first.answer["changed"], naive.answer["changed"]) == (2, 0)
    truth = sandbox.hubspot.truth("companies").filter(pl.col("id").is_in(ids[2:])).sort("id")
    assert truth.select("arr_checked_at", "open_deals", "is_customer").rows() == [
        ("2026-11-20T10:30:15.250Z", "4", "true"),
        (None, "0", None),
    ]


def test_a_value_the_property_refuses_fails_with_hubspots_reason(sandbox):
    frame = _accounts(_portal(sandbox)["id"].to_list())
    destination = DESTINATION.model_copy(update={"properties": {"arr_usd": "segment"}})
    with pytest.raises(dg.Failure, match='not a valid number for "arr_usd"'):
        _deliver(sandbox, frame, destination)


@pytest.mark.parametrize(("object_type", "prop"), [("contacts", "jobtitle"), ("deals", "dealname")])
def test_contacts_and_deals_are_written_the_same_way(sandbox, object_type, prop):
    ids = sandbox.hubspot.truth(object_type).filter(~pl.col("archived"))["id"].head(5).to_list()
    frame = pl.DataFrame({"record_id": ids, "title": [f"Written {n}" for n in range(5)]})
    destination = HubSpotDestination(
        kind="hubspot", object=object_type, id_column="record_id", properties={prop: "title"}
    )

    delivery = _deliver(sandbox, frame, destination)

    assert delivery.answer["updated"] == 5 and delivery.uri.endswith(f"/{object_type}")
    truth = sandbox.hubspot.truth(object_type).filter(pl.col("id").is_in(ids)).sort("id")
    assert truth[prop].to_list() == frame.sort("record_id")["title"].to_list()


def test_updates_go_in_full_batches_of_100(sandbox_factory):
    sandbox = sandbox_factory(seed=4, companies=260, days=10)
    companies = _portal(sandbox)
    frame = _accounts(companies["id"].to_list())

    delivery = _deliver(sandbox, frame)

    batches = math.ceil(frame.height / 100)
    assert frame.height > 200 and delivery.answer["batches"] == batches
    assert sandbox.requests.count("POST", UPDATES, 200) == batches == sandbox.requests.count("POST", READS, 200)
    assert delivery.answer["updated"] == frame.height == delivery.rows


FAULTS = {
    "429 with Retry-After": {"kind": "rate_limit", "retry_after": 1, "times": 2},
    "429 without Retry-After": {"kind": "rate_limit", "retry_after": None, "times": 3},
    "503 burst": {"kind": "status", "status": 503, "times": 3},
    "dropped connection": {"kind": "drop", "times": 2},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_burst_mid_run_is_retried_to_success(sandbox_factory, fault):
    sandbox = sandbox_factory(seed=4, companies=260, days=10)
    frame = _accounts(_portal(sandbox)["id"].to_list())
    # The second update batch meets the burst, after reads and a first batch went through.
    handle = sandbox.faults.add(path_contains=UPDATES, skip=1, **fault)

    delivery = _deliver(sandbox, frame)

    assert handle.fired == fault["times"]
    batches = math.ceil(frame.height / 100)
    assert delivery.answer["attempts"] == 2 * batches + fault["times"]
    assert delivery.answer["updated"] == frame.height
    truth = sandbox.hubspot.truth("companies").join(frame, left_on="id", right_on="hubspot_company_id")
    assert truth["arr_usd"].cast(pl.Float64).to_list() == truth["arr_usd_right"].to_list()


def test_unknown_and_missing_ids_are_counted_and_the_rest_delivered(sandbox):
    live = _portal(sandbox)["id"].to_list()
    archived = sandbox.hubspot.truth("companies").filter("archived")["id"].to_list()
    assert archived
    frame = _accounts([*live, *archived, 1234, None])

    delivery = _deliver(sandbox, frame)

    assert delivery.answer["unknown_ids"] == len(archived) + 1
    assert delivery.answer["missing_ids"] == 1
    assert delivery.answer["updated"] == len(live) == delivery.rows
    archived_truth = sandbox.hubspot.truth("companies").filter("archived")
    assert archived_truth["arr_usd"].is_null().all()


def test_an_empty_partition_asks_hubspot_nothing(sandbox):
    frame = _accounts(_portal(sandbox)["id"].to_list()).clear()
    delivery = _deliver(sandbox, frame)
    assert (delivery.rows, delivery.bytes, delivery.answer["attempts"]) == (0, 0, 0)
    assert len(sandbox.requests) == 0


def test_no_deliverable_row_fails_the_delivery(sandbox):
    _portal(sandbox)
    archived = sandbox.hubspot.truth("companies").filter("archived")["id"].to_list()
    with pytest.raises(dg.Failure, match="delivered none of its 3 rows"):
        _deliver(sandbox, _accounts([archived[0], 1234, None]))
    assert sandbox.requests.count("POST", UPDATES) == 0


def test_a_token_without_the_write_scope_fails_naming_the_variable_and_the_scope(sandbox):
    frame = _accounts(_portal(sandbox)["id"].to_list())
    sandbox.hubspot.withhold_scopes("crm.objects.companies.write")
    with pytest.raises(dg.Failure) as failure:
        _deliver(sandbox, frame)
    assert "Grant crm.objects.companies.write" in failure.value.description
    assert "HUBSPOT_ACCESS_TOKEN" in failure.value.description
    assert not failure.value.allow_retries
    assert sandbox.hubspot.truth("companies")["arr_usd"].is_null().all()


def test_a_property_hubspot_lacks_fails_before_any_write(sandbox):
    frame = _accounts(_portal(sandbox)["id"].to_list())
    destination = DESTINATION.model_copy(update={"properties": {"arr_usd": "arr_usd", "arr_band": "segment"}})
    with pytest.raises(dg.Failure, match="have no property arr_band"):
        _deliver(sandbox, frame, destination)
    assert sandbox.requests.count("POST", UPDATES) == 0


def test_the_destination_block_is_validated():
    block = {"kind": "hubspot", "id_column": "hubspot_company_id", "properties": {"arr_usd": "arr_usd"}}
    assert HubSpotDestination.model_validate(block).object == "companies"
    with pytest.raises(ValidationError, match="extra"):
        HubSpotDestination.model_validate({**block, "portal": 1})
    with pytest.raises(ValidationError, match="hs_object_id"):
        HubSpotDestination.model_validate({**block, "properties": {"hs_object_id": "account_id"}})
    with pytest.raises(ValidationError, match="properties"):
        HubSpotDestination.model_validate({**block, "properties": {}})
