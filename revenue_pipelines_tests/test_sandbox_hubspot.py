"""The HubSpot sandbox speaks HubSpot's wire protocol: checked with plain urllib3 and the real client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import hubspot
import polars as pl
import pytest
import urllib3
from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest
from hubspot.crm.contacts import PublicObjectSearchRequest
from hubspot.crm.deals import PublicObjectSearchRequest as DealSearchRequest

from revenue_pipelines.sandbox import Sandbox

END_DATE = date(2026, 11, 21)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(seed=7, companies=300, end_date=END_DATE, rate_limit_per_10s=None) as sb:
        yield sb


@pytest.fixture
def sb(sandbox):
    """The shared sandbox, with no faults left over from a previous test."""
    sandbox.faults.clear()
    yield sandbox
    sandbox.faults.clear()


@pytest.fixture
def small():
    """A private sandbox for tests that change data."""
    with Sandbox(seed=11, companies=40, end_date=END_DATE, rate_limit_per_10s=None) as sb:
        yield sb


@pytest.fixture(scope="module")
def http():
    return urllib3.PoolManager(retries=False, timeout=10)


def get(http, sb, path, token=None, **fields):
    headers = {"Authorization": f"Bearer {token or sb.token}"}
    return http.request("GET", sb.url + path, fields=fields, headers=headers)


def post(http, sb, path, body):
    headers = {"Authorization": f"Bearer {sb.token}", "Content-Type": "application/json"}
    return http.request("POST", sb.url + path, body=json.dumps(body).encode(), headers=headers)


def client(sb):
    return hubspot.HubSpot(access_token=sb.token, host=sb.url)


def epoch_ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def window_filter(prop: str, start: datetime, end: datetime) -> list[dict]:
    return [
        {
            "filters": [
                {"propertyName": prop, "operator": "GTE", "value": epoch_ms(start)},
                {"propertyName": prop, "operator": "LT", "value": epoch_ms(end)},
            ]
        }
    ]


def list_all(http, sb, object_type, **fields):
    records, after = [], None
    while True:
        page = get(
            http, sb, f"/crm/v3/objects/{object_type}", limit="100", **fields, **({"after": after} if after else {})
        )
        assert page.status == 200, page.data
        body = page.json()
        records += body["results"]
        if "paging" not in body:
            return records
        after = body["paging"]["next"]["after"]


def live(truth: pl.DataFrame) -> pl.DataFrame:
    return truth.filter(~pl.col("archived"))


def test_missing_or_wrong_token_is_rejected_with_hubspots_body(sb, http):
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        response = http.request("GET", sb.url + "/crm/v3/objects/contacts", headers=headers)
        assert response.status == 401
        body = response.json()
        assert body["category"] == "INVALID_AUTHENTICATION"
        assert body["message"].startswith("Authentication credentials not found")
        assert body["status"] == "error" and body["correlationId"]


def test_data_set_has_the_promised_shape(sb):
    contacts, companies, deals = (sb.hubspot.truth(name) for name in ("contacts", "companies", "deals"))
    own_deals = deals.filter(pl.col("hs_salesforceopportunityid").is_null())
    assert (companies.height, contacts.height, own_deals.height) == (300, 1500, 600)
    assert deals.height == 600 + sb.truth_mirrored_deals().height  # and those mirrored from Salesforce
    for truth in (contacts, companies, deals):
        assert truth["id"].is_unique().all() and truth["id"].is_sorted()
        assert truth["id"].diff().drop_nulls().max() > 1  # gaps
        share = truth["archived"].mean()
        assert 0.03 <= share <= 0.05
        archived = truth.filter("archived")
        assert (archived["archived_at"] > archived["updated_at"]).all()
        start, end = sb.hubspot.window
        assert truth["updated_at"].min() >= start and truth["archived_at"].max() < end
    # Ids follow creation, not modification.
    assert not contacts.sort("id")["updated_at"].is_sorted()
    assert contacts["email"].str.contains("@").all()
    assert contacts["email"].str.ends_with("@gmail.com").any()
    assert (deals["amount"].cast(pl.Float64) >= 0).all()
    assert set(deals["dealstage"]) <= {
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
        "closedwon",
        "closedlost",
    }
    assert companies["domain"].is_unique().all()
    assert companies["domain"].str.contains(r"^[a-z0-9-]+(\.[a-z]+)+$").all()


def test_same_seed_same_data_other_seed_other_data():
    def contacts(seed):
        return Sandbox(seed=seed, companies=30, end_date=END_DATE).hubspot.truth("contacts")

    assert contacts(3).equals(contacts(3))
    assert not contacts(3).equals(contacts(4))


def test_list_pages_cover_every_live_record_exactly_once(sb, http):
    records = list_all(http, sb, "contacts", properties="email,phone,jobtitle")
    ids = [int(record["id"]) for record in records]
    truth = live(sb.hubspot.truth("contacts"))
    assert ids == truth["id"].to_list()  # every live record, once, in id order

    first = records[0]
    expected = truth.row(0, named=True)
    assert set(first["properties"]) == {"email", "phone", "jobtitle", "createdate", "lastmodifieddate", "hs_object_id"}
    assert first["properties"]["email"] == expected["email"]
    assert first["properties"]["phone"] == expected["phone"]
    assert first["updatedAt"] == first["properties"]["lastmodifieddate"]
    assert TIMESTAMP.match(first["createdAt"]) and first["archived"] is False and "archivedAt" not in first
    assert all(value is None or isinstance(value, str) for r in records for value in r["properties"].values())


def test_list_rejects_limits_above_100_and_bad_cursors(sb, http):
    response = get(http, sb, "/crm/v3/objects/deals", limit="101")
    assert response.status == 400 and response.json()["category"] == "VALIDATION_ERROR"
    assert get(http, sb, "/crm/v3/objects/deals", after="not a cursor").status == 400
    assert get(http, sb, "/crm/v3/objects/widgets").status == 400
    missing = get(http, sb, "/crm/v3/nothing/here")
    assert missing.status == 404 and missing.json()["status"] == "error"


def test_archived_list_returns_only_archived_records(sb):
    api = client(sb).crm.deals.basic_api
    records, after = [], None
    while True:
        page = api.get_page(limit=100, after=after, archived=True)
        records += page.results
        if page.paging is None:
            break
        after = page.paging.next.after
    archived = sb.hubspot.truth("deals").filter("archived")
    assert [int(record.id) for record in records] == archived["id"].to_list()
    assert all(record.archived for record in records)
    assert [record.archived_at.astimezone(UTC) for record in records] == archived["archived_at"].to_list()


def test_list_associations_match_truth(sb):
    api = client(sb).crm.contacts.basic_api
    pairs, after = set(), None
    while True:
        page = api.get_page(limit=100, after=after, associations=["companies"])
        for record in page.results:
            if record.associations:
                for link in record.associations["companies"].results:
                    assert link.type == "contact_to_company"
                    pairs.add((int(record.id), int(link.id)))
        if page.paging is None:
            break
        after = page.paging.next.after
    truth = sb.hubspot.truth_associations("contacts", "companies")
    assert pairs == set(truth.iter_rows())
    assert len(pairs) > 1000


def test_a_deal_has_the_original_source_of_its_first_contact(sb):
    """HubSpot sets a deal's Original Source Type from its contacts; the sandbox from the first (lowest
    id). Archiving a contact removes its associations, so a deal whose first contact was archived shows
    a source no live contact has: a few percent of deals, as 3-5% of contacts are archived."""
    sources = ["hs_analytics_source", "hs_analytics_source_data_1"]
    contacts = sb.hubspot.truth("contacts").select(
        pl.col("id").alias("to_id"), *(pl.col(name).alias(f"contact_{name}") for name in sources)
    )
    first = sb.hubspot.truth_associations("deals", "contacts").group_by("from_id").agg(pl.col("to_id").min())
    deals = (
        sb.hubspot.truth("deals")
        .select(pl.col("id").alias("from_id"), *sources)
        .join(first, on="from_id")
        .join(contacts, on="to_id")
    )
    same = deals.filter(pl.all_horizontal(pl.col(name).eq_missing(pl.col(f"contact_{name}")) for name in sources))
    assert deals.height > 400
    assert same.height >= 0.9 * deals.height
    assert deals["hs_analytics_source"].n_unique() > 3


def test_search_pages_a_window_by_object_id(sb):
    start, end = sb.hubspot.window[0] + timedelta(days=10), sb.hubspot.window[0] + timedelta(days=15)
    api = client(sb).crm.contacts.search_api
    ids, after, totals = [], None, set()
    while True:
        page = api.do_search(
            PublicObjectSearchRequest(
                filter_groups=window_filter("lastmodifieddate", start, end),
                sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                properties=["email"],
                limit=200,
                after=after,
            )
        )
        ids += [int(record.id) for record in page.results]
        totals.add(page.total)
        if page.paging is None:
            break
        after = page.paging.next.after
    truth = live(sb.hubspot.truth("contacts")).filter(pl.col("updated_at").is_between(start, end, closed="left"))
    assert ids == truth["id"].to_list()
    assert totals == {truth.height} and truth.height > 200


def test_search_sorts_by_modification_and_ors_groups(sb, http):
    start = sb.hubspot.window[0]
    body = {
        "filterGroups": [
            *window_filter("hs_lastmodifieddate", start, start + timedelta(days=2)),
            *window_filter("hs_lastmodifieddate", start + timedelta(days=20), start + timedelta(days=21)),
        ],
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "DESCENDING"}],
        "limit": 100,
    }
    response = post(http, sb, "/crm/v3/objects/deals/search", body).json()
    truth = live(sb.hubspot.truth("deals")).filter(
        pl.col("updated_at").is_between(start, start + timedelta(days=2), closed="left")
        | pl.col("updated_at").is_between(start + timedelta(days=20), start + timedelta(days=21), closed="left")
    )
    assert response["total"] == truth.height
    served = [record["updatedAt"] for record in response["results"]]
    assert served == sorted(served, reverse=True)
    assert [int(r["id"]) for r in response["results"]] == truth.sort("updated_at", descending=True)["id"].to_list()
    plain = post(http, sb, "/crm/v3/objects/deals/search", {"sorts": ["hs_object_id"], "limit": 3}).json()
    assert [int(r["id"]) for r in plain["results"]] == live(sb.hubspot.truth("deals"))["id"].head(3).to_list()


def test_mirrored_deals_carry_their_opportunity_id_through_the_real_client(sb, http):
    """hs_salesforceopportunityid is a deal property like any: listed, searched, sent when requested."""
    names = [prop["name"] for prop in get(http, sb, "/crm/v3/properties/deals").json()["results"]]
    assert "hs_salesforceopportunityid" in names
    truth = live(sb.hubspot.truth("deals"))
    start, end = sb.hubspot.window
    api = client(sb).crm.deals
    served, after = {}, None
    while True:
        page = api.search_api.do_search(
            DealSearchRequest(
                filter_groups=window_filter("hs_lastmodifieddate", start, end),
                sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                properties=["dealname", "hs_salesforceopportunityid"],
                limit=200,
                after=after,
            )
        )
        served |= {int(record.id): record.properties for record in page.results}
        if page.paging is None:
            break
        after = page.paging.next.after
    assert all("hs_salesforceopportunityid" in properties for properties in served.values())  # null or not
    opportunity_ids = {deal: properties["hs_salesforceopportunityid"] for deal, properties in served.items()}
    assert opportunity_ids == dict(truth.select("id", "hs_salesforceopportunityid").iter_rows())
    mirrored = {deal: opportunity for deal, opportunity in opportunity_ids.items() if opportunity is not None}
    pairs = sb.truth_mirrored_deals()
    assert mirrored == dict(
        pairs.filter(pl.col("hubspot_deal_id").is_in(truth["id"].implode()))
        .select("hubspot_deal_id", "opportunity_id")
        .iter_rows()
    )
    assert 100 < len(mirrored) < len(served) / 3
    assert all(re.fullmatch(r"006[a-zA-Z0-9]{15}", opportunity) for opportunity in mirrored.values())

    # An equality filter finds a mirror by its opportunity; the default properties leave it out.
    deal, opportunity = next(iter(mirrored.items()))
    found = api.search_api.do_search(
        DealSearchRequest(
            filter_groups=[
                {"filters": [{"propertyName": "hs_salesforceopportunityid", "operator": "EQ", "value": opportunity}]}
            ]
        )
    )
    assert [int(record.id) for record in found.results] == [deal]
    assert "hs_salesforceopportunityid" not in found.results[0].properties

    # Archived mirrors are listed with the other archived deals, the property with them.
    archived = sb.hubspot.truth("deals").filter("archived")
    archived_mirrors = archived.filter(pl.col("hs_salesforceopportunityid").is_not_null())
    assert 0 < archived_mirrors.height < archived.height
    listed, after = {}, None
    while True:
        page = api.basic_api.get_page(limit=100, after=after, archived=True, properties=["hs_salesforceopportunityid"])
        listed |= {int(record.id): record.properties["hs_salesforceopportunityid"] for record in page.results}
        if page.paging is None:
            break
        after = page.paging.next.after
    assert listed == dict(archived.select("id", "hs_salesforceopportunityid").iter_rows())


def test_search_bounds_are_exact_to_the_millisecond(sb, http):
    record = live(sb.hubspot.truth("contacts")).row(7, named=True)
    moment = epoch_ms(record["updated_at"])

    def ids(*filters):
        body = {"filterGroups": [{"filters": list(filters)}], "limit": 200}
        return [int(r["id"]) for r in post(http, sb, "/crm/v3/objects/contacts/search", body).json()["results"]]

    at = {"propertyName": "lastmodifieddate", "value": moment}
    assert record["id"] in ids({**at, "operator": "GTE"}, {**at, "operator": "LTE"})
    assert record["id"] not in ids({**at, "operator": "GT"})
    assert record["id"] not in ids({**at, "operator": "LT"})
    iso = {"propertyName": "lastmodifieddate", "value": record["lastmodifieddate"]}
    assert record["id"] in ids({**iso, "operator": "EQ"})
    assert ids({"propertyName": "email", "operator": "EQ", "value": record["email"]})[0] == record["id"]


def test_search_validates_its_limits(sb, http):
    def status(body):
        return post(http, sb, "/crm/v3/objects/contacts/search", body).status

    assert status({"limit": 201}) == 400
    group = {"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": "0"}]}
    assert status({"filterGroups": [group] * 6}) == 400
    assert status({"filterGroups": [{"filters": group["filters"] * 7}]}) == 400
    assert status({"filterGroups": [group] * 5}) == 200


def test_search_stops_at_10000_results():
    with Sandbox(seed=5, companies=100, contacts=12_000, days=1, end_date=END_DATE, rate_limit_per_10s=None) as sb:
        truth = live(sb.hubspot.truth("contacts"))
        start, end = sb.hubspot.window
        assert end - start == timedelta(days=1) and truth["updated_at"].is_between(start, end, closed="left").all()
        http = urllib3.PoolManager(retries=False)
        body = {"filterGroups": window_filter("lastmodifieddate", start, end), "sorts": ["hs_object_id"], "limit": 200}

        page = post(http, sb, "/crm/v3/objects/contacts/search", {**body, "after": "9600"}).json()
        assert page["total"] == truth.height > 10_000
        assert page["paging"]["next"]["after"] == "9800"
        last = post(http, sb, "/crm/v3/objects/contacts/search", {**body, "after": "9800"}).json()
        assert len(last["results"]) == 200 and "paging" not in last
        assert int(last["results"][-1]["id"]) == truth["id"][9999]
        assert (
            len(post(http, sb, "/crm/v3/objects/contacts/search", {**body, "after": "9900"}).json()["results"]) == 100
        )

        beyond = post(http, sb, "/crm/v3/objects/contacts/search", {**body, "after": "10000"})
        assert beyond.status == 400
        assert beyond.json()["category"] == "VALIDATION_ERROR" and "10,000" in beyond.json()["message"]


def test_association_batch_read_matches_truth(sb, http):
    deals = sb.hubspot.truth("deals")["id"].to_list()  # archived deals included: they have none
    api = client(sb).crm.associations.v4.batch_api
    served = set()
    for start in range(0, len(deals), 250):
        request = BatchInputPublicFetchAssociationsBatchRequest(
            inputs=[{"id": str(i)} for i in deals[start : start + 250]]
        )
        response = api.get_page("deals", "contacts", request)
        assert response.status == "COMPLETE"
        for result in response.results:
            for link in result.to:
                assert link.association_types[0].type_id == 3
                served.add((int(result._from.id), int(link.to_object_id)))
    truth = sb.hubspot.truth_associations("deals", "contacts")
    assert served == set(truth.iter_rows())
    archived = set(sb.hubspot.truth("deals").filter("archived")["id"])
    assert archived and not archived & {deal for deal, _ in served}
    assert truth.group_by("from_id").len()["len"].max() <= 3

    # Symmetric, singular names accepted, ids without associations omitted.
    company = sb.hubspot.truth_associations("companies", "deals").row(0, named=True)
    body = {"inputs": [{"id": str(company["from_id"])}, {"id": "1"}]}
    reverse = post(http, sb, "/crm/v4/associations/company/deal/batch/read", body).json()
    assert [r["from"]["id"] for r in reverse["results"]] == [str(company["from_id"])]
    assert company["to_id"] in {link["toObjectId"] for link in reverse["results"][0]["to"]}

    too_many = post(http, sb, "/crm/v4/associations/deals/contacts/batch/read", {"inputs": [{"id": "1"}] * 1001})
    assert too_many.status == 400


def test_association_batch_read_pages_each_input(small, http):
    """Per input, at most `page_size` associations; the rest come back for that id with its `after`."""
    small.hubspot.page_associations(page_size=2)
    api = client(small).crm.associations.v4.batch_api
    pending = [{"id": str(i)} for i in small.hubspot.truth("deals")["id"]]
    served, pages = [], 0
    while pending:
        response = api.get_page("deals", "contacts", BatchInputPublicFetchAssociationsBatchRequest(inputs=pending))
        pages += 1
        pending = []
        for result in response.results:
            assert len(result.to) <= 2
            served += [(int(result._from.id), int(link.to_object_id)) for link in result.to]
            if result.paging:
                pending.append({"id": result._from.id, "after": result.paging.next.after})
    truth = small.hubspot.truth_associations("deals", "contacts")
    assert sorted(served) == sorted(truth.iter_rows())  # each association exactly once
    assert pages == 2 and truth.group_by("from_id").len()["len"].max() == 3

    bad_cursor = post(
        http, small, "/crm/v4/associations/deals/contacts/batch/read", {"inputs": [{"id": "1", "after": "!"}]}
    )
    assert bad_cursor.status == 400


@pytest.mark.parametrize("ids_as_text", [False, True])
def test_to_object_id_is_sent_as_a_number_or_as_a_string(small, http, ids_as_text):
    small.hubspot.page_associations(ids_as_text=ids_as_text)
    deal = small.hubspot.truth_associations("deals", "contacts")["from_id"][0]
    body = {"inputs": [{"id": str(deal)}]}
    [result] = post(http, small, "/crm/v4/associations/deals/contacts/batch/read", body).json()["results"]
    assert {type(link["toObjectId"]) for link in result["to"]} == {str if ids_as_text else int}
    assert "paging" not in result  # absent when there is no next page, as HubSpot documents


def test_a_withheld_scope_answers_403_missing_scopes(small, http):
    small.hubspot.withhold_scopes("crm.objects.companies.read")
    assert get(http, small, "/crm/v3/objects/contacts").status == 200
    body = {"inputs": [{"id": "1"}]}
    refused = post(http, small, "/crm/v4/associations/contacts/companies/batch/read", body)
    assert refused.status == 403
    error = refused.json()
    assert error["category"] == "MISSING_SCOPES"
    assert error["errors"][0]["context"]["requiredGranularScopes"] == ["crm.objects.companies.read"]
    assert get(http, small, "/crm/v3/objects/companies").status == 403
    small.hubspot.withhold_scopes()
    assert get(http, small, "/crm/v3/objects/companies").status == 200


def test_status_faults_fire_in_order_after_skips(sb, http):
    burst = sb.faults.add("status", times=2, status=503, path_contains="/objects/companies", skip=1)
    fired_before = sb.faults.fired
    statuses = [get(http, sb, "/crm/v3/objects/companies").status for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    assert burst.fired == 2 and sb.faults.fired == fired_before + 2 and not sb.faults.pending
    failure = sb.faults.add("status", status=500)
    response = get(http, sb, "/crm/v3/objects/deals")
    assert response.status == 500 and response.json()["status"] == "error"
    assert failure.fired == 1
    assert get(http, sb, "/crm/v3/objects/deals").status == 200


def test_rate_limit_fault_with_and_without_retry_after(sb, http):
    sb.faults.add("rate_limit", retry_after=2)
    sb.faults.add("rate_limit", retry_after=0.2)
    sb.faults.add("rate_limit")
    first, second, third = (get(http, sb, "/crm/v3/objects/contacts") for _ in range(3))
    assert first.status == second.status == third.status == 429
    assert first.headers["Retry-After"] == "2" and "Retry-After" not in third.headers
    assert second.headers["Retry-After"] == "1"  # whole seconds on the wire, rounded up
    body = first.json()
    assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"


def test_drop_faults_break_the_connection(sb, http):
    sb.faults.add("drop", path_contains="/objects/contacts")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        get(http, sb, "/crm/v3/objects/contacts")
    assert sb.requests.log()[-1].status is None

    drop = sb.faults.add("drop_mid_body")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        get(http, sb, "/crm/v3/objects/contacts", limit="50")
    assert drop.fired == 1
    assert get(http, sb, "/crm/v3/objects/contacts").status == 200


def test_slow_fault_delays_the_answer(sb, http):
    sb.faults.add("slow", seconds=0.4)
    started = time.monotonic()
    assert get(http, sb, "/crm/v3/objects/contacts").status == 200
    assert time.monotonic() - started >= 0.4


def test_rolling_rate_limit_counts_requests_per_token(http):
    for retry_after in (True, False):
        with Sandbox(companies=5, rate_limit_per_10s=4, rate_limit_retry_after=retry_after) as sb:
            responses = [get(http, sb, "/crm/v3/objects/companies") for _ in range(5)]
            assert [r.status for r in responses] == [200, 200, 200, 200, 429]
            assert [r.headers["X-HubSpot-RateLimit-Remaining"] for r in responses[:4]] == ["3", "2", "1", "0"]
            assert responses[0].headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
            assert responses[4].json()["message"] == "You have reached your ten_secondly_rolling limit."
            if retry_after:
                assert 1 <= int(responses[4].headers["Retry-After"]) <= 10
            else:
                assert "Retry-After" not in responses[4].headers
            assert sb.requests.count(status=429) == 1


def test_malformed_records_are_served_as_specified(small, http):
    start, end = small.hubspot.window
    recent = (end - timedelta(days=10), end)
    missing = small.hubspot.malform("contacts", "missing_id", 3, within=recent)
    bad_emails = small.hubspot.malform("contacts", "bad_email", 2)
    negative = small.hubspot.malform("deals", "negative_amount", 2)
    text_amounts = small.hubspot.malform("deals", "wrong_type", 1)
    text_employees = small.hubspot.malform("companies", "wrong_type", 1)
    assert not set(missing) & set(bad_emails)

    truth = small.hubspot.truth("contacts")
    assert truth.filter(pl.col("id").is_in(missing))["updated_at"].is_between(*recent, closed="left").all()
    assert truth.filter(pl.col("hs_object_id").is_null())["id"].to_list() == missing
    assert truth.filter(pl.col("email") == "not-an-email")["id"].to_list() == bad_emails

    body = {"filterGroups": window_filter("lastmodifieddate", start, end), "sorts": ["hs_object_id"], "limit": 200}
    served = post(http, small, "/crm/v3/objects/contacts/search", {**body, "properties": ["email"]}).json()
    assert served["total"] == live(truth).height == len(served["results"])
    nameless = [r for r in served["results"] if r["id"] is None]
    assert len(nameless) == 3 and all(r["properties"]["hs_object_id"] is None for r in nameless)
    # Paging is by the real id: the nameless records sit where their ids belong.
    positions = [i for i, r in enumerate(served["results"]) if r["id"] is None]
    assert positions == [live(truth)["id"].to_list().index(record_id) for record_id in missing]
    listed = list_all(http, small, "contacts")
    assert len(listed) == live(truth).height and sum(r["id"] is None for r in listed) == 3

    deals = {r["id"]: r["properties"]["amount"] for r in list_all(http, small, "deals", properties="amount")}
    assert [deals[str(i)] for i in negative] == ["-1250.00", "-1250.00"]
    assert deals[str(text_amounts[0])] == "n/a"
    companies = {r["id"]: r["properties"] for r in list_all(http, small, "companies", properties="numberofemployees")}
    assert companies[str(text_employees[0])]["numberofemployees"] == "n/a"

    with pytest.raises(ValueError):
        small.hubspot.malform("companies", "bad_email", 1)


def test_schema_drift_adds_and_removes_properties(small, http):
    small.hubspot.add_property("contacts", "favorite_color", value="teal")
    small.hubspot.remove_property("contacts", "phone")

    names = [p["name"] for p in get(http, small, "/crm/v3/properties/contacts").json()["results"]]
    assert "favorite_color" in names and "phone" not in names
    record = get(http, small, "/crm/v3/objects/contacts", limit="1", properties="phone,favorite_color,email").json()
    assert record["results"][0]["properties"]["favorite_color"] == "teal"
    assert "phone" not in record["results"][0]["properties"]
    assert "email" in record["results"][0]["properties"]
    truth = small.hubspot.truth("contacts")
    assert "phone" not in truth.columns and (truth["favorite_color"] == "teal").all()


def test_touch_moves_records_into_a_later_window(small):
    ids = live(small.hubspot.truth("companies"))["id"].head(2).to_list()
    moment = small.hubspot.window[1] + timedelta(hours=1, milliseconds=250)
    small.hubspot.touch("companies", ids, moment)
    page = (
        client(small)
        .crm.companies.search_api.do_search(
            {"filterGroups": window_filter("hs_lastmodifieddate", moment, moment + timedelta(hours=1)), "limit": 10}
        )
        .to_dict()
    )
    assert [int(r["id"]) for r in page["results"]] == ids
    assert {r["properties"]["hs_lastmodifieddate"] for r in page["results"]} == {"2026-11-22T01:00:00.250Z"}
    assert small.hubspot.truth("companies").filter(pl.col("id").is_in(ids))["updated_at"].to_list() == [moment] * 2


def test_cli_run_passes_the_environment_and_exit_code():
    check = (
        "import os, sys, urllib3; "
        "r = urllib3.request('GET', os.environ['HUBSPOT_HOST'] + '/crm/v3/objects/deals', "
        "headers={'Authorization': 'Bearer ' + os.environ['HUBSPOT_ACCESS_TOKEN']}); "
        "sys.exit(3 if r.status == 200 else 1)"
    )
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "run", "--companies", "5", "--", sys.executable]
    result = subprocess.run([*command, "-c", check], capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr


def test_realistic_mess_changes_only_the_values_it_lists_and_is_the_same_for_a_seed():
    clean = Sandbox(seed=3, companies=40, days=10, end_date=date(2026, 11, 20))
    messy = Sandbox(seed=3, companies=40, days=10, end_date=date(2026, 11, 20), mess=0.01)
    again = Sandbox(seed=3, companies=40, days=10, end_date=date(2026, 11, 20), mess=0.01)
    assert clean.mess.is_empty() and messy.mess.equals(again.mess)
    for table in ("contacts", "companies", "deals"):
        before, after = clean.hubspot.truth(table), messy.hubspot.truth(table)
        assert before.select("id", "updated_at").equals(after.select("id", "updated_at"))  # no timestamp moved
        listed = messy.mess.filter((pl.col("system") == "hubspot") & (pl.col("table") == table))
        for column in before.columns:
            changed = before.with_columns(pl.col("id").cast(pl.Utf8)).filter(~before[column].eq_missing(after[column]))
            expected = listed.filter(pl.col("field") == column)["id"]
            assert sorted(changed["id"]) == sorted(expected), (table, column)
    websites = messy.mess.filter(pl.col("kind") == "punycode_website")
    accounts = messy.salesforce.truth("Account").filter(pl.col("Id").is_in(websites["id"].implode()))
    assert accounts.height == websites.height > 0 and accounts["Website"].str.contains("^https://www.xn--").all()
