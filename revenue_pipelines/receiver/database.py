"""The receiver's one database: the event queue, the API keys and the audit trail.

Every table is SQLAlchemy Core on `metadata`, so the embedded default and PROD run the same
statements: a SQLite file under the Dagster instance's folder, or, when `DAGSTER_PG_HOST` is set,
the Dagster instance's own PostgreSQL (the `DAGSTER_PG_*` variables of deploy/dagster.yaml), so a
production deployment has one database to run and back up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from revenue_pipelines.receiver.settings import default_queue_path

metadata = sa.MetaData()


def database_url(env: Mapping[str, str]) -> sa.URL | None:
    """PostgreSQL from `DAGSTER_PG_*` when `DAGSTER_PG_HOST` is set, else the SQLite file of
    `default_queue_path`; None when neither says where. The URL's repr masks the password."""
    if (env.get("DAGSTER_PG_HOST") or "").strip():
        return sa.URL.create(
            "postgresql+psycopg2",
            username=env.get("DAGSTER_PG_USERNAME") or None,
            password=env.get("DAGSTER_PG_PASSWORD") or None,
            host=env["DAGSTER_PG_HOST"].strip(),
            port=int(env["DAGSTER_PG_PORT"]) if (env.get("DAGSTER_PG_PORT") or "").strip() else None,
            database=env.get("DAGSTER_PG_DB") or None,
        )
    path = default_queue_path(env)
    return sqlite_url(path) if path else None


def sqlite_url(path: Path | str) -> sa.URL:
    return sa.URL.create("sqlite+pysqlite", database=str(path))


def connect(url: sa.URL | str) -> sa.Engine:
    """An engine with every table created. SQLite: WAL (the sensor reads while the receiver
    writes), `synchronous=FULL` (a commit survives power loss, not only a killed process), and
    `BEGIN IMMEDIATE`, so a writer takes the lock when its transaction starts, not halfway."""
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:
            connection.isolation_level = None  # SQLAlchemy, not pysqlite, says when a transaction begins
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=30000")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


class UtcDateTime(sa.TypeDecorator):
    """An aware datetime in, an aware UTC datetime out, on both databases: PostgreSQL keeps a
    TIMESTAMPTZ; SQLite, which has no time zones, keeps the UTC time as fixed-width text, so text
    order is time order and comparisons in SQL hold."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous: give its time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
