"""PostgreSQL destination: a table per route, upserted by key, one transaction per delivery.

The table is created from the frame's polars schema on first delivery (`POSTGRES_TYPES`, primary
key on the route's `key`) and evolved when the mart gains columns (added nullable). A column whose
type changed, or that the mart no longer has, fails the delivery naming table, column and both
types: dropping or converting a column of someone's table is a decision for a person, not a route.

Each delivery, in one transaction: an advisory lock on the table (two partitions of one route
cannot race to create or evolve it), a temporary staging table LIKE the target, `COPY` of the rows
as CSV into it (encoded a slice at a time, so the payload is never in memory whole), then one
`INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE ... WHERE the row IS DISTINCT FROM the new one`.
A re-run of the same partition therefore updates nothing, and any failure leaves the table as it
was. Rows that left the mart's partition are not deleted.

Duplicate keys within one delivery fail, naming an example and the count, as do null keys: the mart
should not produce them, and picking a winner would hide that (and break "rows delivered == rows
selected"). Identifiers (schema, table, key and every column) must match `IDENTIFIER_PATTERN` and
are refused before any SQL; they are quoted with `psycopg2.sql.Identifier`, values are parameters.

The resource's credentials come from ROUTES_PG_HOST, ROUTES_PG_PORT, ROUTES_PG_DB,
ROUTES_PG_USERNAME and ROUTES_PG_PASSWORD (the password has no default and is never logged); a
server that cannot be reached or refuses the login fails at once, naming them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Annotated, Literal

import dagster as dg
import polars as pl
import psycopg2
from psycopg2 import sql
from pydantic import BaseModel, ConfigDict, Field

from revenue_pipelines.lib.destinations import Delivery

IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
VARIABLES = (
    "ROUTES_PG_HOST, ROUTES_PG_PORT, ROUTES_PG_DB, ROUTES_PG_USERNAME, ROUTES_PG_PASSWORD (and ROUTES_PG_SSLMODE)"
)
COPY_SLICE_ROWS = 100_000  # rows encoded as CSV at a time: bounds the payload's memory, not its size
COPY_READ_BYTES = 1 << 20
JSON_VALUE_PREFIX = len('{"v":')

# polars dtype -> PostgreSQL type, spelled as `format_type` reports it, so an existing table's
# columns compare as text. Unsigned integers take the next wider type; nested values become jsonb
# (decimals inside them as JSON strings); a datetime without time zone stays `timestamp`.
POSTGRES_TYPES: dict[type[pl.DataType], str] = {
    pl.Int8: "smallint",
    pl.Int16: "smallint",
    pl.UInt8: "smallint",
    pl.Int32: "integer",
    pl.UInt16: "integer",
    pl.Int64: "bigint",
    pl.UInt32: "bigint",
    pl.UInt64: "numeric",
    pl.Float32: "real",
    pl.Float64: "double precision",
    pl.Decimal: "numeric",
    pl.String: "text",
    pl.Categorical: "text",
    pl.Enum: "text",
    pl.Boolean: "boolean",
    pl.Date: "date",
    pl.Time: "time without time zone",
    pl.List: "jsonb",
    pl.Array: "jsonb",
    pl.Struct: "jsonb",
}

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]


class PostgresDestination(BaseModel):
    """A route's PostgreSQL table: rows are upserted by `key`, the table created and evolved from the mart."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["postgres"] = Field(description="A table in the PostgreSQL database of ROUTES_PG_*.")
    table: Identifier = Field(
        description="The table, created on first delivery: lower-case letters, digits and _, at most 63."
    )
    table_schema: Identifier = Field(
        default="public",
        alias="schema",
        description="The schema holding the table, created when missing; same rule as `table`.",
    )
    key: list[Identifier] = Field(
        min_length=1,
        description="The columns identifying a row (the table's primary key): a re-delivered row updates, not adds.",
    )


class PostgresDestinationWriter(dg.ConfigurableResource):
    """Delivers routes to PostgreSQL tables through psycopg2: COPY into staging, then one upsert."""

    host: str = Field(description="Server host name or address, from ROUTES_PG_HOST.")
    port: int = Field(default=5432, description="Server port, from ROUTES_PG_PORT.")
    database: str = Field(description="Database name, from ROUTES_PG_DB.")
    username: str = Field(description="Role to log in as, from ROUTES_PG_USERNAME.")
    password: str = Field(description="The role's password, from ROUTES_PG_PASSWORD; supply with EnvVar.")
    sslmode: str | None = Field(
        default=None,
        description="libpq's sslmode (disable, require, verify-full, ...), from ROUTES_PG_SSLMODE; None: libpq's.",
    )
    connect_timeout_seconds: int = Field(default=10, ge=1, description="How long a connection attempt may take.")

    def deliver(
        self,
        frame: pl.DataFrame,
        destination: PostgresDestination,
        *,
        route: str,
        partition_key: str,
        log: logging.Logger,
    ) -> Delivery:
        """Upsert `frame` (one partition's rows) into the route's table in one transaction."""
        types = _column_types(frame, destination)
        target = sql.Identifier(destination.table_schema, destination.table)
        uri = f"postgresql://{self.host}:{self.port}/{self.database}/{destination.table_schema}.{destination.table}"
        connection = self._connect()
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (target.as_string(cursor),))
                created, added = _prepare_table(cursor, destination, types)
                payload = _CopyPayload(frame)
                inserted, updated = _copy_and_upsert(cursor, target, list(types), destination.key, payload)
        finally:
            connection.close()
        if created:
            log.info("Route %s created table %s with columns %s", route, uri, ", ".join(types))
        if added:
            log.info("Route %s added columns %s to table %s", route, ", ".join(added), uri)
        unchanged = frame.height - inserted - updated
        log.info(
            "Route %s partition %s: %d rows inserted, %d updated, %d unchanged in %s",
            route,
            partition_key,
            inserted,
            updated,
            unchanged,
            uri,
        )
        return Delivery(
            uri=uri,
            rows=frame.height,
            bytes=payload.size,
            checksum=payload.checksum,
            answer={
                "inserted": inserted,
                "updated": updated,
                "unchanged": unchanged,
                "table_created": created,
                "columns_added": added,
            },
        )

    def _connect(self) -> psycopg2.extensions.connection:
        try:
            return psycopg2.connect(
                host=self.host,
                port=self.port,
                dbname=self.database,
                user=self.username,
                password=self.password,
                sslmode=self.sslmode,
                connect_timeout=self.connect_timeout_seconds,
                application_name="revenue_pipelines routes",
            )
        except psycopg2.OperationalError as error:
            reason = next(iter(str(error).strip().splitlines()), type(error).__name__)
            raise dg.Failure(
                description=(
                    f"PostgreSQL at {self.host}:{self.port}/{self.database} (as {self.username}) cannot be used: "
                    f"{reason}. Check {VARIABLES}."
                ),
                allow_retries=False,
            ) from None


def _column_types(frame: pl.DataFrame, destination: PostgresDestination) -> dict[str, str]:
    """Each column's PostgreSQL type; fails, before any SQL, on a name, a dtype or a key that cannot be delivered."""
    table = f"{destination.table_schema}.{destination.table}"
    invalid = [name for name in frame.columns if not re.fullmatch(IDENTIFIER_PATTERN, name)]
    if invalid:
        raise _refusal(
            f"Columns {invalid} cannot be delivered to {table}: a column name must match {IDENTIFIER_PATTERN}."
        )
    types: dict[str, str] = {}
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            types[name] = "timestamp with time zone" if dtype.time_zone else "timestamp without time zone"
        elif (postgres_type := POSTGRES_TYPES.get(dtype.base_type())) is not None:
            types[name] = postgres_type
        else:
            raise _refusal(f"Column {name} of {table} is {dtype}, which has no PostgreSQL type: cast it in the mart.")
    missing = [column for column in destination.key if column not in types]
    if missing:
        raise _refusal(f"Key columns {missing} of {table} are not among the rows' columns {frame.columns}.")
    if nulls := {column: count for column in destination.key if (count := frame[column].null_count())}:
        raise _refusal(f"Key columns of {table} are null in some rows (rows per column: {nulls}).")
    # Distinct key hashes cost a few MB where grouping by the keys costs their size again, so the
    # keys are grouped only when two hashes are equal: to tell a collision from a duplicate, and name one.
    if (
        frame.select(destination.key).hash_rows().n_unique() < frame.height
        and (duplicates := frame.group_by(destination.key, maintain_order=True).len().filter(pl.col("len") > 1)).height
    ):
        example = duplicates.row(0, named=True)
        raise _refusal(
            f"{duplicates.height} keys appear more than once in the rows for {table} "
            f"(key {destination.key}), e.g. {example}: the mart should yield one row per key."
        )
    return types


def _refusal(description: str) -> dg.Failure:
    """A delivery that no retry can fix: the route or the mart must change."""
    return dg.Failure(description=description, allow_retries=False)


def _prepare_table(cursor, destination: PostgresDestination, types: dict[str, str]) -> tuple[bool, list[str]]:
    """Create the table, or add the columns the mart gained; (created, columns added). Fails on a
    column whose type changed or that the rows lack, and on a primary key other than `key`."""
    schema = sql.Identifier(destination.table_schema)
    table = sql.Identifier(destination.table_schema, destination.table)
    name = f"{destination.table_schema}.{destination.table}"
    cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (destination.table_schema,))
    if cursor.fetchone() is None:
        cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    cursor.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table.as_string(cursor),),
    )
    existing = dict(cursor.fetchall())
    if not existing:
        columns = [sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(kind)) for column, kind in types.items()]
        cursor.execute(
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
                table, sql.SQL(", ").join(columns), sql.SQL(", ").join(map(sql.Identifier, destination.key))
            )
        )
        return True, []
    for column, old in existing.items():
        new = types.get(column, "missing from the rows")
        if new != old:
            raise _refusal(
                f"Column {column} of table {name} is {old} but the rows have it as {new}; "
                "migrate the table (or the mart) by hand: the route does not drop or convert columns."
            )
    cursor.execute(
        "SELECT attname FROM pg_index JOIN pg_attribute ON attrelid = indrelid AND attnum = ANY(indkey)"
        " WHERE indrelid = to_regclass(%s) AND indisprimary",
        (table.as_string(cursor),),
    )
    primary_key = sorted(row[0] for row in cursor.fetchall())
    if primary_key != sorted(destination.key):
        raise _refusal(f"Table {name} has primary key {primary_key or 'none'}; the route's key is {destination.key}.")
    added = [column for column in types if column not in existing]
    if added:
        additions = sql.SQL(", ").join(
            sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(column), sql.SQL(types[column])) for column in added
        )
        cursor.execute(sql.SQL("ALTER TABLE {} {}").format(table, additions))
    return False, added


def _copy_and_upsert(
    cursor, target: sql.Identifier, columns: list[str], key: list[str], payload: _CopyPayload
) -> tuple[int, int]:
    """COPY the payload into a staging table, then upsert it into `target`; (inserted, updated)."""
    staging = sql.Identifier("route_staging")
    column_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    cursor.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(staging, target))
    copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')").format(staging, column_list)
    cursor.copy_expert(copy.as_string(cursor), payload, size=COPY_READ_BYTES)
    values = [column for column in columns if column not in key]
    if values:
        on_conflict = sql.SQL("DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
            sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(column)) for column in values),
            sql.SQL(", ").join(sql.Identifier("existing", column) for column in values),
            sql.SQL(", ").join(sql.Identifier("excluded", column) for column in values),
        )
    else:
        on_conflict = sql.SQL("DO NOTHING")
    cursor.execute(
        sql.SQL(
            "WITH upserted AS (INSERT INTO {target} AS existing ({columns}) SELECT {columns} FROM {staging}"
            " ON CONFLICT ({key}) {on_conflict} RETURNING (xmax = 0) AS inserted)"
            " SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted"
        ).format(
            target=target,
            columns=column_list,
            staging=staging,
            key=sql.SQL(", ").join(map(sql.Identifier, key)),
            on_conflict=on_conflict,
        )
    )
    inserted, updated = cursor.fetchone()
    return inserted, updated


class _CopyPayload:
    """The rows as the CSV that COPY reads, encoded a slice at a time as COPY asks for it, so the whole
    payload is never in memory; its size and sha256 are counted on the way. Nested values go as JSON
    text; nulls as CSV's unquoted empty field (an empty string is written quoted, so it stays one)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        nested = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List | pl.Array | pl.Struct)]
        self._chunks = (
            part.with_columns(map(_json_text, nested)).write_csv(include_header=False).encode()
            for part in frame.iter_slices(COPY_SLICE_ROWS)
        )
        self._pending = memoryview(b"")
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._digest.update(chunk)
            self.size += len(chunk)
            self._pending = memoryview(chunk)
        size = len(self._pending) if size < 0 else size
        taken, self._pending = self._pending[:size], self._pending[size:]
        return taken.tobytes()

    @property
    def checksum(self) -> str:
        return f"sha256:{self._digest.hexdigest()}"


def _json_text(column: str) -> pl.Expr:
    """A nested column as JSON text (polars encodes structs only: wrap the value in one, then unwrap)."""
    wrapped = pl.struct(pl.col(column).alias("v")).struct.json_encode()
    unwrapped = wrapped.str.slice(JSON_VALUE_PREFIX).str.strip_suffix("}")
    return pl.when(pl.col(column).is_null()).then(None).otherwise(unwrapped).alias(column)
