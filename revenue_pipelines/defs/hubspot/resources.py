"""HubSpot CRM v3 through hubspot-api-client: every record changed or archived in a time window."""

import io
import json
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import certifi
import dagster as dg
import polars as pl
import urllib3
from hubspot import HubSpot
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.objects.exceptions import ApiException as ObjectsApiException
from hubspot.discovery.discovery_base import DiscoveryBase
from pydantic import Field, PrivateAttr

from revenue_pipelines.lib.http import first_contact_retry, transport_retry, unreachable

HUBSPOT_API = "https://api.hubapi.com"
# The settings a configuration failure names (environment.py reads them).
HOST_VARIABLE = "HUBSPOT_HOST"
AUTH_VARIABLE = "HUBSPOT_ACCESS_TOKEN"
PERMANENT_STATUSES = (400, 401, 403, 404)
API_EXCEPTIONS = (ObjectsApiException, AssociationsApiException)  # each API package has its own
SEARCH_PAGE_LIMIT = 200  # HubSpot's maximum for search
LIST_PAGE_LIMIT = 100  # HubSpot's maximum for the object list
ASSOCIATION_BATCH_LIMIT = 1000  # HubSpot's maximum inputs per association batch read
# One association batch-read page: each input's associations so far, and its cursor to the rest.
# `toObjectId` is read as text: HubSpot sends a number, its reference types it as a string.
ASSOCIATIONS_PAGE_SCHEMA = {
    "results": pl.List(
        pl.Struct(
            {
                "from": pl.Struct({"id": pl.Utf8}),
                "to": pl.List(pl.Struct({"toObjectId": pl.Utf8})),
                "paging": pl.Struct({"next": pl.Struct({"after": pl.Utf8})}),
            }
        )
    )
}


@dataclass(frozen=True)
class HubSpotObject:
    """What the connector reads of one CRM object type."""

    name: str
    """The API's object type, e.g. `contacts`."""
    modified_property: str
    """The property search filters on: `lastmodifieddate` for contacts, `hs_lastmodifieddate` otherwise."""
    properties: tuple[str, ...]
    """Properties to read, besides the id and timestamps every record carries."""
    associations: Mapping[str, str] = field(default_factory=dict)
    """Output column -> associated object type, e.g. `{"company_ids": "companies"}`."""


@dataclass
class WindowStats:
    """What one window's read cost, for the asset's metadata."""

    requests: int = 0
    retries: int = 0
    archived: int = 0
    missing_properties: list[str] = field(default_factory=list)
    """Requested properties that no record carried: removed or renamed at the source."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_request(self, retries: int) -> None:
        with self._lock:
            self.requests += 1
            self.retries += retries


class _PreloadingPoolManager(urllib3.PoolManager):
    """The client's transport, corrected in three places.

    - The client only skips its slow model objects when called with `_preload_content=False`,
      which would also move the body read outside urllib3, where a connection dropped mid-body is
      not retried. Forcing the preload keeps both: raw JSON, and retries that cover the whole read.
    - The client passes `timeout=None` on every call, which urllib3 reads as "wait forever";
      dropping it lets this pool's own connect and read timeouts apply.
    - Until HubSpot has answered once, requests get `first_contact_retry`: a host that cannot be
      reached at all is a wrong address, and fails in seconds instead of minutes of retries.
    """

    def __init__(self, *, retries: urllib3.Retry, **kw: Any):
        super().__init__(retries=retries, **kw)
        self._first_contact = first_contact_retry(retries)
        self.answered = False

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> urllib3.BaseHTTPResponse:
        kw["preload_content"] = True
        if kw.get("timeout") is None:
            kw.pop("timeout", None)
        if not self.answered:
            kw.setdefault("retries", self._first_contact)
        response = super().urlopen(method, url, redirect=redirect, **kw)
        self.answered = True
        return response


class HubSpotResource(dg.ConfigurableResource):
    """HubSpot's CRM API, read incrementally by modification window.

    Search is keyset-paged on `hs_object_id` (each page asks for ids above the last one seen), so a
    window with any number of changes is read completely without ever meeting HubSpot's
    10,000-result search cap, and a record edited mid-read cannot shift a page boundary and hide
    another. Archived records, which search never returns, come from a second pass over the
    archived list. Retries (Retry-After honoured, else exponential backoff with jitter) and one
    connection pool per run live in urllib3 underneath the official client.
    """

    access_token: str = Field(description="Private app or OAuth access token; supply with EnvVar.")
    host: str = Field(default=HUBSPOT_API, description="API base URL; the sandbox's URL on the embedded default.")
    max_retries: int = Field(default=8, description="Retries per request on 429, 5xx and dropped connections.")
    backoff_factor_seconds: float = Field(default=0.5, description="First backoff; doubles per retry, plus jitter.")
    backoff_max_seconds: float = Field(default=30.0, description="Longest wait between two retries.")
    timeout_seconds: float = Field(default=60.0, description="Read timeout per request.")
    concurrent_requests: int = Field(
        default=3, ge=2, description="Requests in flight at once: search paging plus side reads."
    )

    _pool: _PreloadingPoolManager = PrivateAttr()
    _search: Any = PrivateAttr()
    _objects: Any = PrivateAttr()
    _batch: Any = PrivateAttr()
    _associations: Any = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._pool = _PreloadingPoolManager(
            num_pools=2,
            maxsize=self.concurrent_requests,
            retries=transport_retry(self.max_retries, self.backoff_factor_seconds, self.backoff_max_seconds),
            timeout=urllib3.Timeout(connect=10.0, read=self.timeout_seconds),
            ca_certs=certifi.where(),
        )
        # The client builds a new API object (and configuration) on every attribute access: build
        # the ones this resource uses once.
        client = HubSpot(access_token=self.access_token, host=self.host, api_factory=self._api_factory)
        self._search = client.crm.objects.search_api
        self._objects = client.crm.objects.basic_api
        self._batch = client.crm.objects.batch_api
        self._associations = client.crm.associations.v4.batch_api

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._pool.clear()

    def _api_factory(self, api_client_package: Any, api_name: str, config: Mapping[str, Any]) -> Any:
        """The client's own factory, with every API sharing this run's connection pool."""
        api = DiscoveryBase._default_api_factory(api_client_package, api_name, config)
        api.api_client.rest_client.pool_manager = self._pool
        return api

    def read_window(self, obj: HubSpotObject, start: datetime, end: datetime) -> tuple[pl.DataFrame, WindowStats]:
        """Every record of `obj` modified or archived in [start, end), as received (text columns).

        Columns: `id`, each requested property, `archived`, `archived_at`, `updated_at`,
        `changed_at` (when the record entered this window: its archive time if archived, else
        its last modification) and one id list per association.
        """
        stats = WindowStats()
        # Search pages must come one after another (each is keyed on the last id), so the
        # archived pass and the association reads run beside them, on the same connection pool.
        with ThreadPoolExecutor(max_workers=self.concurrent_requests - 1) as side:
            archived_pass = side.submit(self._list_archived, obj, start, end, stats)
            link_batches: dict[str, list[Future[pl.DataFrame]]] = {column: [] for column in obj.associations}
            modified: list[pl.DataFrame] = []
            batch: list[str] = []
            for page in self._search_modified(obj, start, end, stats):
                modified.append(page)
                batch += page.get_column("id").drop_nulls().to_list()
                while len(batch) >= ASSOCIATION_BATCH_LIMIT:
                    ids, batch = batch[:ASSOCIATION_BATCH_LIMIT], batch[ASSOCIATION_BATCH_LIMIT:]
                    self._submit_association_reads(side, obj, ids, link_batches, stats)
            self._submit_association_reads(side, obj, batch, link_batches, stats)
            archived = archived_pass.result()
            links = {
                column: pl.concat([batch.result() for batch in batches], how="vertical")
                for column, batches in link_batches.items()
            }

        frame = pl.concat([_empty_records(obj), *modified, archived], how="vertical", rechunk=True)
        stats.archived = archived.height
        for column, pairs in links.items():
            frame = frame.join(pairs.rename({"to_ids": column}), on="id", how="left", maintain_order="left")
        return frame, stats

    def batch_read(self, object_type: str, body: Mapping[str, Any], stats: WindowStats) -> bytes:
        """`POST /crm/v3/objects/<type>/batch/read` as raw JSON, with this resource's retries and
        refusals; ids HubSpot does not find make a 207 naming them, not an error."""
        return self._call(stats, self._batch.read, object_type, body)

    def batch_update(self, object_type: str, body: Mapping[str, Any], stats: WindowStats) -> bytes:
        """`POST /crm/v3/objects/<type>/batch/update` as raw JSON. Retried like reads: an update sets
        absolute values, so sending it twice leaves the same record."""
        return self._call(stats, self._batch.update, object_type, body)

    def _submit_association_reads(
        self,
        side: ThreadPoolExecutor,
        obj: HubSpotObject,
        ids: list[str],
        link_batches: dict[str, list[Future[pl.DataFrame]]],
        stats: WindowStats,
    ) -> None:
        for column, to_type in obj.associations.items():
            link_batches[column].append(side.submit(self._read_associations, obj.name, to_type, ids, stats))

    def _search_modified(
        self, obj: HubSpotObject, start: datetime, end: datetime, stats: WindowStats
    ) -> Iterator[pl.DataFrame]:
        window = [
            {"propertyName": obj.modified_property, "operator": "GTE", "value": str(_epoch_ms(start))},
            {"propertyName": obj.modified_property, "operator": "LT", "value": str(_epoch_ms(end))},
        ]
        last_id, after = 0, None
        while True:
            body: dict[str, Any] = {
                "filterGroups": [
                    {"filters": [*window, {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)}]}
                ],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "properties": list(obj.properties),
                "limit": SEARCH_PAGE_LIMIT,
            }
            if after is not None:
                body["after"] = after
            data = self._call(stats, self._search.do_search, obj.name, body)
            if last_id == 0 and after is None:
                stats.missing_properties = _missing_properties(obj, data)
            page, next_after = _records_page(obj, data)
            yield page
            if next_after is None:
                return
            # Key the next page on the last id; only a record served without an id (malformed at
            # the source) forces a step by offset within the current key range.
            last = page.get_column("id")[-1] if page.height else None
            if last:
                last_id, after = int(last), None
            else:
                after = next_after

    def _list_archived(self, obj: HubSpotObject, start: datetime, end: datetime, stats: WindowStats) -> pl.DataFrame:
        """HubSpot's archived list has no time filter: the whole list is read and filtered here."""
        pages = [_empty_records(obj)]
        after = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_LIMIT, "properties": list(obj.properties), "archived": True}
            if after is not None:
                kwargs["after"] = after
            page, after = _records_page(obj, self._call(stats, self._objects.get_page, obj.name, **kwargs))
            archived_at = pl.col("archived_at").str.to_datetime(time_zone="UTC", strict=False)
            pages.append(page.filter(archived_at.is_between(start, end, closed="left")))
            if after is None:
                return pl.concat(pages, how="vertical")

    def _read_associations(self, from_type: str, to_type: str, ids: list[str], stats: WindowStats) -> pl.DataFrame:
        """`id` -> sorted `to_ids` for one batch of ids; ids without associations are absent, as in HubSpot.

        HubSpot pages each input's associations on its own: a result with `paging.next.after` is
        asked again, that id with that cursor, in the next batch, until no result pages.
        """
        pages = [pl.DataFrame(schema={"id": pl.Utf8, "to_ids": pl.List(pl.Int64)})]
        inputs: list[dict[str, str]] = [{"id": i} for i in ids]
        while inputs:
            data = self._call(stats, self._associations.get_page, from_type, to_type, {"inputs": inputs})
            page = _associations_page(data)
            pages.append(page.select("id", "to_ids"))
            inputs = [{"id": i, "after": after} for i, after in page.drop_nulls("after").select("id", "after").rows()]
        links = pl.concat(pages, how="vertical")
        if len(pages) > 2:
            links = links.group_by("id", maintain_order=True).agg(pl.col("to_ids").explode(empty_as_null=False).sort())
        return links

    def _call(self, stats: WindowStats, operation: Any, *args: Any, **kwargs: Any) -> bytes:
        """One API call through the client, answered as the raw JSON body.

        What no retry can fix fails the step at once, bypassing the step's RetryPolicy, and names
        the variable to check: a host that cannot be reached before HubSpot ever answered
        (HUBSPOT_HOST), a refused token or missing scope (HUBSPOT_ACCESS_TOKEN), an invalid request.
        Throttling, server errors and dropped connections that outlasted the connector's own
        retries propagate, so the RetryPolicy tries the step again later.
        """
        try:
            response = operation(*args, _preload_content=False, **kwargs)
        except Exception as error:
            failure = None if self._pool.answered else unreachable("HubSpot", self.host, HOST_VARIABLE, error)
            if failure is None and isinstance(error, API_EXCEPTIONS) and error.status in PERMANENT_STATUSES:
                failure = self._refusal(operation.__name__, error)
            if failure is None:
                raise
            raise failure from None
        stats.count_request(len(response.retries.history) if response.retries else 0)
        return response.data

    def _refusal(self, operation: str, error: ObjectsApiException | AssociationsApiException) -> dg.Failure:
        message = _error_message(error.body).rstrip(". ")
        description = f"HubSpot refused {operation} on {self.host} with {error.status} {error.reason}: {message}."
        if error.status == 401:
            description += f" Check {AUTH_VARIABLE}."
        elif error.status == 403:
            scopes = ", ".join(_missing_scopes(error.body)) or "the scopes this call needs"
            description += f" Grant {scopes} to the app whose token is in {AUTH_VARIABLE}."
        return dg.Failure(description=description, allow_retries=False)


def _page_schema(obj: HubSpotObject) -> dict[str, pl.DataType]:
    """The part of a records page (search or list) the connector reads; every value as text."""
    record = pl.Struct(
        {
            "id": pl.Utf8,
            "properties": pl.Struct(dict.fromkeys(obj.properties, pl.Utf8)),
            "archived": pl.Boolean,
            "archivedAt": pl.Utf8,
            "updatedAt": pl.Utf8,
        }
    )
    return {"results": pl.List(record), "paging": pl.Struct({"next": pl.Struct({"after": pl.Utf8})})}


def _records_page(obj: HubSpotObject, data: bytes) -> tuple[pl.DataFrame, str | None]:
    """One page of records, parsed by Polars (off the GIL, no Python dict per record), and the next cursor."""
    page = pl.read_json(io.BytesIO(data), schema=_page_schema(obj))
    next_after = page.get_column("paging").struct.field("next").struct.field("after")[0]
    records = (
        page.select(pl.col("results").explode(empty_as_null=False))
        .unnest("results")
        .unnest("properties")
        .select(
            "id",
            *obj.properties,
            pl.col("archived").fill_null(False),
            pl.col("archivedAt").alias("archived_at"),
            pl.col("updatedAt").alias("updated_at"),
        )
        .with_columns(changed_at=pl.coalesce("archived_at", "updated_at"))
    )
    return records, next_after


def _empty_records(obj: HubSpotObject) -> pl.DataFrame:
    return _records_page(obj, b'{"results": []}')[0]


def _associations_page(data: bytes) -> pl.DataFrame:
    """One association batch-read page: `id`, its sorted `to_ids` on this page, and `after`, the
    cursor to its next page (null when this was the last)."""
    results = pl.read_json(io.BytesIO(data), schema=ASSOCIATIONS_PAGE_SCHEMA).select(
        pl.col("results").explode(empty_as_null=False)
    )
    return results.select(
        pl.col("results").struct.field("from").struct.field("id"),
        pl.col("results")
        .struct.field("to")
        .list.eval(pl.element().struct.field("toObjectId").cast(pl.Int64))
        .list.sort()
        .alias("to_ids"),
        pl.col("results").struct.field("paging").struct.field("next").struct.field("after"),
    ).drop_nulls("id")


def _missing_properties(obj: HubSpotObject, data: bytes) -> list[str]:
    """Requested properties a page's records do not carry at all.

    HubSpot sends every requested property (null when empty) or, once a property is deleted, none:
    one page tells which are gone.
    """
    records = json.loads(data).get("results") or []
    if not records:
        return []
    sent = set().union(*((record.get("properties") or {}).keys() for record in records))
    return [name for name in obj.properties if name not in sent]


def _error_message(body: bytes | str | None) -> str:
    """HubSpot's own explanation from an error body, falling back to the body itself."""
    try:
        return str(json.loads(body or "{}").get("message") or body)
    except ValueError:
        return str(body)[:500]


def _missing_scopes(body: bytes | str | None) -> list[str]:
    """The scopes a 403 MISSING_SCOPES body says the token lacks."""
    try:
        errors = json.loads(body or "{}").get("errors") or []
    except (ValueError, AttributeError):
        return []
    return [
        scope
        for error in errors
        if isinstance(error, dict)
        for scope in (error.get("context") or {}).get("requiredGranularScopes") or []
    ]


def _epoch_ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
