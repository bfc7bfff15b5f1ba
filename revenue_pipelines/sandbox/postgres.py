"""A real, throwaway PostgreSQL: the stand-in for the production database and the routes' tables.

`throwaway_cluster()` makes a fresh cluster (initdb) on a loopback port, password-protected like a
real one, runs its server as a child process that dies with this one (never a daemon left behind),
and yields its settings as `DAGSTER_PG_*`; on exit the server stops and the cluster is deleted. The
tests, the benches and the demo use it where PostgreSQL is installed (`available()`).

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user.
"""

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2

from revenue_pipelines.lib.processes import dying_with_this_process

START_TIMEOUT_SECONDS = 60


def available() -> bool:
    """Whether PostgreSQL's server programs are installed here."""
    try:
        return (_bindir() / "initdb").exists()
    except (OSError, subprocess.CalledProcessError):
        return False


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[dict[str, str]]:
    bindir = _bindir()
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
    initdb = [bindir / "initdb", "-D", data, "-U", "dagster", f"--pwfile={password_file}", "--auth=scram-sha-256"]
    subprocess.run([*as_server_user, *map(str, initdb)], check=True, capture_output=True)  # noqa: S603 (initdb)
    server_command = [bindir / "postgres", "-D", data, "-p", port, "-k", root, "-c", "listen_addresses=127.0.0.1"]
    with (root / "server.log").open("wb") as log:
        server = subprocess.Popen(  # noqa: S603 (PostgreSQL's own server)
            dying_with_this_process([*as_server_user, *map(str, server_command)]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
    settings = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_DB": "postgres",
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": password,
    }
    try:
        _wait_until_ready(server, settings, root / "server.log")
        yield settings
    finally:
        _stop(server)
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_ready(server: subprocess.Popen, settings: dict[str, str], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            psycopg2.connect(
                host=settings["DAGSTER_PG_HOST"],
                port=settings["DAGSTER_PG_PORT"],
                dbname=settings["DAGSTER_PG_DB"],
                user=settings["DAGSTER_PG_USERNAME"],
                password=settings["DAGSTER_PG_PASSWORD"],
                connect_timeout=2,
            ).close()
            return
        except psycopg2.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)


def _stop(server: subprocess.Popen) -> None:
    """Immediate shutdown (SIGQUIT: the cluster is thrown away), then SIGKILL what outlives 10 s."""
    for signum in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
            return


def _bindir() -> Path:
    """Where initdb and postgres live: on PATH, or where pg_config says (Debian keeps them off PATH)."""
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    return Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())  # noqa: S607 (on PATH)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
