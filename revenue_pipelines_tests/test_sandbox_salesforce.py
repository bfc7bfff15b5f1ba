"""The Salesforce sandbox speaks Salesforce's REST API over TLS: checked with requests and the real
simple-salesforce client, against the org's ground truth."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from revenue_pipelines.sandbox import soql
from revenue_pipelines.sandbox.salesforce_data import SCHEMAS, generate_org

OBJECTS = ("Account", "Opportunity", "Contact", "Lead", "User")
PREFIXES = {"Account": "001", "Opportunity": "006", "Contact": "003", "Lead": "00Q", "User": "005"}
BATCH_OF_200 = {"Sforce-Query-Options": "batchSize=200"}


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory(seed=3, companies=300)


def grant(sb, **form) -> requests.Response:
    """A refresh-token grant at the token URL, over TLS verified with the sandbox's CA."""
    env = sb.env()
    fields = {
        "grant_type": "refresh_token",
        "client_id": env["SALESFORCE_CLIENT_ID"],
        "client_secret": env["SALESFORCE_CLIENT_SECRET"],
        "refresh_token": sb.salesforce.refresh_token,
        **form,
    }
    return requests.post(env["SALESFORCE_TOKEN_URL"], data=fields, verify=env["SALESFORCE_CA_BUNDLE"], timeout=10)


def connect(sb, access_token: str | None = None) -> Salesforce:
    """The real client on a fresh session. trust_env is off because REQUESTS_CA_BUNDLE, where
    set, silently overrides a session's `verify` in requests."""
    token = grant(sb).json()
    session = requests.Session()
    session.verify = sb.ca_bundle
    session.trust_env = False
    return Salesforce(
        instance_url=token["instance_url"], session_id=access_token or token["access_token"], session=session
    )


def served(value):
    """A truth value as Salesforce writes it in JSON."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"
    if isinstance(value, date):
        return value.isoformat()
    return value


def literal(moment: datetime) -> str:
    """A SOQL datetime literal."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def strip(records) -> list[dict]:
    return [{name: value for name, value in record.items() if name != "attributes"} for record in records]


def pages(sf, query: str, include_deleted: bool = False, headers: dict | None = None) -> list[list[dict]]:
    page = sf.query(query, include_deleted=include_deleted, headers=headers)
    batches = [strip(page["records"])]
    while not page["done"]:
        page = sf.query_more(page["nextRecordsUrl"], identifier_is_url=True, headers=headers)
        batches.append(strip(page["records"]))
    return batches


def checksum(id15: str) -> str:
    """The case-safe suffix: per 5-character chunk, bit i for an uppercase i-th character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    return "".join(
        alphabet[sum(1 << i for i, char in enumerate(id15[start : start + 5]) if "A" <= char <= "Z")]
        for start in (0, 5, 10)
    )


def error_of(excinfo) -> dict:
    [error] = excinfo.value.content
    return error


# --- TLS and the environment -------------------------------------------------------------------


def test_tls_verifies_with_the_ca_bundle_and_fails_without_it(sb):
    env = sb.env()
    assert sb.salesforce_url.startswith("https://127.0.0.1:") and sb.url.startswith("http://")
    assert env["SALESFORCE_TOKEN_URL"] == sb.salesforce_url + "/services/oauth2/token"
    assert env["SALESFORCE_REFRESH_TOKEN"] == sb.salesforce.refresh_token
    assert Path(sb.ca_bundle).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert grant(sb).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(env["SALESFORCE_TOKEN_URL"], data={}, verify=True, timeout=10)
    localhost = env["SALESFORCE_TOKEN_URL"].replace("127.0.0.1", "localhost")
    assert requests.post(localhost, data={}, verify=sb.ca_bundle, timeout=10).status_code == 400
    bundle = sb.ca_bundle
    sb.stop()
    assert not Path(bundle).exists()


def test_a_stalled_handshake_does_not_block_other_clients(sb):
    host, port = sb.salesforce_url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port))):  # connects, never says hello
        # Were the handshake made in the accept loop, this grant would wait forever (its timeout fails it).
        assert grant(sb).status_code == 200


# --- OAuth and sessions ------------------------------------------------------------------------


def test_refresh_grant_answers_like_salesforce_and_rejects_bad_credentials(sb):
    body = grant(sb).json()
    assert body["token_type"] == "Bearer" and body["instance_url"] == sb.salesforce_url
    assert body["access_token"] and body["signature"] and body["issued_at"].isdigit() and body["scope"]
    assert body["id"].startswith(sb.salesforce_url + "/id/00D") and "refresh_token" not in body

    for form, error in (
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"client_id": "nope"}, "invalid_client_id"),
        ({"client_secret": "nope"}, "invalid_client"),
        ({"refresh_token": "nope"}, "invalid_grant"),
    ):
        response = grant(sb, **form)
        assert response.status_code == 400 and response.json()["error"] == error, form
    assert grant(sb, refresh_token="nope").json()["error_description"] == "expired access/refresh token"
    assert sb.salesforce.token_grants == 1
    assert sb.salesforce.api_usage == 0  # grants are no API calls


def test_rotation_issues_a_new_refresh_token_and_retires_the_old(sb):
    first = sb.salesforce.refresh_token
    assert grant(sb).status_code == grant(sb).status_code == 200  # no rotation: reusable
    assert sb.salesforce.refresh_token == first

    sb.salesforce.rotate_refresh_tokens = True
    before = connect(sb)  # a grant that rotated `first` away
    rotated = sb.salesforce.refresh_token
    assert rotated != first
    old = grant(sb, refresh_token=first)
    assert old.status_code == 400 and old.json()["error"] == "invalid_grant"
    response = grant(sb, refresh_token=rotated)
    assert response.status_code == 200 and response.json()["refresh_token"] == sb.salesforce.refresh_token != rotated
    # Sessions of earlier grants stay live next to the new one.
    assert before.query("SELECT Id FROM User LIMIT 1")["totalSize"] == 1
    assert sb.salesforce.token_grants == 4


def test_no_session_exists_until_a_grant(sb):
    session = requests.Session()
    session.verify, session.trust_env = sb.ca_bundle, False
    sf = Salesforce(instance_url=sb.salesforce_url, session_id="00D!made-up", session=session)
    with pytest.raises(SalesforceExpiredSession) as excinfo:
        sf.query("SELECT Id FROM Account")
    assert error_of(excinfo) == {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}


def test_sessions_expire_after_their_calls_their_age_or_on_demand(sb):
    sb.salesforce.session_max_calls = 3
    sf = connect(sb)
    for _ in range(3):
        sf.query("SELECT Id FROM User")
    with pytest.raises(SalesforceExpiredSession) as excinfo:
        sf.query("SELECT Id FROM User")
    assert error_of(excinfo)["errorCode"] == "INVALID_SESSION_ID"
    assert connect(sb).query("SELECT Id FROM User")["totalSize"] == 25  # a new grant, a new session

    sb.salesforce.session_max_calls = None
    sb.salesforce.session_ttl_seconds = 0.3
    sf = connect(sb)
    sf.query("SELECT Id FROM User")
    time.sleep(0.4)
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM User")

    sb.salesforce.session_ttl_seconds = None
    first, second = connect(sb), connect(sb)
    sb.salesforce.expire_sessions()
    for sf in (first, second):
        with pytest.raises(SalesforceExpiredSession):
            sf.query("SELECT Id FROM User")


def test_every_call_spends_the_daily_budget_and_says_so(sb):
    sf = connect(sb)
    sf.Account.describe()
    sf.query("SELECT Id FROM User")
    assert sf.api_usage["api-usage"].used == sb.salesforce.api_usage == 2
    assert sf.api_usage["api-usage"].total == 100_000

    sb.salesforce.api_usage = 99
    sb.salesforce.daily_api_limit = 100
    sf.query("SELECT Id FROM User")
    assert sf.api_usage["api-usage"] == (100, 100)
    with pytest.raises(SalesforceRefusedRequest) as excinfo:
        sf.query("SELECT Id FROM User")
    assert error_of(excinfo) == {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    refused = sf.session.get(sf.base_url + "query", params={"q": "SELECT Id FROM User"}, headers=sf.headers)
    assert refused.status_code == 403 and refused.headers["Sforce-Limit-Info"] == "api-usage=100/100"


# --- queries -----------------------------------------------------------------------------------


def test_paging_a_window_returns_exactly_the_live_records_and_queryall_adds_the_deleted(sb):
    start = sb.salesforce.window[0] + timedelta(days=5)
    end = start + timedelta(days=12)
    fields = [field.name for field in SCHEMAS["Opportunity"]]
    query = (
        f"SELECT {', '.join(fields)} FROM Opportunity "
        f"WHERE SystemModstamp >= {literal(start)} AND SystemModstamp < {literal(end)} ORDER BY SystemModstamp, Id"
    )
    sf = connect(sb)
    truth = sb.salesforce.truth("Opportunity").filter(pl.col("SystemModstamp").is_between(start, end, closed="left"))
    expected = truth.sort("SystemModstamp", "Id")

    batches = pages(sf, query, headers=BATCH_OF_200)
    assert len(batches) > 1 and all(len(batch) == 200 for batch in batches[:-1])
    live = expected.filter(~pl.col("IsDeleted"))
    assert [record for batch in batches for record in batch] == [
        {name: served(value) for name, value in row.items()} for row in live.iter_rows(named=True)
    ]

    everything = list(sf.query_all_iter(query, include_deleted=True, headers=BATCH_OF_200))
    assert [record["Id"] for record in everything] == expected["Id"].to_list()
    assert {r["Id"] for r in everything if r["IsDeleted"]} == set(truth.filter("IsDeleted")["Id"]) != set()
    assert all(record["attributes"]["url"].endswith("/Opportunity/" + record["Id"]) for record in everything)


def test_every_object_is_served_as_salesforce_writes_it(sb):
    sf = connect(sb)
    for name in OBJECTS:
        fields = [field.name for field in SCHEMAS[name]]
        records = strip(sf.query_all(f"SELECT {', '.join(fields)} FROM {name}", include_deleted=True)["records"])
        truth = sb.salesforce.truth(name)
        assert records == [
            {field: served(value) for field, value in row.items()} for row in truth.iter_rows(named=True)
        ]
        assert [list(record) for record in records[:1]] == [fields]  # SELECT order
    opportunity = records and strip(sf.query("SELECT Amount, IsClosed, CloseDate FROM Opportunity LIMIT 1")["records"])
    [values] = opportunity
    assert isinstance(values["Amount"], float) and isinstance(values["IsClosed"], bool)
    raw = sf.session.get(sf.base_url + "query", params={"q": "SELECT Phone FROM Contact"}, headers=sf.headers)
    assert '"Phone":null' in raw.text


def test_order_by_is_honoured_and_ties_straddle_batch_boundaries(sandbox_factory):
    sb = sandbox_factory(seed=5, companies=50, opportunities=3000, days=2)
    truth = sb.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))
    shared = truth.filter(pl.col("SystemModstamp").is_duplicated())
    assert shared.height / truth.height > 0.15  # bulk jobs stamp many records with one instant

    sf = connect(sb)
    batches = pages(sf, "SELECT Id, SystemModstamp FROM Opportunity ORDER BY SystemModstamp, Id", headers=BATCH_OF_200)
    ids = [record["Id"] for batch in batches for record in batch]
    assert ids == truth.sort("SystemModstamp", "Id")["Id"].to_list()
    straddling = [
        i for i in range(1, len(batches)) if batches[i - 1][-1]["SystemModstamp"] == batches[i][0]["SystemModstamp"]
    ]
    assert straddling, "no tie crosses a batch boundary"

    descending = sf.query("SELECT Id FROM Opportunity ORDER BY SystemModstamp DESC, Id DESC LIMIT 5")["records"]
    assert [r["Id"] for r in descending] == truth.sort("SystemModstamp", "Id", descending=True)["Id"].head(5).to_list()
    by_amount = strip(sf.query_all("SELECT Id, Amount FROM Opportunity ORDER BY Amount DESC NULLS LAST")["records"])
    assert by_amount[-1]["Amount"] is None and by_amount[0]["Amount"] == truth["Amount"].max()


def test_a_locator_is_a_snapshot_that_outlives_its_session(sb):
    sb.salesforce.batch_size = 100
    sf = connect(sb)
    query = "SELECT Id, Name, SystemModstamp FROM Account ORDER BY SystemModstamp, Id"
    expected = strip(sf.query_all(query)["records"])
    first = sf.query(query)
    assert len(first["records"]) == 100 and first["nextRecordsUrl"].split("/")[-1].startswith("01g")

    # Mid-paging: a later record moves to the front, another is deleted, a third renamed by a malformation.
    later = [record["Id"] for record in expected[150:153]]
    sb.salesforce.touch("Account", later[0], sb.salesforce.window[0])
    sb.salesforce.delete("Account", later[1], sb.salesforce.window[1] - timedelta(seconds=1))
    sb.salesforce.expire_sessions()
    other = connect(sb)
    rest, page = [], first
    while not page["done"]:
        page = other.query_more(page["nextRecordsUrl"], identifier_is_url=True)
        rest += strip(page["records"])
    assert strip(first["records"]) + rest == expected

    fresh = [record["Id"] for record in other.query_all(query)["records"]]
    assert fresh[0] == later[0] and later[1] not in fresh

    with pytest.raises(SalesforceMalformedRequest) as excinfo:
        other.query_more("01gDn000000NOPEIAQ-100")
    assert error_of(excinfo)["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_a_locator_left_idle_lapses_and_one_in_use_does_not(sb):
    sb.salesforce.cursor_idle_seconds = 1.0
    sf = connect(sb)
    query = "SELECT Id FROM Contact ORDER BY Id"
    busy, idle = sf.query(query, headers=BATCH_OF_200), sf.query(query, headers=BATCH_OF_200)
    for _ in range(3):  # each request resets the idle clock of its own cursor only
        time.sleep(0.4)
        busy = sf.query_more(busy["nextRecordsUrl"], identifier_is_url=True, headers=BATCH_OF_200)
    with pytest.raises(SalesforceMalformedRequest) as excinfo:
        sf.query_more(idle["nextRecordsUrl"], identifier_is_url=True, headers=BATCH_OF_200)
    assert error_of(excinfo)["errorCode"] == "INVALID_QUERY_LOCATOR"
    assert sb.salesforce.cursors_expired == 1


def test_concurrent_cursors_page_independently(sb):
    sf = connect(sb)

    def ids(name: str) -> list[str]:
        return [r["Id"] for r in sf.query_all_iter(f"SELECT Id FROM {name}", headers=BATCH_OF_200)]

    with ThreadPoolExecutor(4) as pool:
        served_ids = dict(zip(OBJECTS[:4], pool.map(ids, OBJECTS[:4]), strict=True))
    for name, got in served_ids.items():
        assert got == sb.salesforce.truth(name).filter(~pl.col("IsDeleted"))["Id"].to_list()


def test_query_timeout_hits_only_big_initial_queries(sb):
    sf = connect(sb)
    open_cursor = sf.query("SELECT Id FROM Contact", headers=BATCH_OF_200)
    sb.salesforce.query_timeout_rows = 500
    with pytest.raises(SalesforceMalformedRequest) as excinfo:
        sf.query("SELECT Id FROM Contact")
    assert error_of(excinfo) == {
        "message": "Your query request was running for too long.",
        "errorCode": "QUERY_TIMEOUT",
    }
    assert sb.salesforce.query_timeouts == 1
    assert sf.query("SELECT Id FROM Contact LIMIT 500")["totalSize"] == 500
    more = sf.query_more(open_cursor["nextRecordsUrl"], identifier_is_url=True, headers=BATCH_OF_200)
    assert len(more["records"]) == 200


def test_soql_errors_match_salesforce(sb):
    sf = connect(sb)
    cases = {
        "SELECT Foo FROM Account": ("INVALID_FIELD", "No such column 'Foo' on entity 'Account'."),
        "SELECT Id FROM Foo": ("INVALID_TYPE", "sObject type 'Foo' is not supported."),
        "SELECT Id FROM Account WHERE": ("MALFORMED_QUERY", "unexpected token: <EOF>"),
        "SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'": ("MALFORMED_QUERY", "token: OR"),
        "SELECT Id FROM Account WHERE (Name = 'a'": ("MALFORMED_QUERY", "unexpected token: <EOF>"),
        "SELECT Id, Id FROM Account": ("MALFORMED_QUERY", "duplicate field selected: Id"),
        "SELECT Id FROM Account WHERE SystemModstamp > 2026-11-01": ("INVALID_FIELD", "must be of type dateTime"),
        "SELECT Id FROM Account WHERE Name = 5": ("INVALID_FIELD", "must be of type string"),
        "SELECT Id FROM Account WHERE Foo = 5": ("INVALID_FIELD", "No such column 'Foo'"),
        "SELECT Id FROM Account ORDER BY": ("MALFORMED_QUERY", "unexpected token"),
        "SELECT Id FROM Account LIMIT x": ("MALFORMED_QUERY", "unexpected token: x"),
        "SELECT COUNT() FROM Account": ("MALFORMED_QUERY", "unexpected token: ("),
    }
    for query, (code, message) in cases.items():
        with pytest.raises(SalesforceMalformedRequest) as excinfo:
            sf.query(query)
        assert error_of(excinfo)["errorCode"] == code, query
        assert message in error_of(excinfo)["message"], query


def test_soql_is_case_insensitive_and_reads_every_literal_form(sb):
    sf = connect(sb)
    account = sb.salesforce.truth("Account").filter(~pl.col("IsDeleted")).row(0, named=True)
    [record] = sf.query(f"select id, NAME from ACCOUNT where name = '{account['Name'].lower()}' limit 1")["records"]
    assert list(strip([record])[0]) == ["Id", "Name"] and record["Name"] == account["Name"]

    moment = datetime(2026, 11, 10, tzinfo=UTC)
    forms = ("2026-11-10T00:00:00Z", "2026-11-10T00:00:00.000+0000", "2026-11-10T01:00:00+01:00")
    totals = {sf.query(f"SELECT Id FROM Contact WHERE SystemModstamp >= {form}")["totalSize"] for form in forms}
    truth = sb.salesforce.truth("Contact").filter(~pl.col("IsDeleted"))
    assert totals == {truth.filter(pl.col("SystemModstamp") >= moment).height}

    closed = sf.query("SELECT Id FROM Opportunity WHERE IsClosed = true AND CloseDate < 2026-11-01 AND Amount > 1000.5")
    opportunities = sb.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))
    assert (
        closed["totalSize"]
        == opportunities.filter(
            pl.col("IsClosed") & (pl.col("CloseDate") < date(2026, 11, 1)) & (pl.col("Amount") > 1000.5)
        ).height
    )
    no_title = sf.query("SELECT Id FROM Contact WHERE Title = null")["totalSize"]
    not_ceo = sf.query("SELECT Id FROM Contact WHERE Title != 'CEO'")["totalSize"]  # nulls included, as in SOQL
    contacts = sb.salesforce.truth("Contact").filter(~pl.col("IsDeleted"))
    assert no_title == contacts["Title"].null_count() > 0
    assert not_ceo == contacts.height - (contacts["Title"] == "CEO").sum()

    parsed = soql.parse(r"SELECT Id FROM Lead WHERE Company = 'O\'Brien \\ Sons' AND IsConverted = false")
    assert [condition.value for condition in parsed.where.parts] == ["O'Brien \\ Sons", False]


def test_soql_reads_a_keyset_condition_with_or_and_parentheses(sb):
    sf = connect(sb)
    truth = sb.salesforce.truth("Contact").filter(~pl.col("IsDeleted")).sort("SystemModstamp", "Id")
    middle = truth.row(truth.height // 2, named=True)
    stamp, record_id = literal(middle["SystemModstamp"]), middle["Id"]
    query = (
        f"SELECT Id FROM Contact WHERE SystemModstamp >= {literal(truth['SystemModstamp'][0])} AND "
        f"(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > '{record_id}')) "
        "ORDER BY SystemModstamp, Id"
    )
    served_ids = [record["Id"] for record in sf.query_all(query)["records"]]
    assert served_ids == truth["Id"].to_list()[truth.height // 2 + 1 :]


def test_describe_lists_fields_with_the_custom_external_id(sb):
    sf = connect(sb)
    account = sf.Account.describe()
    assert account["name"] == "Account" and account["custom"] is False
    fields = {field["name"]: field for field in account["fields"]}
    assert list(fields) == [field.name for field in SCHEMAS["Account"]]
    external = fields["External_Account_Id__c"]
    assert external["custom"] is True and external["externalId"] is True and external["type"] == "string"
    assert fields["Id"]["type"] == "id" and fields["Id"]["nillable"] is False and fields["Id"]["length"] == 18
    assert fields["OwnerId"]["referenceTo"] == ["User"] and fields["Website"]["type"] == "url"
    assert fields["AnnualRevenue"]["type"] == "currency" and fields["NumberOfEmployees"]["type"] == "int"
    stages = {field["name"]: field for field in sf.Opportunity.describe()["fields"]}["StageName"]
    assert [value["value"] for value in stages["picklistValues"]][-2:] == ["Closed Won", "Closed Lost"]
    assert "IsDeleted" not in {field["name"] for field in sf.User.describe()["fields"]}
    with pytest.raises(SalesforceResourceNotFound):
        sf.Widget__c.describe()


# --- the data set ------------------------------------------------------------------------------


def test_accounts_overlap_with_hubspot_companies(sb):
    accounts = sb.salesforce.truth("Account")
    companies = sb.hubspot.truth("companies")
    overlap = sb.salesforce.truth_overlap()
    assert accounts.height == companies.height == 300
    assert 0.55 <= overlap.height / accounts.height <= 0.65
    assert overlap["account_id"].is_unique().all() and overlap["hubspot_company_id"].is_unique().all()

    domain = pl.col("Website").str.replace(r"^(https://)?(www\.)?", "")
    linked = (
        accounts.with_columns(domain=domain)
        .join(overlap, left_on="Id", right_on="account_id")
        .join(companies.select("id", "name", hs_domain="domain"), left_on="hubspot_company_id", right_on="id")
    )
    assert (linked["domain"] == linked["hs_domain"]).all()
    assert {"https://www.", "www.", ""} == set(linked["Website"].str.extract(r"^((https://)?(www\.)?)", 1))
    renamed = linked.filter(pl.col("Name") != pl.col("name"))
    assert 0 < renamed.height < linked.height
    assert (renamed["Name"].str.to_lowercase().str.starts_with(renamed["name"].str.to_lowercase())).all()

    external = linked["External_Account_Id__c"]
    by_hubspot_id = (external == linked["hubspot_company_id"].cast(pl.String)).sum()
    assert 0.5 < by_hubspot_id / linked.height < 0.9 and external.str.starts_with("ERP-").any()
    assert external.null_count() > 0

    own = accounts.join(overlap, left_on="Id", right_on="account_id", how="anti").with_columns(domain=domain)
    assert not set(own["domain"].drop_nulls()) & set(companies["domain"])
    assert not own["External_Account_Id__c"].str.contains(r"^\d+$").any()
    assert accounts.with_columns(domain=domain)["domain"].drop_nulls().is_unique().all()


HUBSPOT_OPEN_STAGES = {
    "appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin", "contractsent",
}  # fmt: skip


def test_some_opportunities_of_shared_accounts_are_hubspot_deals_too(sb):
    """HubSpot's Salesforce integration mirrors about 30% of the live opportunities of the accounts
    that are (live) HubSpot companies: one deal each, the same business, hs_salesforceopportunityid set."""
    mirrors = sb.truth_mirrored_deals()
    opportunities = sb.salesforce.truth("Opportunity")
    overlap = sb.salesforce.truth_overlap()
    deals = sb.hubspot.truth("deals")
    live_companies = sb.hubspot.truth("companies").filter(~pl.col("archived"))["id"].implode()
    eligible = (
        opportunities.filter(~pl.col("IsDeleted"))
        .join(overlap, left_on="AccountId", right_on="account_id")
        .filter(pl.col("hubspot_company_id").is_in(live_companies))
    )
    assert mirrors.height > 100 and 0.25 <= mirrors.height / eligible.height <= 0.35
    assert mirrors["hubspot_deal_id"].is_unique().all() and mirrors["opportunity_id"].is_unique().all()
    assert mirrors.columns == ["hubspot_deal_id", "opportunity_id", "account_id", "hubspot_company_id"]

    # Each pairs with an opportunity (live or deleted) of an overlap account, and has its company.
    paired = deals.join(mirrors, left_on="id", right_on="hubspot_deal_id").join(
        opportunities, left_on="opportunity_id", right_on="Id"
    )
    assert paired.height == mirrors.height
    assert paired.join(
        overlap, left_on=["AccountId", "hubspot_company_id"], right_on=["account_id", "hubspot_company_id"], how="anti"
    ).is_empty()
    assert (paired["account_id"] == paired["AccountId"]).all()
    assert (paired["hs_salesforceopportunityid"] == paired["opportunity_id"]).all()
    assert (paired["opportunity_id"].str.len_chars() == 18).all()
    # The same business: name, amount, currency, close date; the stage mapped.
    assert (paired["dealname"] == paired["Name"]).all()
    assert paired["amount"].cast(pl.Float64).eq_missing(paired["Amount"]).all()
    assert paired["amount"].null_count() == paired["Amount"].null_count()
    assert (paired["deal_currency_code"] == paired["CurrencyIsoCode"]).all()
    close = paired["closedate"].str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_zone="UTC")
    assert (close.dt.date() == paired["CloseDate"]).all() and (close == close.dt.truncate("1d")).all()
    won, lost = paired["StageName"] == "Closed Won", paired["StageName"] == "Closed Lost"
    assert ((paired["dealstage"] == "closedwon") == won).all() and ((paired["dealstage"] == "closedlost") == lost).all()
    assert paired.filter(~won & ~lost)["dealstage"].is_in(list(HUBSPOT_OPEN_STAGES)).all()
    assert won.any() and lost.any() and (~won & ~lost).any()
    # Changed (by the integration) in the window, like other deals; a few archived, as other deals are.
    start, end = sb.hubspot.window
    assert paired["updated_at"].is_between(start, end, closed="left").all()
    assert (paired["archived_at"].drop_nulls() < end).all() and 0 < paired["archived"].sum() <= 0.06 * paired.height

    # A live mirror is associated with the overlapping company, and only with it; with its contacts too.
    deal_companies = sb.hubspot.truth_associations("deals", "companies")
    live = paired.filter(~pl.col("archived"))
    assert sorted(deal_companies.filter(pl.col("from_id").is_in(live["id"].implode())).iter_rows()) == sorted(
        live.select("id", "hubspot_company_id").iter_rows()
    )
    deal_contacts = sb.hubspot.truth_associations("deals", "contacts").join(
        sb.hubspot.truth_associations("contacts", "companies"), left_on="to_id", right_on="from_id"
    )
    mirrored_contacts = deal_contacts.join(live, left_on="from_id", right_on="id")
    assert mirrored_contacts["from_id"].n_unique() > 0.8 * live.height
    assert (mirrored_contacts["to_id_right"] == mirrored_contacts["hubspot_company_id"]).all()
    archived = paired.filter("archived")["id"].implode()
    assert deal_companies.filter(pl.col("from_id").is_in(archived)).is_empty()

    # Every other deal is HubSpot's own: no opportunity id.
    assert deals["hs_salesforceopportunityid"].drop_nulls().len() == mirrors.height


def test_the_mirrored_deals_are_the_same_for_the_same_seed(sandbox_factory):
    def mirrors(seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        sb = sandbox_factory(seed=seed, companies=40)
        return sb.truth_mirrored_deals(), sb.hubspot.truth("deals")

    first, again, other = mirrors(3), mirrors(3), mirrors(4)
    assert first[0].height > 5
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    assert not first[0].equals(other[0])


def test_ids_are_18_characters_with_valid_checksums(sb):
    for name in OBJECTS:
        truth = sb.salesforce.truth(name)
        references = [field.name for field in SCHEMAS[name] if field.type in ("id", "reference")]
        for column in references:
            for record_id in truth[column].drop_nulls():
                assert len(record_id) == 18 and record_id[15:] == checksum(record_id[:15]), (name, column)
        assert truth["Id"].str.starts_with(PREFIXES[name]).all() and truth["Id"].is_unique().all()
        assert truth["Id"].is_sorted()
    assert sb.salesforce.truth("Lead")["Id"].str.slice(15).str.contains("[A-Z]").any()


def test_the_org_has_the_promised_shape(sb):
    start, end = sb.salesforce.window
    counts = {name: sb.salesforce.truth(name).height for name in OBJECTS}
    assert counts == {"Account": 300, "Opportunity": 900, "Contact": 1200, "Lead": 900, "User": 25}
    for name in OBJECTS:
        truth = sb.salesforce.truth(name)
        assert truth.columns == [field.name for field in SCHEMAS[name]]
        assert truth["SystemModstamp"].dtype == pl.Datetime("ms", "UTC")
        assert (truth["SystemModstamp"] >= truth["LastModifiedDate"]).all()
        assert (truth["LastModifiedDate"] >= truth["CreatedDate"]).all()
        assert truth["SystemModstamp"].is_between(start, end, closed="left").all()
        if name != "User":
            assert 0.03 <= truth["IsDeleted"].mean() <= 0.05
            deleted = truth.filter("IsDeleted")
            assert (deleted["SystemModstamp"] > deleted["LastModifiedDate"]).all()
            assert truth["OwnerId"].is_in(sb.salesforce.truth("User")["Id"].to_list()).all()
            assert set(truth["LeadSource"] if "LeadSource" in truth.columns else []) <= {
                "Web", "Organic Search", "Paid Search", "Email", "Social", "Partner Referral", "Trade Show", None,
            }  # fmt: skip

    opportunities = sb.salesforce.truth("Opportunity")
    assert set(opportunities["CurrencyIsoCode"]) == {"USD", "EUR", "GBP"}
    closed = opportunities.filter("IsClosed")
    assert set(closed["StageName"]) == {"Closed Won", "Closed Lost"}
    assert (closed["CloseDate"] < end.date()).all() and (
        opportunities.filter(~pl.col("IsClosed"))["CloseDate"] > end.date()
    ).all()
    assert (opportunities["IsWon"] == (opportunities["StageName"] == "Closed Won")).all()
    assert opportunities["AccountId"].is_in(sb.salesforce.truth("Account")["Id"].to_list()).all()

    leads = sb.salesforce.truth("Lead")
    converted = leads.filter("IsConverted")
    assert (converted["Status"] == "Closed - Converted").all() and converted["ConvertedContactId"].null_count() == 0
    assert 0 < converted["ConvertedOpportunityId"].null_count() < converted.height
    assert (
        leads.filter(~pl.col("IsConverted")).select(pl.col("^Converted.*Id$").is_not_null().any()).row(0)
        == (False,) * 3
    )
    became = converted.join(sb.salesforce.truth("Contact"), left_on="ConvertedContactId", right_on="Id")
    assert (became["Email"] == became["Email_right"]).all() and (
        became["ConvertedAccountId"] == became["AccountId"]
    ).all()

    contacts = sb.salesforce.truth("Contact").join(
        sb.salesforce.truth("Account").select("Id", "Website"), left_on="AccountId", right_on="Id"
    )
    at_domain = contacts["Email"].str.split("@").list.last() == contacts["Website"].str.replace(
        r"^(https://)?(www\.)?", ""
    )
    assert at_domain.mean() > 0.8
    users = sb.salesforce.truth("User")
    assert set(users["UserType"]) == {"Standard"} and not users["IsActive"].all()


def test_same_seed_same_org_other_seed_other_org(sandbox_factory):
    def opportunities(seed: int) -> pl.DataFrame:
        return sandbox_factory(seed=seed, companies=20).salesforce.truth("Opportunity")

    assert opportunities(3).equals(opportunities(3))
    assert not opportunities(3).equals(opportunities(4))


def test_generating_500000_opportunities_takes_seconds(sb):
    companies = sb.hubspot.truth("companies").select("id", "name", "domain")
    started = time.perf_counter()
    org = generate_org(3, companies, 500_000, 30, date(2026, 11, 20))
    print(f"generated 500,000 opportunities in {time.perf_counter() - started:.2f} s")
    assert org.tables["Opportunity"].height == 500_000


# --- data and transport faults -----------------------------------------------------------------


def test_malformed_records_stay_in_their_window_and_are_served_as_specified(sb):
    truth = sb.salesforce.truth("Opportunity")
    recent = (sb.salesforce.window[1] - timedelta(days=3), sb.salesforce.window[1])
    short = sb.salesforce.malform("Opportunity", "short_id", within=recent)
    negative = sb.salesforce.malform("Opportunity", "negative_amount")
    unknown = sb.salesforce.malform("Opportunity", "unknown_stage")
    undated = sb.salesforce.malform("Opportunity", "closed_without_close_date")
    short_account = sb.salesforce.malform("Account", "short_id")
    with pytest.raises(ValueError):
        sb.salesforce.malform("Account", "negative_amount")

    after = sb.salesforce.truth("Opportunity")
    assert after["SystemModstamp"].to_list() == truth["SystemModstamp"].to_list()
    assert len(short) == 15 and after.filter(pl.col("Id") == short)["SystemModstamp"].is_between(*recent).all()
    sf = connect(sb)
    records = {
        r["Id"]: r
        for r in sf.query_all("SELECT Id, Amount, StageName, IsClosed, CloseDate FROM Opportunity")["records"]
    }
    assert short in records and records[negative]["Amount"] == -1250.0
    assert records[unknown]["StageName"] == "Closed Maybe"
    assert records[undated]["IsClosed"] is True and records[undated]["CloseDate"] is None
    assert len(short_account) == 15 and sb.salesforce.truth("Account")["Id"].str.len_chars().min() == 15


def test_deleted_records_leave_query_for_queryall(sb):
    sf = connect(sb)
    contact = sb.salesforce.truth("Contact").filter(~pl.col("IsDeleted"))["Id"][0]
    moment = sb.salesforce.window[1] + timedelta(hours=2, milliseconds=7)
    sb.salesforce.delete("Contact", contact, moment)
    query = f"SELECT Id, IsDeleted, SystemModstamp FROM Contact WHERE SystemModstamp >= {literal(moment)}"
    assert sf.query(query)["totalSize"] == 0
    [record] = sf.query_all(query, include_deleted=True)["records"]
    assert record["Id"] == contact and record["IsDeleted"] is True
    assert record["SystemModstamp"] == "2026-11-21T02:00:00.007+0000"
    with pytest.raises(ValueError):
        sb.salesforce.touch("Contact", contact, moment)
    with pytest.raises(KeyError):
        sb.salesforce.delete("Contact", "003Dn0000000000AAA", moment)

    lead = sb.salesforce.truth("Lead")["Id"][1]
    sb.salesforce.touch("Lead", lead, moment)
    [touched] = sf.query(f"SELECT Id, LastModifiedDate FROM Lead WHERE SystemModstamp = {literal(moment)}")["records"]
    assert touched["Id"] == lead and touched["LastModifiedDate"] == "2026-11-21T02:00:00.007+0000"


def test_scripted_faults_answer_in_salesforces_dialect(sb):
    sf = connect(sb)
    url = sf.base_url + "query"
    params = {"q": "SELECT Id FROM User"}
    sb.faults.add("status", status=503, path_contains="/query")
    unavailable = sf.session.get(url, params=params, headers=sf.headers)
    assert unavailable.status_code == 503 and unavailable.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert unavailable.headers["Sforce-Limit-Info"].startswith("api-usage=")

    sb.faults.add("rate_limit", retry_after=2)
    sb.faults.add("rate_limit")
    limited, bare = (sf.session.get(url, params=params, headers=sf.headers) for _ in range(2))
    assert limited.status_code == bare.status_code == 429
    assert limited.json() == [{"message": "Too many requests.", "errorCode": "TOO_MANY_REQUESTS"}]
    assert limited.headers["Retry-After"] == "2" and "Retry-After" not in bare.headers
    assert sf.query("SELECT Id FROM User")["totalSize"] == 25
    assert sb.requests.count(path_contains="/services/data/", status=200) == 1


def test_cli_run_passes_the_salesforce_environment():
    check = (
        "import os, sys, requests; "
        "r = requests.post(os.environ['SALESFORCE_TOKEN_URL'], verify=os.environ['SALESFORCE_CA_BUNDLE'], data={"
        "'grant_type': 'refresh_token', 'client_id': os.environ['SALESFORCE_CLIENT_ID'], "
        "'client_secret': os.environ['SALESFORCE_CLIENT_SECRET'], "
        "'refresh_token': os.environ['SALESFORCE_REFRESH_TOKEN']}); "
        "sys.exit(3 if r.status_code == 200 else 1)"
    )
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "run", "--companies", "5", "--", sys.executable]
    result = subprocess.run([*command, "-c", check], capture_output=True, timeout=60)
    assert result.returncode == 3, result.stderr
