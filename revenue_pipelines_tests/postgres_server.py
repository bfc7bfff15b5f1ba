"""A real, throwaway PostgreSQL cluster for the tests that need one (the production instance, the
receiver's database). Started per module, stopped and deleted after it; nothing is left running."""

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from revenue_pipelines.receiver.database import database_url


def _postgres_bin() -> Path:
    """Where initdb and pg_ctl live: on PATH, or where pg_config says (Debian keeps them off PATH)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    return Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway cluster for the module's tests; its DAGSTER_PG_* settings."""
    with throwaway_cluster() as settings:
        yield settings


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[dict[str, str]]:
    """A fresh cluster on a loopback port, password-protected like a real one; its DAGSTER_PG_* settings.
    Stopped and deleted on exit (the benches use it too).

    PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user.
    """
    bindir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="revenue-pipelines-pg-"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(16)
    password_file = root / "password"
    password_file.write_text(password)
    if as_server_user:
        os.chown(password_file, account.pw_uid, account.pw_gid)
    data, port = root / "data", _free_port()

    def run(*command: object) -> None:
        subprocess.run([*as_server_user, *map(str, command)], check=True, capture_output=True)

    run(bindir / "initdb", "-D", data, "-U", "dagster", f"--pwfile={password_file}", "--auth=scram-sha-256")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    run(bindir / "pg_ctl", "-D", data, "-o", options, "-l", root / "server.log", "-w", "start")
    try:
        settings = {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": "postgres",
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": password,
        }
        yield settings
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


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
