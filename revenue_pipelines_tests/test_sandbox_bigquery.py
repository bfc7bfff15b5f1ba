"""The sandbox's BigQuery emulator, driven by the real google-cloud-bigquery and bigquery-storage
clients over HTTP and gRPC, with a service-account key that refreshes at the sandbox's token endpoint.

One emulator serves the module (it takes seconds to start); each test works in a dataset of its own.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

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

from revenue_pipelines.sandbox import Sandbox

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


def test_dry_runs_check_the_query_but_bytes_are_neither_estimated_nor_capped(client, sessions):
    """What the emulator leaves out: a cost guard cannot be tested against it."""
    dry = client.query(f"SELECT * FROM {sessions}", job_config=bigquery.QueryJobConfig(dry_run=True))
    assert dry.state == "DONE"
    assert [field.name for field in dry.schema] == ["day", "at", "id", "source"]
    assert dry.total_bytes_processed == 0
    with pytest.raises(exceptions.BadRequest, match="Unrecognized name"):
        client.query(f"SELECT nope FROM {sessions}", job_config=bigquery.QueryJobConfig(dry_run=True))

    capped = bigquery.QueryJobConfig(maximum_bytes_billed=1, labels={"asset": "sessions"})
    job = client.query(f"SELECT * FROM {sessions}", job_config=capped)
    assert job.result().total_rows == 4
    assert client.get_job(job.job_id).labels == {"asset": "sessions"}


def test_a_sandbox_without_bigquery_has_none_in_its_environment():
    with Sandbox(companies=5) as sb:
        assert sb.bigquery is None
        assert not any("BIGQUERY" in name or name == "GOOGLE_APPLICATION_CREDENTIALS" for name in sb.env())
