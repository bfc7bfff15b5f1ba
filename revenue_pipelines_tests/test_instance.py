"""The production Dagster instance (deploy/dagster.yaml) against a real, throwaway PostgreSQL cluster."""

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from revenue_pipelines_tests.conftest import END, HUBSPOT_ASSETS, day_range, hubspot_resource

PROJECT = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE = PROJECT / "deploy" / "dagster.yaml"


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
    """A fresh cluster on a loopback port, password-protected like a real one; its DAGSTER_PG_* settings.

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


def test_the_production_instance_keeps_runs_and_events_in_postgres(postgres, sandbox, tmp_path, monkeypatch):
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION_INSTANCE, home / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            HUBSPOT_ASSETS,
            instance=instance,
            resources={"hubspot": hubspot_resource(sandbox), "io_manager": dg.mem_io_manager},
            tags=day_range(END, END),
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success

    connection = psycopg2.connect(
        host=postgres["DAGSTER_PG_HOST"],
        port=postgres["DAGSTER_PG_PORT"],
        dbname=postgres["DAGSTER_PG_DB"],
        user=postgres["DAGSTER_PG_USERNAME"],
        password=postgres["DAGSTER_PG_PASSWORD"],
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (result.run_id,),
        )
        assert cursor.fetchone()[0] == 2 * len(HUBSPOT_ASSETS)  # each raw table and its quarantine
    connection.close()


def test_production_and_local_instances_share_the_same_limits():
    local = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    assert production["concurrency"] == local["concurrency"]
    assert "storage" not in local  # the local instance is SQLite under DAGSTER_HOME
