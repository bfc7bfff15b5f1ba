"""The webhooks HubSpot and Salesforce send when records change, sent by the sandbox for the
changes it makes, to a receiver (`send_to`).

- HubSpot: an app's webhook subscription posts a JSON array of events (`contact.propertyChange`,
  `deal.deletion`, ...) signed with signature v3: `X-HubSpot-Signature-v3` is base64 of an
  HMAC-SHA256, with the app's client secret, of method + the URI HubSpot called + body +
  `X-HubSpot-Request-Timestamp` (ms). HubSpot retries a delivery that fails.
- Salesforce: an outbound message (a workflow on create and edit; none on delete) is a SOAP
  `notifications` envelope with the org's id and a `Notification` per record, unsigned; the
  receiver must answer `<Ack>true</Ack>`, or Salesforce sends it again.

Deliveries are made as the change is made, in the caller's thread (a test sees them at once), and
recorded in `deliveries`. A receiver that fails is retried RETRIES times, as the CRMs would.
"""

import itertools
import json
import random
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import polars as pl
import urllib3
from hubspot.utils.signature import Signature

from revenue_pipelines.sandbox.hubspot_data import MODIFIED_PROPERTY
from revenue_pipelines.sandbox.salesforce_data import ORG_ID

HUBSPOT_APP_ID = 4_020_112
HUBSPOT_OBJECTS = {"contacts": "contact", "companies": "company", "deals": "deal"}
SALESFORCE_NOTIFIED = ("Account", "Contact", "Lead", "Opportunity")
RETRIES = 2
RETRY_WAIT_SECONDS = 0.2
OUTBOUND_NAMESPACE = "http://soap.sforce.com/2005/09/outbound"


@dataclass(frozen=True)
class Delivery:
    source: str  # hubspot or salesforce
    event_ids: tuple[str, ...]
    status: int | None  # the receiver's last answer; None: it could not be reached
    attempts: int
    acknowledged: bool


class Webhooks:
    """Sends the CRMs' webhooks for the sandbox's changes once `send_to` names a receiver."""

    def __init__(self, portal_id: int):
        self.hubspot_client_secret = secrets.token_hex(16)
        self.salesforce_organization_id = ORG_ID
        self._portal_id = portal_id
        self._target: str | None = None
        self._public_url: str | None = None
        self._event_ids = itertools.count(1)
        self._subscription_ids = {name: 1_000 + n for n, name in enumerate(HUBSPOT_OBJECTS.values())}
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False)

    def send_to(self, url: str, public_url: str | None = None) -> None:
        """Deliver to the receiver at `url` from now on; HubSpot signs `public_url` (the address
        registered with it, in front of any proxy), by default `url`."""
        self._target, self._public_url = url.rstrip("/"), (public_url or url).rstrip("/")

    def stop(self) -> None:
        self._target = None

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def env(self) -> dict[str, str]:
        """What a receiver needs to accept these webhooks."""
        return {
            "HUBSPOT_APP_CLIENT_SECRET": self.hubspot_client_secret,
            "SALESFORCE_ORGANIZATION_ID": self.salesforce_organization_id,
        }

    # --- what the services report ---------------------------------------------------------------

    def hubspot_changed(self, object_type: str, ids: list[int], at: datetime, deleted: bool = False) -> None:
        if self._target is None or object_type not in HUBSPOT_OBJECTS:
            return
        singular = HUBSPOT_OBJECTS[object_type]
        occurred = int(at.timestamp() * 1000)
        events = []
        for object_id in ids:
            event = {
                "eventId": next(self._event_ids),
                "subscriptionId": self._subscription_ids[singular],
                "portalId": self._portal_id,
                "appId": HUBSPOT_APP_ID,
                "occurredAt": occurred,
                "subscriptionType": f"{singular}.{'deletion' if deleted else 'propertyChange'}",
                "attemptNumber": 0,
                "objectId": object_id,
                "changeSource": "CRM",
            }
            if not deleted:
                event |= {"propertyName": MODIFIED_PROPERTY[object_type], "propertyValue": str(occurred)}
            events.append(event)
        self._deliver_hubspot(events)

    def salesforce_changed(self, object_name: str, record_id: str, at: datetime) -> None:
        if self._target is None or object_name not in SALESFORCE_NOTIFIED:
            return
        notification_id = f"04l{secrets.token_hex(6).upper()[:12]}AAA"
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f'<soapenv:Body><notifications xmlns="{OUTBOUND_NAMESPACE}">'
            f"<OrganizationId>{escape(self.salesforce_organization_id)}</OrganizationId>"
            "<ActionId>04k000000000001AAA</ActionId>"
            '<SessionId xsi:nil="true"/>'
            f"<Notification><Id>{notification_id}</Id>"
            f'<sObject xsi:type="sf:{object_name}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
            f"<sf:Id>{escape(record_id)}</sf:Id><sf:SystemModstamp>{stamp}</sf:SystemModstamp>"
            "</sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"
        )
        self._deliver(
            "salesforce",
            (notification_id,),
            "/webhooks/salesforce",
            body.encode(),
            {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
            acknowledged=lambda answer: b"<Ack>true</Ack>" in answer,
        )

    # --- delivery -------------------------------------------------------------------------------

    def _deliver_hubspot(self, events: list[dict]) -> None:
        body = json.dumps(events, separators=(",", ":"))
        path = "/webhooks/hubspot"
        timestamp = str(int(time.time() * 1000))
        signature = Signature.get_signature(
            self.hubspot_client_secret, body, "v3", f"{self._public_url}{path}", "POST", timestamp
        )
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": signature,
            "X-HubSpot-Request-Timestamp": timestamp,
        }
        ids = tuple(f"{self._portal_id}:{event['eventId']}" for event in events)
        self._deliver("hubspot", ids, path, body.encode(), headers, acknowledged=lambda _: True)

    def _deliver(self, source, ids, path, body, headers, acknowledged) -> None:
        status, attempts, acked = None, 0, False
        for attempts in range(1, RETRIES + 2):
            try:
                response = self._http.request("POST", f"{self._target}{path}", body=body, headers=headers)
                status = response.status
                acked = 200 <= status < 300 and acknowledged(response.data)
            except urllib3.exceptions.HTTPError:
                status = None
            if acked or (status is not None and 400 <= status < 500 and status != 429):
                break
            time.sleep(RETRY_WAIT_SECONDS * attempts)
        with self._lock:
            self._deliveries.append(Delivery(source, ids, status, attempts, acked))


class LiveChanges:
    """People at work: every `every_seconds`, a random live contact, deal or opportunity is edited
    now, so its webhook goes out (`make dev` shows a change arrive and a run start)."""

    def __init__(self, hubspot, salesforce, seed: int):
        self._hubspot, self._salesforce = hubspot, salesforce
        self._random = random.Random(f"{seed}:live")
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, every_seconds: float) -> None:
        if every_seconds <= 0 or self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._edit_until_stopped, args=(every_seconds,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def edit_one(self) -> None:
        """Edit one random live record now."""
        now = datetime.now(UTC)
        kind = self._random.choice(("contacts", "deals", "Opportunity"))
        if kind == "Opportunity":
            live = self._salesforce.truth(kind).filter(~pl.col("IsDeleted"))["Id"].to_list()
            self._salesforce.touch(kind, self._random.choice(live), now)
        else:
            live = self._hubspot.truth(kind).filter(~pl.col("archived"))["id"].to_list()
            self._hubspot.touch(kind, [self._random.choice(live)], now)

    def _edit_until_stopped(self, every_seconds: float) -> None:
        while not self._stopped.wait(every_seconds):
            self.edit_one()
