"""The BigQuery sources against the sandbox's emulator: checked SQL, bound values, a byte budget,
streamed results, and every seeded row read exactly once."""

import os
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from google.cloud import bigquery

from revenue_pipelines.defs.bigquery.assets import INVOICES_KEY, billing_invoices, billing_invoices_state, ga4_events
from revenue_pipelines.defs.bigquery.queries import SqlFile
from revenue_pipelines.defs.bigquery.resources import BigQuerySource
from revenue_pipelines.lib.bigquery import REST_API, STORAGE_READ_API
from revenue_pipelines.lib.current_state import HISTORY_SINCE
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.validation import QUARANTINE_REASON
from revenue_pipelines.sandbox import Sandbox
from revenue_pipelines_tests.conftest import END, bigquery_warehouse, materialize_range, read_layer

HOSTILE = "x' OR '1'='1'; DROP TABLE billing.accounts; --"


@pytest.fixture
def sandbox(emulator_env) -> Sandbox:
    return emulator_env


def source(sandbox: Sandbox, **overrides) -> BigQuerySource:
    config = {
        "warehouse": bigquery_warehouse(sandbox),
        "billing_dataset": sandbox.bigquery.billing_dataset,
        "ga4_export_dataset": sandbox.bigquery.ga4_export_dataset,
    }
    return BigQuerySource(**{**config, **overrides})


def jobs_run(sandbox: Sandbox) -> int:
    return sum(1 for _ in sandbox.bigquery.client().list_jobs(all_users=True))


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_hostile_names_are_refused_before_any_query(sandbox, tmp_path):
    before = jobs_run(sandbox)
    result = materialize_range(
        [billing_invoices],
        {"bigquery_source": source(sandbox, billing_dataset="billing`; DROP TABLE billing.invoices; --")},
        tmp_path,
        END,
        END,
    )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "is not a valid BigQuery dataset name; nothing was sent to BigQuery" in str(failure.step_failure_data.error)
    assert jobs_run(sandbox) == before


def test_hostile_values_are_bound_as_parameters_never_spliced(sandbox, tmp_path):
    client = sandbox.bigquery.client()
    client.create_dataset("hostile", exists_ok=True)
    client.query(
        "CREATE TABLE hostile.accounts AS SELECT * FROM UNNEST(["
        "STRUCT('a' AS id, 'Acme' AS name), ('b', @hostile), ('c', 'x')])",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("hostile", "STRING", HOSTILE)]
        ),
    ).result()
    (tmp_path / "account_by_name.sql").write_text(
        "SELECT id, name FROM `${project}.${dataset}.accounts` WHERE name = @name ORDER BY id\n"
    )
    by_name = SqlFile.load("account_by_name", {"name"}, directory=tmp_path)
    key = dg.AssetKey(["test", "raw", "accounts"])

    rows, _ = source(sandbox).read(by_name, "hostile", {"name": HOSTILE}, key)
    assert rows.to_dicts() == [{"id": "b", "name": HOSTILE}]  # the value matched as a value, whole
    rows, metadata = source(sandbox).read(by_name, "hostile", {"name": "x' OR '1'='1"}, key)
    assert rows.is_empty()
    assert "@name" in metadata["query"].value and "OR '1'" not in metadata["query"].value
    assert client.query("SELECT COUNT(*) AS n FROM hostile.accounts").to_arrow(create_bqstorage_client=False)[
        "n"
    ].to_pylist() == [3]


def test_a_sql_file_must_use_exactly_the_parameters_its_asset_binds(tmp_path):
    (tmp_path / "q.sql").write_text("SELECT 1 FROM `${project}.${dataset}.t` WHERE a = @a AND b = @b -- not @c\n")
    assert SqlFile.load("q", {"a", "b"}, directory=tmp_path).parameters == {"a", "b"}
    with pytest.raises(ValueError, match=r"uses parameters \['a', 'b'\], but its asset binds \['a'\]"):
        SqlFile.load("q", {"a"}, directory=tmp_path)
    (tmp_path / "r.sql").write_text("SELECT 1 FROM `${project}.${table}`\n")
    with pytest.raises(ValueError, match="placeholders may only be"):
        SqlFile.load("r", set(), directory=tmp_path)
    with pytest.raises(ValueError, match="needs a time zone"):
        SqlFile.load("q", {"a", "b"}, directory=tmp_path).bind({"a": datetime(2026, 11, 1), "b": 1})


def test_a_query_over_the_byte_budget_is_refused_before_it_runs(sandbox, tmp_path):
    before = jobs_run(sandbox)
    result = materialize_range(
        [billing_invoices], {"bigquery_source": source(sandbox, byte_budget=1_000)}, tmp_path, END, END
    )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "bigquery/raw/billing_invoices: sql/billing_invoices.sql would process" in message
    assert "over the byte budget of 1,000 (BIGQUERY_SOURCE_BYTE_BUDGET). Nothing was run" in message
    assert jobs_run(sandbox) == before
    assert not (tmp_path / "bigquery").exists()


def test_results_stream_in_batches_holding_memory_to_a_few_of_them(sandbox):
    client = sandbox.bigquery.client()
    client.create_dataset("streamed", exists_ok=True)
    client.query(
        "CREATE TABLE IF NOT EXISTS streamed.numbers AS "
        "SELECT x AS a, x * 2 AS b, x * 3 AS c, x * 4 AS d FROM UNNEST(GENERATE_ARRAY(1, 6000000)) AS x"
    ).result()
    reader = bigquery_warehouse(sandbox)
    job = reader.query("SELECT * FROM streamed.numbers")
    total_bytes, rows, batches, largest = 0, 0, 0, 0
    before = peak = None
    for result in reader.batches(job):
        if before is None:  # from the first batch on: the streams, threads and buffers exist now
            before = peak = rss()
        assert result.read_path == STORAGE_READ_API
        batches += 1
        rows += result.batch.num_rows
        total_bytes += result.batch.nbytes
        largest = max(largest, result.batch.nbytes)
        peak = max(peak, rss())
    assert rows == 6_000_000
    assert batches > 20
    # 192 MB read; what the reader holds at once is a few batches of 0.64 MB and gRPC's buffers, not all.
    assert total_bytes == 192_000_000
    print(f"{(peak - before) / 1e6:.1f} MB held for {largest / 1e6:.2f} MB batches")
    assert peak - before < total_bytes / 3, f"{(peak - before) / 1e6:.0f} MB held for {largest / 1e6:.1f} MB batches"


def test_without_the_storage_read_api_results_are_paged_through_rest(sandbox):
    query = "SELECT x AS n FROM UNNEST(GENERATE_ARRAY(1, 120000)) AS x"
    rest = bigquery_warehouse(sandbox, use_storage_read_api=False)
    read = rest.read(rest.query(query))
    assert read.read_path == REST_API
    assert read.batches >= 2  # 50,000-row pages
    assert read.frame["n"].sort().to_list() == list(range(1, 120_001))
    streamed = bigquery_warehouse(sandbox).read(bigquery_warehouse(sandbox).query(query))
    assert streamed.read_path == STORAGE_READ_API
    assert streamed.frame.sort("n").equals(read.frame.sort("n"))


def test_an_empty_result_keeps_its_columns(sandbox):
    reader = bigquery_warehouse(sandbox)
    read = reader.read(reader.query("SELECT 1 AS n, 'a' AS s FROM UNNEST([1]) WHERE FALSE"))
    assert read.frame.height == 0
    assert read.frame.columns == ["n", "s"]


def expected_invoices(sandbox: Sandbox, first: date, last: date) -> pl.DataFrame:
    """Ground truth: every invoice last changed in [first, last], with its account and payments."""
    bigquery = sandbox.bigquery
    billing = bigquery.billing_dataset
    paid = bigquery.truth(billing, "payments").group_by("invoice_id").agg(pl.col("amount_cents").sum().alias("paid"))
    accounts = bigquery.truth(billing, "accounts").select("billing_account_id", "external_account_id", "crm_source")
    return (
        bigquery.truth(billing, "invoices")
        .filter(pl.col("updated_at").dt.date().is_between(first, last))
        .join(accounts, on="billing_account_id", how="left")
        .join(paid, on="invoice_id", how="left")
        .select(
            pl.col("invoice_id").alias("id"),
            "external_account_id",
            "crm_source",
            "total_cents",
            pl.col("paid").fill_null(0).alias("amount_paid_cents"),
            pl.col("updated_at").dt.date().alias(PARTITION_COLUMN),
        )
        .sort("id")
    )


def test_billing_invoices_are_read_exactly_once_with_their_accounts_and_payments(sandbox, tmp_path):
    first, last = END - timedelta(days=9), END
    result = materialize_range([billing_invoices], {"bigquery_source": source(sandbox)}, tmp_path, first, last)
    assert result.success
    stored = read_layer(tmp_path, "bigquery", "raw", "billing_invoices")
    expected = expected_invoices(sandbox, first, last)
    assert expected.height > 10
    assert stored.select(expected.columns).sort("id").equals(expected)
    materializations = [
        event
        for event in result.asset_materializations_for_node("bigquery_billing_invoices")
        if event.asset_key == INVOICES_KEY
    ]
    # One materialization per day, each counting that day's rows; what the read cost is the run's.
    assert len(materializations) == 10
    assert sum(event.metadata["rows"].value for event in materializations) == expected.height
    metadata = materializations[0].metadata
    assert metadata["estimated_bytes"].value > 0
    assert metadata["read_path"].value == STORAGE_READ_API
    assert "@window_start" in metadata["query"].value

    # A re-run of a part of the window replaces those days and leaves the others.
    assert materialize_range([billing_invoices], {"bigquery_source": source(sandbox)}, tmp_path, last, last).success
    again = read_layer(tmp_path, "bigquery", "raw", "billing_invoices")
    assert again.select(expected.columns).sort("id").equals(expected)


def test_the_billing_state_holds_every_invoice_of_the_whole_history_once(sandbox, tmp_path):
    """Most invoices last changed long before the CRM window: the state must be built from the first partition."""
    first, last = DAILY_INGESTION.start.date(), END
    assets = [billing_invoices, billing_invoices_state]
    result = materialize_range(assets, {"bigquery_source": source(sandbox)}, tmp_path, first, last)
    assert result.success
    state = read_layer(tmp_path, "bigquery", "core", "billing_invoices")
    latest = state.filter(pl.col(PARTITION_COLUMN) == last)
    expected = expected_invoices(sandbox, first, last).drop(PARTITION_COLUMN)
    assert expected["id"].n_unique() == sandbox.bigquery.truth(sandbox.bigquery.billing_dataset, "invoices").height
    assert latest.select(expected.columns).sort("id").equals(expected)
    # A file per day, the days before the first invoice empty.
    assert len(list((tmp_path / "bigquery" / "core" / "billing_invoices").glob("*.parquet"))) == (last - first).days + 1
    assert state[PARTITION_COLUMN].min() > first
    [materialization, *_] = result.asset_materializations_for_node("bigquery__core__billing_invoices")
    assert materialization.metadata[HISTORY_SINCE].value == first.isoformat()


def test_an_invoice_without_its_account_is_quarantined_not_dropped(sandbox, tmp_path):
    """The account is a LEFT JOIN: an orphan invoice arrives, fails its check, and is kept."""
    day = END - timedelta(days=40)
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    billing = sandbox.bigquery.billing_dataset
    orphan = "INV-ORPHAN-1"
    client = sandbox.bigquery.client()
    parameters = [
        bigquery.ScalarQueryParameter("id", "STRING", orphan),
        bigquery.ScalarQueryParameter("at", "TIMESTAMP", at),
    ]
    client.query(
        f"INSERT INTO {billing}.invoices (invoice_id, billing_account_id, currency, subtotal_cents, tax_cents, "
        "total_cents, status, issued_at, updated_at) VALUES (@id, 'BA-GONE', 'USD', 1000, 0, 1000, 'open', @at, @at)",
        job_config=bigquery.QueryJobConfig(query_parameters=parameters),
    ).result()
    try:
        result = materialize_range([billing_invoices], {"bigquery_source": source(sandbox)}, tmp_path, day, day)
    finally:
        client.query(
            f"DELETE FROM {billing}.invoices WHERE invoice_id = @id",
            job_config=bigquery.QueryJobConfig(query_parameters=parameters[:1]),
        ).result()
    check = next(iter(result.get_asset_check_evaluations()))
    assert not check.passed
    assert "bigquery/raw/billing_invoices: 1 of" in check.description and "crm_source" in check.description
    quarantined = read_layer(tmp_path, "bigquery", "quarantine", "billing_invoices")
    assert quarantined["id"].to_list() == [orphan]
    assert "crm_source" in quarantined[QUARANTINE_REASON][0]
    stored = read_layer(tmp_path, "bigquery", "raw", "billing_invoices")
    assert sorted(stored["id"]) == expected_invoices(sandbox, day, day)["id"].to_list()  # the day's others, kept


def flattened_truth(sandbox: Sandbox, days: list[date]) -> pl.DataFrame:
    """Ground truth: the seeded export's events of `days`, with a few params pulled out of event_params."""
    bigquery = sandbox.bigquery
    events = pl.concat(
        [bigquery.truth(bigquery.ga4_export_dataset, f"events_{day:%Y%m%d}") for day in days], how="vertical"
    )
    params = (
        events.with_row_index("event")
        .select("event", "event_params")
        .explode("event_params")
        .unnest("event_params")
        .unnest("value")
        .filter(pl.col("key").is_in(["ga_session_id", "page_location"]))
        .pivot(on="key", index="event", values=["int_value", "string_value"], aggregate_function="first")
    )
    return events.with_row_index("event").join(params, on="event", how="left")


def test_ga4_events_are_read_with_their_params_flattened(sandbox, tmp_path):
    days = [END - timedelta(days=1), END]
    result = materialize_range([ga4_events], {"bigquery_source": source(sandbox)}, tmp_path, *days)
    assert result.success
    stored = read_layer(tmp_path, "bigquery", "raw", "ga4_events")
    truth = flattened_truth(sandbox, days)
    assert stored.height == truth.height > 1_000
    assert stored[PARTITION_COLUMN].value_counts(sort=True).sort(PARTITION_COLUMN)["count"].to_list() == [
        truth.filter(pl.col("event_date") == f"{day:%Y%m%d}").height for day in days
    ]
    key = ["event_timestamp", "user_pseudo_id", "event_name"]
    got = stored.select(*key, "ga_session_id", "page_location").sort(key)
    want = truth.select(
        *key,
        pl.col("int_value_ga_session_id").alias("ga_session_id"),
        pl.col("string_value_page_location").alias("page_location"),
    ).sort(key)
    assert got.equals(want)
    # Sessions by source agree with the Data API's report of the same days.
    sessions = (
        stored.filter(pl.col("event_name") == "session_start")
        .group_by("session_source", "session_medium")
        .agg(pl.len().alias("sessions"))
        .sort("session_source", "session_medium")
    )
    report = sandbox.ga4.truth(["sessionSource", "sessionMedium"], ["sessions"], days[0], days[1], settled=True)
    assert sessions.rows() == report.sort("sessionSource", "sessionMedium").rows()
