"""The receiver's queue and start-up: what the sensor will drain, nothing acknowledged lost to a
SIGKILL under load, and no start without secrets."""

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
import pytest

from revenue_pipelines.lib.identity import salesforce_id_18 as polars_salesforce_id_18
from revenue_pipelines.receiver.app import create_app
from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect, sqlite_url
from revenue_pipelines.receiver.keys import KeyStore
from revenue_pipelines.receiver.queue import Event, SqliteEventQueue
from revenue_pipelines.receiver.salesforce_ids import salesforce_id_18
from revenue_pipelines.receiver.settings import read_settings
from revenue_pipelines_tests.receiver_process import HUBSPOT_SECRET, receiver_env, start
from revenue_pipelines_tests.test_receiver import hubspot_events, hubspot_headers

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


def test_the_queue_keeps_each_event_once_until_a_run_takes_it_and_gives_back_a_failed_runs(tmp_path):
    with SqliteEventQueue(tmp_path / "receiver" / "queue.db", clock=Clock()) as queue:
        assert (queue.depth(), queue.oldest_age_seconds(), queue.pending(10)) == (0, None, [])
        assert queue.put([event(1), event(2), event(1, source="billing")]) == 3
        assert queue.put([event(2), event(3)]) == 1  # a duplicate is stored once
        assert queue.put([]) == 0
        assert queue.depth() == 4
        assert queue.oldest_age_seconds() == 0.0

        first = queue.pending(2)
        assert [(item.source, item.event_id) for item in first] == [("hubspot", "evt-1"), ("hubspot", "evt-2")]
        assert first[0].payload == {"n": 1, "name": "Zoë"}
        assert first[0].occurred_at == datetime(2026, 11, 20, 9, 1, tzinfo=UTC)
        assert first[0].received_at is not None and first[0].launched_run_id is None

        assert queue.mark_launched([item.id for item in first], "run-a") == 2
        assert queue.mark_launched([first[0].id], "run-b") == 0  # taken already
        assert queue.depth() == 2
        assert [item.event_id for item in queue.pending(10)] == ["evt-1", "evt-3"]  # billing's, then hubspot's
        assert queue.put([event(1)]) == 0  # still a duplicate after launch

        assert queue.release("run-a") == 2
        assert queue.release("run-a") == 0
        assert queue.depth() == 4
        assert [item.event_id for item in queue.pending(2)] == ["evt-1", "evt-2"]

    # The file is the queue: reopened, it holds the same; WAL and FULL sync are in force.
    with SqliteEventQueue(tmp_path / "receiver" / "queue.db") as reopened:
        assert reopened.depth() == 4
        assert reopened._connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert reopened._connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_the_oldest_pending_events_age_counts_from_its_arrival(tmp_path):
    clock = Clock()
    with SqliteEventQueue(tmp_path / "queue.db", clock=clock) as queue:
        queue.put([event(1)])
        clock.now += timedelta(minutes=3)
        queue.put([event(2)])
        clock.now += timedelta(seconds=7)
        assert queue.oldest_age_seconds() == 187.0
        queue.mark_launched([queue.pending(1)[0].id], "run-a")
        assert queue.oldest_age_seconds() == 7.0


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
    finished = subprocess.run(
        [sys.executable, "-m", "revenue_pipelines.receiver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    message = finished.stderr
    for name in ("HUBSPOT_APP_CLIENT_SECRET", "SALESFORCE_ORGANIZATION_ID", "RECEIVER_QUEUE_PATH (or DAGSTER_HOME)"):
        assert name in message
    assert "RECEIVER_WEBHOOK_SECRETS entry 1: the secret of billing" in message
    assert "RECEIVER_WEBHOOK_SECRETS entry 2" in message
    assert "c2hvcnQ" not in message  # the secret given is not shown
    assert not (tmp_path / "queue.db").exists()


def test_the_queue_defaults_to_the_dagster_instance_folder(tmp_path):
    home = tmp_path / "dagster_home"
    receiver = start(receiver_env(None, RECEIVER_QUEUE_PATH=None, DAGSTER_HOME=str(home)), tmp_path / "log")
    try:
        assert httpx.get(f"{receiver.url}/healthz", timeout=10).json()["queue_depth"] == 0
        assert (home / "receiver" / "queue.db").exists()
    finally:
        receiver.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and PDEATHSIG")
def test_sigkill_under_load_loses_no_acknowledged_event(tmp_path):
    queue_path = tmp_path / "queue.db"
    receiver = start(receiver_env(queue_path), tmp_path / "receiver.log")
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
    with SqliteEventQueue(queue_path) as queue:
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
    engine = connect(sqlite_url(settings.queue_path))
    with SqliteEventQueue(settings.queue_path) as queue:
        asyncio.run(create_app(settings, queue, KeyStore(engine), AuditLog(engine))(scope, receive, send))
        assert queue.depth() == 0
    engine.dispose()

    assert sent[0]["status"] == 413
    assert received <= 17  # 1 MiB and the chunk that passed it, not 64 MiB


def test_markers_by_prefix_and_remarking_with_the_runs_id(tmp_path):
    with SqliteEventQueue(tmp_path / "queue.db") as queue:
        queue.put([event(n) for n in range(4)])
        queue.mark_launched([1, 2], "crm-changes-2026-11-18-1-2-1")
        queue.mark_launched([3], "crm_changesX")  # `_` is no wildcard
        assert queue.markers("crm-changes-") == {"crm-changes-2026-11-18-1-2-1": [1, 2]}
        assert queue.markers("crm_changes") == {"crm_changesX": [3]}

        assert queue.remark("crm-changes-2026-11-18-1-2-1", "run-id") == 2
        assert queue.markers("crm-changes-") == {}
        assert queue.markers("run-id") == {"run-id": [1, 2]}
        assert queue.depth() == 1
