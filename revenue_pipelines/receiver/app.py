"""The receiver's ASGI app: verify, commit to the queue, then acknowledge.

Every endpoint checks, in order: the source is known (404), the content type (415), the size while
reading (413, 1 MiB), what the sender proves (401 signature, 403 Salesforce org, 400 stale timestamp
or malformed body), then commits the events in one transaction and only then answers 2xx. A
duplicate (same source and event id) is acknowledged and stored once.

One log line per request: source, status, event counts or the reason, client address. Never a
secret, a signature, a query string or a body. Every refusal is also appended to the audit trail
(written in a thread, off the event loop); an accepted delivery is not, the queue is its record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revenue_pipelines.receiver.audit import UNKNOWN_ACTOR, AuditLog, refused
from revenue_pipelines.receiver.keys import KeyStore
from revenue_pipelines.receiver.launches import DagsterLauncher, launch_routes
from revenue_pipelines.receiver.queue import Event, EventQueue
from revenue_pipelines.receiver.settings import Settings
from revenue_pipelines.receiver.verifiers import (
    SALESFORCE_ACK,
    Refused,
    hubspot_uri,
    read_body,
    verify_hubspot,
    verify_salesforce,
    verify_standard,
)

log = logging.getLogger("revenue_pipelines.receiver")

JSON_TYPES = ("application/json",)
XML_TYPES = ("text/xml", "application/soap+xml")


def create_app(settings: Settings, queue: EventQueue, keys: KeyStore, audit: AuditLog) -> Starlette:
    """The webhook endpoints, /healthz and the launch API, which launches through the Dagster
    webserver at `settings.dagster_webserver_url`; `keys` guard it; `audit` records what is refused
    and launched."""

    async def hubspot(request: Request) -> Response:
        async def events(body: bytes) -> list[Event]:
            uri = hubspot_uri(settings.public_url, request.url.path, request.url.query)
            return verify_hubspot(
                client_secret=settings.hubspot_client_secret,
                method=request.method,
                uri=uri,
                headers=request.headers,
                body=body,
                max_age_seconds=settings.max_timestamp_age_seconds,
            )

        return await _receive(request, "hubspot", JSON_TYPES, events, _accepted)

    async def salesforce(request: Request) -> Response:
        async def events(body: bytes) -> list[Event]:
            return verify_salesforce(organization_id=settings.salesforce_organization_id, body=body)

        return await _receive(
            request,
            "salesforce",
            XML_TYPES,
            events,
            lambda *_: Response(SALESFORCE_ACK, media_type="text/xml; charset=utf-8"),
        )

    async def standard(request: Request) -> Response:
        source = request.path_params["source"]
        secret = settings.webhook_secrets.get(source)
        if secret is None:
            # A name outside the configured set is not echoed back: it is the sender's text.
            return await _refuse(request, None, Refused(404, "no such source"))

        async def events(body: bytes) -> list[Event]:
            return verify_standard(
                source=source,
                secret=secret,
                headers=request.headers,
                body=body,
                max_age_seconds=settings.max_timestamp_age_seconds,
            )

        return await _receive(request, source, JSON_TYPES, events, _accepted)

    async def _receive(request: Request, source: str, media_types: Iterable[str], parse, answer) -> Response:
        try:
            media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type not in media_types:
                raise Refused(415, f"content type must be {' or '.join(media_types)}")
            body = await read_body(request, settings.max_body_bytes)
            events = await parse(body)
        except Refused as refusal:
            return await _refuse(request, source, refusal)
        new = await queue.put_async(events)
        log.info("source=%s status=200 events=%d new=%d client=%s", source, len(events), new, _client(request))
        return answer(new, len(events))

    async def _refuse(request: Request, source: str | None, refusal: Refused) -> Response:
        """Log, audit and answer a refused delivery; `source` None when the path names no known one."""
        client = _client(request)
        log.warning(
            "source=%s status=%d reason=%s client=%s", source or "unknown", refusal.status, refusal.reason, client
        )
        await run_in_threadpool(
            audit.record,
            actor=f"webhook:{source}" if source else UNKNOWN_ACTOR,
            action="webhook",
            outcome=refused(refusal),
            client=request.client.host if request.client else None,
        )
        return JSONResponse({"error": refusal.reason}, status_code=refusal.status, headers=refusal.headers)

    async def healthz(request: Request) -> Response:
        depth = await run_in_threadpool(queue.depth)
        oldest = await run_in_threadpool(queue.oldest_age_seconds)
        return JSONResponse({"status": "ok", "queue_depth": depth, "oldest_age_seconds": oldest})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/webhooks/hubspot", hubspot, methods=["POST"]),
            Route("/webhooks/salesforce", salesforce, methods=["POST"]),
            Route("/webhooks/{source}", standard, methods=["POST"]),
            *launch_routes(DagsterLauncher(settings.dagster_webserver_url), keys, audit),
        ]
    )


def _accepted(new: int, total: int) -> Response:
    return JSONResponse({"accepted": total, "new": new})


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"
