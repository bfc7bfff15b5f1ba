"""A receiver of the routes' outbound webhooks, as a careful integrator would write one, for tests and the demo.

    with WebhookSink() as sink:                      # http://127.0.0.1:<port>, any path
        sink.secret                                  # the whsec_ secret it verifies with
        sink.faults.add("status", times=2, status=503, retry_after=1)   # the next two POSTs fail
        sink.faults.add("drop")                      # the next POST gets no answer
        sink.faults.add("status", times=10**6, status=503)  # a receiver that never recovers
        sink.rows("/hooks/mart")                     # its ground truth: every row it accepted, once
        sink.requests.count(status=503)              # what the server really saw

Every POST is verified with the `standardwebhooks` library (a bad or stale signature: 401) and
de-duplicated by `webhook-id`: a delivery it already accepted is answered 200 again and not stored
twice. Faults (`sandbox/faults.py`) fire before verification, as a proxy or an overloaded receiver
would; Retry-After is sent as seconds or, with `retry_after_as_http_date`, as an HTTP date.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from revenue_pipelines.sandbox.faults import FaultPlan
from revenue_pipelines.sandbox.server import (
    ApiServer,
    Request,
    RequestLog,
    Response,
    Route,
    Service,
    json_response,
    retry_after_header,
)


@dataclass(frozen=True)
class Accepted:
    """One delivery the sink accepted, the first time its `webhook-id` came."""

    path: str
    webhook_id: str
    payload: dict[str, Any]
    headers: dict[str, str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.payload["data"]["rows"]


class WebhookSink(Service):
    """Accepts signed JSON batches on any path; `accepted` is its ground truth."""

    def __init__(self, *, retry_after_as_http_date: bool = False, host: str = "127.0.0.1", port: int = 0):
        super().__init__(limiter=None, send_retry_after=True)
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.retry_after_as_http_date = retry_after_as_http_date
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.duplicates = 0
        self._accepted: dict[str, Accepted] = {}
        self._lock = threading.Lock()
        self._server = ApiServer(host, port, [self], self.faults, self.requests)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> WebhookSink:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop()

    def accepted(self, path: str | None = None) -> list[Accepted]:
        """What it accepted, in the order it came, optionally on one path only."""
        with self._lock:
            return [delivery for delivery in self._accepted.values() if path is None or delivery.path == path]

    def rows(self, path: str | None = None) -> list[dict[str, Any]]:
        return [row for delivery in self.accepted(path) for row in delivery.rows]

    # Service --------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("POST", re.compile(r"/.*"), self._receive)]

    def refusal(self, request: Request) -> Response | None:
        return None  # the signature is the credential, checked on receipt

    def error(self, status: int, message: str, category: str) -> Response:
        return json_response(status, {"error": category, "message": message})

    def rate_limited(self, retry_after: float | None) -> Response:
        response = self.error(429, "Too Many Requests", "RATE_LIMITED")
        if retry_after is not None:
            response.headers.update(self.retry_after_headers(retry_after))
        return response

    def retry_after_headers(self, seconds: float) -> dict[str, str]:
        if self.retry_after_as_http_date:
            return {"Retry-After": formatdate(time.time() + seconds, usegmt=True)}
        return retry_after_header(seconds)

    def _receive(self, request: Request) -> Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            payload = Webhook(self.secret).verify(request.body, headers)
        except WebhookVerificationError as error:
            return self.error(401, str(error), "INVALID_SIGNATURE")
        webhook_id = headers["webhook-id"]
        with self._lock:
            if webhook_id in self._accepted:
                self.duplicates += 1
            else:
                self._accepted[webhook_id] = Accepted(request.path, webhook_id, payload, headers)
        return json_response(200, {"accepted": webhook_id})
