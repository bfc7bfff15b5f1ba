"""HubSpot CRM v3 through hubspot-api-client: every record changed or archived in a time window."""

import json
from collections.abc import Iterator, Mapping
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

HUBSPOT_API = "https://api.hubapi.com"
RETRYABLE_STATUSES = (429, 500, 502, 503, 504)
PERMANENT_STATUSES = (400, 401, 403, 404)
API_EXCEPTIONS = (ObjectsApiException, AssociationsApiException)  # each API package has its own
SEARCH_PAGE_LIMIT = 200  # HubSpot's maximum for search
LIST_PAGE_LIMIT = 100  # HubSpot's maximum for the object list
ASSOCIATION_BATCH_LIMIT = 1000  # HubSpot's maximum inputs per association batch read


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
    modified: int = 0
    archived: int = 0
    missing_properties: list[str] = field(default_factory=list)
    """Requested properties that no record carried: removed or renamed at the source."""


class _PreloadingPoolManager(urllib3.PoolManager):
    """Reads every response body inside urllib3's retry loop.

    The client only skips its slow model objects when called with `_preload_content=False`, which
    would also move the body read outside urllib3, where a connection dropped mid-body is not
    retried. Forcing the preload here keeps both: raw JSON, and retries that cover the whole read.
    """

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> urllib3.BaseHTTPResponse:
        kw["preload_content"] = True
        return super().urlopen(method, url, redirect=redirect, **kw)


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

    _pool: urllib3.PoolManager = PrivateAttr()
    _client: HubSpot = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        retry = urllib3.Retry(
            total=self.max_retries,
            allowed_methods=None,  # search is a POST but only reads: safe to repeat
            status_forcelist=RETRYABLE_STATUSES,
            backoff_factor=self.backoff_factor_seconds,
            backoff_jitter=self.backoff_factor_seconds,
            backoff_max=self.backoff_max_seconds,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self._pool = _PreloadingPoolManager(
            num_pools=2,
            maxsize=4,
            retries=retry,
            timeout=urllib3.Timeout(connect=10.0, read=self.timeout_seconds),
            ca_certs=certifi.where(),
        )
        self._client = HubSpot(access_token=self.access_token, host=self.host, api_factory=self._api_factory)

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
        modified = list(self._search_modified(obj, start, end, stats))
        archived = [
            record for record in self._list_archived(obj, stats) if start <= _parse_instant(record["archivedAt"]) < end
        ]
        records = modified + archived
        stats.modified, stats.archived = len(modified), len(archived)
        if records:
            sent = set().union(*((record.get("properties") or {}).keys() for record in records))
            stats.missing_properties = [name for name in obj.properties if name not in sent]

        frame = self._records_frame(obj, records)
        for column, to_type in obj.associations.items():
            links = self._read_associations(obj.name, to_type, [r["id"] for r in modified if r.get("id")], stats)
            frame = frame.with_columns(
                pl.col("id").replace_strict(links, default=None, return_dtype=pl.List(pl.Int64)).alias(column)
            )
        return frame, stats

    def _search_modified(
        self, obj: HubSpotObject, start: datetime, end: datetime, stats: WindowStats
    ) -> Iterator[dict[str, Any]]:
        window = [
            {"propertyName": obj.modified_property, "operator": "GTE", "value": str(_epoch_ms(start))},
            {"propertyName": obj.modified_property, "operator": "LT", "value": str(_epoch_ms(end))},
        ]
        last_id, after = 0, None
        while True:
            body: dict[str, Any] = {
                "filterGroups": [
                    {
                        "filters": [
                            *window,
                            {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)},
                        ]
                    }
                ],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "properties": list(obj.properties),
                "limit": SEARCH_PAGE_LIMIT,
            }
            if after is not None:
                body["after"] = after
            page = self._call(stats, self._client.crm.objects.search_api.do_search, obj.name, body)
            results = page.get("results", [])
            yield from results
            next_page = page.get("paging", {}).get("next")
            if not next_page:
                return
            # Key the next page on the last id; only a record served without an id (malformed at
            # the source) forces a step by offset within the current key range.
            if results and results[-1].get("id"):
                last_id, after = int(results[-1]["id"]), None
            else:
                after = next_page["after"]

    def _list_archived(self, obj: HubSpotObject, stats: WindowStats) -> Iterator[dict[str, Any]]:
        """HubSpot's archived list has no time filter: the whole list is read and filtered here."""
        after = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": LIST_PAGE_LIMIT,
                "properties": list(obj.properties),
                "archived": True,
            }
            if after is not None:
                kwargs["after"] = after
            page = self._call(stats, self._client.crm.objects.basic_api.get_page, obj.name, **kwargs)
            yield from page.get("results", [])
            after = page.get("paging", {}).get("next", {}).get("after")
            if after is None:
                return

    def _read_associations(
        self, from_type: str, to_type: str, ids: list[str], stats: WindowStats
    ) -> dict[str, list[int]]:
        batch_api = self._client.crm.associations.v4.batch_api
        links: dict[str, list[int]] = {}
        for offset in range(0, len(ids), ASSOCIATION_BATCH_LIMIT):
            inputs = [{"id": record_id} for record_id in ids[offset : offset + ASSOCIATION_BATCH_LIMIT]]
            page = self._call(stats, batch_api.get_page, from_type, to_type, {"inputs": inputs})
            for result in page.get("results", []):
                links[str(result["from"]["id"])] = sorted(int(to["toObjectId"]) for to in result["to"])
        return links

    def _call(self, stats: WindowStats, operation: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API call through the client, answered as raw JSON.

        A refusal that no retry can fix (bad token, missing scope, invalid request) fails the step
        at once, bypassing the step's RetryPolicy; throttling and server errors that outlasted the
        connector's own retries propagate, so the RetryPolicy tries the step again later.
        """
        try:
            response = operation(*args, _preload_content=False, **kwargs)
        except API_EXCEPTIONS as error:
            if error.status not in PERMANENT_STATUSES:
                raise
            raise dg.Failure(
                description=f"HubSpot refused {operation.__name__} on {self.host} with {error.status} "
                f"{error.reason}: {_error_message(error.body)}",
                allow_retries=False,
            ) from None
        stats.requests += 1
        stats.retries += len(response.retries.history) if response.retries else 0
        return json.loads(response.data)

    @staticmethod
    def _records_frame(obj: HubSpotObject, records: list[dict[str, Any]]) -> pl.DataFrame:
        text = pl.Utf8
        properties = pl.from_dicts(
            [record.get("properties") or {} for record in records], schema=dict.fromkeys(obj.properties, text)
        )
        envelope = pl.DataFrame(
            {
                "id": [record.get("id") for record in records],
                "archived": [bool(record.get("archived")) for record in records],
                "archived_at": [record.get("archivedAt") for record in records],
                "updated_at": [record.get("updatedAt") for record in records],
            },
            schema={"id": text, "archived": pl.Boolean, "archived_at": text, "updated_at": text},
        )
        return (
            envelope.select("id")
            .hstack(properties)
            .hstack(envelope.drop("id"))
            .with_columns(changed_at=pl.coalesce("archived_at", "updated_at"))
        )


def _error_message(body: bytes | str | None) -> str:
    """HubSpot's own explanation from an error body, falling back to the body itself."""
    try:
        return str(json.loads(body or "{}").get("message") or body)
    except ValueError:
        return str(body)[:500]


def _epoch_ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
