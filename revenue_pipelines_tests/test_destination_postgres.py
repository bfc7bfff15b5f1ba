"""The PostgreSQL destination against the real server of the `postgres` fixture, through psycopg2."""

import logging
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import dagster as dg
import polars as pl
import psycopg2
import pydantic
import pytest

from revenue_pipelines.lib.destinations.postgres import PostgresDestination, PostgresDestinationWriter
from revenue_pipelines_tests.postgres_server import fresh_database

LOG = logging.getLogger(__name__)
DAY = "2026-11-20"
DESTINATION = PostgresDestination(kind="postgres", table="won_deals", schema="routes", key=["day", "deal_key"])


@pytest.fixture
def database(postgres) -> Iterator[dict[str, str]]:
    with fresh_database(postgres) as settings:
        yield settings


def writer_of(settings: dict[str, str], **changes) -> PostgresDestinationWriter:
    fields = {
        "host": settings["DAGSTER_PG_HOST"],
        "port": int(settings["DAGSTER_PG_PORT"]),
        "database": settings["DAGSTER_PG_DB"],
        "username": settings["DAGSTER_PG_USERNAME"],
        "password": settings["DAGSTER_PG_PASSWORD"],
    }
    return PostgresDestinationWriter(**{**fields, **changes})


@pytest.fixture
def writer(database) -> PostgresDestinationWriter:
    return writer_of(database)


def query(writer: PostgresDestinationWriter, statement: str, *parameters) -> list[tuple]:
    """`statement` on the writer's database, over a connection of the test's own."""
    connection = psycopg2.connect(
        host=writer.host, port=writer.port, dbname=writer.database, user=writer.username, password=writer.password
    )
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, parameters)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def deals(count: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "day": [date(2026, 11, 20)] * count,
            "deal_key": [f"hubspot:{n}" for n in range(count)],
            "amount_usd": [1000.0 * (n + 1) for n in range(count)],
            "seats": list(range(count)),
        }
    )


def deliver(writer: PostgresDestinationWriter, frame: pl.DataFrame, destination: PostgresDestination = DESTINATION):
    return writer.deliver(frame, destination, route="won_deals", partition_key=DAY, log=LOG)


def table_rows(writer: PostgresDestinationWriter) -> list[tuple]:
    return query(writer, "SELECT * FROM routes.won_deals ORDER BY deal_key")


def test_first_delivery_creates_the_table_with_the_frames_types_and_the_key(writer, database):
    delivery = deliver(writer, deals())

    columns = query(
        writer,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'routes' AND table_name = 'won_deals' ORDER BY ordinal_position",
    )
    assert columns == [
        ("day", "date", "NO"),
        ("deal_key", "text", "NO"),
        ("amount_usd", "double precision", "YES"),
        ("seats", "bigint", "YES"),
    ]
    primary_key = query(
        writer,
        "SELECT kcu.column_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
        " WHERE tc.table_name = 'won_deals' AND tc.constraint_type = 'PRIMARY KEY' ORDER BY kcu.ordinal_position",
    )
    assert primary_key == [("day",), ("deal_key",)]
    assert table_rows(writer)[1] == (date(2026, 11, 20), "hubspot:1", 2000.0, 1)
    port, db = database["DAGSTER_PG_PORT"], database["DAGSTER_PG_DB"]
    assert delivery.uri == f"postgresql://127.0.0.1:{port}/{db}/routes.won_deals"
    assert delivery.rows == 4
    assert delivery.answer == {
        "inserted": 4,
        "updated": 0,
        "unchanged": 0,
        "table_created": True,
        "columns_added": [],
    }
    assert delivery.bytes == len(deals().write_csv(include_header=False).encode())
    assert delivery.checksum.startswith("sha256:") and len(delivery.checksum) == 7 + 64


def test_a_rerun_of_the_same_partition_changes_nothing(writer):
    first = deliver(writer, deals())
    versions = query(writer, "SELECT deal_key, xmin::text FROM routes.won_deals ORDER BY deal_key")

    again = deliver(writer, deals())

    assert again.answer["inserted"] == 0
    assert again.answer["updated"] == 0
    assert again.answer["unchanged"] == 4
    assert not again.answer["table_created"]
    # No row was rewritten: each keeps the transaction id of the first delivery.
    assert query(writer, "SELECT deal_key, xmin::text FROM routes.won_deals ORDER BY deal_key") == versions
    assert (again.bytes, again.checksum) == (first.bytes, first.checksum)


def test_changed_rows_update_and_new_rows_insert(writer):
    deliver(writer, deals(4))
    changed = deals(6).with_columns(
        amount_usd=pl.when(pl.col("deal_key") == "hubspot:2").then(99.5).otherwise(pl.col("amount_usd"))
    )

    delivery = deliver(writer, changed)

    assert (delivery.answer["inserted"], delivery.answer["updated"], delivery.answer["unchanged"]) == (2, 1, 3)
    rows = table_rows(writer)
    assert len(rows) == 6
    assert rows[2][2] == 99.5
    assert rows[5] == (date(2026, 11, 20), "hubspot:5", 6000.0, 5)


def test_a_new_mart_column_is_added_to_the_table(writer):
    deliver(writer, deals())
    other_day = deals(1).with_columns(day=pl.lit(date(2026, 11, 19)))
    deliver(writer, other_day)

    delivery = deliver(writer, deals().with_columns(segment=pl.lit("enterprise")))

    assert delivery.answer["columns_added"] == ["segment"]
    assert delivery.answer["updated"] == 4
    types = query(
        writer,
        "SELECT data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = 'won_deals' AND column_name = 'segment'",
    )
    assert types == [("text", "YES")]
    segments = query(writer, "SELECT day, segment FROM routes.won_deals WHERE deal_key = 'hubspot:0' ORDER BY day")
    assert segments == [(date(2026, 11, 19), None), (date(2026, 11, 20), "enterprise")]


def test_a_column_whose_type_changed_or_that_disappeared_fails_naming_it(writer):
    deliver(writer, deals())

    with pytest.raises(dg.Failure, match=r"seats of table routes\.won_deals is bigint but the rows have it as text"):
        deliver(writer, deals().with_columns(pl.col("seats").cast(pl.Utf8)))
    with pytest.raises(dg.Failure, match=r"amount_usd of table routes\.won_deals is double precision .* missing"):
        deliver(writer, deals().drop("amount_usd"))
    assert len(table_rows(writer)) == 4


def test_a_key_other_than_the_tables_primary_key_fails(writer):
    deliver(writer, deals())
    by_deal = PostgresDestination(kind="postgres", table="won_deals", schema="routes", key=["deal_key"])

    with pytest.raises(dg.Failure, match=r"primary key \['day', 'deal_key'\]; the route's key is \['deal_key'\]"):
        deliver(writer, deals(), by_deal)


@pytest.mark.parametrize(
    "block",
    [
        {"table": 'deals"; DROP TABLE x; --'},
        {"table": "Deals"},
        {"table": "deals", "schema": "public.other"},
        {"table": "deals", "key": ["deal key"]},
        {"table": "deals", "key": []},
        {"table": "d" * 64},
        {"table": "deals", "tabel": "typo"},
    ],
)
def test_invalid_destination_blocks_are_refused_by_the_model(block):
    with pytest.raises(pydantic.ValidationError):
        PostgresDestination.model_validate({"kind": "postgres", "key": ["deal_key"], **block})


def test_invalid_column_names_and_keys_are_refused_before_any_sql(database):
    # Nothing listens on this port: reaching for the server would fail with a connection error instead.
    nowhere = PostgresDestinationWriter(host="127.0.0.1", port=1, database="x", username="x", password="x")
    refused = [
        (deals().rename({"seats": 'seats"--'}), r"Columns \['seats\"--'\] cannot be delivered"),
        (deals().drop("deal_key"), r"Key columns \['deal_key'\] of routes\.won_deals are not among"),
        (pl.concat([deals(3), deals(2)]), r"2 keys appear more than once .* 'deal_key': 'hubspot:0'"),
        (deals().with_columns(deal_key=pl.lit(None, pl.Utf8)), r"null in some rows .*'deal_key': 4"),
        (deals().with_columns(took=pl.lit(timedelta(hours=1))), r"Column took .* is Duration"),
    ]
    for frame, message in refused:
        with pytest.raises(dg.Failure, match=message):
            deliver(nowhere, frame)


def test_values_round_trip(writer):
    paris = timezone(timedelta(hours=1))
    frame = pl.DataFrame(
        {
            "day": [date(2026, 11, 20)] * 4,
            "deal_key": ['it\'s "quoted", with commas', "", "line\nbreak\r\nand\ttab", "ünïcødé 🙂 \\N"],
            "note": [None, "", "\\N", 'x"y'],
            "closed_at": [
                datetime(2026, 11, 20, 9, 30, 0, 123456, tzinfo=UTC),
                datetime(2026, 11, 20, 23, 59, 59, tzinfo=paris),
                None,
                datetime(1999, 12, 31, 23, 0, tzinfo=UTC),
            ],
            "amount": pl.Series([Decimal("12345678901234567890.12"), Decimal("-0.01"), None, Decimal("0")]),
            "ratio": [0.1, math.inf, None, -1e-300],
            "won": [True, False, None, True],
            "tags": [["a", 'b"c'], [], None, ["ü", None]],
            "owner": [{"id": 7, "name": "Zoë"}, {"id": None, "name": "x,y"}, None, {"id": 1, "name": "\n"}],
        },
        schema_overrides={"closed_at": pl.Datetime("us", "UTC"), "amount": pl.Decimal(38, 2)},
    )

    deliver(writer, frame)

    rows = query(
        writer,
        "SELECT deal_key, note, closed_at, amount, ratio, won, tags, owner FROM routes.won_deals"
        " ORDER BY array_position(%s, deal_key)",
        frame["deal_key"].to_list(),
    )
    expected = frame.drop("day").rows()
    assert [row[:2] for row in rows] == [row[:2] for row in expected]
    assert [row[2] for row in rows] == [row[2] for row in expected]  # the same instants
    assert [row[3] for row in rows] == [row[3] for row in expected]
    assert [row[4] for row in rows] == [0.1, math.inf, None, -1e-300]
    assert [row[5:] for row in rows] == [row[5:] for row in expected]
    types = dict(
        query(writer, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'won_deals'")
    )
    assert (types["closed_at"], types["amount"], types["tags"], types["owner"]) == (
        "timestamp with time zone",
        "numeric",
        "jsonb",
        "jsonb",
    )
    assert deliver(writer, frame).answer["unchanged"] == 4


def test_a_failure_mid_delivery_leaves_the_table_as_it_was(writer):
    deliver(writer, deals())
    query(writer, "ALTER TABLE routes.won_deals ADD CONSTRAINT amount_positive CHECK (amount_usd > 0)")
    before = table_rows(writer)
    # Evolves the table, updates rows, inserts rows, then one row breaks the constraint.
    bad = deals(6).with_columns(
        segment=pl.lit("smb"),
        amount_usd=pl.when(pl.col("deal_key") == "hubspot:5").then(-1.0).otherwise(pl.col("amount_usd") + 1),
    )

    with pytest.raises(psycopg2.errors.CheckViolation):
        deliver(writer, bad)

    assert table_rows(writer) == before
    columns = query(writer, "SELECT column_name FROM information_schema.columns WHERE table_name = 'won_deals'")
    assert ("segment",) not in columns


def test_an_empty_partition_creates_the_table_and_delivers_nothing(writer):
    delivery = deliver(writer, deals().clear())

    assert delivery.rows == 0
    assert delivery.bytes == 0
    assert delivery.answer["inserted"] == 0
    assert table_rows(writer) == []


def test_a_wrong_password_or_address_fails_at_once_naming_the_variables(database):
    wrong_password = writer_of(database, password="not-the-password-xyz")
    with pytest.raises(dg.Failure) as refused:
        deliver(wrong_password, deals())
    assert "password authentication failed" in refused.value.description
    assert "ROUTES_PG_PASSWORD" in refused.value.description
    assert "not-the-password-xyz" not in refused.value.description
    assert not refused.value.allow_retries

    nowhere = writer_of(database, port=1)
    with pytest.raises(dg.Failure, match=r"127\.0\.0\.1:1/.*Check ROUTES_PG_HOST, ROUTES_PG_PORT"):
        deliver(nowhere, deals())


def test_partitions_delivered_at_once_both_land(writer):
    """Two partitions of a new route race to create the table: the table lock makes one wait."""
    days = [date(2026, 11, day) for day in range(1, 9)]
    with ThreadPoolExecutor(max_workers=len(days)) as pool:
        deliveries = list(pool.map(lambda day: deliver(writer, deals(50).with_columns(day=pl.lit(day))), days))

    assert sum(delivery.answer["table_created"] for delivery in deliveries) == 1
    assert query(writer, "SELECT count(*) FROM routes.won_deals") == [(50 * len(days),)]
