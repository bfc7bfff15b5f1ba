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

metadata = sa.MetaData()


def default_queue_path(env: Mapping[str, str]) -> Path | None:
    """`RECEIVER_QUEUE_PATH`, else `$DAGSTER_HOME/receiver/queue.db`, else None: the SQLite file of the
    embedded default, found by the receiver and the sensor (through `revenue_pipelines.environment`)
    by this one rule."""
    if path := (env.get("RECEIVER_QUEUE_PATH") or "").strip():
        return Path(path)
    if home := (env.get("DAGSTER_HOME") or "").strip():
        return Path(home) / "receiver" / "queue.db"
    return None


def database_url(env: Mapping[str, str]) -> sa.URL | None:
    """PostgreSQL from `DAGSTER_PG_*` when `DAGSTER_PG_HOST` is set, else the SQLite file of
    `default_queue_path`; None when neither says where. The URL's repr masks the password, its str()
    does not: log `url.render_as_string(hide_password=True)`. A port that is no number raises
    ValueError naming `DAGSTER_PG_PORT`."""
    if (env.get("DAGSTER_PG_HOST") or "").strip():
        port = (env.get("DAGSTER_PG_PORT") or "").strip()
        if port and not port.isdigit():
            raise ValueError("DAGSTER_PG_PORT must be a port number")
        return sa.URL.create(
            "postgresql+psycopg2",
            username=env.get("DAGSTER_PG_USERNAME") or None,
            password=env.get("DAGSTER_PG_PASSWORD") or None,
            host=env["DAGSTER_PG_HOST"].strip(),
            port=int(port) if port else None,
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


def as_utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC; a naive value is taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(sa.TypeDecorator):
    """An aware datetime in UTC, on both databases: `TIMESTAMPTZ` on PostgreSQL; on SQLite, where
    SQLAlchemy's DATETIME drops the zone, the UTC time as fixed-width text, so text order is time
    order. A naive value is taken as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return as_utc(value)
