"""The main job over a week of portals holding realistic mess: it succeeds, keeps every row as
received, says what is odd in WARN checks, and still links and counts the odd records right."""

from datetime import timedelta

import dagster as dg
import polars as pl

from revenue_pipelines_tests.conftest import END, expected_ids, read_layer, run_main_job

FIRST = END - timedelta(days=6)


def test_a_week_of_messy_portals_runs_to_success_keeping_and_warning_about_odd_values(
    sandbox_factory, monkeypatch, tmp_path
):
    # Seven days: every record's last change falls in the run, so the states at END hold them all.
    sandbox = sandbox_factory(seed=11, companies=120, days=7, bigquery=True, mess=0.005)
    mess = sandbox.mess
    assert set(mess["kind"]) == {
        "broken_email",
        "plus_address",
        "word_phone",
        "idn_domain",
        "punycode_website",
        "short_salesforce_id",
        "closed_without_close_date",
    }

    with dg.DagsterInstance.ephemeral() as instance:
        _, result = run_main_job(
            sandbox, monkeypatch, instance, FIRST, END, env={"REVENUE_PIPELINES_DATA_DIR": str(tmp_path)}
        )
    assert result.success, [event.message for event in result.all_events if event.is_failure]

    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    # Nothing was unusable: no quarantine anywhere.
    schema_checks = {key: check for key, check in checks.items() if key[1] == "rows_match_schema"}
    assert len(schema_checks) > 10 and all(check.passed for check in schema_checks.values())
    # The odd values are named in WARN checks, field by field; legitimate oddities are not.
    contacts = checks["hubspot/raw/contacts", "fields_well_formed"]
    assert contacts.severity == dg.AssetCheckSeverity.WARN and not contacts.passed
    assert "email failed str_matches" in contacts.description and "phone failed str_matches" in contacts.description
    assert checks["hubspot/raw/companies", "fields_well_formed"].passed  # Unicode and capitals are domains too
    deals = checks["hubspot/raw/deals", "fields_well_formed"]
    assert "closedate_present_when_closed failed" in deals.description
    assert "hs_salesforceopportunityid" not in deals.description  # 15 characters is a Salesforce id

    # Every record exactly once, each odd value as received.
    for table in ("contacts", "companies", "deals"):
        raw = read_layer(tmp_path, "hubspot", "raw", table)
        assert sorted(raw["id"].to_list()) == expected_ids(sandbox, table, FIRST, END)
        truth = sandbox.hubspot.truth(table)
        for field in mess.filter((pl.col("system") == "hubspot") & (pl.col("table") == table))["field"].unique():
            got = raw.select("id", field).join(truth.select("id", pl.col(field).alias("truth")), on="id")
            if field == "closedate":
                assert got.filter(pl.col("truth").is_null())[field].null_count() == got["truth"].null_count()
            else:
                assert (got[field].eq_missing(got["truth"])).all(), field
    broken = mess.filter(pl.col("kind") == "broken_email")
    raw_contacts = read_layer(tmp_path, "hubspot", "raw", "contacts")
    flagged = raw_contacts.filter(pl.col("id").cast(pl.Utf8).is_in(broken["id"].implode()))
    assert flagged.height and flagged["malformed_fields"].str.contains("email").fill_null(False).all()
    plus_addressed = raw_contacts.filter(
        pl.col("id").cast(pl.Utf8).is_in(mess.filter(pl.col("kind") == "plus_address")["id"].implode())
    )
    assert plus_addressed.height and plus_addressed["malformed_fields"].is_null().all()  # Jane.Doe+crm@Acme.com is fine

    # An internationalised domain links the company to its Salesforce account (Website in punycode).
    identity = read_layer(tmp_path, "revenue", "core", "account_identity").filter(pl.col("ingestion_date") == END)
    websites = mess.filter(pl.col("kind") == "punycode_website")
    companies = mess.filter(pl.col("kind") == "idn_domain")
    overlap = sandbox.salesforce.truth_overlap().with_columns(pl.col("hubspot_company_id").cast(pl.Utf8))
    pairs = overlap.filter(pl.col("account_id").is_in(websites["id"].implode()))
    assert pairs.height and set(pairs["hubspot_company_id"]) <= set(companies["id"])
    account_of = dict(zip(identity["system"] + ":" + identity["record_id"], identity["account_id"], strict=True))
    for row in pairs.iter_rows(named=True):
        assert account_of[f"salesforce:{row['account_id']}"] == account_of[f"hubspot:{row['hubspot_company_id']}"]

    # A deal synced with the 15-character opportunity id is still that opportunity, counted once; a
    # closed deal without a close date is converted at its day's rate.
    pipeline = read_layer(tmp_path, "revenue", "marts", "pipeline").filter(pl.col("ingestion_date") == END)
    mirrors = sandbox.truth_mirrored_deals().with_columns(pl.col("hubspot_deal_id").cast(pl.Utf8))
    short = mirrors.join(mess.filter(pl.col("kind") == "short_salesforce_id"), left_on="hubspot_deal_id", right_on="id")
    synced = pipeline.join(short, left_on="deal_id", right_on="opportunity_id")
    assert synced.height and synced["hubspot_deal_id"].eq_missing(synced["hubspot_deal_id_right"]).all()
    assert not pipeline.filter(pl.col("deal_key").is_in(("hubspot:" + short["hubspot_deal_id"]).implode())).height
    undated = pipeline.filter(
        pl.col("deal_id").is_in(mess.filter(pl.col("kind") == "closed_without_close_date")["id"].implode())
    )
    assert undated.height and undated["is_closed"].fill_null(False).all() and undated["close_date"].is_null().all()
    assert (
        undated["converted_on"].eq_missing(END).all() and undated["amount_usd"].is_not_null().all()
    )  # at the day's rate

    # Each day's materialization describes that day: its count is its own file's rows.
    counted = 0
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata, path = materialization.metadata, tmp_path.joinpath(*materialization.asset_key.path)
        count = next(
            (metadata[name].value for name in ("records", "deals", "accounts", "rows") if name in metadata), None
        )
        if count is None or not path.is_dir():
            continue
        assert pl.read_parquet(path / f"{materialization.partition}.parquet").height == count, event.asset_key
        assert metadata["window_start"].value.startswith(materialization.partition)
        counted += 1
    assert counted > 7 * 20
