"""The sandbox's BigQuery emulator, driven by the real google-cloud-bigquery and bigquery-storage
clients over HTTP and gRPC, with a service-account key that refreshes at the sandbox's token endpoint.

One emulator serves the module (it takes seconds to start); each test works in a dataset of its own.
The data sets every emulator is seeded with (billing, GA4's export) are checked against the CRM and
GA4 sandboxes on a second, larger sandbox (`seeded`); the reference data (the same in every sandbox)
on the first, and against the pipelines' local copy of it.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as AuthRequest
from google.cloud import bigquery, bigquery_storage
from google.oauth2 import service_account
from polars.testing import assert_frame_equal

import revenue_pipelines
from revenue_pipelines.sandbox import Sandbox, hubspot_data, reference_data

SESSIONS = pl.DataFrame(
    {
        "day": [date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 20), date(2026, 11, 21)],
        "at": [
            datetime(2026, 11, 19, 8, tzinfo=UTC),
            datetime(2026, 11, 20, 9, tzinfo=UTC),
            datetime(2026, 11, 20, 23, tzinfo=UTC),
            datetime(2026, 11, 21, 0, 30, tzinfo=UTC),
        ],
        "id": [1, 2, 3, 4],
        "source": ["google", "newsletter", "google", "linkedin"],
    }
)
SCHEMA = [
    bigquery.SchemaField("day", "DATE"),
    bigquery.SchemaField("at", "TIMESTAMP"),
    bigquery.SchemaField("id", "INT64"),
    bigquery.SchemaField("source", "STRING"),
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One emulator for the module; stopping the sandbox must stop it too, checked here at teardown."""
    sb = Sandbox(companies=5, bigquery=True).start()
    yield sb
    endpoint = sb.bigquery.endpoint
    sb.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        urllib3.request("GET", endpoint, retries=0)
    with pytest.raises(RuntimeError, match="not running"):
        sb.bigquery.client()


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> Iterator[bigquery.Client]:
    with sandbox.bigquery.client() as client:
        yield client


@pytest.fixture
def dataset(client: bigquery.Client) -> str:
    return client.create_dataset(f"test_{uuid.uuid4().hex[:12]}").dataset_id


@pytest.fixture
def sessions(client: bigquery.Client, dataset: str) -> str:
    """A DAY-partitioned, clustered table of SESSIONS, created with its schema, then loaded."""
    table = bigquery.Table(f"{client.project}.{dataset}.sessions", schema=SCHEMA)
    table.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="day")
    table.clustering_fields = ["source"]
    table.labels = {"layer": "raw"}
    client.create_table(table)
    load(client, f"{dataset}.sessions", SESSIONS, bigquery.WriteDisposition.WRITE_TRUNCATE)
    return f"{dataset}.sessions"


def load(client: bigquery.Client, table: str, frame: pl.DataFrame, disposition: str) -> int:
    """Load a frame as Parquet bytes, the way an IO manager would; returns the rows loaded."""
    parquet = io.BytesIO()
    frame.write_parquet(parquet)
    parquet.seek(0)
    config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET, write_disposition=disposition)
    return client.load_table_from_file(parquet, table, job_config=config).result().output_rows


def rows(client: bigquery.Client, sql: str, **parameters: bigquery.ScalarQueryParameter) -> pl.DataFrame:
    config = bigquery.QueryJobConfig(query_parameters=list(parameters.values()))
    return pl.from_arrow(client.query(sql, job_config=config).to_arrow(create_bqstorage_client=False))


def test_an_unmodified_client_finds_the_emulator_and_its_token_endpoint_through_the_environment(sandbox, monkeypatch):
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    tokens_before = sandbox.requests.count("POST", "/token", status=200)
    quickly = bigquery.DEFAULT_RETRY.with_timeout(10)  # a client aimed at Google fails now, not in ten minutes
    with bigquery.Client(project=os.environ["BIGQUERY_PROJECT"]) as client:
        answer = client.query_and_wait("SELECT 6 * 7 AS answer", retry=quickly, job_retry=None)
        assert [row.answer for row in answer] == [42]
    assert sandbox.requests.count("POST", "/token", status=200) == tokens_before + 1


def test_the_token_endpoint_refuses_a_key_it_did_not_issue(sandbox):
    issued = service_account.Credentials.from_service_account_file(sandbox.bigquery.credentials_file)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = service_account.Credentials.from_service_account_info(
        {
            "client_email": issued.service_account_email,
            "token_uri": f"{sandbox.url}/token",
            "private_key": stranger.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        },
        scopes=["https://www.googleapis.com/auth/cloud-platform"],
    )
    with pytest.raises(RefreshError, match="invalid_grant"):
        forged.refresh(AuthRequest())


def test_a_truncating_parquet_load_keeps_the_partitioned_tables_spec_and_column_types(client, sessions):
    assert load(client, sessions, SESSIONS.head(2), bigquery.WriteDisposition.WRITE_TRUNCATE) == 2

    table = client.get_table(sessions)
    assert table.time_partitioning == bigquery.TimePartitioning(type_="DAY", field="day")
    assert table.clustering_fields == ["source"]
    assert table.labels == {"layer": "raw"}
    assert [(field.name, field.field_type) for field in table.schema] == [
        ("day", "DATE"),
        ("at", "TIMESTAMP"),
        ("id", "INTEGER"),
        ("source", "STRING"),
    ]
    assert_frame_equal(rows(client, f"SELECT * FROM {sessions} ORDER BY id"), SESSIONS.head(2))


def test_an_appending_load_adds_rows_and_a_column_only_when_allowed(client, sessions):
    assert load(client, sessions, SESSIONS.tail(1), bigquery.WriteDisposition.WRITE_APPEND) == 1
    assert rows(client, f"SELECT COUNT(*) AS n FROM {sessions}")["n"].to_list() == [5]

    wider = SESSIONS.with_columns(campaign=pl.lit("black-friday"))
    with pytest.raises(exceptions.BadRequest, match="Cannot add fields"):
        load(client, sessions, wider, bigquery.WriteDisposition.WRITE_APPEND)
    parquet = io.BytesIO()
    wider.write_parquet(parquet)
    parquet.seek(0)
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        schema_update_options=[bigquery.SchemaUpdateOption.ALLOW_FIELD_ADDITION],
    )
    client.load_table_from_file(parquet, sessions, job_config=config).result()
    assert [field.name for field in client.get_table(sessions).schema][-1] == "campaign"


def test_a_query_with_scalar_and_array_parameters_returns_the_matching_rows(client, sessions):
    found = rows(
        client,
        f"SELECT id FROM {sessions} WHERE day >= @first AND at < @before AND source IN UNNEST(@sources) ORDER BY id",
        first=bigquery.ScalarQueryParameter("first", "DATE", date(2026, 11, 20)),
        before=bigquery.ScalarQueryParameter("before", "TIMESTAMP", datetime(2026, 11, 21, tzinfo=UTC)),
        sources=bigquery.ArrayQueryParameter("sources", "STRING", ["google", "newsletter"]),
    )
    assert found["id"].to_list() == [2, 3]


def test_a_transaction_replaces_one_day_and_a_failed_one_changes_nothing(client, sessions):
    day = bigquery.ScalarQueryParameter("day", "DATE", date(2026, 11, 20))
    replace_day = f"""
        BEGIN TRANSACTION;
        DELETE FROM {sessions} WHERE day = @day;
        INSERT INTO {sessions} (day, at, id, source) VALUES (@day, TIMESTAMP '2026-11-20 12:00:00+00', 9, 'bing');
        COMMIT TRANSACTION;
    """
    client.query(replace_day, job_config=bigquery.QueryJobConfig(query_parameters=[day])).result()
    assert rows(client, f"SELECT id FROM {sessions} ORDER BY id")["id"].to_list() == [1, 4, 9]

    failing = f"BEGIN TRANSACTION; DELETE FROM {sessions} WHERE TRUE; SELECT ERROR('load failed'); COMMIT TRANSACTION;"
    with pytest.raises(exceptions.BadRequest, match="load failed"):
        client.query(failing).result()
    assert rows(client, f"SELECT id FROM {sessions} ORDER BY id")["id"].to_list() == [1, 4, 9]


def test_merge_updates_matched_rows_and_inserts_the_rest(client, sessions):
    merge = f"""
        MERGE {sessions} AS target
        USING (SELECT * FROM UNNEST(@ids) AS id) AS source ON target.id = source.id
        WHEN MATCHED THEN UPDATE SET source = 'merged'
        WHEN NOT MATCHED THEN INSERT (day, id, source) VALUES (DATE '2026-11-21', source.id, 'new')
    """
    ids = bigquery.ArrayQueryParameter("ids", "INT64", [3, 5])
    job = client.query(merge, job_config=bigquery.QueryJobConfig(query_parameters=[ids]))
    job.result()
    assert (job.dml_stats.updated_row_count, job.dml_stats.inserted_row_count) == (1, 1)
    merged = rows(client, f"SELECT id, source FROM {sessions} WHERE id IN (3, 5) ORDER BY id")
    assert merged.rows() == [(3, "merged"), (5, "new")]


def test_information_schema_partitions_counts_rows_per_day(client, sessions):
    partitions = rows(
        client,
        f"SELECT partition_id, total_rows FROM {sessions.split('.')[0]}.INFORMATION_SCHEMA.PARTITIONS "
        "WHERE table_name = 'sessions' ORDER BY partition_id",
    )
    assert partitions.rows() == [("20261119", 1), ("20261120", 2), ("20261121", 1)]


def test_the_storage_read_api_serves_tables_and_query_results(sandbox, client, sessions):
    with sandbox.bigquery.read_client() as read_client:
        listed = client.list_rows(sessions).to_arrow(bqstorage_client=read_client)
        assert_frame_equal(pl.from_arrow(listed).sort("id"), SESSIONS)

        numbers = client.query("SELECT x FROM UNNEST(GENERATE_ARRAY(1, 20000)) AS x").result(page_size=1000)
        batches = list(numbers.to_arrow_iterable(bqstorage_client=read_client))
        assert sum(batch.num_rows for batch in batches) == 20000

        table = client.get_table(sessions).reference
        session = read_client.create_read_session(
            parent=f"projects/{table.project}",
            read_session=bigquery_storage.types.ReadSession(
                table=f"projects/{table.project}/datasets/{table.dataset_id}/tables/{table.table_id}",
                data_format=bigquery_storage.types.DataFormat.ARROW,
                read_options={"selected_fields": ["id"], "row_restriction": "source = 'google'"},
            ),
            max_stream_count=1,
        )
        read = read_client.read_rows(session.streams[0].name).to_arrow(session)
        assert sorted(read["id"].to_pylist()) == [1, 3]


def test_queries_report_the_bytes_of_the_tables_they_read_but_are_not_capped(client, sessions):
    """The sandbox's addition to the emulator (rows x columns x 8 of each table read, dry runs
    included), so byte budgets can be tested; `maximum_bytes_billed` is still not enforced."""
    table_bytes = 4 * 4 * 8
    dry = client.query(f"SELECT * FROM {sessions}", job_config=bigquery.QueryJobConfig(dry_run=True))
    assert dry.state == "DONE"
    assert [field.name for field in dry.schema] == ["day", "at", "id", "source"]
    assert dry.total_bytes_processed == table_bytes
    with pytest.raises(exceptions.BadRequest, match="Unrecognized name"):
        client.query(f"SELECT nope FROM {sessions}", job_config=bigquery.QueryJobConfig(dry_run=True))

    capped = bigquery.QueryJobConfig(maximum_bytes_billed=1, labels={"asset": "sessions"})
    job = client.query(f"SELECT * FROM {sessions}", job_config=capped)
    assert job.result().total_rows == 4
    assert job.total_bytes_billed == table_bytes
    assert client.get_job(job.job_id).labels == {"asset": "sessions"}


def test_a_sandbox_without_bigquery_has_none_in_its_environment():
    with Sandbox(companies=5) as sb:
        assert sb.bigquery is None
        assert not any("BIGQUERY" in name or name == "GOOGLE_APPLICATION_CREDENTIALS" for name in sb.env())


# --- the seeded reference data: account mapping and currency rates ------------------------------

CURRENCY_RATES_CSV = Path(revenue_pipelines.__file__).parent / "defs" / "revenue" / "reference" / "currency_rates.csv"
REFERENCE_COLUMNS = {
    "account_mapping": [("account_key", "STRING"), ("system", "STRING"), ("record_id", "STRING")],
    "currency_rates": [("valid_from", "DATE"), ("currency", "STRING"), ("usd_per_unit", "FLOAT")],
}


def test_the_reference_dataset_holds_an_empty_account_mapping_and_the_currency_rates(sandbox, client):
    bq = sandbox.bigquery
    assert bq.reference_dataset == "reference"
    assert bq.env()["BIGQUERY_REFERENCE_DATASET"] == "reference"
    assert {t.table_id for t in client.list_tables("reference")} == set(REFERENCE_COLUMNS)
    for name, columns in REFERENCE_COLUMNS.items():
        schema = client.get_table(f"reference.{name}").schema
        assert [(field.name, field.field_type, field.mode) for field in schema] == [
            (column, kind, "REQUIRED") for column, kind in columns
        ]
        assert schema == bq.schema("reference", name)
    assert rows(client, "SELECT COUNT(*) AS n FROM reference.account_mapping")["n"].to_list() == [0]
    assert bq.truth("reference", "account_mapping").columns == [
        column for column, _ in REFERENCE_COLUMNS["account_mapping"]
    ]
    with bq.read_client() as read_client:
        rates = pl.from_arrow(client.list_rows("reference.currency_rates").to_arrow(bqstorage_client=read_client))
    assert_frame_equal(rates.sort("valid_from", "currency"), bq.truth("reference", "currency_rates"))


def test_the_currency_rates_cover_every_month_and_deal_currency_and_match_the_pipelines_csv():
    rates = reference_data.currency_rates()
    assert_frame_equal(rates, reference_data.currency_rates())  # deterministic
    months = pl.date_range(date(2024, 1, 1), date(2027, 12, 1), "1mo", eager=True)
    assert rates.height == months.len() * 5 == 240
    assert set(hubspot_data.CURRENCIES) <= set(rates["currency"])  # Salesforce's picklist is the same
    for currency, group in rates.group_by("currency"):
        assert group["valid_from"].to_list() == months.to_list()
        low, high = reference_data.RATE_BANDS[currency[0]]
        assert group["usd_per_unit"].is_between(low, high).all()
        assert (group["usd_per_unit"] == group["usd_per_unit"].round(6)).all()
    assert (rates.filter(pl.col("currency") == "USD")["usd_per_unit"] == 1.0).all()
    assert rates.filter(pl.col("currency") == "EUR")["usd_per_unit"].n_unique() > 40  # it moves month to month

    assert CURRENCY_RATES_CSV.read_text().splitlines()[0] == "valid_from,currency,usd_per_unit"
    local = pl.read_csv(CURRENCY_RATES_CSV, schema=rates.schema)
    assert_frame_equal(local, rates, check_exact=True)


# --- the seeded data sets: billing and the GA4 export ------------------------------------------

SEEDED_END = date(2026, 11, 20)
BILLING_COLUMNS = {
    "accounts": [
        ("billing_account_id", "STRING"),
        ("name", "STRING"),
        ("crm_source", "STRING"),
        ("external_account_id", "STRING"),
        ("billing_email", "STRING"),
        ("currency", "STRING"),
        ("created_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ],
    "invoices": [
        ("invoice_id", "STRING"),
        ("billing_account_id", "STRING"),
        ("crm_deal_id", "STRING"),
        ("issued_at", "TIMESTAMP"),
        ("due_date", "DATE"),
        ("currency", "STRING"),
        ("subtotal_cents", "INTEGER"),
        ("tax_cents", "INTEGER"),
        ("total_cents", "INTEGER"),
        ("status", "STRING"),
        ("voided_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ],
    "payments": [
        ("payment_id", "STRING"),
        ("invoice_id", "STRING"),
        ("amount_cents", "INTEGER"),
        ("paid_at", "TIMESTAMP"),
        ("method", "STRING"),
    ],
}


@pytest.fixture(scope="module")
def seeded() -> Iterator[Sandbox]:
    """A sandbox of a realistic size, its emulator seeded with billing and the GA4 export."""
    with Sandbox(companies=60, end_date=SEEDED_END, bigquery=True) as sb:
        yield sb


def read(sb: Sandbox, sql: str, **parameters: str) -> pl.DataFrame:
    """A query's rows, read through the Storage Read API as pipelines read them."""
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(name, "STRING", value) for name, value in parameters.items()]
    )
    with sb.bigquery.client() as client, sb.bigquery.read_client() as read_client:
        return pl.from_arrow(client.query(sql, job_config=config).to_arrow(bqstorage_client=read_client))


def table(sb: Sandbox, dataset: str, name: str) -> pl.DataFrame:
    with sb.bigquery.client() as client, sb.bigquery.read_client() as read_client:
        return pl.from_arrow(client.list_rows(f"{dataset}.{name}").to_arrow(bqstorage_client=read_client))


def test_the_seeded_tables_exist_with_their_declared_schemas_and_rows(seeded):
    bq = seeded.bigquery
    export = bq.ga4_export_dataset
    assert (bq.billing_dataset, export) == ("billing", f"analytics_{seeded.ga4.property_id}")
    window = pl.date_range(date(2026, 10, 22), SEEDED_END, eager=True)
    assert bq.seeded_tables == [
        *(f"billing.{name}" for name in BILLING_COLUMNS),
        *(f"{export}.events_{day:%Y%m%d}" for day in window),
        "reference.account_mapping",
        "reference.currency_rates",
    ]
    with bq.client() as client:
        for name, columns in BILLING_COLUMNS.items():
            loaded = client.get_table(f"billing.{name}")
            assert [(field.name, field.field_type) for field in loaded.schema] == columns
            assert loaded.num_rows == bq.truth("billing", name).height > 0
        day = client.get_table(f"{export}.events_20261105")
        assert day.schema == bq.schema(export, "events_20261105")
        params = next(field for field in day.schema if field.name == "event_params")
        assert (params.field_type, params.mode) == ("RECORD", "REPEATED")
        assert [field.name for field in params.fields[1].fields] == [
            "string_value", "int_value", "float_value", "double_value"
        ]  # fmt: skip
        assert {t.table_id for t in client.list_tables(export)} == {f"events_{d:%Y%m%d}" for d in window}
    with pytest.raises(KeyError, match="no table"):
        bq.truth("billing", "refunds")


def test_billing_tables_read_back_exactly_as_generated(seeded):
    """Microsecond UTC timestamps, dates and nulls survive the Parquet load and the Storage Read API."""
    for name in BILLING_COLUMNS:
        loaded = table(seeded, "billing", name)
        key = loaded.columns[0]
        assert_frame_equal(loaded.sort(key), seeded.bigquery.truth("billing", name).sort(key))


def test_every_won_salesforce_opportunity_with_an_amount_has_one_invoice_for_its_amount(seeded):
    live_accounts = seeded.salesforce.truth("Account").filter(~pl.col("IsDeleted"))["Id"].to_list()
    won = seeded.salesforce.truth("Opportunity").filter(
        pl.col("IsWon")
        & ~pl.col("IsDeleted")
        & pl.col("Amount").is_not_null()
        & pl.col("AccountId").is_in(live_accounts)
    )
    invoices = read(
        seeded,
        "SELECT i.crm_deal_id, i.subtotal_cents, i.currency, a.crm_source, a.external_account_id "
        "FROM billing.invoices AS i JOIN billing.accounts AS a USING (billing_account_id)",
    )
    billed = won.join(invoices, left_on="Id", right_on="crm_deal_id", how="left")
    assert won.height > 20
    assert billed.height == won.height  # no opportunity has two invoices
    assert billed.filter(pl.col("subtotal_cents") != (pl.col("Amount") * 100).cast(pl.Int64)).is_empty()
    assert billed.filter(pl.col("subtotal_cents").is_null()).is_empty()
    assert (billed["currency"] == billed["CurrencyIsoCode"]).all()
    # Billed to its own account, by the account's 18-character id or its 15-character prefix.
    assert (billed["crm_source"] == "salesforce").all()
    assert billed.filter(~pl.col("AccountId").str.starts_with(pl.col("external_account_id"))).is_empty()
    # Won revenue reconciles with billing: nothing else bills a Salesforce opportunity.
    opportunities = invoices.filter(pl.col("crm_deal_id").str.starts_with("006"))
    assert sorted(opportunities["crm_deal_id"]) == sorted(won["Id"])


def test_every_won_hubspot_deal_with_an_amount_is_invoiced_and_no_customer_is_billed_twice(seeded):
    accounts = seeded.bigquery.truth("billing", "accounts")
    invoices = seeded.bigquery.truth("billing", "invoices")
    live_accounts = seeded.salesforce.truth("Account").filter(~pl.col("IsDeleted"))
    # Resolve 15-character ids to the account they abbreviate: case-sensitive prefixes, all distinct.
    resolved = accounts.join(live_accounts.select("Id"), how="cross").filter(
        pl.col("Id").str.starts_with(pl.col("external_account_id"))
    )
    salesforce = accounts.filter(pl.col("crm_source") == "salesforce")
    assert resolved.height == salesforce.height and resolved["Id"].n_unique() == salesforce.height
    short = salesforce.filter(pl.col("external_account_id").str.len_chars() == 15)
    assert 0.05 <= short.height / salesforce.height <= 0.15
    assert (salesforce["external_account_id"].str.len_chars().is_in([15, 18])).all()

    # A HubSpot company that is a live Salesforce account is billed as that account, never itself.
    shared = seeded.salesforce.truth_overlap().filter(pl.col("account_id").is_in(live_accounts["Id"].to_list()))
    hubspot = accounts.filter(pl.col("crm_source") == "hubspot")
    assert hubspot.height > 0
    assert not hubspot["external_account_id"].is_in(shared["hubspot_company_id"].cast(pl.String).to_list()).any()
    assert accounts["billing_account_id"].is_unique().all() and accounts["external_account_id"].is_unique().all()

    deals = seeded.hubspot.truth("deals").filter(
        (pl.col("dealstage") == "closedwon") & ~pl.col("archived") & pl.col("hs_salesforceopportunityid").is_null()
    )  # a deal mirrored from Salesforce is billed as its opportunity (below)
    companies = seeded.hubspot.truth_associations("deals", "companies").select(id="from_id", company="to_id")
    won = deals.join(companies, on="id").join(shared, left_on="company", right_on="hubspot_company_id", how="left")
    billed = won.join(
        invoices.join(resolved.select("billing_account_id", "Id"), on="billing_account_id", how="left"),
        left_on=pl.col("id").cast(pl.String),
        right_on="crm_deal_id",
    )
    assert billed.height == won.height > 10  # every live won deal of a live company, once
    assert (billed["subtotal_cents"] == (billed["amount"].cast(pl.Float64) * 100).cast(pl.Int64)).all()
    under_salesforce = billed.filter(pl.col("account_id").is_not_null())
    assert under_salesforce.height > 0 and (under_salesforce["Id"] == under_salesforce["account_id"]).all()


def test_each_won_business_has_exactly_one_invoice_and_a_mirrored_deal_none_of_its_own(seeded):
    """A won deal mirrored from Salesforce is its opportunity's business: the opportunity's invoice bills it."""
    invoices = seeded.bigquery.truth("billing", "invoices")
    mirrors = seeded.truth_mirrored_deals()
    deals = seeded.hubspot.truth("deals").filter((pl.col("dealstage") == "closedwon") & ~pl.col("archived"))
    won_mirrors = deals.join(mirrors, left_on="id", right_on="hubspot_deal_id")
    assert won_mirrors.height > 3
    assert invoices["crm_deal_id"].is_unique().all()
    assert not invoices["crm_deal_id"].is_in(mirrors["hubspot_deal_id"].cast(pl.String).implode()).any()

    live_accounts = seeded.salesforce.truth("Account").filter(~pl.col("IsDeleted"))["Id"].implode()
    won_opportunities = seeded.salesforce.truth("Opportunity").filter(
        pl.col("IsWon")
        & ~pl.col("IsDeleted")
        & pl.col("Amount").is_not_null()
        & pl.col("AccountId").is_in(live_accounts)
    )
    billed_mirrors = won_mirrors.join(won_opportunities, left_on="opportunity_id", right_on="Id")
    assert billed_mirrors.height > 0
    by_opportunity = billed_mirrors.join(invoices, left_on="opportunity_id", right_on="crm_deal_id")
    assert by_opportunity.height == billed_mirrors.height
    assert (by_opportunity["subtotal_cents"] == (by_opportunity["amount"].cast(pl.Float64) * 100).cast(pl.Int64)).all()

    # Won business: live won opportunities of live accounts, and HubSpot's own live won deals of live
    # companies (archiving drops the association), each with an amount; each invoiced once.
    companies = seeded.hubspot.truth_associations("deals", "companies")["from_id"].implode()
    own_deals = deals.filter(
        pl.col("hs_salesforceopportunityid").is_null() & pl.col("id").is_in(companies) & pl.col("amount").is_not_null()
    )
    business = [*won_opportunities["Id"], *own_deals["id"].cast(pl.String)]
    assert sorted(invoices["crm_deal_id"]) == sorted(business)


def test_invoices_and_payments_add_up_and_keep_to_the_window(seeded):
    start, end = (moment.replace(tzinfo=UTC) for moment in seeded.hubspot.window)
    totals = read(
        seeded,
        "SELECT i.invoice_id, i.status, i.total_cents, i.subtotal_cents, i.tax_cents, i.issued_at, i.due_date, "
        "i.voided_at, i.updated_at, COUNT(p.payment_id) AS payments, COALESCE(SUM(p.amount_cents), 0) AS paid, "
        "MIN(p.paid_at) AS first_paid, MAX(p.paid_at) AS last_paid "
        "FROM billing.invoices AS i LEFT JOIN billing.payments AS p USING (invoice_id) "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
    )
    by_status = dict(totals.group_by("status").len().iter_rows())
    assert set(by_status) == {"paid", "open", "void", "uncollectible"}
    assert 0.6 <= by_status["paid"] / totals.height <= 0.8
    paid = totals.filter(pl.col("status") == "paid")
    assert (paid["paid"] == paid["total_cents"]).all() and paid["payments"].is_in([1, 2]).all()
    assert (paid["payments"] == 2).any()
    open_ = totals.filter(pl.col("status") == "open")
    assert (open_["paid"] < open_["total_cents"]).all() and (open_["payments"] == 1).any()
    assert totals.filter(pl.col("status").is_in(["void", "uncollectible"]))["payments"].max() == 0
    assert (totals["voided_at"].is_not_null() == (totals["status"] == "void")).all()

    assert (totals["total_cents"] == totals["subtotal_cents"] + totals["tax_cents"]).all()
    assert totals.filter(pl.col("tax_cents") > pl.col("subtotal_cents") * 0.2 + 1).is_empty()
    assert totals.filter(pl.col("due_date") != (pl.col("issued_at") + pl.duration(days=30)).dt.date()).is_empty()
    assert totals.filter(pl.col("first_paid") <= pl.col("issued_at")).is_empty()
    last = pl.max_horizontal("issued_at", "last_paid", "voided_at")
    assert totals.filter(pl.col("updated_at") != last).is_empty()
    assert totals["updated_at"].max() < end and totals["updated_at"].filter(totals["updated_at"] >= start).len() > 0


def test_the_ga4_export_counts_the_data_apis_sessions_and_revenue(seeded):
    """Wildcard tables and aliased UNNESTs through the emulator, against GA4's settled report."""
    first, last = seeded.ga4.dates
    sessions = read(
        seeded,
        f"""
        SELECT event.event_date AS date, s.value.string_value AS sessionSource,
          m.value.string_value AS sessionMedium, c.value.string_value AS sessionCampaignName, COUNT(*) AS sessions
        FROM `{seeded.bigquery.ga4_export_dataset}.events_*` AS event,
          UNNEST(event.event_params) AS s, UNNEST(event.event_params) AS m, UNNEST(event.event_params) AS c
        WHERE _TABLE_SUFFIX BETWEEN @first AND @last AND event.event_name = 'session_start'
          AND s.key = 'source' AND m.key = 'medium' AND c.key = 'campaign'
        GROUP BY 1, 2, 3, 4
        """,
        first=f"{first:%Y%m%d}",
        last=f"{last:%Y%m%d}",
    )
    dimensions = ["date", "sessionSource", "sessionMedium", "sessionCampaignName"]
    expected = seeded.ga4.truth(dimensions, ["sessions"], first, last, settled=True)
    assert expected.height > 300
    assert_frame_equal(sessions.sort(dimensions), expected.sort(dimensions), check_dtypes=False)

    revenue = read(
        seeded,
        f"""
        SELECT event.event_date AS date, SUM(v.value.double_value) AS totalRevenue, COUNT(*) AS purchases
        FROM `{seeded.bigquery.ga4_export_dataset}.events_*` AS event, UNNEST(event.event_params) AS v
        WHERE _TABLE_SUFFIX BETWEEN @first AND @last AND event.event_name = 'purchase' AND v.key = 'value'
        GROUP BY 1
        """,
        first="20261110",
        last="20261112",
    )
    expected = seeded.ga4.truth(["date"], ["totalRevenue", "keyEvents"], "2026-11-10", "2026-11-12", settled=True)
    joined = expected.join(revenue, on="date")
    assert joined.height == 3
    assert (joined["totalRevenue"] - joined["totalRevenue_right"]).abs().max() < 1e-6
    assert (joined["purchases"] <= joined["keyEvents"]).all()


def test_a_ga4_export_day_reads_back_as_its_truth_and_keeps_to_its_day(seeded):
    export = seeded.bigquery.ga4_export_dataset
    loaded = table(seeded, export, "events_20261105")
    truth = seeded.bigquery.truth(export, "events_20261105")
    assert loaded.height == truth.height > 1000
    assert_frame_equal(sort_events(loaded), sort_events(truth))
    day = datetime(2026, 11, 5, tzinfo=UTC).timestamp() * 1_000_000
    assert truth["event_timestamp"].min() >= day and truth["event_timestamp"].max() < day + 86_400_000_000
    assert (truth["event_date"] == "20261105").all() and truth["user_id"].null_count() > 0.8 * truth.height


def sort_events(events: pl.DataFrame) -> pl.DataFrame:
    """Events in a total order: by every scalar column, then the params as text."""
    return events.sort(
        "event_timestamp", "user_pseudo_id", "event_name", pl.col("event_params").cast(pl.List(pl.String), strict=False)
    )
