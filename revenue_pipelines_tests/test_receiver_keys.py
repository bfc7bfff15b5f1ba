"""API keys and the audit trail, over SQLite and a real PostgreSQL: a key authorizes only its scopes,
until it expires, is revoked or is rotated out; its bucket empties and refills; its secret is never
stored or printed in clear; the `keys` and `audit` commands do what the docs say."""

import getpass
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from revenue_pipelines.receiver.__main__ import main
from revenue_pipelines.receiver.audit import AuditLog, audit_table, refused
from revenue_pipelines.receiver.database import connect, database_url
from revenue_pipelines.receiver.keys import UNAUTHORIZED, KeyRefused, KeyStore, UnknownKey, keys_table
from revenue_pipelines.receiver.verifiers import Refused
from revenue_pipelines_tests.test_receiver_queue import NOW, Clock

DATABASE_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME",
                      "DAGSTER_PG_PASSWORD", "RECEIVER_QUEUE_PATH", "DAGSTER_HOME")  # fmt: skip


@dataclass
class Database:
    """One empty receiver database: the variables that name it, and an engine on it."""

    env: dict[str, str]
    engine: sa.Engine
    sqlite_path: Path | None

    def stored(self) -> bytes:
        """Everything the database holds for keys and the audit: the SQLite file and its WAL byte for
        byte, or every row of both tables as PostgreSQL returns them."""
        if self.sqlite_path is not None:
            return b"".join(path.read_bytes() for path in self.sqlite_path.parent.glob(self.sqlite_path.name + "*"))
        with self.engine.connect() as connection:
            rows = [*connection.execute(sa.select(keys_table)), *connection.execute(sa.select(audit_table))]
        return repr(rows).encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "receiver" / "queue.db"
        env = {"RECEIVER_QUEUE_PATH": str(path)}
    else:  # a database of its own in the module's cluster
        settings = request.getfixturevalue("postgres")
        path, env = None, {**settings, "DAGSTER_PG_DB": f"keys_{uuid.uuid4().hex[:12]}"}
        admin = sa.create_engine(database_url(settings), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{env["DAGSTER_PG_DB"]}"')
    engine = connect(database_url(env))
    yield Database(env, engine, path)
    engine.dispose()
    if path is None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{env["DAGSTER_PG_DB"]}"')
        admin.dispose()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refusal(keys: KeyStore, authorization: str | None, scope: str = "launch") -> KeyRefused:
    with pytest.raises(KeyRefused) as raised:
        keys.authorize(authorization, scope)
    return raised.value


# Keys -------------------------------------------------------------------------------------------


def test_a_key_authorizes_its_scopes_and_is_stored_only_as_a_hash(database):
    clock = Clock()
    keys = KeyStore(database.engine, clock=clock)
    key, token = keys.create("airflow-prod", ["read", "launch", "read"], timedelta(days=90), rate_per_minute=30)
    clock.now += timedelta(seconds=1)
    reader, _ = keys.create("dashboards", ["read"], None)

    assert key.scopes == ("launch", "read")  # in SCOPES order, once each
    assert (key.created_at, key.expires_at, key.revoked_at) == (NOW, NOW + timedelta(days=90), None)
    assert keys.authorize(bearer(token), "launch") == key
    assert keys.authorize(f"bearer   {token} ", "read") == key  # the scheme is case-insensitive
    assert keys.list() == [key, reader]  # oldest first
    assert "secret" not in repr(key).lower() and token not in repr(key)

    # The token holds the public id and a 256-bit secret; only the token's SHA-256 is kept.
    key_id, _, secret = token.partition(".")
    assert key_id == key.key_id and len(secret) == 43
    stored = database.stored()
    assert key.key_id.encode() in stored  # the scan does see the key's row
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored
    assert secret.encode() not in stored and secret[:16].encode() not in stored


def test_a_key_without_the_scope_is_refused_403(database):
    keys = KeyStore(database.engine, clock=Clock())
    key, token = keys.create("dashboards", ["read"], None)

    refused_ = refusal(keys, bearer(token), "launch")

    assert (refused_.status, refused_.reason, refused_.actor) == (403, "this key does not have the launch scope",
                                                                  f"key:{key.key_id}")  # fmt: skip
    assert keys.authorize(bearer(token), "read") == key
    with pytest.raises(ValueError, match="no scope 'admin'"):  # a caller's typo is a bug, not a 403
        keys.authorize(bearer(token), "admin")


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("no header", "no Authorization header"),
        ("empty header", "no Authorization header"),
        ("basic credentials", "not a Bearer API key"),
        ("bearer without the secret", "not a Bearer API key"),
        ("bearer of something else", "not a Bearer API key"),
        ("unknown key", "unknown key rk_0123456789ab"),
        ("right key, wrong secret", "wrong secret for "),
    ],
)
def test_every_401_tells_the_client_the_same_and_the_audit_why(database, case, detail):
    keys = KeyStore(database.engine, clock=Clock())
    key, token = keys.create("airflow-prod", ["launch"], None)
    other_secret = keys.create("other", ["launch"], None)[1].partition(".")[2]
    authorization = {
        "no header": None,
        "empty header": "",
        "basic credentials": "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "bearer without the secret": f"Bearer {key.key_id}",
        "bearer of something else": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
        "unknown key": f"Bearer rk_0123456789ab.{other_secret}",
        "right key, wrong secret": f"Bearer {key.key_id}.{other_secret}",
    }[case]

    refused_ = refusal(keys, authorization)

    assert (refused_.status, refused_.reason, refused_.headers) == (401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
    assert detail in refused_.detail
    assert refused_.actor == "unknown"  # naming a key is not being it
    assert refused(refused_) == f"refused 401: {refused_.detail}"
    assert keys.authorize(bearer(token), "launch") == key


def test_a_key_expires_at_its_time(database):
    clock = Clock()
    keys = KeyStore(database.engine, clock=clock)
    key, token = keys.create("quarterly", ["launch"], timedelta(hours=1))

    clock.now = NOW + timedelta(minutes=59, seconds=59)
    assert keys.authorize(bearer(token), "launch") == key
    clock.now = NOW + timedelta(hours=1)
    refused_ = refusal(keys, bearer(token))

    assert (refused_.status, refused_.reason) == (401, UNAUTHORIZED)
    assert refused_.detail == f"expired at {(NOW + timedelta(hours=1)).isoformat()}"
    assert refused_.actor == f"key:{key.key_id}"


def test_a_revoked_key_is_refused_from_then_on(database):
    clock = Clock()
    keys = KeyStore(database.engine, clock=clock)
    key, token = keys.create("leaked", ["launch", "read"], None)
    kept, kept_token = keys.create("kept", ["launch"], None)

    clock.now += timedelta(minutes=5)
    revoked = keys.revoke(key.key_id)
    clock.now += timedelta(minutes=5)
    assert keys.revoke(key.key_id) == revoked  # again: nothing changes

    assert revoked.revoked_at == NOW + timedelta(minutes=5)
    refused_ = refusal(keys, bearer(token), "read")
    assert (refused_.status, refused_.reason) == (401, UNAUTHORIZED)
    assert refused_.detail == f"revoked at {revoked.revoked_at.isoformat()}"
    assert keys.authorize(bearer(kept_token), "launch") == kept
    assert {listed.name: listed.revoked_at for listed in keys.list()} == {"leaked": revoked.revoked_at, "kept": None}
    with pytest.raises(UnknownKey, match="no key rk_0123456789ab"):
        keys.revoke("rk_0123456789ab")
    with pytest.raises(ValueError, match="revoked"):
        keys.rotate(key.key_id, timedelta(hours=1))


def test_rotation_keeps_the_old_key_working_until_the_overlap_ends(database):
    clock = Clock()
    keys = KeyStore(database.engine, clock=clock)
    old, old_token = keys.create("airflow-prod", ["launch", "read"], timedelta(days=90), rate_per_minute=120)
    clock.now = rotated_at = NOW + timedelta(days=80)

    new, new_token = keys.rotate(old.key_id, timedelta(hours=24))

    assert new.key_id != old.key_id and new_token != old_token
    assert (new.name, new.scopes, new.rate_per_minute) == (old.name, old.scopes, old.rate_per_minute)
    assert (new.created_at, new.expires_at) == (rotated_at, rotated_at + timedelta(days=90))  # the same lifetime
    clock.now = rotated_at + timedelta(hours=23, minutes=59)
    assert keys.authorize(bearer(old_token), "launch") == keys.get(old.key_id)
    assert keys.authorize(bearer(new_token), "launch") == new
    clock.now = rotated_at + timedelta(hours=24)
    assert refusal(keys, bearer(old_token)).detail.startswith("expired at")
    assert keys.authorize(bearer(new_token), "read") == new

    # An overlap longer than the old key has left does not extend it.
    clock.now = rotated_at + timedelta(days=89, hours=23)
    newer, _ = keys.rotate(new.key_id, timedelta(days=7))
    assert keys.get(new.key_id).expires_at == new.expires_at
    assert newer.expires_at == clock.now + timedelta(days=90)


def test_the_rate_limit_empties_the_bucket_answers_429_with_retry_after_and_refills(database):
    clock = Clock()
    keys = KeyStore(database.engine, clock=clock)
    key, token = keys.create("batch", ["launch"], None, rate_per_minute=3)  # one token every 20 s
    _, other_token = keys.create("other", ["launch"], None, rate_per_minute=3)

    for _ in range(3):
        assert keys.authorize(bearer(token), "launch") == key
    limited = refusal(keys, bearer(token))
    assert (limited.status, limited.headers) == (429, {"Retry-After": "20"})
    assert limited.reason == "rate limit of 3 requests a minute" and limited.actor == f"key:{key.key_id}"
    assert keys.authorize(bearer(other_token), "launch").name == "other"  # a bucket per key

    clock.now += timedelta(seconds=19)
    assert refusal(keys, bearer(token)).headers == {"Retry-After": "1"}
    clock.now += timedelta(seconds=1)
    assert keys.authorize(bearer(token), "launch") == key  # one token back after 20 s
    assert refusal(keys, bearer(token)).headers == {"Retry-After": "20"}

    clock.now += timedelta(minutes=5)  # refills to the capacity, not beyond
    for _ in range(3):
        assert keys.authorize(bearer(token), "launch") == key
    assert refusal(keys, bearer(token)).status == 429
    clock.now -= timedelta(minutes=10)  # a clock set back refills nothing
    assert refusal(keys, bearer(token)).status == 429


def test_concurrent_requests_take_exactly_the_buckets_tokens(database):
    keys = KeyStore(database.engine, clock=Clock())
    _, token = keys.create("burst", ["launch"], None, rate_per_minute=25)

    def attempt(_: int) -> int:
        try:
            keys.authorize(bearer(token), "launch")
        except KeyRefused as refused_:
            return refused_.status
        return 200

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(attempt, range(40)))

    assert (statuses.count(200), statuses.count(429)) == (25, 15)


def test_a_key_needs_a_name_known_scopes_and_a_positive_rate_and_expiry(database):
    keys = KeyStore(database.engine)
    for arguments, message in [
        (("", ["launch"], None), "name"),
        (("x", [], None), "scopes"),
        (("x", ["admin"], None), "scopes"),
        (("x", ["launch"], timedelta(0)), "expires_in"),
        (("x", ["launch"], None, 0), "rate_per_minute"),
    ]:
        with pytest.raises(ValueError, match=message):
            keys.create(*arguments)
    assert keys.list() == []


# Audit ------------------------------------------------------------------------------------------


def test_the_audit_returns_entries_since_a_time_oldest_first_the_latest_with_a_limit(database):
    clock = Clock()
    audit = AuditLog(database.engine, clock=clock)
    for hour, actor in enumerate(["webhook:hubspot", "key:rk_0123456789ab", "cli:alice", "unknown"]):
        clock.now = NOW + timedelta(hours=hour)
        audit.record(actor=actor, action="test", outcome=f"ok {hour}", client="10.0.0.7" if hour else None,
                     detail={"hour": hour, "name": "Zoë"} if hour else None)  # fmt: skip

    entries = audit.since(NOW + timedelta(hours=1))

    assert [entry.actor for entry in entries] == ["key:rk_0123456789ab", "cli:alice", "unknown"]
    first = entries[0]
    assert (first.at, first.action, first.outcome, first.client) == (NOW + timedelta(hours=1), "test", "ok 1",
                                                                     "10.0.0.7")  # fmt: skip
    assert first.at.tzinfo is not None and first.detail == {"hour": 1, "name": "Zoë"}
    assert audit.since(NOW)[0].detail is None and audit.since(NOW)[0].client is None
    assert [entry.outcome for entry in audit.since(NOW, limit=2)] == ["ok 2", "ok 3"]
    assert audit.since(NOW + timedelta(hours=3, microseconds=1)) == []
    assert refused(Refused(404, "no such source")) == "refused 404: no such source"


# The commands -----------------------------------------------------------------------------------


@pytest.fixture
def command_env(database, monkeypatch) -> Database:
    """`main(argv)` reads the process environment: only the database's variables in it."""
    for name in DATABASE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in database.env.items():
        monkeypatch.setenv(name, value)
    return database


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_keys_create_prints_the_token_once_and_list_never_shows_it(command_env, capsys):
    status, out, err = run_main(capsys, "keys", "create", "--name", "airflow-prod", "--scope", "launch", "--scope",
                                "read", "--expires-in", "90d", "--rate-per-minute", "30")  # fmt: skip
    assert status == 0, err
    token = out.strip()
    assert out == token + "\n"  # the token alone on stdout
    assert "not shown again" in err and token not in err
    key = KeyStore(command_env.engine).authorize(bearer(token), "launch")
    assert (key.name, key.scopes, key.rate_per_minute) == ("airflow-prod", ("launch", "read"), 30)
    assert key.expires_at - key.created_at == timedelta(days=90)

    status, listing, _ = run_main(capsys, "keys", "list")

    assert status == 0
    header, row = listing.splitlines()
    assert header.split() == ["id", "name", "scopes", "created", "expires", "revoked", "rate/min"]
    assert row.split()[:3] == [key.key_id, "airflow-prod", "launch,read"]
    secret = token.partition(".")[2]
    assert secret not in listing and secret[:8] not in listing
    assert hashlib.sha256(token.encode()).hexdigest()[:8] not in listing


def test_keys_rotate_and_revoke_are_audited_as_the_os_user(command_env, capsys):
    _, token, _ = run_main(capsys, "keys", "create", "--name", "etl", "--scope", "launch")
    key_id = token.strip().partition(".")[0]

    status, new_token, err = run_main(capsys, "keys", "rotate", key_id, "--overlap", "2h")
    assert status == 0, err
    assert f"{key_id} works until" in err and "not shown again" in err
    keys = KeyStore(command_env.engine)
    new = keys.authorize(bearer(new_token.strip()), "launch")
    old = keys.get(key_id)
    assert old.expires_at == new.created_at + timedelta(hours=2)

    status, out, _ = run_main(capsys, "keys", "revoke", new.key_id)
    assert status == 0 and out.startswith(f"revoked {new.key_id} (etl) at ")
    assert refusal(keys, bearer(new_token.strip())).detail.startswith("revoked at")
    status, _, err = run_main(capsys, "keys", "revoke", "rk_0123456789ab")
    assert status == 1 and "no key rk_0123456789ab" in err

    entries = AuditLog(command_env.engine).since(datetime.now(UTC) - timedelta(hours=1))
    assert {entry.actor for entry in entries} == {f"cli:{getpass.getuser()}"}
    assert [(entry.action, entry.outcome) for entry in entries] == [
        ("keys.create", "ok"),
        ("keys.rotate", "ok"),
        ("keys.revoke", "ok"),
        ("keys.revoke", "failed: no key rk_0123456789ab"),
    ]
    assert entries[1].detail["replaces"] == key_id and entries[1].detail["key_id"] == new.key_id
    assert entries[2].detail["revoked_at"] is not None
    assert new_token.strip().partition(".")[2].encode() not in command_env.stored()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["keys", "create", "--scope", "launch"], "--name"),
        (["keys", "create", "--name", "x", "--scope", "admin"], "--scope"),
        (["keys", "create", "--name", "x", "--scope", "read", "--expires-in", "3 months"], "--expires-in"),
        (["keys", "create", "--name", "x", "--scope", "read", "--rate-per-minute", "0"], "--rate-per-minute"),
        (["keys", "rotate", "rk_0123456789ab", "--overlap", "-1h"], "--overlap"),
        (["audit", "--since", "last tuesday"], "--since"),
        (["audit", "--limit", "none"], "--limit"),
    ],
)
def test_command_mistakes_name_the_flag(command_env, capsys, argv, flag):
    status, out, err = run_main(capsys, *argv)

    assert status == 2 and out == ""
    assert f"argument {flag}" in err or f"arguments are required: {flag}" in err
    assert AuditLog(command_env.engine).since(NOW - timedelta(days=365)) == []  # nothing was done


def test_audit_since_a_time_or_a_duration_as_a_table_or_json(command_env, capsys):
    now = datetime.now(UTC)
    for at, actor in [(datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "webhook:billing"),
                      (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), "webhook:hubspot"),
                      (now - timedelta(hours=25), "key:rk_0123456789ab"),
                      (now - timedelta(hours=1), "unknown")]:  # fmt: skip
        AuditLog(command_env.engine, clock=lambda at=at: at).record(
            actor=actor, action="webhook", outcome="refused 401: signature does not match", client="192.0.2.9"
        )

    _, out, _ = run_main(capsys, "audit", "--since", "2026-12-01T00:00Z", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["actor"] for line in lines] == ["webhook:hubspot", "key:rk_0123456789ab", "unknown"]
    assert lines[0] == {"id": lines[0]["id"], "at": "2026-12-01T00:00:00+00:00", "actor": "webhook:hubspot",
                        "action": "webhook", "outcome": "refused 401: signature does not match",
                        "client": "192.0.2.9", "detail": None}  # fmt: skip

    _, out, _ = run_main(capsys, "audit", "--since", "24h")
    header, *rows = out.splitlines()
    assert header.split() == ["at", "actor", "action", "outcome", "client", "detail"]
    assert [row.split()[1] for row in rows] == ["unknown"]
    _, out, _ = run_main(capsys, "audit")  # the last 24 hours
    assert len(out.splitlines()) == 2
    _, out, _ = run_main(capsys, "audit", "--since", "2026-11-01T00:00", "--limit", "2", "--json")
    assert [json.loads(line)["actor"] for line in out.splitlines()] == ["key:rk_0123456789ab", "unknown"]


def test_the_commands_run_as_processes_on_the_receivers_database(database):
    """As an operator runs them: no webhook secret in the environment, only where the database is."""
    env = {name: value for name, value in os.environ.items() if name not in DATABASE_VARIABLES}
    env.update(database.env)

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "revenue_pipelines.receiver", *argv], env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    created = run("keys", "create", "--name", "reporting", "--scope", "read", "--expires-in", "30d")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert "This token is not shown again" in created.stderr
    key = KeyStore(database.engine).authorize(bearer(token), "read")

    listed = run("keys", "list")
    assert listed.returncode == 0 and key.key_id in listed.stdout
    assert token.partition(".")[2] not in listed.stdout + listed.stderr
    assert run("keys", "revoke", key.key_id).returncode == 0
    audited = run("audit", "--json")
    assert [json.loads(line)["action"] for line in audited.stdout.splitlines()] == [
        "keys.create", "keys.list", "keys.revoke"
    ]  # fmt: skip
    assert token.partition(".")[2] not in audited.stdout
    assert token.partition(".")[2].encode() not in database.stored()


def test_the_commands_refuse_to_guess_where_the_database_is(tmp_path):
    env = {name: value for name, value in os.environ.items() if name not in DATABASE_VARIABLES}
    finished = subprocess.run([sys.executable, "-m", "revenue_pipelines.receiver", "keys", "list"], env=env,
                              capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)  # fmt: skip

    assert finished.returncode == 2
    assert "DAGSTER_PG_HOST" in finished.stderr and "RECEIVER_QUEUE_PATH" in finished.stderr
