"""The sandbox's CRM webhooks, through the real receiver, end in its queue: one event per change."""

import socket
import subprocess
import sys
from datetime import UTC, datetime

import polars as pl

from revenue_pipelines.receiver.database import sqlite_url
from revenue_pipelines.receiver.queue import open_queue
from revenue_pipelines_tests.receiver_process import receiver_env, start


def test_the_sandboxs_edits_reach_the_receivers_queue_once_each(sandbox, tmp_path):
    secrets = sandbox.env()
    env = receiver_env(
        tmp_path / "queue.db",
        HUBSPOT_APP_CLIENT_SECRET=secrets["HUBSPOT_APP_CLIENT_SECRET"],
        SALESFORCE_ORGANIZATION_ID=secrets["SALESFORCE_ORGANIZATION_ID"],
        RECEIVER_PUBLIC_URL=None,  # the receiver is reached directly: its own address is what HubSpot signs
    )
    receiver = start(env, tmp_path / "receiver.log")
    try:
        sandbox.webhooks.send_to(receiver.url)
        contacts = sandbox.hubspot.truth("contacts")["id"].head(3).to_list()
        opportunity = sandbox.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))["Id"][0]
        at = datetime.now(UTC)
        sandbox.hubspot.touch("contacts", contacts, at)
        sandbox.salesforce.touch("Opportunity", opportunity, at)
    finally:
        receiver.stop()

    assert all(delivery.acknowledged for delivery in sandbox.webhooks.deliveries)
    with open_queue(sqlite_url(tmp_path / "queue.db")) as queue:
        events = queue.pending(100)
    assert sorted((e.source, e.object_type, e.object_id) for e in events) == sorted(
        [("hubspot", "contact", str(c)) for c in contacts] + [("salesforce", "Opportunity", opportunity)]
    )


def test_sandbox_run_with_live_changes_feeds_a_receiver_started_beside_the_command(tmp_path):
    """`make dev`'s wiring, with a short command instead of the UI: the sandbox edits records now and
    then, its webhooks reach the receiver running in the sandbox's environment, and are queued."""
    port = _free_port()
    queue_path = tmp_path / "queue.db"
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "run", "--no-bigquery", "--companies", "5"]
    command += ["--webhooks-to", f"http://127.0.0.1:{port}", "--live-changes", "0.5"]
    command += ["--", "sh", "-c", f"{sys.executable} -m revenue_pipelines.receiver & sleep 6; kill $!; wait"]
    env = {**receiver_env(queue_path, RECEIVER_PORT=str(port), RECEIVER_PUBLIC_URL=None)}
    for secret in ("HUBSPOT_APP_CLIENT_SECRET", "SALESFORCE_ORGANIZATION_ID"):
        del env[secret]  # the sandbox's own, from its environment
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    with open_queue(sqlite_url(queue_path)) as queue:
        events = queue.pending(100)
    assert events and {event.source for event in events} <= {"hubspot", "salesforce"}
    assert all(event.occurred_at.date() == datetime.now(UTC).date() for event in events)  # edited now


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
