"""The revenue marts on small fixed data sets, against values worked out by hand."""

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.revenue.identity import IDENTITY_KEY
from revenue_pipelines.defs.revenue.marts import (
    AMOUNTS_CONVERTED,
    BILLING_INVOICES,
    CHANNEL_MAPPING,
    HUBSPOT_DEALS,
    PIPELINE_KEY,
    RATES_SCHEMA,
    SALESFORCE_OPPORTUNITIES,
    STAGE_MAPPING,
    STAGE_SCHEMA,
    STAGES_MAPPED,
    WON_REVENUE_BILLED,
    accounts_frame,
    load_mapping_file,
    pipeline,
    pipeline_frame,
    reconcile_won_revenue,
)
from revenue_pipelines.defs.revenue.resources import CsvReferenceTables
from revenue_pipelines.lib.bigquery import table_schema
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN

DAY = date(2026, 3, 2)
ACCOUNT_A = "001A0000006Vm9rIAC"
O1, O2, O9 = "006A0000001AbcdIAC", "006A0000001AbceIAC", "006A0000001ZzzzIAC"  # valid 18-character ids


def _utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


def salesforce_opportunities() -> pl.DataFrame:
    rows = [
        # id, StageName, Amount, CurrencyIsoCode, CloseDate, CreatedDate, LeadSource
        (O1, "Closed Won", 1000.0, "EUR", date(2026, 2, 15), _utc(2026, 1, 10), "Web"),
        (O2, "Prospecting", 500.0, "USD", None, _utc(2026, 2, 20), "Partner Referral"),
    ]
    return pl.DataFrame(
        [
            {
                "id": id_,
                "AccountId": ACCOUNT_A,
                "Name": f"Opportunity {id_[-4:]}",
                "StageName": stage,
                "Amount": amount,
                "CurrencyIsoCode": currency,
                "CloseDate": close,
                "CreatedDate": created,
                "OwnerId": "005A0000001OwnrIAA",
                "LeadSource": source,
                "changed_at": _utc(2026, 3, 2),
                PARTITION_COLUMN: DAY,
            }
            for id_, stage, amount, currency, close, created, source in rows
        ]
    )


def hubspot_deals() -> pl.DataFrame:
    paid_search = ("PAID_SEARCH", "brand-search-q4")
    rows = [
        # id, dealstage, amount, currency, closedate, synced from, (original source type, drill-down 1)
        (1, "closedwon", 1000.0, "EUR", _utc(2026, 2, 15), O1, paid_search),  # the copy of O1: counted once, as O1
        (2, "closedwon", 200.0, "GBP", _utc(2026, 3, 1), None, paid_search),
        # Synced from an opportunity Salesforce no longer has; a source the channel mapping lacks.
        (3, "contractsent", 300.0, "USD", None, O9, ("SOMETHING_NEW", None)),
        (4, "mystery", 50.0, "USD", None, None, (None, None)),  # a stage nobody mapped, no source
        (5, "qualifiedtobuy", 70.0, "CHF", None, None, ("REFERRALS", "g2-reviews")),  # a currency without a rate
        (6, "closedwon", 1000.0, "EUR", _utc(2026, 2, 15), O1, paid_search),  # a second copy of O1: still counted once
    ]
    return pl.DataFrame(
        [
            {
                "id": id_,
                "dealname": f"Deal {id_}",
                "pipeline": "default",
                "dealstage": stage,
                "amount": amount,
                "deal_currency_code": currency,
                "closedate": close,
                "createdate": _utc(2026, 1, 5),
                "hubspot_owner_id": 77,
                "company_ids": [501],
                "hs_salesforceopportunityid": synced,
                "hs_analytics_source": source,
                "hs_analytics_source_data_1": drill_down,
                "changed_at": _utc(2026, 3, 2),
                PARTITION_COLUMN: DAY,
            }
            for id_, stage, amount, currency, close, synced, (source, drill_down) in rows
        ],
        schema_overrides={
            "closedate": pl.Datetime("ms", "UTC"),
            "hs_salesforceopportunityid": pl.Utf8,
            "hs_analytics_source": pl.Utf8,
            "hs_analytics_source_data_1": pl.Utf8,
        },
    )


def identity() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "account_id": ["acc_1", "acc_1"],
            "system": ["salesforce", "hubspot"],
            "record_id": [ACCOUNT_A, "501"],
            PARTITION_COLUMN: [DAY, DAY],
        }
    )


RATES = """valid_from,currency,usd_per_unit
2026-01-01,USD,1.0
2026-02-01,EUR,1.10
2026-03-01,EUR,1.20
2026-02-01,GBP,1.25
"""


def invoices(*rows: tuple[str, str, str, int, datetime]) -> pl.DataFrame:
    """Billing invoices as the current state holds them: (id, crm_deal_id, status, subtotal cents, issued)."""
    return pl.DataFrame(
        [
            {
                "id": id_,
                "billing_account_id": "BA-1",
                "crm_deal_id": deal,
                "status": status,
                "subtotal_cents": cents,
                "issued_at": issued,
                PARTITION_COLUMN: DAY,
            }
            for id_, deal, status, cents, issued in rows
        ],
        schema_overrides={"issued_at": pl.Datetime("us", "UTC")},
    )


# O1's invoice names the deal by its HubSpot copy's id; deal 2 is billed in full.
BILLED_IN_FULL = [("in-1", "1", "paid", 100_000, _utc(2026, 2, 16)), ("in-2", "2", "open", 20_000, _utc(2026, 3, 2))]


def build_pipeline(tmp_path: Path) -> tuple[dg.ExecuteInProcessResult, pl.DataFrame]:
    """The pipeline asset through Dagster, its inputs written where the IO manager finds them."""
    io_manager = PartitionedParquetIOManager(base_dir=str(tmp_path / "data"))
    inputs = {
        HUBSPOT_DEALS: hubspot_deals(),
        SALESFORCE_OPPORTUNITIES: salesforce_opportunities(),
        IDENTITY_KEY: identity(),
        BILLING_INVOICES: invoices(*BILLED_IN_FULL),
    }
    for key, frame in inputs.items():
        path = tmp_path.joinpath("data", *key.path, f"{DAY}.parquet")
        path.parent.mkdir(parents=True)
        frame.write_parquet(path)
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "currency_rates.csv").write_text(RATES)

    upstream = [
        dg.AssetSpec(key, partitions_def=DAILY_INGESTION, metadata={"partition_expr": PARTITION_COLUMN})
        for key in inputs
    ]
    result = dg.materialize(
        [pipeline, *upstream],
        selection=[PIPELINE_KEY],
        partition_key=DAY.isoformat(),
        resources={"io_manager": io_manager, "reference": CsvReferenceTables(directory=str(tmp_path / "reference"))},
        raise_on_error=False,
    )
    return result, pl.read_parquet(tmp_path.joinpath("data", *PIPELINE_KEY.path, f"{DAY}.parquet"))


def test_the_pipeline_counts_synced_deals_once_maps_stages_and_converts_at_the_right_rate(tmp_path):
    result, deals = build_pipeline(tmp_path)
    by_key = {row["deal_key"]: row for row in deals.to_dicts()}
    assert deals.height == len(by_key)  # every deal once
    assert sorted(by_key) == [
        "hubspot:2",
        "hubspot:3",
        "hubspot:4",
        "hubspot:5",
        f"salesforce:{O1}",
        f"salesforce:{O2}",
    ]
    won = by_key[f"salesforce:{O1}"]
    assert won["hubspot_deal_id"] == "1"
    assert (won["unified_stage"], won["is_closed"], won["is_won"]) == ("Closed Won", True, True)
    assert won["amount_usd"] == 1100.0  # EUR at February's rate: it closed on 15 February
    assert won["account_id"] == "acc_1"
    assert by_key[f"salesforce:{O2}"]["amount_usd"] == 500.0
    assert by_key["hubspot:2"]["amount_usd"] == 250.0  # GBP 1.25, the rate valid on 1 March
    assert by_key["hubspot:2"]["account_id"] == "acc_1"
    assert by_key["hubspot:3"]["unified_stage"] == "Negotiation"
    assert by_key["hubspot:4"]["unified_stage"] is None  # kept, and the check fails
    assert by_key["hubspot:5"]["amount_usd"] is None
    channels = {key: row["channel"] for key, row in by_key.items()}
    assert channels == {
        f"salesforce:{O1}": "Direct",  # LeadSource Web
        f"salesforce:{O2}": "Referral",  # Partner Referral
        "hubspot:2": "Paid Search",  # HubSpot's Original Source Type PAID_SEARCH
        "hubspot:3": "Other",  # a source the mapping lacks
        "hubspot:4": "Unattributed",  # no contact
        "hubspot:5": "Referral",
    }
    assert by_key["hubspot:2"]["campaign"] == "brand-search-q4"
    table_schema(deals.schema)  # every column has a BigQuery type, for PROD's IO manager

    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert not checks[STAGES_MAPPED].passed
    assert checks[STAGES_MAPPED].description == (
        "revenue/marts/pipeline: stage: 1 deal-days without a match (hubspot/default/mystery: 1)"
    )
    assert not checks[AMOUNTS_CONVERTED].passed
    assert checks[AMOUNTS_CONVERTED].description == (
        "revenue/marts/pipeline: currency: 1 deal-days without a match (CHF: 1)"
    )
    assert checks[WON_REVENUE_BILLED].passed
    assert checks[WON_REVENUE_BILLED].description == (
        "revenue/marts/pipeline: won revenue 1,350.00 USD, billed 1,350.00 USD (difference 0.00, tolerance 1.0%) "
        "over 2 deals won since 2025-01-01: 2 billed."
    )
    [materialization] = result.asset_materializations_for_node("revenue__marts__pipeline")
    assert materialization.metadata["deals"].value == 6
    assert materialization.metadata["open_pipeline_usd"].value == 500.0 + 300.0 + 50.0  # CHF has no USD value
    assert materialization.metadata["synced_deals_counted_once"].value == 1


def test_the_stage_mapping_covers_every_stage_the_crms_have():
    from revenue_pipelines.defs.salesforce.checks import OPPORTUNITY_STAGES
    from revenue_pipelines.sandbox.hubspot_data import DEAL_STAGES

    mapped = set(STAGE_MAPPING.select("system", "stage").iter_rows())
    assert {("salesforce", stage) for stage in OPPORTUNITY_STAGES} <= mapped
    assert {("hubspot", stage) for stage in DEAL_STAGES} <= mapped


def test_a_stage_mapped_twice_fails_at_load(tmp_path):
    path = tmp_path / "stage_mapping.csv"
    path.write_text(
        "system,pipeline,stage,unified_stage,stage_order,is_closed,is_won\n"
        "hubspot,*,closedwon,Closed Won,6,true,true\n"
        "hubspot,*,closedwon,Won,6,true,true\n"
    )
    with pytest.raises(ValueError, match="0 rows with an empty field, 2 rows mapping one system/pipeline/stage twice"):
        load_mapping_file(path, STAGE_SCHEMA, ["system", "pipeline", "stage"])


def test_accounts_unify_profile_arr_pipeline_and_last_activity(tmp_path):
    rates = pl.read_csv(RATES.encode(), schema=RATES_SCHEMA).vstack(
        pl.DataFrame({"valid_from": [date(2025, 1, 1)], "currency": ["EUR"], "usd_per_unit": [1.05]})
    )
    at_day = {PARTITION_COLUMN: DAY}
    identity_rows = pl.DataFrame(
        {
            "account_id": ["acc_1", "acc_1", "acc_1", "acc_2"],
            "system": ["salesforce", "hubspot", "billing", "hubspot"],
            "record_id": [ACCOUNT_A, "501", "BA-1", "502"],
            "confidence": ["high", "high", "high", None],
        }
    ).with_columns(**{PARTITION_COLUMN: pl.lit(DAY)})
    salesforce_accounts = pl.DataFrame(
        [
            {
                "id": ACCOUNT_A,
                "Name": "Acme Corp",
                "Industry": "Software",
                "NumberOfEmployees": 250,
                "OwnerId": "005U1",
                "changed_at": _utc(2026, 3, 1),
                **at_day,
            }
        ]
    )
    users = pl.DataFrame([{"id": "005U1", "Name": "Dana Owner", **at_day}])
    companies = pl.DataFrame(
        [
            {"id": 501, "name": "Acme", "industry": "Tech", "lifecyclestage": "customer", "hubspot_owner_id": 77},
            {"id": 502, "name": "Beta", "industry": None, "lifecyclestage": None, "hubspot_owner_id": 78},
        ]
    ).with_columns(
        numberofemployees=pl.lit(None, pl.Int64), changed_at=pl.lit(_utc(2026, 2, 1)), **{PARTITION_COLUMN: pl.lit(DAY)}
    )
    invoice_rows = [
        # id, status, currency, subtotal cents, issued
        ("in-1", "paid", "EUR", 100_000, datetime(2025, 12, 1, tzinfo=UTC)),  # 1,000 EUR at 1.05
        ("in-2", "paid", "EUR", 900_000, datetime(2025, 3, 2, 23, tzinfo=UTC)),  # a day too old for the ARR window
        ("in-3", "void", "USD", 700_000, datetime(2026, 1, 15, tzinfo=UTC)),  # void
        ("in-4", "open", "USD", 50_000, datetime(2026, 3, 2, 10, tzinfo=UTC)),  # issued on the day itself
    ]
    invoices = pl.DataFrame(
        [
            {
                "id": id_,
                "billing_account_id": "BA-1",
                "billing_account_name": "ACME billing",
                "status": status,
                "currency": currency,
                "subtotal_cents": cents,
                "issued_at": issued,
                "changed_at": datetime(2026, 3, 2, 15, tzinfo=UTC),
                **at_day,
            }
            for id_, status, currency, cents, issued in invoice_rows
        ]
    )
    deals = _pipeline_frame(rates)

    frame = accounts_frame(
        identity_rows.lazy(),
        salesforce_accounts.lazy(),
        users.lazy(),
        companies.lazy(),
        invoices.lazy(),
        deals,
        rates,
    ).collect()

    acme, beta = frame.sort("account_id").to_dicts()
    assert (acme["name"], acme["owner"], acme["industry"], acme["lifecycle_stage"]) == (
        "Acme Corp",
        "Dana Owner",
        "Software",
        "customer",
    )
    assert acme["arr_usd"] == 1050.0 + 500.0
    assert acme["open_pipeline_usd"] == 500.0 + 300.0 + 50.0  # O2, deals 3 and 4; deal 5's CHF has no USD value
    assert acme["won_revenue_usd"] == 1100.0 + 250.0
    assert acme["open_deals"] == 4
    assert acme["last_activity_at"] == datetime(2026, 3, 2, 15, tzinfo=UTC)
    assert (acme["salesforce_records"], acme["hubspot_records"], acme["billing_records"]) == (1, 1, 1)
    assert (acme["employees"], acme["segment"]) == (250, "Mid-Market")  # Salesforce's head count
    assert (beta["name"], beta["owner"], beta["lifecycle_stage"], beta["arr_usd"]) == ("Beta", "78", None, 0.0)
    assert beta["segment"] == "Unknown"
    table_schema(frame.schema)  # every column has a BigQuery type, for PROD's IO manager


def _won_deals() -> pl.DataFrame:
    return _pipeline_frame(pl.read_csv(RATES.encode(), schema=RATES_SCHEMA)).collect()


def _pipeline_frame(
    rates: pl.DataFrame,
    deals: pl.DataFrame | None = None,
    opportunities: pl.DataFrame | None = None,
    stages: pl.DataFrame = STAGE_MAPPING,
) -> pl.LazyFrame:
    """`pipeline_frame` over the fixed data set, any of its inputs swapped."""
    return pipeline_frame(
        (hubspot_deals() if deals is None else deals).lazy(),
        (salesforce_opportunities() if opportunities is None else opportunities).lazy(),
        identity().lazy(),
        stages,
        rates,
        CHANNEL_MAPPING,
    )


def test_won_revenue_reconciles_with_billing_and_fails_when_it_should():
    deals, since = _won_deals(), DAILY_INGESTION.start.date()
    billed = reconcile_won_revenue(deals, invoices(*BILLED_IN_FULL), since)
    assert (billed.won_usd, billed.billed_usd) == (1350.0, 1350.0)
    assert billed.within(0.0)

    # Deal 2 never invoiced: 250 of 1,350 USD (18.5%) missing.
    unbilled = reconcile_won_revenue(deals, invoices(BILLED_IN_FULL[0]), since)
    assert unbilled.billed_usd == 1100.0
    assert not unbilled.within(0.01)
    assert unbilled.within(0.2)
    assert unbilled.deals.filter(pl.col("status") == "not billed")["deal_key"].to_list() == ["hubspot:2"]

    # Billed 10 GBP short, and an invoice voided and not reissued.
    short = reconcile_won_revenue(
        deals,
        invoices(("in-1", O1, "void", 100_000, _utc(2026, 2, 16)), ("in-2", "2", "paid", 19_000, _utc(2026, 3, 2))),
        since,
    )
    statuses = dict(short.deals.select("deal_key", "status").iter_rows())
    assert statuses == {f"salesforce:{O1}": "voided", "hubspot:2": "amount differs"}
    assert short.billed_usd == 1100.0 + 237.5
    assert not short.within(0.005)

    # Only deals closed since the states began count: O1 closed in February.
    recent = reconcile_won_revenue(deals, invoices(BILLED_IN_FULL[1]), date(2026, 3, 1))
    assert recent.deals["deal_key"].to_list() == ["hubspot:2"]
    assert recent.within(0.0)


def test_the_channel_mapping_gives_each_sandbox_channel_one_name_in_every_system():
    from revenue_pipelines.sandbox.ga4_data import CHANNELS
    from revenue_pipelines.sandbox.salesforce_data import LEAD_SOURCES

    channel = {(system, source): name for system, source, name in CHANNEL_MAPPING.iter_rows()}
    assert {("salesforce", source) for source in LEAD_SOURCES} <= set(channel)
    for sandbox_channel in CHANNELS:
        names = {
            channel["ga4", sandbox_channel.session_medium],
            channel["hubspot", sandbox_channel.hubspot_source],
            channel["salesforce", sandbox_channel.salesforce_lead_source],
        }
        assert len(names) == 1, sandbox_channel


def test_every_amount_is_converted_at_its_own_dates_rate_at_scale():
    """Thousands of deals in no particular order: each at the rate of its currency on its date."""
    rng = random.Random(3)
    rates = pl.read_csv(RATES.encode(), schema=RATES_SCHEMA)
    n = 3_000
    closes = [date(2026, 1, 1) + timedelta(days=rng.randrange(60)) for _ in range(n)]
    opportunities = pl.concat([salesforce_opportunities()] * (n // 2)).with_columns(
        id=pl.format("006A{}", pl.int_range(pl.len()).cast(pl.Utf8).str.zfill(10)),
        StageName=pl.Series(rng.choice(["Closed Won", "Prospecting"]) for _ in range(n)),
        CurrencyIsoCode=pl.Series(rng.choice(["EUR", "USD", "GBP"]) for _ in range(n)),
        CloseDate=pl.Series(closes),
    )
    deals = _pipeline_frame(rates, opportunities=opportunities).collect()

    table = sorted(rates.iter_rows())
    for row in deals.filter(pl.col("system") == "salesforce").iter_rows(named=True):
        on = row["close_date"] if row["is_closed"] else DAY
        valid = [rate for valid_from, currency, rate in table if currency == row["currency"] and valid_from <= on]
        expected = round(row["amount"] * valid[-1], 2) if valid else None
        assert row["amount_usd"] == expected, row


def test_a_pipeline_specific_stage_row_wins_over_the_any_pipeline_row():
    enterprise = pl.DataFrame(
        [("hubspot", "enterprise", "closedwon", "Closed Won (enterprise)", 6, True, True)],
        schema=STAGE_SCHEMA,
        orient="row",
    )
    stages = pl.concat([STAGE_MAPPING, enterprise])
    deals = hubspot_deals().with_columns(
        pipeline=pl.when(pl.col("id") == 2).then(pl.lit("enterprise")).otherwise(pl.col("pipeline"))
    )
    rates = pl.read_csv(RATES.encode(), schema=RATES_SCHEMA)
    frame = _pipeline_frame(rates, deals=deals, stages=stages).collect()
    stage = dict(frame.select("deal_key", "unified_stage").iter_rows())
    assert stage["hubspot:2"] == "Closed Won (enterprise)"
    assert stage["hubspot:3"] == "Negotiation"  # the default pipeline: the `*` row
    assert stage["hubspot:4"] is None
