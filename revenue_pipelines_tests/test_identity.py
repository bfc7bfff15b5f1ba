"""The matching keys of account identity: crafted cases, then the sandbox's sources against each other."""

import polars as pl
import pytest

from revenue_pipelines.lib.identity import normalized_domain, normalized_name, salesforce_id_18
from revenue_pipelines.sandbox import Sandbox


def apply(expression, values: list[str | None]) -> list[str | None]:
    return (
        pl.DataFrame({"value": values}, schema={"value": pl.String})
        .select(expression(pl.col("value")))["value"]
        .to_list()
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("001A0000006Vm9r", "001A0000006Vm9rIAC"),  # Salesforce's documented example
        ("001A0000006Vm9rIAC", "001A0000006Vm9rIAC"),  # already 18
        ("001a0000006vm9r", "001a0000006vm9rAAA"),  # case matters: another record
        ("001A0000006Vm9rAAA", None),  # a suffix that does not match its id
        ("001A0000006Vm9riac", None),  # a suffix lowercased on the way
        ("001A0000006Vm9", None),  # 14 characters
        ("001A0000006Vm9r-", None),
        ("HS-12345", None),  # a HubSpot id is no Salesforce id
        (None, None),
    ],
)
def test_salesforce_ids_are_taken_in_15_or_18_characters_and_given_in_18(given, expected):
    assert apply(salesforce_id_18, [given]) == [expected]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://www.Acme.com/about?x=1", "acme.com"),
        ("http://acme.com:8080", "acme.com"),
        ("www.acme.co.uk", "acme.co.uk"),
        ("www2.acme.io.", "acme.io"),
        ("acme.com", "acme.com"),
        ("billing@Acme.com", "acme.com"),
        ("mailto:ap@acme.com", "acme.com"),
        ("shop.acme.com", "shop.acme.com"),  # a subsidiary's own host is not its parent's
        ("jane@gmail.com", None),  # free mail never matches
        ("https://www.outlook.com", None),
        ("localhost", None),
        ("", None),
        (None, None),
    ],
)
def test_domains_lose_scheme_www_port_and_path_and_free_mail_matches_nothing(given, expected):
    assert apply(normalized_domain, [given]) == [expected]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ACME, LLC", "acme"),
        ("Acme Inc.", "acme"),
        ("Acme Corp", "acme"),
        ("Smith & Sons Co.", "smith and sons"),
        ("Müller GmbH", "müller"),
        ("Acme Holdings Ltd", "acme holdings"),  # a different company from Acme: kept apart
        ("Co", "co"),  # a name that is only a legal form stays itself
        ("  ", None),
        (None, None),
    ],
)
def test_names_lose_case_punctuation_and_legal_forms(given, expected):
    assert apply(normalized_name, [given]) == [expected]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(seed=5, companies=200, bigquery=True)  # data only: never started


def test_every_salesforce_id_survives_its_15_character_form(sandbox):
    ids = sandbox.salesforce.truth("Account")["Id"]
    assert apply(salesforce_id_18, ids.str.slice(0, 15).to_list()) == ids.to_list()


def test_billing_15_character_ids_resolve_to_their_salesforce_accounts(sandbox):
    accounts = sandbox.bigquery.truth("billing", "accounts").filter(pl.col("crm_source") == "salesforce")
    short = accounts.filter(pl.col("external_account_id").str.len_chars() == 15)
    assert short.height > 0
    resolved = accounts.select(salesforce_id_18(pl.col("external_account_id")))["external_account_id"]
    assert resolved.is_in(sandbox.salesforce.truth("Account")["Id"].implode()).all()


def test_shared_accounts_match_their_hubspot_company_by_domain_and_name(sandbox):
    overlap = sandbox.salesforce.truth_overlap()
    accounts = sandbox.salesforce.truth("Account").rename({"Id": "account_id"})
    companies = sandbox.hubspot.truth("companies").rename({"id": "hubspot_company_id"})
    pairs = overlap.join(accounts, on="account_id").join(companies, on="hubspot_company_id")
    keys = pairs.select(
        normalized_domain(pl.col("Website")).alias("salesforce_domain"),
        normalized_domain(pl.col("domain")).alias("hubspot_domain"),
        normalized_name(pl.col("Name")).alias("salesforce_name"),
        normalized_name(pl.col("name")).alias("hubspot_name"),
    )
    assert pairs.height > 50
    with_website = keys.filter(pl.col("salesforce_domain").is_not_null())
    assert (with_website["salesforce_domain"] == with_website["hubspot_domain"]).all()
    assert (keys["salesforce_name"] == keys["hubspot_name"]).all()  # "ACME", "Acme Inc.", "Acme, LLC"
