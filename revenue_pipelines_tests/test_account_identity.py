"""Account identity: crafted cases for every rule, id stability, conflicts, and the sandbox's truth."""

from datetime import timedelta

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.bigquery.assets import billing_invoices, billing_invoices_state
from revenue_pipelines.defs.bigquery.resources import BigQuerySource
from revenue_pipelines.defs.hubspot.assets import hubspot_companies, hubspot_deals, hubspot_states
from revenue_pipelines.defs.revenue.identity import (
    CONFLICTS_KEY,
    IDENTITY_KEY,
    MAPPING_ROWS_FOUND,
    ONE_ACCOUNT_PER_RECORD,
    SALESFORCE_ACCOUNTS_MATCHED,
    account_identity,
    account_records,
    checked_mapping,
    mapping_rows_found,
    one_account_per_record,
)
from revenue_pipelines.defs.revenue.marts import (
    AMOUNTS_CONVERTED,
    PIPELINE_KEY,
    STAGES_MAPPED,
    WON_REVENUE_BILLED,
    pipeline,
)
from revenue_pipelines.defs.revenue.resources import CsvReferenceTables
from revenue_pipelines.defs.salesforce.assets import salesforce_accounts, salesforce_opportunities, salesforce_states
from revenue_pipelines.lib.account_matching import MAPPING_SCHEMA, account_id_for, match_accounts
from revenue_pipelines.lib.identity import salesforce_id_18
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines_tests.conftest import (
    END,
    bigquery_warehouse,
    hubspot_resource,
    materialize_range,
    read_layer,
    salesforce_resource,
)

ACME_SF = "001A0000006Vm9rIAC"  # Salesforce's documented 15/18 example: 001A0000006Vm9r
NO_MAPPING = pl.DataFrame(schema=MAPPING_SCHEMA)


def salesforce(*accounts: tuple[str, str, str | None, str | None]) -> pl.DataFrame:
    """Salesforce accounts as the current state holds them: (Id, Name, Website, External_Account_Id__c)."""
    schema = {"id": pl.Utf8, "Name": pl.Utf8, "Website": pl.Utf8, "External_Account_Id__c": pl.Utf8}
    return pl.DataFrame(accounts, schema=schema, orient="row")


def hubspot(*companies: tuple[int, str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(companies, schema={"id": pl.Int64, "name": pl.Utf8, "domain": pl.Utf8}, orient="row")


def billing(*accounts: tuple[str, str, str, str | None, str | None]) -> pl.DataFrame:
    """Billing accounts as their invoices show them: (account id, name, crm_source, CRM id, e-mail)."""
    rows = [
        {
            "billing_account_id": account,
            "billing_account_name": name,
            "crm_source": crm,
            "external_account_id": crm_id,
            "billing_email": email,
            "changed_at": 0,
        }
        for account, name, crm, crm_id, email in accounts
    ]
    schema = {
        "billing_account_id": pl.Utf8,
        "billing_account_name": pl.Utf8,
        "crm_source": pl.Utf8,
        "external_account_id": pl.Utf8,
        "billing_email": pl.Utf8,
        "changed_at": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def match(sf=(), hs=(), bl=(), mapping=NO_MAPPING, previous=None):
    records = account_records(salesforce(*sf), hubspot(*hs), billing(*bl))
    return match_accounts(records, mapping, previous)


def accounts_of(identity: pl.DataFrame) -> list[set[str]]:
    """The accounts as sets of "system:record_id", sorted, for comparing partitions of records."""
    groups = identity.group_by("account_id").agg(pl.concat_str("system", pl.lit(":"), "record_id").alias("records"))
    return sorted((set(records) for records in groups["records"].to_list()), key=sorted)


def rule_of(identity: pl.DataFrame, system: str, record_id: str) -> tuple[str | None, str | None]:
    row = identity.filter((pl.col("system") == system) & (pl.col("record_id") == record_id)).row(0, named=True)
    return row["match_rule"], row["confidence"]


def test_external_ids_link_salesforce_hubspot_and_billing_and_15_character_ids_are_accepted():
    matched = match(
        sf=[(ACME_SF, "Acme", "acme.com", "501")],
        hs=[(501, "Acme Holdings", "acme-holdings.com")],
        bl=[("BA-1", "ACME billing", "salesforce", "001A0000006Vm9r", "ap@acme-finance.com")],  # 15 characters
    )
    assert accounts_of(matched.identity) == [{f"salesforce:{ACME_SF}", "hubspot:501", "billing:BA-1"}]
    assert rule_of(matched.identity, "billing", "BA-1") == ("external_id", "high")
    assert matched.conflicts.height == 0


def test_the_same_domain_with_different_names_is_one_account():
    matched = match(
        sf=[(ACME_SF, "Acme Corporation", "https://www.acme.com/", None)], hs=[(7, "ACME Labs", "acme.com")]
    )
    assert len(accounts_of(matched.identity)) == 1
    assert rule_of(matched.identity, "hubspot", "7") == ("domain", "high")


def test_subsidiaries_sharing_a_domain_are_a_conflict_and_the_name_decides_with_low_confidence():
    europe = "001A0000006Vm9sIAC"
    matched = match(
        sf=[(ACME_SF, "Acme Corp", "acme.com", None), (europe, "Acme Europe GmbH", "acme.com", None)],
        hs=[(7, "Acme", "acme.com")],
    )
    assert accounts_of(matched.identity) == [{f"salesforce:{ACME_SF}", "hubspot:7"}, {f"salesforce:{europe}"}]
    assert rule_of(matched.identity, "hubspot", "7") == ("name", "low")
    domain = matched.conflicts.filter(pl.col("rule") == "domain")
    assert set(domain["record_id"]) == {ACME_SF, europe, "7"}  # every side is reported
    assert set(domain["match_key"]) == {"acme.com"}
    assert domain["reason"][0] == "would put 2 salesforce records in one account"


def test_free_mail_and_empty_domains_never_match():
    matched = match(
        hs=[(1, "Ann's bakery", None), (2, "Bob's garage", "gmail.com")],
        bl=[
            ("BA-1", "Ann Smith", "hubspot", None, "ann@gmail.com"),
            ("BA-2", "Bob Jones", "hubspot", None, "bob@gmail.com"),
        ],
    )
    assert len(accounts_of(matched.identity)) == 4
    assert matched.identity["match_rule"].null_count() == 4
    assert matched.conflicts.height == 0


def test_two_salesforce_accounts_claiming_one_hubspot_company_are_a_conflict_not_a_guess():
    other = "001A0000006Vm9sIAC"
    matched = match(
        sf=[(ACME_SF, "Acme", "acme.com", "501"), (other, "Initech", "initech.com", "501")],
        hs=[(501, "Acme", "acme.com")],
    )
    assert accounts_of(matched.identity) == [{f"salesforce:{ACME_SF}", "hubspot:501"}, {f"salesforce:{other}"}]
    conflict = matched.conflicts.filter(pl.col("rule") == "external_id")
    assert set(conflict["record_id"]) == {other, "501"}


def test_the_mapping_table_links_what_no_rule_sees_and_outranks_the_rules():
    mapping = checked_mapping(
        pl.DataFrame(
            {
                "account_key": ["globex", "globex"],
                "system": ["salesforce", "hubspot"],
                "record_id": ["001A0000006Vm9r", "9"],
            }
        )
    )
    matched = match(
        sf=[(ACME_SF, "Globex", "globex.com", None)], hs=[(9, "Hank Scorpio Ventures", "scorpio.io")], mapping=mapping
    )
    assert len(accounts_of(matched.identity)) == 1
    assert rule_of(matched.identity, "salesforce", ACME_SF) == ("mapping", "high")


def test_a_mapping_row_naming_no_record_is_listed_with_a_warning():
    mapping = checked_mapping(
        pl.DataFrame({"account_key": ["k", "k"], "system": ["hubspot", "hubspot"], "record_id": ["9", "404"]})
    )
    matched = match(hs=[(9, "Nine", "nine.com"), (10, "Ten", "ten.com")], mapping=mapping)
    check = mapping_rows_found(mapping, matched.identity)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == (
        "revenue/core/account_identity: record_id: 1 of the mapping table's 2 rows name no record; they link nothing"
    )
    assert "404" in check.metadata["rows"].value
    assert mapping_rows_found(mapping.head(1), matched.identity).passed


def test_a_record_under_two_account_keys_is_reported_and_fails_the_blocking_check():
    mapping = pl.DataFrame(
        {"account_key": ["a", "b"], "system": ["hubspot", "hubspot"], "record_id": ["9", "9"]}, schema=MAPPING_SCHEMA
    )
    matched = match(hs=[(9, "Nine", "nine.com")], mapping=mapping)
    claims = matched.conflicts.filter(pl.col("rule") == "mapping")
    assert claims["match_key"].to_list() == ["a", "b"]
    assert claims["reason"].unique().to_list() == ["the record is listed under more than one account_key"]

    day = pl.lit(DAILY_INGESTION.start.date()).alias(PARTITION_COLUMN)
    check = one_account_per_record(matched.identity.with_columns(day), matched.conflicts.with_columns(day))
    assert not check.passed
    assert check.description.endswith(
        "record_id: 0 records in two accounts, 1 records under two account_keys of the mapping table"
    )
    assert one_account_per_record(
        match(hs=[(9, "Nine", "nine.com")]).identity.with_columns(day), matched.conflicts.clear().with_columns(day)
    ).passed


def test_a_bad_mapping_row_fails_naming_the_field_and_the_count():
    mapping = pl.DataFrame(
        {
            "account_key": ["a", "a", "b"],
            "system": ["salesforce", "zendesk", "salesforce"],
            "record_id": ["nope", "1", ACME_SF],
        }
    )
    with pytest.raises(dg.Failure, match=r"1 rows with a bad system .*; 1 rows with a bad record_id"):
        checked_mapping(mapping)


def test_ids_are_stable_whatever_the_order_and_a_record_added_later_joins_without_renaming():
    sf = [(ACME_SF, "Acme", "acme.com", None), ("001A0000006Vm9sIAC", "Initech", "initech.com", None)]
    hs = [(7, "Acme", "acme.com")]
    first = match(sf=sf, hs=hs).identity
    assert first.equals(match(sf=list(reversed(sf)), hs=hs).identity)
    assert set(first["account_id"]) == {
        account_id_for("salesforce", ACME_SF),
        account_id_for("salesforce", "001A0000006Vm9sIAC"),
    }

    # A HubSpot company for Initech appears, and a billing account that sorts before everything.
    later = match(
        sf=sf,
        hs=[*hs, (8, "Initech", "initech.com")],
        bl=[("AAA-1", "Initech", "hubspot", "8", "ap@initech.com")],
        previous=first,
    ).identity
    kept = later.join(first, on=["system", "record_id"], suffix="_before")
    assert kept.height == first.height
    assert (kept["account_id"] == kept["account_id_before"]).all()
    initech = later.filter(pl.col("account_id") == account_id_for("salesforce", "001A0000006Vm9sIAC"))
    assert set(initech["record_id"]) == {"001A0000006Vm9sIAC", "8", "AAA-1"}


def test_two_existing_accounts_are_never_merged_by_a_rule_later():
    day_1 = match(sf=[(ACME_SF, "Acme", "acme.com", None)], hs=[(7, "Roadrunner", "roadrunner.com")]).identity
    # HubSpot's company changes its domain to Acme's: merging would rename one of the two accounts.
    day_2 = match(sf=[(ACME_SF, "Acme", "acme.com", None)], hs=[(7, "Roadrunner", "acme.com")], previous=day_1)
    assert accounts_of(day_2.identity) == accounts_of(day_1)
    assert day_2.conflicts["reason"][0].startswith("would merge existing accounts")


# --- through Dagster, against the sandbox -------------------------------------------------------


def test_the_sandbox_shared_accounts_are_matched_and_every_record_has_one_account(emulator_env, tmp_path):
    """The sandbox knows which Salesforce accounts, HubSpot companies and billing accounts are one customer,
    and which deals are in both CRMs; won revenue must then reconcile with billing."""
    sandbox = emulator_env
    first = END - timedelta(days=9)
    resources = {
        "hubspot": hubspot_resource(sandbox),
        "salesforce": salesforce_resource(sandbox, tmp_path / ".tokens"),
        "bigquery_source": BigQuerySource(
            warehouse=bigquery_warehouse(sandbox),
            billing_dataset=sandbox.bigquery.billing_dataset,
            ga4_export_dataset=sandbox.bigquery.ga4_export_dataset,
        ),
        "reference": CsvReferenceTables(),
    }
    billing_assets = [billing_invoices, billing_invoices_state]
    crm_assets = [
        hubspot_companies,
        hubspot_deals,
        hubspot_states[1],  # companies
        hubspot_states[2],  # deals
        salesforce_accounts,
        salesforce_opportunities,
        salesforce_states[0],
        salesforce_states[1],
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        # Billing's whole history (most invoices changed long before the CRM window), then the CRM window.
        runs = [
            (billing_assets, DAILY_INGESTION.start.date(), None),
            (crm_assets, first, None),
            (
                [*billing_assets, *crm_assets, account_identity, pipeline],
                first,
                [IDENTITY_KEY, CONFLICTS_KEY, PIPELINE_KEY],
            ),
        ]
        for assets, start, selection in runs:
            result = materialize_range(assets, resources, tmp_path, start, END, instance=instance, selection=selection)
            assert result.success
    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert checks[STAGES_MAPPED].passed and checks[AMOUNTS_CONVERTED].passed
    reconciliation = checks[WON_REVENUE_BILLED]
    assert reconciliation.passed, reconciliation.description
    assert reconciliation.metadata["since"].value == first.isoformat()  # the CRM states began there
    assert reconciliation.metadata["won_usd"].value > 0
    assert checks[ONE_ACCOUNT_PER_RECORD].passed
    assert checks[MAPPING_ROWS_FOUND].passed  # the repo's mapping table is empty
    unmatched = checks[SALESFORCE_ACCOUNTS_MATCHED]
    assert unmatched.severity == dg.AssetCheckSeverity.WARN
    assert not unmatched.passed  # the sandbox has Salesforce-only customers
    assert unmatched.metadata["unmatched_salesforce_accounts"].value > 0

    identity = read_layer(tmp_path, "revenue", "core", "account_identity").filter(pl.col(PARTITION_COLUMN) == END)
    assert identity.select("system", "record_id").is_duplicated().sum() == 0
    account = {(row["system"], row["record_id"]): row["account_id"] for row in identity.to_dicts()}

    live_accounts = sandbox.salesforce.truth("Account").filter(~pl.col("IsDeleted"))["Id"].to_list()
    live_companies = sandbox.hubspot.truth("companies").filter(~pl.col("archived"))["id"].cast(pl.Utf8).to_list()
    assert {key for key in account if key[0] == "salesforce"} == {("salesforce", id_) for id_ in live_accounts}
    assert {key for key in account if key[0] == "hubspot"} == {("hubspot", id_) for id_ in live_companies}

    overlap = sandbox.salesforce.truth_overlap().with_columns(pl.col("hubspot_company_id").cast(pl.Utf8))
    pairs = [
        (row["account_id"], row["hubspot_company_id"])
        for row in overlap.to_dicts()
        if row["account_id"] in live_accounts and row["hubspot_company_id"] in live_companies
    ]
    assert len(pairs) > 5
    assert all(account["salesforce", sf] == account["hubspot", hs] for sf, hs in pairs)

    # Every billing account is with the CRM record it names (when that record is live).
    billing_accounts = sandbox.bigquery.truth(sandbox.bigquery.billing_dataset, "accounts")
    linked = 0
    for row in billing_accounts.to_dicts():
        crm_id = row["external_account_id"]
        if row["crm_source"] == "salesforce":
            crm_id = pl.select(salesforce_id_18(pl.lit(crm_id))).item()
        if (row["crm_source"], crm_id) in account:
            linked += 1
            assert account["billing", row["billing_account_id"]] == account[row["crm_source"], crm_id]
    assert linked > 5

    # Each live deal once: an opportunity and its live HubSpot copy are one row, the opportunity's.
    deals = read_layer(tmp_path, "revenue", "marts", "pipeline").filter(pl.col(PARTITION_COLUMN) == END)
    assert deals["deal_key"].is_duplicated().sum() == 0
    live_opportunities = set(sandbox.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))["Id"])
    live_deals = set(sandbox.hubspot.truth("deals").filter(~pl.col("archived"))["id"].cast(pl.Utf8))
    mirrored = sandbox.truth_mirrored_deals().with_columns(pl.col("hubspot_deal_id").cast(pl.Utf8))
    copies = {
        row["hubspot_deal_id"]: row["opportunity_id"]
        for row in mirrored.to_dicts()
        if row["hubspot_deal_id"] in live_deals and row["opportunity_id"] in live_opportunities
    }
    assert len(copies) > 3
    assert set(deals.filter(pl.col("system") == "salesforce")["deal_id"]) == live_opportunities
    assert set(deals.filter(pl.col("system") == "hubspot")["deal_id"]) == live_deals - set(copies)
    synced = dict(
        deals.filter(pl.col("hubspot_deal_id").is_not_null()).select("hubspot_deal_id", "deal_id").iter_rows()
    )
    assert synced == copies
