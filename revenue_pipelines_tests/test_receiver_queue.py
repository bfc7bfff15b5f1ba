"""The receiver's queue, on SQLite and on a real PostgreSQL: what the sensor drains, group commit
that still tells each sender the truth, retention, nothing acknowledged lost to a SIGKILL under
load, and no start without secrets."""

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from revenue_pipelines.lib.identity import salesforce_id_18 as polars_salesforce_id_18
from revenue_pipelines.receiver.app import create_app
from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect, database_url
from revenue_pipelines.receiver.keys import KeyStore
from revenue_pipelines.receiver.queue import Event, SqlEventQueue, open_queue
from revenue_pipelines.receiver.salesforce_ids import salesforce_id_18
from revenue_pipelines.receiver.settings import SettingsError, read_settings
from revenue_pipelines_tests.postgres_server import connections_to, fresh_database
from revenue_pipelines_tests.receiver_process import HUBSPOT_SECRET, receiver_env, start
from revenue_pipelines_tests.test_receiver import PORTAL, hubspot_events, hubspot_headers

SENDERS = 16


def event(number: int, source: str = "hubspot") -> Event:
    return Event(
        source=source,
        event_id=f"evt-{number}",
        object_type="contact",
        object_id=str(1000 + number),
        occurred_at=datetime(2026, 11, 20, 9, number % 60, tzinfo=UTC),
        payload={"n": number, "name": "Zoë"},
    )


NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> Iterator[dict[str, str]]:
    """The variables that say where the queue is: a SQLite file, or a fresh database in the module's
    PostgreSQL (as the receiver finds it from DAGSTER_PG_*)."""
    if request.param == "sqlite":
        yield {"RECEIVER_QUEUE_PATH": str(tmp_path / "receiver" / "queue.db")}
    else:
        with fresh_database(request.getfixturevalue("postgres")) as settings:
            yield settings


@pytest.fixture
def url(location) -> sa.URL:
    return database_url(location)


def test_the_queue_keeps_each_event_once_until_a_run_takes_it_and_gives_back_a_failed_runs(url):
    with open_queue(url, clock=Clock()) as queue:
        assert (queue.depth(), queue.oldest_age_seconds(), queue.pending(10)) == (0, None, [])
        assert queue.put([event(1), event(2), event(1, source="billing")]) == 3
        assert queue.put([event(2), event(3)]) == 1  # a duplicate is stored once
        assert queue.put([event(4), event(4)]) == 1  # also within one delivery
        assert queue.put([]) == 0
        assert queue.depth() == 5
        assert queue.oldest_age_seconds() == 0.0

        first = queue.pending(2)
        assert [(item.source, item.event_id) for item in first] == [("hubspot", "evt-1"), ("hubspot", "evt-2")]
        assert first[0].payload == {"n": 1, "name": "Zoë"}
        assert first[0].occurred_at == datetime(2026, 11, 20, 9, 1, tzinfo=UTC)
        assert first[0].received_at == NOW and first[0].launched_run_id is None

        assert queue.mark_launched([item.id for item in first], "run-a") == 2
        assert queue.mark_launched([first[0].id], "run-b") == 0  # taken already
        assert queue.depth() == 3
        assert [item.event_id for item in queue.pending(10)] == ["evt-1", "evt-3", "evt-4"]  # billing's, then hubspot's
        assert queue.put([event(1)]) == 0  # still a duplicate after launch

        assert queue.release("run-a") == 2
        assert queue.release("run-a") == 0
        assert queue.depth() == 5
        assert [item.event_id for item in queue.pending(2)] == ["evt-1", "evt-2"]

    # The database is the queue: reopened, it holds the same.
    with open_queue(url) as reopened:
        assert reopened.depth() == 5


def test_the_sqlite_queue_is_a_wal_file_synced_in_full(tmp_path):
    path = tmp_path / "receiver" / "queue.db"
    with open_queue(database_url({"RECEIVER_QUEUE_PATH": str(path)})) as queue, queue.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert path.exists()


def test_the_oldest_pending_events_age_counts_from_its_arrival(url):
    clock = Clock()
    with open_queue(url, clock=clock) as queue:
        queue.put([event(1)])
        clock.now += timedelta(minutes=3)
        queue.put([event(2)])
        clock.now += timedelta(seconds=7)
        assert queue.oldest_age_seconds() == 187.0
        queue.mark_launched([queue.pending(1)[0].id], "run-a")
        assert queue.oldest_age_seconds() == 7.0


def test_times_come_back_in_utc_and_order_as_instants_whatever_zone_they_were_given_in(url):
    """SQLite keeps times as text: in the sender's zone, 13:30+02:00 would sort after 12:00Z."""
    east = timezone(timedelta(hours=2))
    clock = Clock(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    with open_queue(url, clock=clock) as queue:
        queue.put([event(1)])
        clock.now = datetime(2026, 11, 20, 13, 30, tzinfo=east)  # 11:30Z, earlier than the first
        queue.put([Event("hubspot", "evt-east", "contact", "1", datetime(2026, 11, 20, 1, 0, tzinfo=east), {})])
        clock.now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
        assert queue.oldest_age_seconds() == 1800.0
        east_event = queue.pending(10)[1]
        assert east_event.occurred_at == datetime(2026, 11, 19, 23, 0, tzinfo=UTC)
        assert east_event.occurred_at.tzinfo == UTC and east_event.received_at.tzinfo == UTC
        assert east_event.received_at == datetime(2026, 11, 20, 11, 30, tzinfo=UTC)


@contextlib.contextmanager
def writes_held(url: sa.URL) -> Iterator[None]:
    """Keep every writer out of the queue's table until the block ends (the commit the writer is
    in meanwhile waits for it), so the puts made meanwhile pile up for the next transaction."""
    engine = connect(url)
    try:
        with engine.begin() as connection:  # on SQLite, BEGIN IMMEDIATE: the database's write lock
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("LOCK TABLE receiver_events IN EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def put_in_threads(queue: SqlEventQueue, deliveries: list[list[Event]]) -> tuple[list[threading.Thread], list]:
    """Each delivery put from a thread of its own, as the receiver's request threads do; the outcomes
    (a count or the exception) in the order of `deliveries`."""
    outcomes: list = [None] * len(deliveries)

    def put(index: int) -> None:
        try:
            outcomes[index] = queue.put(deliveries[index])
        except Exception as error:  # the outcome under test
            outcomes[index] = error

    threads = [threading.Thread(target=put, args=(index,)) for index in range(len(deliveries))]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_concurrent_puts_share_one_commit_and_each_caller_hears_how_many_of_its_events_were_new(url):
    callers = 12
    with open_queue(url) as queue:
        commits = []
        sa.event.listen(queue.engine, "commit", lambda _connection: commits.append(1))
        with writes_held(url):
            first, _ = put_in_threads(queue, [[event(999)]])
            wait_until(lambda: queue._waiting.empty(), "the writer took the first put")
            time.sleep(0.2)  # the writer is now waiting for the lock, in the first put's transaction
            # Every caller brings one event of its own and the one they all share.
            threads, outcomes = put_in_threads(queue, [[event(100 + n), event(0)] for n in range(callers)])
            wait_until(lambda: queue._waiting.qsize() == callers, "every caller is waiting")
            assert outcomes == [None] * callers  # nobody hears anything before the commit
        for thread in first + threads:
            thread.join(30)

        assert len(commits) == 2  # the first put's, then one for all twelve callers
        assert sorted(outcomes) == [1] * (callers - 1) + [2]  # the shared event is new for one caller only
        assert queue.depth() == 1 + callers + 1
        assert queue.put([event(0), event(100)]) == 0


def test_a_caller_whose_events_cannot_be_stored_fails_alone(url):
    bad = Event("hubspot", "evt-bad", "contact", "1", None, {"at": datetime(2026, 11, 20, tzinfo=UTC)})  # not JSON
    with open_queue(url) as queue:
        with writes_held(url):
            first, _ = put_in_threads(queue, [[event(999)]])
            wait_until(lambda: queue._waiting.empty(), "the writer took the first put")
            time.sleep(0.2)
            threads, outcomes = put_in_threads(queue, [[event(1)], [bad], [event(2), event(1)]])
            wait_until(lambda: queue._waiting.qsize() == 3, "every caller is waiting")
        for thread in first + threads:
            thread.join(30)

        assert outcomes[0] == 1 and outcomes[2] == 1
        assert isinstance(outcomes[1], sa.exc.StatementError)
        assert sorted(item.event_id for item in queue.pending(10)) == ["evt-1", "evt-2", "evt-999"]


def test_a_put_given_up_before_the_writer_took_it_is_not_written_and_the_writer_carries_on(url):
    with open_queue(url) as queue:

        async def give_up() -> None:
            waiting = asyncio.create_task(queue.put_async([event(2)]))
            while queue._waiting.qsize() < 1:
                await asyncio.sleep(0.01)
            waiting.cancel()  # a request cancelled while it waits, e.g. at shutdown
            with pytest.raises(asyncio.CancelledError):
                await waiting

        with writes_held(url):
            first, outcomes = put_in_threads(queue, [[event(1)]])
            wait_until(lambda: queue._waiting.empty(), "the writer took the first put")
            time.sleep(0.2)
            asyncio.run(give_up())
        for thread in first:
            thread.join(30)

        assert outcomes == [1]
        assert asyncio.run(queue.put_async([event(3)])) == 1
        assert [item.event_id for item in queue.pending(10)] == ["evt-1", "evt-3"]


def test_retention_purges_launched_events_in_bounded_deletes_but_not_an_open_batch(url):
    clock = Clock()
    with open_queue(url, clock=clock) as queue:
        queue.put([event(n) for n in range(1, 7)])
        queue.mark_launched([1, 2], "run-a")
        queue.mark_launched([3], "skipped-unmapped")
        queue.mark_launched([4], "crm-changes-2026-11-20-4-4-1")  # its run has not finished
        clock.now += timedelta(days=6)
        queue.mark_launched([5], "run-b")  # event 6 stays pending
        clock.now += timedelta(days=1, seconds=1)

        assert queue.purge(timedelta(days=7), 2, keep_prefix="crm-changes-") == 2
        assert queue.purge(timedelta(days=7), 2, keep_prefix="crm-changes-") == 1
        assert queue.purge(timedelta(days=7), 2, keep_prefix="crm-changes-") == 0

        assert queue.markers("") == {"crm-changes-2026-11-20-4-4-1": [4], "run-b": [5]}
        assert [item.id for item in queue.pending(10)] == [6]
        # Past the retention a redelivery would be new again: why it is longer than any sender redelivers.
        assert queue.put([event(1), event(5)]) == 1
        assert [item.id for item in queue.pending(10)] == [6, 7]


def test_a_closed_queue_leaves_no_connection_open(postgres):
    with fresh_database(postgres) as settings:
        queue = open_queue(database_url(settings))
        assert queue.put([event(1)]) == 1
        assert (queue.depth(), len(queue.markers("run-"))) == (1, 0)
        assert connections_to(settings) >= 1
        queue.close()
        wait_until(lambda: connections_to(settings) == 0, "the queue's sessions ended")
        with pytest.raises(RuntimeError, match="closed"):
            queue.put([event(2)])


def test_markers_are_found_by_postgresqls_index_not_a_scan(postgres):
    with fresh_database(postgres) as settings, open_queue(database_url(settings)) as queue:
        queue.put([event(n) for n in range(20)])
        queue.mark_launched(range(1, 11), "crm-changes-2026-11-18-1-10-1")
        statements = []
        sa.event.listen(
            queue.engine,
            "before_cursor_execute",
            lambda _c, _cursor, statement, parameters, _context, _many: statements.append((statement, parameters)),
        )
        assert list(queue.markers("crm-changes-")) == ["crm-changes-2026-11-18-1-10-1"]
        [(statement, parameters)] = statements
        with queue.engine.connect() as connection:
            connection.exec_driver_sql("SET enable_seqscan = off")  # a 20-row table is otherwise scanned
            plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters))
        assert "receiver_events_marker" in plan and "Seq Scan" not in plan, plan


def test_salesforce_ids_are_normalised_as_the_pipeline_normalises_them():
    ids = [
        "00D5g000004Dqk2", "00D5g000004Dqk2EAC", "00D5g000004DQK2", "00d5g000004dqk2", "0065g00000XyZaB",
        "00D5g000004Dqk2AAA", "00D5g000004Dqk", "00D5g000004Dqk2E", "00D5g000004Dqk2-AC", "", "ABCDEFGHIJKLMNO",
    ]  # fmt: skip
    expected = pl.DataFrame({"id": ids}).select(polars_salesforce_id_18(pl.col("id")))["id"].to_list()
    assert [salesforce_id_18(value) for value in ids] == expected
    assert expected[0] == expected[1] == "00D5g000004Dqk2EAC"
    assert expected[5] is None  # a suffix that does not match


def test_the_receiver_refuses_to_start_without_its_secrets_naming_all_of_them(tmp_path):
    env = receiver_env(
        tmp_path / "queue.db",
        HUBSPOT_APP_CLIENT_SECRET=None,
        SALESFORCE_ORGANIZATION_ID=None,
        RECEIVER_QUEUE_PATH=None,
        RECEIVER_WEBHOOK_SECRETS="billing=whsec_c2hvcnQ=,erp",
    )
    finished = run_receiver_to_its_end(env)
    assert finished.returncode == 2
    message = finished.stderr
    for name in (
        "HUBSPOT_APP_CLIENT_SECRET",
        "SALESFORCE_ORGANIZATION_ID",
        "RECEIVER_QUEUE_PATH (or DAGSTER_HOME, or DAGSTER_PG_HOST for PostgreSQL)",
    ):
        assert name in message
    assert "RECEIVER_WEBHOOK_SECRETS entry 1: the secret of billing" in message
    assert "RECEIVER_WEBHOOK_SECRETS entry 2" in message
    assert "c2hvcnQ" not in message  # the secret given is not shown
    assert not (tmp_path / "queue.db").exists()


def test_a_postgresql_port_that_is_no_number_is_named_and_the_password_never_shown():
    env = receiver_env(None, DAGSTER_PG_HOST="db.internal", DAGSTER_PG_PORT="fivefour", DAGSTER_PG_PASSWORD="s3cret-pw")
    with pytest.raises(SettingsError, match="DAGSTER_PG_PORT must be a port number") as refused:
        read_settings(env)
    assert "s3cret-pw" not in str(refused.value)
    settings = read_settings({**env, "DAGSTER_PG_PORT": "5433"})
    assert settings.database_url.port == 5433 and "s3cret-pw" not in repr(settings)


def test_the_queue_defaults_to_the_dagster_instance_folder(tmp_path):
    home = tmp_path / "dagster_home"
    receiver = start(receiver_env(None, RECEIVER_QUEUE_PATH=None, DAGSTER_HOME=str(home)), tmp_path / "log")
    try:
        assert httpx.get(f"{receiver.url}/healthz", timeout=10).json()["queue_depth"] == 0
        assert (home / "receiver" / "queue.db").exists()
    finally:
        receiver.stop()


def test_a_receiver_given_dagster_pg_settings_queues_in_postgresql_and_never_logs_the_password(postgres, tmp_path):
    with fresh_database(postgres) as settings:
        receiver = start(receiver_env(None, **settings), tmp_path / "receiver.log")
        try:
            body = json.dumps(hubspot_events(7001, 7002))
            with httpx.Client(base_url=receiver.url, timeout=10) as client:
                answers = [client.post("/webhooks/hubspot", content=body, headers=hubspot_headers(body)) for _ in "12"]
        finally:
            receiver.stop()
        assert [answer.json() for answer in answers] == [{"accepted": 2, "new": 2}, {"accepted": 2, "new": 0}]
        assert receiver.database_url.get_backend_name() == "postgresql"
        with open_queue(receiver.database_url) as queue:
            assert sorted(item.event_id for item in queue.pending(10)) == [f"{PORTAL}:7001", f"{PORTAL}:7002"]
        log = receiver.log()
        port, name = settings["DAGSTER_PG_PORT"], settings["DAGSTER_PG_DB"]
        assert f"queue postgresql+psycopg2://dagster:***@127.0.0.1:{port}/{name}" in log
        assert settings["DAGSTER_PG_PASSWORD"] not in log
        assert "stopped; queue closed" in log  # SIGTERM: uvicorn's graceful stop, then the queue's close
        wait_until(lambda: connections_to(settings) == 0, "the stopped receiver's sessions ended")


def test_a_receiver_that_cannot_open_its_postgresql_says_so_without_the_password(postgres):
    env = receiver_env(None, **{**postgres, "DAGSTER_PG_PASSWORD": "not-the-password"})
    finished = run_receiver_to_its_end(env)
    assert finished.returncode == 2
    assert f"cannot open the queue at postgresql+psycopg2://dagster:***@127.0.0.1:{postgres['DAGSTER_PG_PORT']}/" in (
        finished.stderr
    )
    assert "password authentication failed" in finished.stderr
    assert "not-the-password" not in finished.stderr + finished.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and PDEATHSIG")
def test_sigkill_under_load_loses_no_acknowledged_event(location, url, tmp_path):
    receiver = start(receiver_env(None, **location), tmp_path / "receiver.log")
    acknowledged: list[set[str]] = [set() for _ in range(SENDERS)]
    refused: list[int] = []
    stop = threading.Event()

    def send(sender: int) -> None:
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            number = 0
            while not stop.is_set():
                number += 1
                event_id = sender * 1_000_000 + number
                body = json.dumps(hubspot_events(event_id, event_id + 500_000))
                try:
                    response = client.post("/webhooks/hubspot", content=body, headers=hubspot_headers(body))
                except httpx.TransportError:
                    continue  # in flight when the receiver died: never acknowledged
                if response.status_code == 200:
                    acknowledged[sender].update(f"{event['portalId']}:{event['eventId']}" for event in json.loads(body))
                else:
                    refused.append(response.status_code)

    senders = [threading.Thread(target=send, args=(number,), daemon=True) for number in range(SENDERS)]
    try:
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 60
        while sum(map(len, acknowledged)) < 600 and time.monotonic() < deadline:
            time.sleep(0.02)
        receiver.kill()  # mid-load: senders are still sending
    finally:
        stop.set()
        for sender in senders:
            sender.join(15)
        receiver.stop()

    acknowledged_ids = set().union(*acknowledged)
    assert refused == []
    assert len(acknowledged_ids) >= 600
    with open_queue(url) as queue:
        stored = {item.event_id for item in queue.pending(1_000_000)}
    assert acknowledged_ids - stored == set()
    assert HUBSPOT_SECRET not in receiver.log()


def test_an_oversized_body_is_refused_while_it_is_read_not_after(tmp_path):
    """Straight through ASGI, counting what the app reads of a 64 MiB body sent without Content-Length."""
    settings = read_settings(receiver_env(tmp_path / "queue.db"))
    chunk = b" " * (64 * 1024)
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": chunk, "more_body": received < 1024}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/webhooks/billing", "raw_path": b"/webhooks/billing", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "server": ("127.0.0.1", 8780),
        "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    engine = connect(settings.database_url)
    with SqlEventQueue(engine) as queue:
        asyncio.run(create_app(settings, queue, KeyStore(engine), AuditLog(engine))(scope, receive, send))
        assert queue.depth() == 0
    engine.dispose()

    assert sent[0]["status"] == 413
    assert received <= 17  # 1 MiB and the chunk that passed it, not 64 MiB


def test_markers_by_prefix_and_remarking_with_the_runs_id(url):
    with open_queue(url) as queue:
        queue.put([event(n) for n in range(4)])
        queue.mark_launched([1, 2], "crm-changes-2026-11-18-1-2-1")
        queue.mark_launched([3], "crm_changesX")  # `_` is no wildcard
        assert queue.markers("crm-changes-") == {"crm-changes-2026-11-18-1-2-1": [1, 2]}
        assert queue.markers("crm_changes") == {"crm_changesX": [3]}

        assert queue.remark("crm-changes-2026-11-18-1-2-1", "run-id") == 2
        assert queue.markers("crm-changes-") == {}
        assert queue.markers("run-id") == {"run-id": [1, 2]}
        assert queue.depth() == 1


def run_receiver_to_its_end(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The receiver, in the foreground, for a start that is meant to fail: its status and output."""
    return subprocess.run(
        [sys.executable, "-m", "revenue_pipelines.receiver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
