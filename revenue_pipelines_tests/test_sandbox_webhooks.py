"""The sandbox sends HubSpot's and Salesforce's webhooks for its changes, as the CRMs send them."""

import json
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from hubspot.utils.signature import Signature

from revenue_pipelines.sandbox.webhooks import OUTBOUND_NAMESPACE

ACK = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NAMESPACE}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)


class _Receiver(ThreadingHTTPServer):
    """Records what arrives; answers each request with the next scripted status (then 200)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.ack = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        answer = ACK.encode() if self.path.endswith("salesforce") and self.server.ack else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None: ...


@pytest.fixture
def receiver():
    server = _Receiver()
    yield server
    server.shutdown()
    server.server_close()


def test_a_hubspot_edit_is_posted_as_an_event_signed_with_v3_for_the_public_url(sandbox, receiver):
    public = "https://hooks.example.com/revenue"
    sandbox.webhooks.send_to(receiver.url, public_url=public)
    contacts = sandbox.hubspot.truth("contacts")["id"].head(2).to_list()
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    sandbox.hubspot.touch("contacts", contacts, at)

    [(path, headers, body)] = receiver.received
    assert path == "/webhooks/hubspot" and headers["Content-Type"] == "application/json"
    assert Signature.is_valid(
        headers["X-HubSpot-Signature-v3"],
        sandbox.env()["HUBSPOT_APP_CLIENT_SECRET"],
        body.decode(),
        f"{public}/webhooks/hubspot",
        "POST",
        "v3",
        headers["X-HubSpot-Request-Timestamp"],
    )
    events = json.loads(body)
    assert [event["objectId"] for event in events] == contacts
    assert {event["subscriptionType"] for event in events} == {"contact.propertyChange"}
    assert events[0]["occurredAt"] == int(at.timestamp() * 1000) and events[0]["eventId"] != events[1]["eventId"]
    assert [delivery.acknowledged for delivery in sandbox.webhooks.deliveries] == [True]


def test_a_salesforce_edit_is_an_outbound_message_redelivered_until_acknowledged(sandbox, receiver):
    sandbox.webhooks.send_to(receiver.url)
    record = sandbox.salesforce.truth("Opportunity").filter(~pl.col("IsDeleted"))["Id"][0]
    receiver.statuses = [503]  # the first attempt fails: Salesforce sends it again
    sandbox.salesforce.touch("Opportunity", record, datetime(2026, 11, 20, 9, 30, tzinfo=UTC))

    assert len(receiver.received) == 2 and receiver.received[0][2] == receiver.received[1][2]
    path, headers, body = receiver.received[-1]
    assert path == "/webhooks/salesforce" and headers["Content-Type"].startswith("text/xml")
    namespaces = {"o": OUTBOUND_NAMESPACE, "sf": "urn:sobject.enterprise.soap.sforce.com"}
    notifications = ET.fromstring(body).find(".//o:notifications", namespaces)
    assert (
        notifications.findtext("o:OrganizationId", namespaces=namespaces) == sandbox.env()["SALESFORCE_ORGANIZATION_ID"]
    )
    assert notifications.findtext("o:Notification/o:sObject/sf:Id", namespaces=namespaces) == record
    [delivery] = sandbox.webhooks.deliveries
    assert (delivery.acknowledged, delivery.attempts, delivery.status) == (True, 2, 200)

    receiver.ack = False  # a 200 without <Ack>true</Ack> is no acknowledgement
    sandbox.salesforce.touch("Opportunity", record, datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    assert not sandbox.webhooks.deliveries[-1].acknowledged and sandbox.webhooks.deliveries[-1].attempts == 3


def test_nothing_is_sent_until_a_receiver_is_named(sandbox, receiver):
    sandbox.hubspot.touch("deals", sandbox.hubspot.truth("deals")["id"].head(1).to_list(), datetime.now(UTC))
    assert not receiver.received and not sandbox.webhooks.deliveries
