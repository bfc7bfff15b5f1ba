"""HubSpot's CRM REST API served from the synthetic portal, with its ground truth and data faults.

Reads take one immutable `ObjectTable` snapshot per request and never lock; changes made by
tests (malformed records, schema drift, touches) build a new snapshot and swap it in.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import operator
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import polars as pl

from revenue_pipelines.sandbox.hubspot_data import (
    INTERNAL_COLUMNS,
    MODIFIED_PROPERTY,
    OBJECT_TYPES,
    TIMESTAMP_FORMAT,
    UTC_MS,
    ObjectTable,
    Portal,
    Property,
    add_mirrored_deals,
    as_utc,
    generate_portal,
    with_values,
)
from revenue_pipelines.sandbox.server import (
    JSON_CONTENT_TYPE,
    Admission,
    ApiError,
    Request,
    Response,
    RollingWindowLimiter,
    Route,
    Service,
    compact_json,
    json_response,
    page_response,
    retry_after_header,
)

OBJECT_TYPE_NAMES = {
    **{name: name for name in OBJECT_TYPES},
    "company": "companies",
    "contact": "contacts",
    "deal": "deals",
    "0-1": "contacts",
    "0-2": "companies",
    "0-3": "deals",
}
SINGULAR = {"companies": "company", "contacts": "contact", "deals": "deal"}
# HubSpot-defined (primary) association type ids, by (from type, to type).
ASSOCIATION_TYPE_IDS = {
    ("contacts", "companies"): 1,
    ("companies", "contacts"): 2,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
    ("deals", "companies"): 5,
    ("companies", "deals"): 6,
}
# What HubSpot returns when a request names no properties.
DEFAULT_PROPERTIES = {
    "companies": ("name", "domain"),
    "contacts": ("firstname", "lastname", "email"),
    "deals": ("dealname", "amount", "dealstage", "pipeline", "closedate"),
}
LIST_LIMIT_MAX = 100
SEARCH_LIMIT_MAX = 200
SEARCH_RESULT_CAP = 10_000
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
BATCH_READ_MAX_INPUTS = 1000  # v4 association batch reads
OBJECT_BATCH_MAX_INPUTS = 100  # v3 object batch read and update
# Properties HubSpot computes: a batch update naming one is refused (READ_ONLY_VALUE).
READ_ONLY_PROPERTIES = ("hs_object_id", "createdate", "hs_lastmodifieddate", "lastmodifieddate")
FIELD_TYPES = {"string": "text", "number": "number", "datetime": "date", "date": "date", "enumeration": "select"}
# Associations one batch-read result carries before it pages (`paging.next.after`, per input).
# HubSpot documents the paging but no number; 500 is what its association reads page by elsewhere.
ASSOCIATION_PAGE_SIZE = 500
RATE_LIMIT_WINDOW_SECONDS = 10.0
PORTAL_ID = 24_681_357
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COMPARISONS = {
    "EQ": operator.eq,
    "NEQ": operator.ne,
    "LT": operator.lt,
    "LTE": operator.le,
    "GT": operator.gt,
    "GTE": operator.ge,
}
# kind -> object type -> (property, served value); missing_id applies to every type instead.
MALFORMATIONS = {
    "bad_email": {"contacts": ("email", "not-an-email")},
    "negative_amount": {"deals": ("amount", "-1250.00")},
    "wrong_type": {
        "contacts": ("createdate", "n/a"),
        "companies": ("numberofemployees", "n/a"),
        "deals": ("amount", "n/a"),
    },
}
MIRROR_SCHEMA = {
    "hubspot_deal_id": pl.Int64,
    "opportunity_id": pl.String,
    "account_id": pl.String,
    "hubspot_company_id": pl.Int64,
}
MISSING_SCOPES_MESSAGE = (
    "This app hasn't been granted all required scopes to make this call. Read more about required scopes "
    "here: https://developers.hubspot.com/scopes."
)
AUTHENTICATION_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


@dataclass(frozen=True)
class AssociationPaging:
    """How the v4 batch read serves associations."""

    page_size: int = ASSOCIATION_PAGE_SIZE
    """Associations per input and page; the rest follow the result's `paging.next.after`."""
    ids_as_text: bool = False
    """`toObjectId` as a JSON string, as HubSpot's reference types it, instead of the number it sends."""


class HubSpot(Service):
    """The HubSpot portal of a sandbox: CRM objects, associations and properties."""

    def __init__(
        self,
        *,
        seed: int,
        companies: int,
        contacts: int | None,
        deals: int | None,
        days: int,
        end_date: date | None,
        token: str,
        rate_limit_per_10s: int | None,
        rate_limit_retry_after: bool,
    ):
        limiter = RollingWindowLimiter(rate_limit_per_10s, RATE_LIMIT_WINDOW_SECONDS) if rate_limit_per_10s else None
        super().__init__(limiter, rate_limit_retry_after)
        self.token = token
        portal = generate_portal(seed, companies, contacts, deals, days, end_date)
        self.window = portal.window  # every generated modification lies in [start, end)
        self._tables = dict(portal.tables)
        self._associations = portal.associations
        self._link_cache: dict[tuple[str, str], dict[int, list[int]]] = {}
        self._encoded_link_cache: dict[tuple[str, str, AssociationPaging], dict[int, bytes]] = {}
        self._association_paging = AssociationPaging()
        self._withheld_scopes: frozenset[str] = frozenset()
        self._seed = seed
        self._mirrors: pl.DataFrame | None = None
        self._malformed: dict[str, set[int]] = {name: set() for name in OBJECT_TYPES}
        self._malform_calls = 0
        self._lock = threading.Lock()  # serialises test-side changes; readers use snapshots
        self.on_change: Callable[[str, list[int], datetime], None] | None = None
        """Told of each edit (`touch`): the webhooks HubSpot would send for it."""

    # --- ground truth -------------------------------------------------------------------------

    def truth(self, object_type: str) -> pl.DataFrame:
        """Every record, archived ones too, exactly as served (after data faults and drift)."""
        table = self._tables[_known(object_type)]
        return table.frame.select("id", *table.property_names, "archived", "archived_at", "updated_at")

    def truth_associations(self, from_type: str, to_type: str) -> pl.DataFrame:
        """Served associations (`from_id`, `to_id`); archived records have none, as in HubSpot."""
        pair = (_known(from_type), _known(to_type))
        return self._associations.get(pair, pl.DataFrame(schema={"from_id": pl.Int64, "to_id": pl.Int64}))

    def truth_mirrored_deals(self) -> pl.DataFrame:
        """The deals HubSpot's Salesforce integration made of opportunities (`mirror_salesforce`), archived
        ones too: `hubspot_deal_id`, `opportunity_id` (18 characters), `account_id`, `hubspot_company_id`."""
        if self._mirrors is None:
            return pl.DataFrame(schema=MIRROR_SCHEMA)
        return self._mirrors

    # --- the Salesforce integration -----------------------------------------------------------

    def mirror_salesforce(self, opportunities: pl.DataFrame, overlap: pl.DataFrame) -> None:
        """Add the deals HubSpot's Salesforce integration made of the org's `opportunities` (its
        Opportunity truth) at the accounts that are HubSpot companies (`overlap`); see
        `hubspot_data.add_mirrored_deals`. Once, before any other change: deal ids are drawn again."""
        with self._lock:
            if self._mirrors is not None:
                raise RuntimeError("Salesforce is mirrored already")
            portal = Portal(dict(self._tables), self._associations, self.window)
            portal, self._mirrors = add_mirrored_deals(portal, self._seed, opportunities, overlap)
            self._tables = dict(portal.tables)
            self._associations = portal.associations
            self._link_cache.clear()
            self._encoded_link_cache.clear()

    # --- how the portal answers --------------------------------------------------------------

    def page_associations(self, page_size: int = ASSOCIATION_PAGE_SIZE, ids_as_text: bool = False) -> None:
        """Serve the v4 batch read with at most `page_size` associations per input and page, and
        `toObjectId` as a string when `ids_as_text` (HubSpot sends numbers; its reference says string)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._association_paging = AssociationPaging(page_size, ids_as_text)

    def withhold_scopes(self, *scopes: str) -> None:
        """The token lacks these scopes (e.g. `crm.objects.deals.read`): a call needing one answers 403
        MISSING_SCOPES naming it, as HubSpot does. No arguments grants every scope again."""
        self._withheld_scopes = frozenset(scopes)

    # --- data faults and drift ----------------------------------------------------------------

    def malform(
        self, object_type: str, kind: str, count: int, within: tuple[datetime, datetime] | None = None
    ) -> list[int]:
        """Corrupt `count` live records last modified in `within` ([start, end)); returns their ids.

        Kinds: missing_id (served id and hs_object_id null; the server still pages and filters
        by the real id), bad_email (contacts), negative_amount (deals), wrong_type (text in a
        numeric or date property). Records are picked deterministically and never twice.
        """
        object_type = _known(object_type)
        if kind != "missing_id" and object_type not in MALFORMATIONS.get(kind, {}):
            raise ValueError(f"cannot apply {kind!r} to {object_type}")
        with self._lock:
            frame = self._tables[object_type].frame
            eligible = ~pl.col("archived") & ~pl.col("id").is_in(list(self._malformed[object_type]))
            if within is not None:
                eligible &= pl.col("updated_at").is_between(as_utc(within[0]), as_utc(within[1]), closed="left")
            pool = frame.filter(eligible)["id"].to_list()
            if len(pool) < count:
                raise ValueError(f"only {len(pool)} {object_type} can be malformed in that window, not {count}")
            self._malform_calls += 1
            rng = random.Random(f"{self._seed}:{object_type}:{kind}:{self._malform_calls}")
            chosen = sorted(rng.sample(pool, count))
            hit = pl.col("id").is_in(chosen)
            if kind == "missing_id":
                changes = {"id_missing": pl.col("id_missing") | hit, "hs_object_id": None}
            else:
                name, value = MALFORMATIONS[kind][object_type]
                changes = {name: value}
            self._update(object_type, hit, changes)
            self._malformed[object_type].update(chosen)
        return chosen

    def set_values(self, object_type: str, column: str, values: dict[int, str | None]) -> None:
        """Give records (by id) these values of one property, as if they had always had them:
        no timestamp moves. How the sandbox's realistic mess is laid on (`mess.py`)."""
        object_type = _known(object_type)
        if not values:
            return
        with self._lock:
            table = self._tables[object_type]
            self._tables[object_type] = ObjectTable(with_values(table.frame, "id", column, values), table.schema)

    def touch(self, object_type: str, ids: Iterable[int], at: datetime) -> None:
        """Modify records at `at`: their modification property and updatedAt move there."""
        object_type = _known(object_type)
        ids = list(ids)
        at = as_utc(at)
        with self._lock:
            known = set(self._tables[object_type].frame.filter(pl.col("id").is_in(ids))["id"])
            if missing := set(ids) - known:
                raise KeyError(f"no {object_type} with ids {sorted(missing)[:10]}")
            stamp = pl.lit(at, dtype=UTC_MS)
            changes = {"updated_at": stamp, MODIFIED_PROPERTY[object_type]: stamp.dt.strftime(TIMESTAMP_FORMAT)}
            self._update(object_type, pl.col("id").is_in(ids), changes)
        if self.on_change:
            self.on_change(object_type, ids, at)

    def add_property(self, object_type: str, name: str, value: str | None = "x", type: str = "string") -> None:
        """Schema drift, or a custom property made for write-back: a new property of `type`
        (string, number, datetime, date, enumeration) holding `value` on every record."""
        object_type = _known(object_type)
        if type not in FIELD_TYPES:
            raise ValueError(f"unknown property type {type!r}; known: {sorted(FIELD_TYPES)}")
        with self._lock:
            table = self._tables[object_type]
            if name in table.property_names or name in INTERNAL_COLUMNS:
                raise ValueError(f"{object_type} already have a column named {name!r}")
            frame = table.frame.with_columns(pl.lit(value, dtype=pl.String).alias(name))
            prop = Property(name, name, type, FIELD_TYPES[type])
            self._tables[object_type] = ObjectTable(frame, (*table.schema, prop))

    def write(self, object_type: str, values: dict[int, dict[str, str | None]], at: datetime) -> None:
        """Edit records as a batch update does: each id's properties take the given stored values,
        and its modification property and updatedAt move to `at`. The webhooks of the edit follow."""
        object_type = _known(object_type)
        at = as_utc(at)
        with self._lock:
            table = self._tables[object_type]
            frame = table.frame
            for name in dict.fromkeys(name for properties in values.values() for name in properties):
                given = {record_id: properties[name] for record_id, properties in values.items() if name in properties}
                frame = with_values(frame, "id", name, given)
            self._tables[object_type] = ObjectTable(frame, table.schema)
            stamp = pl.lit(at, dtype=UTC_MS)
            changes = {"updated_at": stamp, MODIFIED_PROPERTY[object_type]: stamp.dt.strftime(TIMESTAMP_FORMAT)}
            self._update(object_type, pl.col("id").is_in(list(values)), changes)
        if self.on_change:
            self.on_change(object_type, list(values), at)

    def remove_property(self, object_type: str, name: str) -> None:
        """Schema drift: the property vanishes from records and from the properties endpoint."""
        object_type = _known(object_type)
        with self._lock:
            table = self._tables[object_type]
            if name not in table.property_names:
                raise KeyError(f"{object_type} have no property {name!r}")
            schema = tuple(prop for prop in table.schema if prop.name != name)
            self._tables[object_type] = ObjectTable(table.frame.drop(name), schema)

    def _update(self, object_type: str, hit: pl.Expr, changes: dict[str, Any]) -> None:
        """Set columns on the rows `hit` selects; columns drift removed are skipped."""
        table = self._tables[object_type]
        frame = table.frame
        frame = frame.with_columns(
            pl.when(hit)
            .then(value if isinstance(value, pl.Expr) else pl.lit(value))
            .otherwise(pl.col(column))
            .alias(column)
            for column, value in changes.items()
            if column in frame.columns
        )
        self._tables[object_type] = ObjectTable(frame, table.schema)

    # --- HTTP ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("GET", re.compile(r"/crm/v3/objects/(?P<object_type>[\w-]+)"), self._list_objects),
            Route("POST", re.compile(r"/crm/v3/objects/(?P<object_type>[\w-]+)/search"), self._search_objects),
            Route("POST", re.compile(r"/crm/v3/objects/(?P<object_type>[\w-]+)/batch/read"), self._batch_read),
            Route("POST", re.compile(r"/crm/v3/objects/(?P<object_type>[\w-]+)/batch/update"), self._batch_update),
            Route(
                "POST",
                re.compile(r"/crm/v4/associations/(?P<from_type>[\w-]+)/(?P<to_type>[\w-]+)/batch/read"),
                self._read_associations,
            ),
            Route("GET", re.compile(r"/crm/v3/properties/(?P<object_type>[\w-]+)"), self._list_properties),
        ]

    def error(self, status: int, message: str, category: str) -> Response:
        return json_response(
            status, {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
        )

    def refusal(self, request: Request) -> Response | None:
        if not hmac.compare_digest((request.bearer_token or "").encode(), self.token.encode()):
            return self.error(401, AUTHENTICATION_MESSAGE, "INVALID_AUTHENTICATION")
        missing = sorted(_required_scopes(request) & self._withheld_scopes)
        if not missing:
            return None
        body = {
            "status": "error",
            "message": MISSING_SCOPES_MESSAGE,
            "correlationId": str(uuid.uuid4()),
            "errors": [
                {"message": "All of the following scopes are required.", "context": {"requiredGranularScopes": missing}}
            ],
            "links": {"scopes": "https://developers.hubspot.com/scopes"},
            "category": "MISSING_SCOPES",
        }
        return json_response(403, body)

    def rate_limited(self, retry_after: float | None) -> Response:
        body = {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "TEN_SECONDLY_ROLLING",
            "groupName": f"publicapi:private-app-api-calls-ten-secondly:{PORTAL_ID}",
        }
        return json_response(429, body, None if retry_after is None else retry_after_header(retry_after))

    def rate_limit_headers(self, admission: Admission) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Max": str(admission.limit),
            "X-HubSpot-RateLimit-Remaining": str(admission.remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(admission.window_seconds * 1000)),
        }

    def _list_objects(self, request: Request) -> Response:
        object_type = _requested_type(request.params["object_type"])
        limit = _limit(request.parameter("limit"), default=10, maximum=LIST_LIMIT_MAX)
        archived = (request.parameter("archived") or "false").lower() == "true"
        cursor = request.parameter("after")
        selected = pl.col("archived") == archived
        if cursor:
            selected &= pl.col("id") >= _decode_cursor(cursor)
        table = self._tables[object_type]
        rows = _matching_rows(table.frame, selected, head=limit + 1)
        associations = [_requested_type(name) for name in _split(request.query.get("associations", []))]
        properties = _split(request.query.get("properties", []))
        results = self._render(object_type, table, rows.head(limit), properties, associations, archived)
        paging = {}
        if len(rows) > limit:
            after = _encode_cursor(table.frame["id"][rows[limit]])
            query = urlencode({**request.query, "after": [after]}, doseq=True)
            paging["paging"] = {"next": {"after": after, "link": f"{request.base_url}{request.path}?{query}"}}
        return page_response(results, **paging)

    def _search_objects(self, request: Request) -> Response:
        object_type = _requested_type(request.params["object_type"])
        body = request.json() or {}
        if not isinstance(body, dict):
            raise ApiError(400, "The search body must be a JSON object.", "VALIDATION_ERROR")
        limit = _limit(body.get("limit"), default=10, maximum=SEARCH_LIMIT_MAX)
        after = _offset(body.get("after"))
        table = self._tables[object_type]
        ordered = _ordered_columns(object_type)
        selected = ~pl.col("archived") & _filter_groups(body.get("filterGroups") or [], ordered, table.property_names)
        rows = _matching_rows(table.frame, selected, order=_sort_keys(body.get("sorts") or [], ordered))
        page = rows.slice(after, min(limit, SEARCH_RESULT_CAP - after))
        properties = body.get("properties") or None
        if properties is not None and not (
            isinstance(properties, list) and all(isinstance(p, str) for p in properties)
        ):
            raise ApiError(400, "properties must be a list of property names.", "VALIDATION_ERROR")
        results = self._render(object_type, table, page, properties, [], archived=False)
        paging = {}
        end = after + len(page)
        if end < min(len(rows), SEARCH_RESULT_CAP):
            paging["paging"] = {"next": {"after": str(end)}}
        return page_response(results, total=len(rows), **paging)

    def _batch_read(self, request: Request) -> Response:
        """Live records by id with the requested properties; ids not found (archived, unknown or not
        ids at all) make a 207 with HubSpot's OBJECT_NOT_FOUND error naming them."""
        object_type = _requested_type(request.params["object_type"])
        body = request.json()
        inputs = _batch_inputs(body)
        properties = body.get("properties") or None
        if properties is not None and not (
            isinstance(properties, list) and all(isinstance(p, str) for p in properties)
        ):
            raise ApiError(400, "properties must be a list of property names.", "VALIDATION_ERROR")
        started_at = _now()
        requested = [str(item.get("id", "")) for item in inputs]
        table = self._tables[object_type]
        found = _live_rows(table.frame, requested)
        results = self._render(object_type, table, found, properties, [], archived=False)
        missing = _not_found(table.frame, found, requested)
        return self._batch_response(object_type, "get", results, missing, started_at)

    def _batch_update(self, request: Request) -> Response:
        """Set properties on live records by id, as HubSpot does: the whole batch is refused (400) for a
        property that does not exist, is read-only or gets a value its type does not take, or for a
        duplicate id; ids not found make a 207 naming them while the others are updated."""
        object_type = _requested_type(request.params["object_type"])
        inputs = _batch_inputs(request.json())
        schema = {prop.name: prop for prop in self._tables[object_type].schema}
        values: dict[str, dict[str, str | None]] = {}
        for item in inputs:
            record_id, properties = str(item.get("id", "")), item.get("properties")
            if not isinstance(properties, dict):
                raise ApiError(400, f"Input {record_id!r} has no properties object.", "VALIDATION_ERROR")
            if record_id in values:
                raise ApiError(400, f"Duplicate IDs found in batch input: [{record_id}]", "VALIDATION_ERROR")
            values[record_id] = {name: _stored_value(schema, name, value) for name, value in properties.items()}
        started_at = _now()
        table = self._tables[object_type]
        found = _live_rows(table.frame, list(values))
        found_ids = table.frame["id"][found].to_list()
        missing = _not_found(table.frame, found, list(values))
        if found_ids:
            self.write(object_type, {record_id: values[str(record_id)] for record_id in found_ids}, datetime.now(UTC))
        table = self._tables[object_type]
        rows = _live_rows(table.frame, [str(record_id) for record_id in found_ids])
        written = list(dict.fromkeys(name for properties in values.values() for name in properties))
        results = self._render(object_type, table, rows, written, [], archived=False)
        return self._batch_response(object_type, "update", results, missing, started_at)

    @staticmethod
    def _batch_response(
        object_type: str, verb: str, results: list[str], missing: list[str], started_at: str
    ) -> Response:
        fields: dict[str, Any] = {"status": "COMPLETE"}
        if missing:
            singular = SINGULAR[object_type].upper()
            error = {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"Could not {verb} some {singular} objects, they may be deleted or not exist. "
                "Check that ids are valid.",
                "context": {"ids": missing},
                "errors": [],
            }
            fields |= {"numErrors": 1, "errors": [error]}
        response = page_response(results, **fields, startedAt=started_at, completedAt=_now())
        response.status = 207 if missing else 200
        return response

    def _read_associations(self, request: Request) -> Response:
        from_type = _requested_type(request.params["from_type"])
        to_type = _requested_type(request.params["to_type"])
        inputs = _batch_inputs(request.json(), BATCH_READ_MAX_INPUTS)
        started_at = _now()
        paging = self._association_paging
        first_pages = self._encoded_links(from_type, to_type, paging)
        links = self._links(from_type, to_type)
        results = []
        for item in dict.fromkeys(_association_inputs(inputs)):
            from_id, after = item
            if after is None:
                if from_id in first_pages:
                    results.append(first_pages[from_id])
                continue
            to_ids = links.get(from_id, [])
            start = bisect.bisect_left(to_ids, _decode_cursor(after))
            if start < len(to_ids):
                results.append(self._encode_links(from_type, to_type, from_id, to_ids, start, paging))
        body = b'{"status":"COMPLETE","results":[%s],"startedAt":"%s","completedAt":"%s"}' % (
            b",".join(results),
            started_at.encode(),
            _now().encode(),
        )
        return Response(200, body, {"Content-Type": JSON_CONTENT_TYPE})

    def _encoded_links(self, from_type: str, to_type: str, paging: AssociationPaging) -> dict[int, bytes]:
        """Each record's first batch-read page, JSON-encoded once: the endpoint then mostly joins
        bytes, so serving associations costs the sandbox little next to the client reading them."""
        key = (from_type, to_type, paging)
        if key not in self._encoded_link_cache:
            self._encoded_link_cache[key] = {
                from_id: self._encode_links(from_type, to_type, from_id, to_ids, 0, paging)
                for from_id, to_ids in self._links(from_type, to_type).items()
            }
        return self._encoded_link_cache[key]

    @staticmethod
    def _encode_links(
        from_type: str, to_type: str, from_id: int, to_ids: list[int], start: int, paging: AssociationPaging
    ) -> bytes:
        """One batch-read result: the page of `to_ids` from `start`, and the cursor to the next one."""
        kind = [
            {"category": "HUBSPOT_DEFINED", "typeId": ASSOCIATION_TYPE_IDS.get((from_type, to_type)), "label": None}
        ]
        end = start + paging.page_size
        result: dict[str, Any] = {
            "from": {"id": str(from_id)},
            "to": [
                {"toObjectId": str(to_id) if paging.ids_as_text else to_id, "associationTypes": kind}
                for to_id in to_ids[start:end]
            ],
        }
        if end < len(to_ids):
            result["paging"] = {"next": {"after": _encode_cursor(to_ids[end])}}
        return compact_json(result).encode()

    def _links(self, from_type: str, to_type: str) -> dict[int, list[int]]:
        """Associated ids per record, grouped once per pair of types (both endpoints read them)."""
        key = (from_type, to_type)
        if key not in self._link_cache:
            pairs = self._associations.get(key)
            grouped = pairs.group_by("from_id", maintain_order=True).agg("to_id") if pairs is not None else None
            self._link_cache[key] = (
                dict(zip(grouped["from_id"].to_list(), grouped["to_id"].to_list(), strict=True))
                if grouped is not None
                else {}
            )
        return self._link_cache[key]

    def _list_properties(self, request: Request) -> Response:
        table = self._tables[_requested_type(request.params["object_type"])]
        results = [
            {"name": prop.name, "label": prop.label, "type": prop.type, "fieldType": prop.field_type}
            for prop in table.schema
        ]
        return json_response(200, {"results": results})

    def _render(
        self,
        object_type: str,
        table: ObjectTable,
        rows: pl.Series,
        requested: list[str] | None,
        association_types: list[str],
        archived: bool,
    ) -> list[str]:
        """HubSpot's JSON for the records at `rows`, encoded by polars (the hot path of every page).

        Properties are the requested ones that exist plus those HubSpot always sends, each a
        string or null. `archived` pages carry archivedAt; associations are added only where
        a record has some, as HubSpot does.
        """
        page = table.frame[rows]
        always = ("createdate", MODIFIED_PROPERTY[object_type], "hs_object_id")
        available = set(table.property_names)
        wanted = dict.fromkeys([*(requested or DEFAULT_PROPERTIES[object_type]), *always])
        fields = {
            "id": pl.when(~pl.col("id_missing")).then(pl.col("id").cast(pl.String)),
            "properties": pl.struct(*(name for name in wanted if name in available)),
            "createdAt": pl.col("created_at").dt.strftime(TIMESTAMP_FORMAT),
            "updatedAt": pl.col("updated_at").dt.strftime(TIMESTAMP_FORMAT),
            "archived": pl.col("archived"),
        }
        if archived:
            fields["archivedAt"] = pl.col("archived_at").dt.strftime(TIMESTAMP_FORMAT)
        records = page.select(pl.struct(**fields).struct.json_encode()).to_series().to_list()
        if not association_types:
            return records
        real_ids = page["id"].to_list()
        linked = {to_type: self._links(object_type, to_type) for to_type in association_types}
        for index, real_id in enumerate(real_ids):
            associations = {
                to_type: {
                    "results": [
                        {"id": str(to_id), "type": f"{SINGULAR[object_type]}_to_{SINGULAR[to_type]}"}
                        for to_id in found[real_id]
                    ]
                }
                for to_type, found in linked.items()
                if real_id in found
            }
            if associations:
                records[index] = f'{records[index][:-1]},"associations":{compact_json(associations)}}}'
        return records


def _association_inputs(inputs: list[Any]) -> Iterable[tuple[int, str | None]]:
    """(id, after) per well-formed input; others are skipped, as HubSpot omits ids it cannot read."""
    for item in inputs:
        if isinstance(item, dict) and str(item.get("id", "")).isdigit():
            after = item.get("after")
            yield int(item["id"]), str(after) if after else None


def _required_scopes(request: Request) -> set[str]:
    """The scopes of the object types a request names in its path (their schemas for properties):
    write for a batch update, read otherwise."""
    named = (request.params.get(key) for key in ("object_type", "from_type", "to_type"))
    types = {OBJECT_TYPE_NAMES[name.lower()] for name in named if name and name.lower() in OBJECT_TYPE_NAMES}
    kind = "schemas" if request.path.startswith("/crm/v3/properties/") else "objects"
    access = "write" if request.path.endswith("/batch/update") else "read"
    return {f"crm.{kind}.{name}.{access}" for name in types}


def _batch_inputs(body: Any, maximum: int = OBJECT_BATCH_MAX_INPUTS) -> list[dict[str, Any]]:
    """A batch's `inputs`: a list of at most `maximum` objects (100 for v3 objects, 1,000 for v4
    associations)."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(item, dict) for item in inputs):
        raise ApiError(400, "Expected a body with an 'inputs' list of objects.", "VALIDATION_ERROR")
    if len(inputs) > maximum:
        raise ApiError(
            400,
            f"Batch input size {len(inputs)} exceeds the maximum of {maximum}.",
            "VALIDATION_ERROR",
        )
    return inputs


def _live_rows(frame: pl.DataFrame, ids: list[str]) -> pl.Series:
    """Row numbers of the live records among `ids` (text, as sent), in id order."""
    wanted = [int(record_id) for record_id in ids if record_id.isdigit()]
    return _matching_rows(frame, ~pl.col("archived") & pl.col("id").is_in(wanted))


def _not_found(frame: pl.DataFrame, found: pl.Series, ids: list[str]) -> list[str]:
    present = {str(record_id) for record_id in frame["id"][found].to_list()}
    return [record_id for record_id in dict.fromkeys(ids) if record_id not in present]


def _stored_value(schema: dict[str, Property], name: str, value: Any) -> str | None:
    """What HubSpot stores for a written value: "" or null clears; numbers must parse; datetimes are
    taken as epoch milliseconds or ISO-8601 and kept as ISO with milliseconds; dates as YYYY-MM-DD
    or midnight UTC in milliseconds, kept as YYYY-MM-DD. Anything else refuses the batch."""
    prop = schema.get(name)
    if prop is None:
        raise ApiError(400, f'Property values were not valid: Property "{name}" does not exist', "VALIDATION_ERROR")
    if name in READ_ONLY_PROPERTIES:
        raise ApiError(400, f'Property values were not valid: "{name}" is a read only property', "VALIDATION_ERROR")
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        if prop.type == "number":
            float(text)
        elif prop.type in ("datetime", "date"):
            moment = EPOCH + timedelta(milliseconds=int(text)) if text.isdigit() else datetime.fromisoformat(text)
            if prop.type == "date":
                if text.isdigit() and moment.time() != datetime.min.time():
                    raise ValueError("not midnight UTC")
                return moment.date().isoformat()
            return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError):
        raise ApiError(
            400, f'Property values were not valid: {text!r} is not a valid {prop.type} for "{name}"', "VALIDATION_ERROR"
        ) from None
    return text


def _known(object_type: str) -> str:
    try:
        return OBJECT_TYPE_NAMES[object_type]
    except KeyError:
        raise ValueError(f"unknown HubSpot object type {object_type!r}") from None


def _requested_type(name: str) -> str:
    try:
        return OBJECT_TYPE_NAMES[name.lower()]
    except KeyError:
        raise ApiError(400, f"Unable to infer object type from: {name}", "VALIDATION_ERROR") from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _split(values: list[str]) -> list[str]:
    """Comma lists and repeated parameters alike: `a,b&x=c` -> [a, b, c]."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _limit(raw: Any, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid limit: {raw!r}", "VALIDATION_ERROR") from None
    if not 1 <= limit <= maximum:
        raise ApiError(400, f"limit must be between 1 and {maximum}, got {limit}", "VALIDATION_ERROR")
    return limit


def _offset(raw: Any) -> int:
    if raw is None or raw == "":
        return 0
    if not str(raw).isdigit():
        raise ApiError(400, f"Invalid after: {raw!r}", "VALIDATION_ERROR")
    after = int(raw)
    if after >= SEARCH_RESULT_CAP:
        raise ApiError(
            400,
            f"The search endpoints return at most 10,000 results in total (after={after}); "
            "narrow the filters to reach further results.",
            "VALIDATION_ERROR",
        )
    return after


def _encode_cursor(record_id: int) -> str:
    return base64.b64encode(str(record_id).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        return int(base64.b64decode(cursor, validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, f"Invalid paging cursor: {cursor!r}", "VALIDATION_ERROR") from None


def _ordered_columns(object_type: str) -> dict[str, str]:
    """Properties search compares by range and sorts on -> the typed internal columns it uses,
    so malformed served values never disturb filtering or paging."""
    return {"hs_object_id": "id", "createdate": "created_at", MODIFIED_PROPERTY[object_type]: "updated_at"}


def _filter_groups(groups: Any, ordered: dict[str, str], properties: list[str]) -> pl.Expr:
    """Filters in a group are ANDed, groups ORed; no groups matches everything."""
    if not isinstance(groups, list) or len(groups) > MAX_FILTER_GROUPS:
        raise ApiError(400, f"At most {MAX_FILTER_GROUPS} filterGroups are allowed.", "VALIDATION_ERROR")
    if not groups:
        return pl.lit(True)
    matched = pl.lit(False)
    for group in groups:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list) or len(filters) > MAX_FILTERS_PER_GROUP:
            raise ApiError(
                400, f"Each filterGroup takes a list of at most {MAX_FILTERS_PER_GROUP} filters.", "VALIDATION_ERROR"
            )
        matched |= pl.all_horizontal(pl.lit(True), *(_filter(spec, ordered, properties) for spec in filters))
    return matched


def _filter(spec: Any, ordered: dict[str, str], properties: list[str]) -> pl.Expr:
    """Ids and dates take every comparison; other properties only EQ/NEQ on their text."""
    name = spec.get("propertyName") if isinstance(spec, dict) else None
    operator_name = spec.get("operator") if isinstance(spec, dict) else None
    if name in ordered:
        column = ordered[name]
        if operator_name == "BETWEEN":
            low, high = _filter_value(column, spec.get("value")), _filter_value(column, spec.get("highValue"))
            return pl.col(column).is_between(low, high)
        if operator_name in COMPARISONS:
            return COMPARISONS[operator_name](pl.col(column), _filter_value(column, spec.get("value")))
    elif name in properties and operator_name in ("EQ", "NEQ"):
        return COMPARISONS[operator_name](pl.col(name), str(spec.get("value")))
    raise ApiError(400, f"Unsupported search filter {spec!r}.", "VALIDATION_ERROR")


def _filter_value(column: str, raw: Any) -> int | datetime:
    """Ids compare as integers; dates arrive as epoch milliseconds or ISO-8601 strings."""
    try:
        if column == "id":
            return int(raw)
        if str(raw).isdigit():
            return EPOCH + timedelta(milliseconds=int(raw))
        return as_utc(datetime.fromisoformat(str(raw)))
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, f"Invalid filter value {raw!r}.", "VALIDATION_ERROR") from None


def _sort_keys(sorts: Any, ordered: dict[str, str]) -> list[tuple[str, bool]]:
    """(column, descending) pairs from `["prop"]` or `[{"propertyName", "direction"}]`."""
    keys = []
    for sort in sorts if isinstance(sorts, list) else [sorts]:
        name = sort if isinstance(sort, str) else sort.get("propertyName") if isinstance(sort, dict) else None
        if name not in ordered:
            raise ApiError(400, f"Cannot sort by {sort!r}.", "VALIDATION_ERROR")
        keys.append((ordered[name], isinstance(sort, dict) and sort.get("direction") == "DESCENDING"))
    return keys


def _matching_rows(
    frame: pl.DataFrame, selected: pl.Expr, order: list[tuple[str, bool]] | None = None, head: int | None = None
) -> pl.Series:
    """Row numbers of the records `selected` picks, in `order` (ties by id); frames are sorted by id."""
    query = frame.lazy().with_row_index("row").filter(selected)
    if order and order != [("id", False)]:
        keys = [*order, ("id", False)]
        query = query.sort([column for column, _ in keys], descending=[desc for _, desc in keys])
    if head is not None:
        query = query.head(head)
    return query.select("row").collect()["row"]
