"""The webhook receiver over real HTTP: signed deliveries are queued before they are acknowledged,
anything else is refused with the status that says why, and the logs never carry a secret."""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import defusedxml.ElementTree as SafeElementTree
import httpx
import pytest
from hubspot.utils.signature import Signature
from standardwebhooks.webhooks import Webhook

from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect, sqlite_url
from revenue_pipelines.receiver.queue import SqlEventQueue, open_queue
from revenue_pipelines_tests.receiver_process import (
    BILLING_SECRET,
    ERP_SECRET,
    HUBSPOT_SECRET,
    ORGANIZATION_ID_15,
    ORGANIZATION_ID_18,
    PUBLIC_URL,
    Receiver,
    receiver_env,
    start,
)

PORTAL = 4_210_987
MIB = 1024 * 1024


@pytest.fixture
def receiver(tmp_path) -> Iterator[Receiver]:
    process = start(receiver_env(tmp_path / "queue.db"), tmp_path / "receiver.log")
    yield process
    process.stop()


@pytest.fixture
def queue(tmp_path) -> Iterator[SqlEventQueue]:
    with open_queue(sqlite_url(tmp_path / "queue.db")) as opened:
        yield opened


@pytest.fixture
def client(receiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.url, timeout=10) as opened:
        yield opened


@pytest.fixture(scope="module")
def shared_receiver(tmp_path_factory) -> Iterator[Receiver]:
    """One receiver for the refusal tests, which leave its queue as they found it."""
    folder = tmp_path_factory.mktemp("shared_receiver")
    process = start(receiver_env(folder / "queue.db"), folder / "receiver.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def shared_queue(shared_receiver) -> Iterator[SqlEventQueue]:
    with open_queue(shared_receiver.database_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def shared_client(shared_receiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_receiver.url, timeout=10) as opened:
        yield opened


def queued(queue: SqlEventQueue, source: str) -> dict[str, object]:
    return {event.event_id: event for event in queue.pending(10_000) if event.source == source}


# HubSpot ----------------------------------------------------------------------------------------


def hubspot_events(*event_ids: int, object_type: str = "contact") -> list[dict]:
    return [
        {
            "eventId": event_id,
            "subscriptionId": 2_411_051,
            "portalId": PORTAL,
            "appId": 9_876_543,
            "occurredAt": 1_795_000_000_000 + event_id,
            "subscriptionType": f"{object_type}.propertyChange",
            "attemptNumber": 0,
            "objectId": 51_000 + event_id,
            "propertyName": "lifecyclestage",
            "propertyValue": "customer",
            "changeSource": "CRM_UI",
        }
        for event_id in event_ids
    ]


def hubspot_headers(
    body: bytes | str,
    path: str = "/webhooks/hubspot",
    secret: str = HUBSPOT_SECRET,
    base: str = PUBLIC_URL,
    age: timedelta = timedelta(0),
) -> dict[str, str]:
    """Signed as HubSpot signs, by hubspot-api-client's own helper, over the public URI."""
    timestamp = str(int((datetime.now(UTC) - age).timestamp() * 1000))
    text = body.decode() if isinstance(body, bytes) else body
    signature = Signature.get_signature(
        secret, text, signature_version="v3", http_uri=base + path, http_method="POST", timestamp=timestamp
    )
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": timestamp,
    }


def test_hubspot_deliveries_signed_by_hubspots_helper_are_queued_before_the_answer(client, queue):
    body = json.dumps(hubspot_events(101, 102) + hubspot_events(103, object_type="deal"))
    headers = hubspot_headers(body)
    # The helper agrees that this is a valid v3 signature for the public URI (and only for it).
    assert Signature.is_valid(
        headers["X-HubSpot-Signature-v3"], HUBSPOT_SECRET, body, PUBLIC_URL + "/webhooks/hubspot", "POST", "v3",
        headers["X-HubSpot-Request-Timestamp"],
    )  # fmt: skip

    response = client.post("/webhooks/hubspot", content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "new": 2 + 1}
    events = queued(queue, "hubspot")
    assert sorted(events) == [f"{PORTAL}:101", f"{PORTAL}:102", f"{PORTAL}:103"]
    deal = events[f"{PORTAL}:103"]
    assert (deal.object_type, deal.object_id) == ("deal", "51103")
    assert deal.occurred_at == datetime.fromtimestamp(1_795_000_000_103 / 1000, tz=UTC)
    assert deal.payload["propertyName"] == "lifecyclestage"
    assert deal.launched_run_id is None
    assert client.get("/healthz").json()["queue_depth"] == 3


def test_hubspot_signs_the_public_uri_with_its_query_and_decoded_escapes(client, queue):
    body = json.dumps(hubspot_events(201))
    # HubSpot signs `?app=rev:prod` for a target URL registered as `?app=rev%3Aprod`.
    headers = hubspot_headers(body, path="/webhooks/hubspot?app=rev:prod")

    assert client.post("/webhooks/hubspot?app=rev%3Aprod", content=body, headers=headers).status_code == 200
    assert client.post("/webhooks/hubspot?app=rev%3Atest", content=body, headers=headers).status_code == 401
    assert list(queued(queue, "hubspot")) == [f"{PORTAL}:201"]


def test_a_replayed_hubspot_delivery_is_acknowledged_and_stored_once(client, queue):
    body = json.dumps(hubspot_events(301, 302))
    headers = hubspot_headers(body)
    first = client.post("/webhooks/hubspot", content=body, headers=headers)
    again = client.post("/webhooks/hubspot", content=body, headers=headers)
    # A retry in a new batch, freshly signed, overlapping the first.
    overlap = json.dumps(hubspot_events(302, 303))
    third = client.post("/webhooks/hubspot", content=overlap, headers=hubspot_headers(overlap))

    assert (first.json(), again.json(), third.json()) == (
        {"accepted": 2, "new": 2},
        {"accepted": 2, "new": 0},
        {"accepted": 2, "new": 1},
    )
    assert sorted(queued(queue, "hubspot")) == [f"{PORTAL}:301", f"{PORTAL}:302", f"{PORTAL}:303"]


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start_at in range(0, len(data), size):
        yield data[start_at : start_at + size]


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("forged: signed with another secret", 401, "does not match"),
        ("signed over the listener's own address, not the public URL", 401, "does not match"),
        ("body changed after signing", 401, "does not match"),
        ("no signature", 401, "missing"),
        ("signature not base64", 401, "does not match"),
        ("stale: signed 6 minutes ago", 400, "stale timestamp"),
        ("timestamp not a number", 400, "Timestamp is not milliseconds"),
        ("wrong content type", 415, "content type"),
        ("oversized, declared", 413, "body over"),
        ("oversized, chunked", 413, "body over"),
        ("malformed: signed, but not JSON", 400, "malformed body"),
        ("malformed: signed, an object instead of an array", 400, "malformed body"),
        ("malformed: signed, an event without eventId", 400, "malformed body"),
    ],
)
def test_hubspot_refusals(shared_client, shared_queue, shared_receiver, case, status, reason):
    client, queue, receiver, depth = shared_client, shared_queue, shared_receiver, shared_queue.depth()
    body = json.dumps(hubspot_events(401)).encode()
    headers = hubspot_headers(body)
    content: bytes | Iterator[bytes] = body
    match case:
        case "forged: signed with another secret":
            headers = hubspot_headers(body, secret="not-the-app-secret")
        case "signed over the listener's own address, not the public URL":
            headers = hubspot_headers(body, base=receiver.url)
        case "body changed after signing":
            content = body.replace(b"customer", b"customers")
        case "no signature":
            del headers["X-HubSpot-Signature-v3"]
        case "signature not base64":
            headers["X-HubSpot-Signature-v3"] = "!!not-base64!!"
        case "stale: signed 6 minutes ago":
            headers = hubspot_headers(body, age=timedelta(minutes=6))
        case "timestamp not a number":
            headers["X-HubSpot-Request-Timestamp"] = "yesterday"
        case "wrong content type":
            headers["Content-Type"] = "text/plain"
        case "oversized, declared":
            content = b"[" + b" " * MIB + b"]"
            headers = hubspot_headers(content)
        case "oversized, chunked":  # no Content-Length: refused while reading
            content = _chunks(b"[" + b" " * (2 * MIB) + b"]")
        case "malformed: signed, but not JSON":
            content = b"eventId=401"
            headers = hubspot_headers(content)
        case "malformed: signed, an object instead of an array":
            content = json.dumps(hubspot_events(401)[0]).encode()
            headers = hubspot_headers(content)
        case "malformed: signed, an event without eventId":
            content = json.dumps([{"subscriptionType": "contact.creation", "objectId": 1}]).encode()
            headers = hubspot_headers(content)

    response = client.post("/webhooks/hubspot", content=content, headers=headers)

    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert queue.depth() == depth


# Salesforce -------------------------------------------------------------------------------------

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"


def outbound_message(organization_id: str, *notifications: tuple[str, str, str]) -> bytes:
    """An Outbound Message as Salesforce sends it: (notification id, sObject type, record id)."""
    items = "".join(
        f"""
   <Notification>
    <Id>{notification_id}</Id>
    <sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{record_id}</sf:Id>
     <sf:Amount>1250.0</sf:Amount>
     <sf:StageName>Closed Won</sf:StageName>
     <sf:Description xsi:nil="true"/>
     <sf:SystemModstamp>2026-11-20T09:00:01.000Z</sf:SystemModstamp>
    </sObject>
   </Notification>"""
        for notification_id, sobject, record_id in notifications
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:xsd="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{organization_id}</OrganizationId>
   <ActionId>04k5g000000PLnxAAG</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/{organization_id}</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/{organization_id}</PartnerUrl>{items}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


XML = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def acknowledged(response: httpx.Response) -> bool:
    root = SafeElementTree.fromstring(response.content)
    ack = root.find(f"{{{SOAP}}}Body/{{http://soap.sforce.com/2005/09/outbound}}notificationsResponse/"
                    "{http://soap.sforce.com/2005/09/outbound}Ack")  # fmt: skip
    return response.headers["content-type"].startswith("text/xml") and ack is not None and ack.text == "true"


@pytest.mark.parametrize("organization_id", [ORGANIZATION_ID_18, ORGANIZATION_ID_15], ids=["18 chars", "15 chars"])
def test_salesforce_outbound_messages_are_queued_and_acknowledged(client, queue, organization_id):
    body = outbound_message(
        organization_id,
        ("04l5g00000AbCdEAAV", "Opportunity", "0065g00000XyZaBAAV"),
        ("04l5g00000AbCdFAAV", "Account", "0015g00000QwErTAAV"),
    )
    response = client.post("/webhooks/salesforce", content=body, headers=XML)

    assert response.status_code == 200, response.text
    assert acknowledged(response)
    events = queued(queue, "salesforce")
    assert sorted(events) == ["04l5g00000AbCdEAAV", "04l5g00000AbCdFAAV"]
    opportunity = events["04l5g00000AbCdEAAV"]
    assert (opportunity.object_type, opportunity.object_id) == ("Opportunity", "0065g00000XyZaBAAV")
    assert opportunity.occurred_at == datetime(2026, 11, 20, 9, 0, 1, tzinfo=UTC)
    assert opportunity.payload["organization_id"] == ORGANIZATION_ID_18
    assert opportunity.payload["fields"]["StageName"] == "Closed Won"
    assert opportunity.payload["fields"]["Description"] is None

    # Salesforce redelivers until acknowledged: the same notification again is acknowledged, stored once.
    again = client.post("/webhooks/salesforce", content=body, headers=XML)
    assert again.status_code == 200 and acknowledged(again)
    assert len(queued(queue, "salesforce")) == 2


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&lol3;</soapenv:Body>
</soapenv:Envelope>"""


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("another org", 403, "SALESFORCE_ORGANIZATION_ID"),
        ("another org, same first 15 characters in another case", 403, "SALESFORCE_ORGANIZATION_ID"),
        ("not XML", 400, "malformed body"),
        ("entity expansion", 400, "DTD"),
        ("not an outbound message", 400, "malformed body"),
        ("no notification", 400, "malformed body"),
        ("wrong content type", 415, "content type"),
        ("oversized", 413, "body over"),
    ],
)
def test_salesforce_refusals(shared_client, shared_queue, case, status, reason):
    client, queue, depth = shared_client, shared_queue, shared_queue.depth()
    notification = ("04l5g00000ZzZzZAAV", "Opportunity", "0065g00000XyZaBAAV")
    body = outbound_message(ORGANIZATION_ID_18, notification)
    headers = dict(XML)
    match case:
        case "another org":
            body = outbound_message("00D5g000004DqZZEAS", notification)
        case "another org, same first 15 characters in another case":
            body = outbound_message(ORGANIZATION_ID_15.lower(), notification)
        case "not XML":
            body = b"OrganizationId=" + ORGANIZATION_ID_18.encode()
        case "entity expansion":
            body = BILLION_LAUGHS
        case "not an outbound message":
            body = f'<soapenv:Envelope xmlns:soapenv="{SOAP}"><soapenv:Body/></soapenv:Envelope>'.encode()
        case "no notification":
            body = outbound_message(ORGANIZATION_ID_18)
        case "wrong content type":
            headers["Content-Type"] = "application/json"
        case "oversized":
            body = body.replace(b"<sf:Amount>", b"<sf:Amount>" + b"9" * MIB)

    response = client.post("/webhooks/salesforce", content=body, headers=headers)

    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert queue.depth() == depth


# Standard Webhooks ------------------------------------------------------------------------------


def standard_headers(secret: str, body: str, message_id: str, age: timedelta = timedelta(0)) -> dict[str, str]:
    """Signed by the standardwebhooks library's own `Webhook.sign`."""
    sent_at = datetime.now(UTC) - age
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, sent_at, body),
    }


def invoice_paid(invoice: str) -> str:
    return json.dumps(
        {"type": "invoice.paid", "timestamp": "2026-11-20T10:15:00Z", "data": {"id": invoice, "amount": 990}}
    )


def test_standard_webhooks_are_queued_per_source_and_stored_once(client, queue):
    body = invoice_paid("inv_0001")
    headers = standard_headers(BILLING_SECRET, body, "msg_2Lh9")
    first = client.post("/webhooks/billing", content=body, headers=headers)
    again = client.post("/webhooks/billing", content=body, headers=headers)
    # The same message id from another source is another event.
    erp = client.post("/webhooks/erp", content=body, headers=standard_headers(ERP_SECRET, body, "msg_2Lh9"))

    assert [response.status_code for response in (first, again, erp)] == [200, 200, 200]
    assert (first.json()["new"], again.json()["new"], erp.json()["new"]) == (1, 0, 1)
    event = queued(queue, "billing")["msg_2Lh9"]
    assert (event.object_type, event.object_id) == ("invoice.paid", "inv_0001")
    assert event.occurred_at == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert list(queued(queue, "erp")) == ["msg_2Lh9"]


@pytest.mark.parametrize(
    ("path", "case", "status", "reason"),
    [
        ("/webhooks/billing", "signed with another source's secret", 401, "does not match"),
        ("/webhooks/billing", "signature list the library cannot split", 401, "does not match"),
        ("/webhooks/billing", "no webhook-id", 401, "missing"),
        ("/webhooks/billing", "stale: signed 6 minutes ago", 400, "stale timestamp"),
        ("/webhooks/billing", "malformed: signed, but not JSON", 400, "malformed body"),
        ("/webhooks/billing", "wrong content type", 415, "content type"),
        ("/webhooks/billing", "oversized", 413, "body over"),
        ("/webhooks/shipping", "unknown source", 404, "no such source"),
    ],
)
def test_standard_webhooks_refusals(shared_client, shared_queue, path, case, status, reason):
    client, queue, depth = shared_client, shared_queue, shared_queue.depth()
    body = invoice_paid("inv_0002")
    headers = standard_headers(BILLING_SECRET, body, "msg_refused")
    match case:
        case "signed with another source's secret":
            headers = standard_headers(ERP_SECRET, body, "msg_refused")
        case "signature list the library cannot split":
            headers["webhook-signature"] = "v1"
        case "no webhook-id":
            del headers["webhook-id"]
        case "stale: signed 6 minutes ago":
            headers = standard_headers(BILLING_SECRET, body, "msg_refused", age=timedelta(minutes=6))
        case "malformed: signed, but not JSON":
            body = "invoice paid"
            headers = standard_headers(BILLING_SECRET, body, "msg_refused")
        case "wrong content type":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        case "oversized":
            body = json.dumps({"type": "invoice.paid", "data": {"id": "inv", "notes": "x" * MIB}})
            headers = standard_headers(BILLING_SECRET, body, "msg_refused")

    response = client.post(path, content=body, headers=headers)

    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert queue.depth() == depth


# Logs -------------------------------------------------------------------------------------------


def test_logs_carry_no_secret_signature_or_body(client, receiver):
    marker = f"body-marker-{uuid.uuid4().hex}"
    hubspot_body = json.dumps([{**hubspot_events(501)[0], "propertyValue": marker}])
    hubspot_signed = hubspot_headers(hubspot_body)
    standard_body = json.dumps({"type": "invoice.paid", "data": {"id": marker}})
    standard_signed = standard_headers(BILLING_SECRET, standard_body, "msg_logs")
    standard_forged = standard_headers(ERP_SECRET, standard_body, "msg_forged")
    salesforce_body = outbound_message(ORGANIZATION_ID_18, ("04l5g00000LoGsAAAV", "Account", marker[:18]))
    sent = [
        client.post("/webhooks/hubspot", content=hubspot_body, headers=hubspot_signed),
        client.post("/webhooks/hubspot", content=hubspot_body, headers=hubspot_headers(hubspot_body, secret="x")),
        client.post("/webhooks/hubspot?token=" + marker, content=hubspot_body, headers=hubspot_signed),
        client.post("/webhooks/billing", content=standard_body, headers=standard_signed),
        client.post("/webhooks/billing", content=standard_body, headers=standard_forged),
        client.post("/webhooks/salesforce", content=salesforce_body, headers=XML),
        client.post("/webhooks/salesforce", content=salesforce_body.replace(b"00D5g", b"00D6g"), headers=XML),
        client.post("/webhooks/salesforce", content=b"<x>" + marker.encode(), headers=XML),
    ]
    assert [response.status_code for response in sent] == [200, 401, 401, 200, 401, 200, 403, 400]
    time.sleep(0.2)  # the last lines reach the file

    log = receiver.log()
    assert "status=401" in log and "status=200" in log and "source=salesforce" in log  # it does log
    for secret in (HUBSPOT_SECRET, BILLING_SECRET, ERP_SECRET, BILLING_SECRET.removeprefix("whsec_")):
        assert secret not in log
    for signature in (hubspot_signed["X-HubSpot-Signature-v3"], standard_signed["webhook-signature"]):
        assert signature not in log
        assert signature.rpartition(",")[2][:16] not in log
    assert marker not in log
    assert "lifecyclestage" not in log and "Closed Won" not in log


# Audit ------------------------------------------------------------------------------------------


def test_every_refused_delivery_is_audited_and_no_accepted_one(client, receiver, queue):
    marker = f"body-marker-{uuid.uuid4().hex}"
    hubspot_body = json.dumps([{**hubspot_events(601)[0], "propertyValue": marker}])
    standard_body = json.dumps({"type": "invoice.paid", "data": {"id": marker}})
    salesforce_body = outbound_message(ORGANIZATION_ID_18, ("04l5g00000LoGsAAAV", "Account", marker[:18]))
    sent = [
        client.post("/webhooks/hubspot", content=hubspot_body, headers=hubspot_headers(hubspot_body)),
        client.post("/webhooks/hubspot", content=hubspot_body, headers=hubspot_headers(hubspot_body, secret="x")),
        client.post("/webhooks/billing", content=standard_body, headers=standard_headers(ERP_SECRET, standard_body,
                                                                                         "msg_forged")),
        client.post("/webhooks/billing", content=standard_body, headers={"Content-Type": "text/plain"}),
        client.post("/webhooks/nosuch", content=standard_body, headers=standard_headers(ERP_SECRET, standard_body,
                                                                                        "msg_nosuch")),
        client.post("/webhooks/salesforce", content=salesforce_body, headers=XML),
        client.post("/webhooks/salesforce", content=salesforce_body.replace(b"00D5g", b"00D6g"), headers=XML),
    ]  # fmt: skip
    assert [response.status_code for response in sent] == [200, 401, 401, 415, 404, 200, 403]

    engine = connect(receiver.database_url)
    try:
        entries = AuditLog(engine).since(datetime.now(UTC) - timedelta(hours=1))
    finally:
        engine.dispose()

    assert [(entry.actor, entry.action, entry.outcome) for entry in entries] == [
        ("webhook:hubspot", "webhook", "refused 401: HubSpot signature v3 does not match"),
        ("webhook:billing", "webhook", "refused 401: Standard Webhooks signature does not match"),
        ("webhook:billing", "webhook", "refused 415: content type must be application/json"),
        ("unknown", "webhook", "refused 404: no such source"),
        ("webhook:salesforce", "webhook", "refused 403: OrganizationId is not SALESFORCE_ORGANIZATION_ID"),
    ]
    assert {entry.client for entry in entries} == {"127.0.0.1"}
    assert len(queued(queue, "hubspot")) + len(queued(queue, "salesforce")) == 2  # the accepted, in the queue
    recorded = repr(entries)
    assert marker not in recorded and "nosuch" not in recorded and HUBSPOT_SECRET not in recorded
