"""Turn one delivery into events, or refuse it with a status and a reason.

Each function checks what its sender proves (a signature, an organization), then parses. A
reason never quotes a secret, a signature or the body: it is logged and answered as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.requests import Request

from revenue_pipelines.receiver.queue import Event
from revenue_pipelines.receiver.salesforce_ids import salesforce_id_18

# HubSpot signs the URI with these escapes decoded (its "validating requests" guide, v3).
HUBSPOT_DECODED_ESCAPES = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
SOAP_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSI_NIL = f"{{{XSI}}}nil"
XSI_TYPE = f"{{{XSI}}}type"
SALESFORCE_CHANGED_AT = ("SystemModstamp", "LastModifiedDate", "CreatedDate")
SALESFORCE_ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENVELOPE}">'
    "<soapenv:Body>"
    f'<notificationsResponse xmlns="{OUTBOUND}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body>"
    "</soapenv:Envelope>"
)


class Refused(Exception):
    """A request the receiver answers with `status`; `reason` is safe to log and to return (it
    never quotes a secret, a signature or the body); `headers` go on the answer (e.g. Retry-After)."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass `limit`: by its Content-Length before reading,
    else while reading (a chunked body), never after buffering it whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise Refused(413, f"body over {limit} bytes")
        except ValueError:
            raise Refused(400, "malformed Content-Length") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _header(headers: Mapping[str, str], name: str) -> str:
    return (headers.get(name) or "").strip()


# HubSpot ----------------------------------------------------------------------------------------


def _check_age(sent_at: float, max_age_seconds: int, now: float | None) -> None:
    """Refuse a delivery sent more than `max_age_seconds` ago (a replay) or as far ahead."""
    age = (time.time() if now is None else now) - sent_at
    if age > max_age_seconds:
        raise Refused(400, f"stale timestamp: sent {age:.0f} s ago, more than {max_age_seconds} s")
    if age < -max_age_seconds:
        raise Refused(400, "timestamp in the future")


def hubspot_uri(public_url: str, path: str, query: str) -> str:
    """The URI HubSpot signed: the public base URL, the path and query, with its escapes decoded."""
    uri = public_url + path + (f"?{query}" if query else "")
    for escape, character in HUBSPOT_DECODED_ESCAPES.items():
        uri = uri.replace(escape, character).replace(escape.lower(), character)
    return uri


def hubspot_signature(client_secret: str, method: str, uri: str, body: bytes, timestamp: str) -> bytes:
    """Signature v3: HMAC-SHA256 with the app's client secret over method, URI, body and timestamp."""
    message = method.encode() + uri.encode() + body + timestamp.encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).digest()


def verify_hubspot(
    *,
    client_secret: str,
    method: str,
    uri: str,
    headers: Mapping[str, str],
    body: bytes,
    max_age_seconds: int,
    now: float | None = None,
) -> list[Event]:
    signature = _header(headers, "x-hubspot-signature-v3")
    timestamp = _header(headers, "x-hubspot-request-timestamp")
    if not signature or not timestamp:
        raise Refused(401, "missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")
    try:
        sent_at = int(timestamp) / 1000  # milliseconds since the epoch
    except ValueError:
        raise Refused(400, "X-HubSpot-Request-Timestamp is not milliseconds since the epoch") from None
    _check_age(sent_at, max_age_seconds, now)
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        given = b""
    if not hmac.compare_digest(hubspot_signature(client_secret, method, uri, body, timestamp), given):
        raise Refused(401, "HubSpot signature v3 does not match")
    try:
        deliveries = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "malformed body: not JSON") from None
    if not isinstance(deliveries, list) or not deliveries:
        raise Refused(400, "malformed body: HubSpot sends a non-empty JSON array of events")
    events = []
    for position, delivery in enumerate(deliveries):
        if not isinstance(delivery, dict) or not _integral(delivery.get("eventId")):
            raise Refused(400, f"malformed body: event {position} has no eventId")
        subscription = delivery.get("subscriptionType")
        if not isinstance(subscription, str) or not subscription:
            raise Refused(400, f"malformed body: event {position} has no subscriptionType")
        portal = delivery.get("portalId")
        object_id = delivery.get("objectId")
        events.append(
            Event(
                source="hubspot",
                event_id=f"{portal if _integral(portal) else ''}:{delivery['eventId']}",
                object_type=subscription.split(".", 1)[0],
                object_id=None if object_id is None else str(object_id),
                occurred_at=_from_milliseconds(delivery.get("occurredAt")),
                payload=delivery,
            )
        )
    return events


def _integral(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_milliseconds(value: Any) -> datetime | None:
    if not _integral(value):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


# Salesforce -------------------------------------------------------------------------------------


def verify_salesforce(*, organization_id: str, body: bytes) -> list[Event]:
    """Outbound Messages: a SOAP `notifications` from the org `organization_id` (18 characters)."""
    try:
        root = SafeElementTree.fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise Refused(400, "malformed body: XML with a DTD or entities is refused") from None
    except SafeElementTree.ParseError:
        raise Refused(400, "malformed body: not XML") from None
    notifications = root.find(f"{{{SOAP_ENVELOPE}}}Body/{{{OUTBOUND}}}notifications")
    if notifications is None:
        raise Refused(400, "malformed body: no SOAP notifications element")
    given = (notifications.findtext(f"{{{OUTBOUND}}}OrganizationId") or "").strip()
    if not given:
        raise Refused(400, "malformed body: no OrganizationId")
    normalised = salesforce_id_18(given) or ""
    if not hmac.compare_digest(normalised.encode(), organization_id.encode()):
        raise Refused(403, "OrganizationId is not SALESFORCE_ORGANIZATION_ID")
    action = (notifications.findtext(f"{{{OUTBOUND}}}ActionId") or "").strip() or None
    events = []
    for position, notification in enumerate(notifications.findall(f"{{{OUTBOUND}}}Notification")):
        notification_id = (notification.findtext(f"{{{OUTBOUND}}}Id") or "").strip()
        record = notification.find(f"{{{OUTBOUND}}}sObject")
        if not notification_id or record is None:
            raise Refused(400, f"malformed body: Notification {position} has no Id or sObject")
        object_type = (record.get(XSI_TYPE) or "").rpartition(":")[2] or None
        fields: dict[str, str | None] = {}
        for child in record:
            name = child.tag.rpartition("}")[2]
            fields[name] = None if child.get(XSI_NIL) == "true" else (child.text or "")
        changed_at = next((fields[name] for name in SALESFORCE_CHANGED_AT if fields.get(name)), None)
        events.append(
            Event(
                source="salesforce",
                event_id=notification_id,
                object_type=object_type,
                object_id=fields.get("Id") or None,
                occurred_at=_from_iso(changed_at),
                payload={"organization_id": normalised, "action_id": action, "sobject": object_type, "fields": fields},
            )
        )
    if not events:
        raise Refused(400, "malformed body: no Notification")
    return events


def _from_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Standard Webhooks ------------------------------------------------------------------------------


def verify_standard(
    *,
    source: str,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    max_age_seconds: int,
    now: float | None = None,
) -> list[Event]:
    """A Standard Webhooks delivery (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
    verified by the `standardwebhooks` library; one event, its id the `webhook-id`."""
    message_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signature = _header(headers, "webhook-signature")
    if not message_id or not timestamp or not signature:
        raise Refused(401, "missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Refused(400, "webhook-timestamp is not seconds since the epoch") from None
    _check_age(sent_at, max_age_seconds, now)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "malformed body: not UTF-8") from None
    try:
        Webhook(secret).verify(text, {"webhook-id": message_id, "webhook-timestamp": timestamp,
                                      "webhook-signature": signature}, json_parse=False)  # fmt: skip
    except (WebhookVerificationError, ValueError, binascii.Error):
        # ValueError and binascii.Error: a signature list the library cannot split or decode.
        raise Refused(401, "Standard Webhooks signature does not match") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        raise Refused(400, "malformed body: not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "malformed body: a JSON object is expected")
    data = payload.get("data")
    object_id = data.get("id") if isinstance(data, dict) else None
    event_type = payload.get("type")
    return [
        Event(
            source=source,
            event_id=message_id,
            object_type=event_type if isinstance(event_type, str) else None,
            object_id=None if object_id is None else str(object_id),
            occurred_at=_from_iso(payload.get("timestamp") if isinstance(payload.get("timestamp"), str) else None)
            or datetime.fromtimestamp(sent_at, tz=UTC),
            payload=payload,
        )
    ]
