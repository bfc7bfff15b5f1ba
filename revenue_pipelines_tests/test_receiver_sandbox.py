"""The sandbox's CRM webhooks, through the real receiver, end in its queue: one event per change."""

from datetime import UTC, datetime

import polars as pl

from revenue_pipelines.receiver.queue import SqliteEventQueue
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
    with SqliteEventQueue(tmp_path / "queue.db") as queue:
        events = queue.pending(100)
    assert sorted((e.source, e.object_type, e.object_id) for e in events) == sorted(
        [("hubspot", "contact", str(c)) for c in contacts] + [("salesforce", "Opportunity", opportunity)]
    )
