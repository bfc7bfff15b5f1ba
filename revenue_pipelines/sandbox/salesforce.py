"""Salesforce's REST API served from the synthetic org, with its ground truth and data faults.

A client first trades the refresh token for an access token (the OAuth refresh-token grant);
sessions then expire by calls or age, every API call spends the org's daily budget, and a query
pages through a cursor that snapshots its result at the first page and lapses when left idle.
Reads take one immutable table per request and never lock; changes made by tests build a new
table and swap it in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import polars as pl

from revenue_pipelines.sandbox import soql
from revenue_pipelines.sandbox.hubspot_data import UTC_MS, as_utc, with_values
from revenue_pipelines.sandbox.salesforce_data import (
    DATETIME_FORMAT,
    FIRST_COUNTER,
    KEY_PREFIXES,
    ORG_ID,
    SCHEMAS,
    Field,
    generate_org,
    salesforce_ids,
)
from revenue_pipelines.sandbox.server import (
    ApiError,
    Request,
    Response,
    Route,
    Service,
    json_response,
    oauth_error,
    page_response,
    retry_after_header,
)

API = r"/services/data/v(?P<version>\d+\.\d+)"
BATCH_SIZE_RANGE = (200, 2000)  # what Sforce-Query-Options: batchSize may ask for
MAX_OPEN_CURSORS = 10  # per user; opening another releases the oldest, as Salesforce does
CURSOR_IDLE_SECONDS = 15 * 60  # Salesforce drops a query locator nobody asked for in this long
# Generic categories the server raises -> Salesforce's error codes.
ERROR_CODES = {
    "OBJECT_NOT_FOUND": "NOT_FOUND",
    "INTERNAL_ERROR": "UNKNOWN_EXCEPTION",
    "VALIDATION_ERROR": "JSON_PARSER_ERROR",
}
# kind -> (the objects it applies to, or None for all; the fields it sets)
MALFORMATIONS: dict[str, tuple[tuple[str, ...] | None, dict[str, Any]]] = {
    "short_id": (None, {"Id": pl.col("Id").str.slice(0, 15)}),
    "truncated_id": (None, {"Id": pl.col("Id").str.slice(0, 12)}),
    "negative_amount": (("Opportunity",), {"Amount": -1250.0}),
    "unknown_stage": (("Opportunity",), {"StageName": "Closed Maybe"}),
    "closed_without_close_date": (("Opportunity",), {"IsClosed": True, "CloseDate": None}),
}


@dataclass
class _Session:
    issued_at: float  # time.monotonic()
    calls: int = 0


@dataclass
class _Cursor:
    """A query's result as of its first page: the table as it was then, and its rows in order."""

    plan: soql.Plan
    table: pl.DataFrame
    rows: pl.Series
    endpoint: str  # query or queryAll
    used_at: float  # time.monotonic() when a page of it was last served


class Salesforce(Service):
    """The Salesforce org of a sandbox: OAuth grants, sessions, the API budget, SOQL and describe."""

    def __init__(
        self, *, seed: int, companies: pl.DataFrame, opportunities: int | None, days: int, end_date: date | None
    ):
        super().__init__(limiter=None, send_retry_after=False)
        org = generate_org(seed, companies, opportunities, days, end_date)
        self.window = org.window  # every generated modification lies in [start, end)
        self._tables = dict(org.tables)
        self._overlap = org.overlap
        self._seed = seed
        # The connected app and the refresh token its user granted; tests read and tune these.
        self.client_id = "3MVG9" + secrets.token_urlsafe(60)
        self.client_secret = secrets.token_hex(32)
        self.refresh_token = _new_refresh_token()
        self.rotate_refresh_tokens = False
        self.token_grants = 0
        self.session_max_calls: int | None = None
        self.session_ttl_seconds: float | None = None
        self.api_usage = 0
        self.daily_api_limit = 100_000
        self.batch_size = BATCH_SIZE_RANGE[1]
        self.query_timeout_rows: int | None = None
        self.query_timeouts = 0
        self.cursor_idle_seconds: float = CURSOR_IDLE_SECONDS  # tests shorten it to lose a cursor mid-read
        self.cursors_expired = 0
        self._sessions: dict[str, _Session] = {}
        self._cursors: dict[str, _Cursor] = {}  # oldest first
        self._cursors_opened = 0
        self._malformed: dict[str, set[str]] = {name: set() for name in SCHEMAS}
        self._malform_calls = 0
        self._lock = threading.Lock()
        self.on_change: Callable[[str, str, datetime], None] | None = None
        """Told of each edit (`touch`): the outbound message Salesforce would send for it."""

    # --- ground truth -------------------------------------------------------------------------

    def truth(self, object_name: str) -> pl.DataFrame:
        """Every record, deleted ones too, every field exactly as served (after data faults)."""
        return self._tables[_known(object_name)]

    def truth_overlap(self) -> pl.DataFrame:
        """`account_id`, `hubspot_company_id`: the accounts that really are HubSpot companies."""
        return self._overlap

    # --- sessions -----------------------------------------------------------------------------

    def expire_sessions(self) -> None:
        """End every live session now; clients must grant themselves a new access token."""
        with self._lock:
            self._sessions.clear()

    # --- data faults --------------------------------------------------------------------------

    def malform(self, object_name: str, kind: str, within: tuple[datetime, datetime] | None = None) -> str:
        """Corrupt one live record (last changed in `within`, [start, end), if given); returns its Id
        as now served. Its SystemModstamp stays, so it stays in its window.

        Kinds: short_id (the 15-character Id, still valid), truncated_id (12 characters, no Id at
        all), and for opportunities negative_amount,
        unknown_stage (StageName "Closed Maybe") and closed_without_close_date (IsClosed, no
        CloseDate). Records are picked deterministically and never twice.
        """
        object_name = _known(object_name)
        if kind not in MALFORMATIONS or object_name not in (MALFORMATIONS[kind][0] or (object_name,)):
            raise ValueError(f"cannot apply {kind!r} to {object_name}")
        with self._lock:
            frame = self._tables[object_name]
            eligible = ~pl.col("Id").is_in(list(self._malformed[object_name]))
            if "IsDeleted" in frame.columns:
                eligible &= ~pl.col("IsDeleted")
            if within is not None:
                eligible &= pl.col("SystemModstamp").is_between(as_utc(within[0]), as_utc(within[1]), closed="left")
            pool = frame.filter(eligible)["Id"].to_list()
            if not pool:
                raise ValueError(f"no {object_name} left to malform in that window")
            self._malform_calls += 1
            chosen = random.Random(f"{self._seed}:{object_name}:{kind}:{self._malform_calls}").choice(pool)
            self._update(object_name, chosen, MALFORMATIONS[kind][1])
            served = {"short_id": chosen[:15], "truncated_id": chosen[:12]}.get(kind, chosen)
            self._malformed[object_name].add(served)
        return served

    def set_values(self, object_name: str, field: str, values: dict[str, str | None]) -> None:
        """Give records (by Id) these values of one field, as if they had always had them: no
        timestamp moves. How the sandbox's realistic mess is laid on (`mess.py`)."""
        object_name = _known(object_name)
        if not values:
            return
        with self._lock:
            self._tables[object_name] = with_values(self._tables[object_name], "Id", field, values)

    def delete(self, object_name: str, record_id: str, at: datetime) -> None:
        """Delete a record at `at`: IsDeleted, and SystemModstamp moves there. Users cannot be deleted."""
        object_name = _known(object_name)
        if object_name == "User":
            raise ValueError("Salesforce deactivates users; it never deletes them")
        with self._lock:
            self._update(object_name, record_id, {"IsDeleted": True, "SystemModstamp": as_utc(at)})

    def touch(self, object_name: str, record_id: str, at: datetime) -> None:
        """Edit a live record at `at`: its LastModifiedDate and SystemModstamp move there."""
        at = as_utc(at)
        with self._lock:
            self._update(_known(object_name), record_id, {"LastModifiedDate": at, "SystemModstamp": at})
        if self.on_change:
            self.on_change(_known(object_name), record_id, at)

    def _update(self, object_name: str, record_id: str, changes: dict[str, Any]) -> None:
        """Set fields of one live record (the caller holds the lock) and swap in the new table."""
        frame = self._tables[object_name]
        found = frame.filter(pl.col("Id") == record_id)
        if found.is_empty():
            raise KeyError(f"no {object_name} with Id {record_id!r}")
        if "IsDeleted" in frame.columns and found["IsDeleted"].any():
            raise ValueError(f"{object_name} {record_id} is deleted")
        hit = pl.col("Id") == record_id
        self._tables[object_name] = frame.with_columns(
            pl.when(hit)
            .then(value if isinstance(value, pl.Expr) else pl.lit(value))
            .otherwise(pl.col(column))
            .cast(frame.schema[column])
            .alias(column)
            for column, value in changes.items()
        )

    # --- HTTP ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("POST", re.compile(r"/services/oauth2/token"), self._grant, authenticated=False),
            Route("GET", re.compile(API + r"/(?P<endpoint>query|queryAll)/?"), self._query),
            Route(
                "GET",
                re.compile(API + r"/(?P<endpoint>query|queryAll)/(?P<locator>\w+)-(?P<offset>\d+)"),
                self._query_more,
            ),
            Route("GET", re.compile(API + r"/sobjects/(?P<object_name>\w+)/describe/?"), self._describe),
        ]

    def error(self, status: int, message: str, category: str) -> Response:
        code = "SERVER_UNAVAILABLE" if status == 503 else ERROR_CODES.get(category, category)
        return json_response(status, [{"message": message, "errorCode": code}])

    def rate_limited(self, retry_after: float | None) -> Response:
        """A scripted 429. Not REQUEST_LIMIT_EXCEEDED: Salesforce answers that (403) for the daily budget."""
        body = [{"message": "Too many requests.", "errorCode": "TOO_MANY_REQUESTS"}]
        return json_response(429, body, None if retry_after is None else retry_after_header(retry_after))

    def refusal(self, request: Request) -> Response | None:
        """Unknown or expired sessions get 401, a spent daily budget 403; otherwise the call counts."""
        token = request.bearer_token or ""
        with self._lock:
            session = self._sessions.get(token)
            if session is None or self._expired(session):
                self._sessions.pop(token, None)
                return self.error(401, "Session expired or invalid", "INVALID_SESSION_ID")
            if self.api_usage >= self.daily_api_limit:
                return self.error(403, "TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED")
            session.calls += 1
            self.api_usage += 1
        return None

    def common_headers(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_usage}/{self.daily_api_limit}"}

    def _expired(self, session: _Session) -> bool:
        max_calls, ttl = self.session_max_calls, self.session_ttl_seconds
        return (max_calls is not None and session.calls >= max_calls) or (
            ttl is not None and time.monotonic() - session.issued_at >= ttl
        )

    def _grant(self, request: Request) -> Response:
        """The refresh-token grant; errors are OAuth's, not the REST API's."""
        form = request.form()
        if form.get("grant_type") != "refresh_token":
            return oauth_error("unsupported_grant_type", "grant type not supported")
        if not _same(form.get("client_id", ""), self.client_id):
            return oauth_error("invalid_client_id", "client identifier invalid")
        if not _same(form.get("client_secret", ""), self.client_secret):
            return oauth_error("invalid_client", "invalid client credentials")
        access_token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(72)}"
        with self._lock:
            if not _same(form.get("refresh_token", ""), self.refresh_token):
                return oauth_error("invalid_grant", "expired access/refresh token")
            self._sessions[access_token] = _Session(time.monotonic())
            self.token_grants += 1
            if self.rotate_refresh_tokens:
                self.refresh_token = _new_refresh_token()
            rotated = {"refresh_token": self.refresh_token} if self.rotate_refresh_tokens else {}
        issued_at = str(time.time_ns() // 1_000_000)
        identity = f"{request.base_url}/id/{ORG_ID}/{self._tables['User']['Id'][0]}"
        digest = hmac.new(self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
        return json_response(
            200,
            {
                "access_token": access_token,
                **rotated,
                "signature": base64.b64encode(digest).decode(),
                "scope": "refresh_token api",
                "instance_url": request.base_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
            },
        )

    def _query(self, request: Request) -> Response:
        text = request.parameter("q")
        if not text:
            raise ApiError(400, "A query string must be provided.", "MALFORMED_QUERY")
        plan = soql.plan(text, SCHEMAS)
        table = self._tables[plan.object_name]
        selected = plan.where
        if request.params["endpoint"] == "query" and "IsDeleted" in table.columns:
            selected &= ~pl.col("IsDeleted")
        query = table.lazy().with_row_index("row").filter(selected)
        if plan.order:
            # Stable, so rows that tie stay in Id order (tables are sorted by Id).
            names, descending, nulls_last = zip(*plan.order, strict=True)
            query = query.sort(names, descending=descending, nulls_last=nulls_last, maintain_order=True)
        if plan.limit is not None:
            query = query.head(plan.limit)
        rows = query.select("row").collect()["row"]
        if self.query_timeout_rows is not None and len(rows) > self.query_timeout_rows:
            with self._lock:
                self.query_timeouts += 1
            raise ApiError(400, "Your query request was running for too long.", "QUERY_TIMEOUT")
        cursor = _Cursor(plan, table, rows, request.params["endpoint"], time.monotonic())
        return self._page(request, cursor, None, 0)

    def _query_more(self, request: Request) -> Response:
        locator, offset = request.params["locator"], int(request.params["offset"])
        with self._lock:
            cursor = self._cursors.get(locator)
            if cursor is not None and time.monotonic() - cursor.used_at >= self.cursor_idle_seconds:
                del self._cursors[locator]
                self.cursors_expired += 1
                cursor = None
            if cursor is None or offset > len(cursor.rows):
                raise ApiError(400, "invalid query locator", "INVALID_QUERY_LOCATOR")
            cursor.used_at = time.monotonic()
        return self._page(request, cursor, locator, offset)

    def _page(self, request: Request, cursor: _Cursor, locator: str | None, offset: int) -> Response:
        """The batch of `cursor` from `offset`, in the size the request asks for, JSON-encoded by polars."""
        options = re.search(r"batchSize=(\d+)", request.headers.get("Sforce-Query-Options") or "")
        size = min(max(int(options[1]), BATCH_SIZE_RANGE[0]), BATCH_SIZE_RANGE[1]) if options else self.batch_size
        batch = cursor.rows.slice(offset, size)
        end = offset + len(batch)
        version = request.params["version"]
        fields: dict[str, Any] = {"totalSize": len(cursor.rows), "done": end >= len(cursor.rows)}
        if not fields["done"]:
            locator = locator or self._open(cursor)
            fields["nextRecordsUrl"] = f"/services/data/v{version}/{cursor.endpoint}/{locator}-{end}"
        object_name = cursor.plan.object_name
        attributes = pl.struct(
            type=pl.lit(object_name), url=pl.format(f"/services/data/v{version}/sobjects/{object_name}/{{}}", "Id")
        )
        values = {field.name: _served(field) for field in cursor.plan.fields}
        records = cursor.table[batch].select(pl.struct(attributes=attributes, **values).struct.json_encode())
        return page_response(records.to_series().to_list(), key="records", **fields)

    def _open(self, cursor: _Cursor) -> str:
        """Keep `cursor` under a new query locator; the user's oldest beyond the limit is released."""
        with self._lock:
            self._cursors_opened += 1
            locator = salesforce_ids("01g", pl.Series([FIRST_COUNTER + self._cursors_opened]))[0]
            self._cursors[locator] = cursor
            while len(self._cursors) > MAX_OPEN_CURSORS:
                del self._cursors[next(iter(self._cursors))]
        return locator

    def _describe(self, request: Request) -> Response:
        name = {known.lower(): known for known in SCHEMAS}.get(request.params["object_name"].lower())
        if name is None:
            raise ApiError(404, "The requested resource does not exist", "NOT_FOUND")
        body = {
            "name": name,
            "label": name,
            "keyPrefix": KEY_PREFIXES[name],
            "custom": False,
            "fields": [
                {
                    "name": field.name,
                    "label": field.label,
                    "type": field.type,
                    "custom": field.custom,
                    "nillable": field.nillable,
                    "externalId": field.external_id,
                    "length": field.length,
                    "referenceTo": list(field.reference_to),
                    "picklistValues": [{"value": value, "label": value, "active": True} for value in field.picklist],
                }
                for field in SCHEMAS[name]
            ],
        }
        return json_response(200, body)


def _served(field: Field) -> pl.Expr:
    """A field's column as Salesforce writes it in JSON: datetimes and dates as text, the rest as is."""
    column = pl.col(field.name)
    if field.dtype == UTC_MS:
        return column.dt.strftime(DATETIME_FORMAT)
    if field.type == "date":
        return column.dt.strftime("%Y-%m-%d")
    return column


def _known(object_name: str) -> str:
    if object_name not in SCHEMAS:
        raise ValueError(f"unknown Salesforce object {object_name!r}; known: {sorted(SCHEMAS)}")
    return object_name


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def _new_refresh_token() -> str:
    return "5Aep861" + secrets.token_urlsafe(64)
