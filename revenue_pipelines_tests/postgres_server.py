"""A real, throwaway PostgreSQL cluster for the tests that need one (the production instance, the
receiver's database, the routes' tables): the sandbox's (`sandbox/postgres.py`), started per module,
stopped and deleted after it; nothing is left running."""

import contextlib
import secrets
from collections.abc import Iterator, Mapping

import pytest
import sqlalchemy as sa

from revenue_pipelines.receiver.database import database_url
from revenue_pipelines.sandbox.postgres import throwaway_cluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway cluster for the module's tests; its DAGSTER_PG_* settings."""
    with throwaway_cluster() as settings:
        yield settings


@contextlib.contextmanager
def fresh_database(settings: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """A database of its own in the `postgres` fixture's cluster, dropped after (with any connection
    still open to it): a test's tables start empty whatever the module's other tests left. Yields
    DAGSTER_PG_* settings naming it."""
    name = f"test_{secrets.token_hex(6)}"
    admin = sa.create_engine(database_url(settings), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield {**settings, "DAGSTER_PG_DB": name}
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def connections_to(settings: Mapping[str, str]) -> int:
    """Sessions open to the database of `settings`, counted from the cluster's maintenance database."""
    admin = sa.create_engine(database_url({**settings, "DAGSTER_PG_DB": "postgres"}))
    try:
        with admin.connect() as connection:
            return connection.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                {"name": settings["DAGSTER_PG_DB"]},
            ).scalar_one()
    finally:
        admin.dispose()
