"""Salesforce's REST API through simple-salesforce: every record changed or deleted in a time window."""

import hashlib
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
import requests
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession
from simple_salesforce.util import exception_handler
from urllib3 import Retry

from revenue_pipelines.lib.http import first_contact_retry, transport_retry, unreachable
from revenue_pipelines.lib.token_store import Tokens, TokenStore

IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
SERVED_INSTANT = "%Y-%m-%dT%H:%M:%S.%f%z"  # how Salesforce writes a datetime, e.g. 2026-11-20T12:00:00.000+0000
DAY_SECONDS = 86_400
ENVELOPE = ("Id", "IsDeleted", "SystemModstamp")  # read from every object, whatever the table declares
BUDGET_EXHAUSTED = "REQUEST_LIMIT_EXCEEDED"
SESSION_RENEWALS_IN_A_ROW = 2  # a fresh session refused at once means the grant is wrong, not expired

logger = dg.get_dagster_logger("salesforce")


@dataclass(frozen=True)
class SalesforceObject:
    """What the connector reads of one sObject."""

    name: str
    """The API name, e.g. `Opportunity`."""
    fields: tuple[str, ...]
    """Fields to read besides the envelope (`Id`, `IsDeleted`, `SystemModstamp`)."""
    deletable: bool = True
    """False for objects without `IsDeleted` (User: users are deactivated, never deleted)."""

    def __post_init__(self) -> None:
        # Names go into SOQL text (the query API has no parameters), so only plain identifiers pass.
        for name in (self.name, *self.fields):
            if not IDENTIFIER.fullmatch(name):
                raise ValueError(f"{name!r} is not a Salesforce API name")

    def columns(self, fields: list[str]) -> list[str]:
        """The envelope the object has, then `fields`: what a query selects."""
        envelope = ENVELOPE if self.deletable else tuple(name for name in ENVELOPE if name != "IsDeleted")
        return [*envelope, *fields]


@dataclass
class WindowStats:
    """What one window's read cost, for the asset's metadata."""

    requests: int = 0
    retries: int = 0
    session_renewals: int = 0
    window_splits: int = 0
    query_resumes: int = 0
    """Queries started again after the last record read, because Salesforce dropped their cursor."""
    query_window_seconds: int | None = None
    """The longest query window the next read should start from; None: no limit (one query per read)."""
    deleted: int = 0
    missing_fields: list[str] = field(default_factory=list)
    """Requested fields the object's describe no longer lists: deleted or renamed at the source."""


class _QueryTimeout(Exception):
    """Salesforce gave up on a query (QUERY_TIMEOUT), or did not answer within the read timeout:
    the window is too big to read in one query."""


class _CursorLost(Exception):
    """Salesforce dropped the query's cursor (INVALID_QUERY_LOCATOR): idle too long, or more than 10 open."""


@dataclass(frozen=True)
class _Window:
    """What one query reads: the records changed in [start, end) that sort after `after`
    (SystemModstamp as served, Id), when an earlier query of the window stopped there."""

    start: datetime
    end: datetime
    after: tuple[str, str] | None = None

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())


class _PinnedTrustSession(requests.Session):
    """A session whose CA bundle the process environment cannot replace.

    `requests` lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's own `verify`; when the
    resource is given a bundle, that bundle is what the server must chain to, on every machine.
    """

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings = super().merge_environment_settings(*args, **kwargs)
        settings["verify"] = self.verify
        return settings


class SalesforceResource(dg.ConfigurableResource):
    """Salesforce's REST API, read incrementally by `SystemModstamp` window.

    Each window is one `queryAll` (deleted records included, flagged by `IsDeleted`) ordered by
    `SystemModstamp, Id` and paged by Salesforce's query locator, a snapshot, so records sharing one
    timestamp across a batch boundary are each read once. The resource owns the session: it runs
    the refresh-token grant itself, keeps a rotated refresh token in its token store, and repeats
    the request that met an expired session. It stops at about a share of the org's daily API
    budget, halves a window whose query times out, and resumes after the last record it read when
    Salesforce drops a query's cursor.
    """

    token_url: str = Field(description="OAuth token endpoint, e.g. https://login.salesforce.com/services/oauth2/token.")
    client_id: str = Field(description="Connected app consumer key; supply with EnvVar.")
    client_secret: str = Field(description="Connected app consumer secret; supply with EnvVar.")
    refresh_token: str = Field(
        description="Refresh token of the integration user; supply with EnvVar. Once rotated, the store's token wins."
    )
    token_store: TokenStore = Field(description="Where rotated refresh tokens and live sessions are kept.")
    ca_bundle: str | None = Field(
        default=None, description="CA bundle the server must chain to; unset uses the system's trust store."
    )
    api_version: str = Field(default="62.0", pattern=r"^\d+\.\d$")
    max_api_usage_share: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Stop at about this share of the org's daily API requests (steps reading at once may each "
        "send one more).",
    )
    batch_size: int = Field(
        default=2000, ge=200, le=2000, description="Records per query batch (Sforce-Query-Options)."
    )
    max_retries: int = Field(default=8, description="Retries per request on 429, 5xx and dropped connections.")
    backoff_factor_seconds: float = Field(default=0.5, description="First backoff; doubles per retry, plus jitter.")
    backoff_max_seconds: float = Field(default=30.0, description="Longest wait between two retries.")
    timeout_seconds: float = Field(default=120.0, description="Read timeout per request.")

    _http: requests.Session = PrivateAttr()
    _retry: Retry = PrivateAttr()
    _adapter: HTTPAdapter = PrivateAttr()
    _query_start_adapter: HTTPAdapter = PrivateAttr()
    _answered: bool = PrivateAttr(default=False)
    _client: Salesforce | None = PrivateAttr(default=None)
    _usage: tuple[int, int] | None = PrivateAttr(default=None)
    _requests: int = PrivateAttr(default=0)
    _retries: int = PrivateAttr(default=0)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._http = _PinnedTrustSession() if self.ca_bundle else requests.Session()
        if self.ca_bundle:
            self._http.verify = self.ca_bundle
        self._retry = transport_retry(self.max_retries, self.backoff_factor_seconds, self.backoff_max_seconds)
        # Until Salesforce first answers, a connection that cannot be made is a wrong address: quick tries.
        self._adapter = HTTPAdapter(max_retries=first_contact_retry(self._retry))
        self._http.mount("https://", self._adapter)
        # A query's first request is not repeated on a read timeout: Salesforce is still running it,
        # and a smaller window is the retry (`read_window`).
        self._query_start_adapter = HTTPAdapter(max_retries=self._retry.new(read=False))
        self._http.hooks["response"].append(self._observe)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._http.close()

    def read_window(
        self, obj: SalesforceObject, start: datetime, end: datetime, query_window_seconds: int | None = None
    ) -> tuple[pl.DataFrame, WindowStats]:
        """Every record of `obj` changed or deleted in [start, end), as received (text columns).

        Columns: `id`, `IsDeleted`, `changed_at` (the record's `SystemModstamp`) and each requested
        field the object still has, under its API name. `query_window_seconds` (a previous read's
        `stats.query_window_seconds`) cuts the range into queries that short, sparing the queries
        that would time out before being halved.
        """
        stats = WindowStats()
        requests_before, retries_before = self._requests, self._retries
        fields = self._present_fields(obj, stats)
        pages: list[pl.DataFrame] = []
        pending = _windows(start, end, query_window_seconds)[::-1]  # a stack: the earliest window on top
        answered: list[int] = []  # the lengths of the windows whose query answered
        while pending:
            window = pending.pop()
            last: pl.DataFrame | None = None
            try:
                for page in self._read_query(obj, fields, window, stats):
                    pages.append(page)
                    last = page if page.height else last
                answered.append(window.seconds)
            except _CursorLost:
                answered.append(window.seconds)
                pending.append(_rest_of(window, last))
                stats.query_resumes += 1
            except _QueryTimeout:
                pending += _halves(obj, _rest_of(window, last))[::-1]
                stats.window_splits += 1
        stats.query_window_seconds = _next_window_seconds(query_window_seconds, answered, stats.window_splits)
        empty = pl.DataFrame(schema=dict.fromkeys(obj.columns(fields), pl.String))
        frame = pl.concat([_complete(empty, obj, fields), *pages], how="vertical", rechunk=True)
        frame = frame.rename({"Id": "id", "SystemModstamp": "changed_at"})
        if not obj.deletable:
            frame = frame.with_columns(IsDeleted=pl.lit("false"))
        stats.deleted = frame.filter(pl.col("IsDeleted") == "true").height
        stats.requests = self._requests - requests_before
        stats.retries = self._retries - retries_before
        return frame, stats

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the org's daily API requests, as of the last response."""
        return self._usage

    def _present_fields(self, obj: SalesforceObject, stats: WindowStats) -> list[str]:
        """The object's requested fields that its describe still lists; the others are reported, not queried."""
        timeout = self._request_options()["timeout"]
        describe = self._call(stats, lambda sf: sf.restful(f"sobjects/{obj.name}/describe", timeout=timeout))
        existing = {item["name"] for item in describe["fields"]}
        stats.missing_fields = [name for name in obj.fields if name not in existing]
        return [name for name in obj.fields if name in existing]

    def _read_query(
        self, obj: SalesforceObject, fields: list[str], window: _Window, stats: WindowStats
    ) -> Iterator[pl.DataFrame]:
        """One query's batches as frames, in order. The next batch is fetched while the current one
        becomes a frame, so the server's time and ours overlap; one request is in flight at a time."""
        columns = obj.columns(fields)
        first = {"q": window_soql(obj.name, columns, window.start, window.end, window.after)}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="salesforce-query") as fetcher:
            try:
                body = self._call(stats, lambda sf: self._get_batch(sf, sf.base_url + "queryAll/", first))
            except requests.exceptions.ReadTimeout:
                raise _QueryTimeout from None
            while True:
                page = _parse_batch(body, columns)
                following = None
                if not page.done:
                    url = page.next_records_url
                    following = fetcher.submit(
                        self._call, stats, lambda sf, url=url: self._get_batch(sf, f"https://{sf.sf_instance}{url}")
                    )
                yield _complete(page.records, obj, fields)
                if following is None:
                    return
                body = following.result()

    def _get_batch(self, sf: Salesforce, url: str, params: dict[str, str] | None = None) -> bytes:
        """One query batch, undecoded. simple-salesforce's session, headers and error mapping, but
        not its json.loads: Polars parses the body about five times faster (bench/ingest_salesforce.py)."""
        options = self._request_options()
        headers = {**sf.headers, **options["headers"]}
        response = sf.session.get(url, params=params, headers=headers, timeout=options["timeout"])
        if response.status_code >= 300:
            exception_handler(response, name="query")
        return response.content

    def _request_options(self) -> dict[str, Any]:
        return {
            "timeout": (10.0, self.timeout_seconds),
            "headers": {"Sforce-Query-Options": f"batchSize={self.batch_size}"},
        }

    def _call(self, stats: WindowStats, request: Callable[[Salesforce], Any]) -> Any:
        """One API call through the client, with the session, budget and body-read faults handled here.

        Statuses and connection failures are retried underneath, in urllib3. What urllib3 cannot see
        is handled here: a body cut short after the headers arrived (re-requested with backoff), an
        expired session (renewed, then the same request again), and Salesforce's own refusals. Before
        Salesforce has answered once, a refused connection, an unknown host or an untrusted
        certificate is a wrong setting: the step fails at once, without retries, naming it.
        """
        renewals_in_a_row = 0
        broken_bodies = 0
        while True:
            self._check_budget()
            try:
                client = self._session()
                return request(client)
            except SalesforceExpiredSession:
                if renewals_in_a_row >= SESSION_RENEWALS_IN_A_ROW:
                    raise dg.Failure(
                        description="Salesforce rejected every new session at once (INVALID_SESSION_ID); "
                        "check the connected app's session policies and the integration user.",
                        allow_retries=False,
                    ) from None
                self._renew_session(stale_access_token=client.session_id)
                renewals_in_a_row += 1
                stats.session_renewals += 1
            except requests.exceptions.SSLError as error:
                raise dg.Failure(
                    description=f"The TLS certificate of the Salesforce server at {_address(error, self.token_url)} "
                    f"was not trusted ({error}). Check SALESFORCE_TOKEN_URL, and set SALESFORCE_CA_BUNDLE to the "
                    "CA bundle the server chains to, or fix the machine's trust store.",
                    allow_retries=False,  # a retry meets the same certificate
                ) from None
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
                if not self._answered:
                    address = _address(error, self.token_url)
                    failure = unreachable("Salesforce", address, "SALESFORCE_TOKEN_URL", error)
                    if failure is not None:
                        raise failure from None
                broken_bodies += 1
                if broken_bodies > self.max_retries:
                    raise
                self._retries += 1
                time.sleep(self._backoff(broken_bodies))
            except SalesforceError as error:
                raise _refusal(error) from None

    def _backoff(self, attempt: int) -> float:
        wait = min(self.backoff_max_seconds, self.backoff_factor_seconds * 2 ** (attempt - 1))
        return wait + random.uniform(0, self.backoff_factor_seconds)  # jitter, not a secret

    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Every response: count it and its transport retries, and note the org's API usage."""
        self._requests += 1
        if not self._answered:
            self._answered = True
            self._adapter.max_retries = self._retry  # Salesforce is there: connection errors are transient now
        retries = getattr(response.raw, "retries", None)
        self._retries += len(retries.history) if retries else 0
        usage = Salesforce.parse_api_usage(response.headers.get("Sforce-Limit-Info") or "").get("api-usage")
        if usage is not None:
            self._usage = (usage.used, usage.total)

    def _check_budget(self) -> None:
        if self._usage is None:
            return
        used, limit = self._usage
        if used >= self.max_api_usage_share * limit:
            raise dg.Failure(
                description=f"Salesforce API budget: the org has used {used:,} of its {limit:,} daily API "
                f"requests ({used / limit:.0%}); this pipeline stops at about {self.max_api_usage_share:.0%} "
                "(max_api_usage_share; each step checks the usage of its last answer, so steps reading at once "
                "may each send one more request) to leave the rest to other integrations. Run it again once "
                "the rolling 24-hour usage has fallen.",
                allow_retries=False,
            )

    def _session(self) -> Salesforce:
        if self._client is None:
            self._renew_session(stale_access_token=None)
        assert self._client is not None
        return self._client

    def _renew_session(self, stale_access_token: str | None) -> None:
        """Adopt the store's session unless it is the one that just expired; else run the refresh grant.

        Under the store's lock, so parallel steps refresh once and a rotated refresh token is saved
        before anyone can need it.
        """
        key = self._store_key()
        with self.token_store.locked(key):
            saved = self.token_store.load(key) or {}
            if not saved.get("access_token") or saved["access_token"] == stale_access_token:
                saved = self._grant(saved.get("refresh_token") or self.refresh_token)
                self.token_store.save(key, saved)
        self._client = Salesforce(
            instance_url=saved["instance_url"],
            session_id=saved["access_token"],
            version=self.api_version,
            session=self._http,
        )
        self._http.mount(self._client.base_url + "queryAll/?", self._query_start_adapter)

    def _grant(self, refresh_token: str) -> Tokens:
        response = self._http.post(
            self.token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "refresh_token": refresh_token,
            },
            timeout=(10.0, self.timeout_seconds),
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code != 200 or "access_token" not in answer:
            transient = response.status_code == 429 or response.status_code >= 500
            if transient:
                advice = "The token endpoint is failing; the step is retried later."
            elif "error" in answer:
                advice = (
                    "Check SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (the connected app's consumer key "
                    "and secret) and SALESFORCE_REFRESH_TOKEN; if the refresh token was revoked or expired, "
                    "authorise the connected app again and set SALESFORCE_REFRESH_TOKEN."
                )
            else:
                advice = "That is not an OAuth token endpoint's answer: check SALESFORCE_TOKEN_URL."
            raise dg.Failure(
                description=f"Salesforce refused the refresh-token grant at {self.token_url} with "
                f"{response.status_code} {answer.get('error', '')}: "
                f"{answer.get('error_description', response.reason)}. {advice}",
                allow_retries=transient,
            )
        rotated = "refresh_token" in answer
        logger.info(f"Salesforce session renewed{'; the rotated refresh token is saved' if rotated else ''}.")
        return {
            "access_token": answer["access_token"],
            "instance_url": answer["instance_url"],
            "refresh_token": answer.get("refresh_token", refresh_token),
        }

    def _store_key(self) -> str:
        """One store entry per connected app and configured refresh token (hashed, never stored in clear)."""
        identity = f"{self.token_url}\n{self.client_id}\n{self.refresh_token}".encode()
        return "salesforce-" + hashlib.sha256(identity).hexdigest()[:32]


def _refusal(error: SalesforceError) -> Exception:
    """A Salesforce error answer as the exception the step should end with."""
    items = [item for item in error.content if isinstance(item, dict)] if isinstance(error.content, list) else []
    codes = {item.get("errorCode") for item in items}
    if "QUERY_TIMEOUT" in codes:
        return _QueryTimeout()
    if "INVALID_QUERY_LOCATOR" in codes:
        return _CursorLost()
    message = "; ".join(f"{item.get('errorCode')}: {item.get('message')}" for item in items) or str(error.content)[:500]
    if BUDGET_EXHAUSTED in codes:
        return dg.Failure(
            description=f"Salesforce API budget exhausted ({message}); nothing more can be read until "
            "the org's rolling 24-hour usage falls.",
            allow_retries=False,
        )
    # Throttling and server errors outlasted the transport retries: the step's RetryPolicy tries later.
    transient = error.status == 429 or error.status >= 500
    return dg.Failure(
        description=f"Salesforce answered {error.status} to {error.resource_name}: {message}",
        allow_retries=transient,
    )


def window_soql(
    sobject: str, columns: list[str], start: datetime, end: datetime, after: tuple[str, str] | None = None
) -> str:
    """The SOQL for one window, or for the part of it that sorts after `after` (SystemModstamp as
    served, Id). The query API takes no parameters: the names are checked identifiers
    (`SalesforceObject`), the instants are formatted from datetimes and the Id must be one, so no
    text reaches it unchecked."""
    window = f"SystemModstamp >= {_soql_instant(start)} AND SystemModstamp < {_soql_instant(end)}"
    if after is not None:
        served, record_id = after
        if not RECORD_ID.fullmatch(record_id):
            raise ValueError(f"{record_id!r} is not a Salesforce record id")
        stamp = _soql_instant(datetime.strptime(served, SERVED_INSTANT))
        window += f" AND (SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > '{record_id}'))"
    return f"SELECT {', '.join(columns)} FROM {sobject} WHERE {window} ORDER BY SystemModstamp, Id"  # noqa: S608


def _soql_instant(instant: datetime) -> str:
    """A SOQL datetime literal in UTC, formatted from a datetime, never from text. Whole seconds,
    as Salesforce keeps its datetimes, unless the instant has milliseconds (the sandbox keeps them)."""
    instant = instant.astimezone(UTC)
    milliseconds = f".{instant.microsecond // 1000:03d}" if instant.microsecond >= 1000 else ""
    return instant.strftime("%Y-%m-%dT%H:%M:%S") + milliseconds + "Z"


def _windows(start: datetime, end: datetime, seconds: int | None) -> list[_Window]:
    """[start, end) cut into windows of `seconds` (the last may be shorter), or whole if None."""
    if seconds is None:
        return [_Window(start, end)]
    bounds = [start]
    while bounds[-1] + timedelta(seconds=seconds) < end:
        bounds.append(bounds[-1] + timedelta(seconds=seconds))
    return [_Window(low, high) for low, high in zip(bounds, [*bounds[1:], end], strict=True)]


def _rest_of(window: _Window, last: pl.DataFrame | None) -> _Window:
    """What is left of `window` once the records up to the end of `last`, its last page read, are in."""
    if last is None:
        return window
    return _Window(window.start, window.end, (last["SystemModstamp"][-1], last["Id"][-1]))


def _halves(obj: SalesforceObject, window: _Window) -> list[_Window]:
    """The halves of a window whose query timed out, earlier first, cut at whole seconds."""
    middle = window.start + timedelta(seconds=window.seconds // 2)
    if middle <= window.start:
        raise dg.Failure(
            description=f"Salesforce timed out querying {obj.name} even for the one second from "
            f"{window.start.isoformat()}; the object needs a selective index on SystemModstamp.",
            allow_retries=True,
        )
    return [_Window(window.start, middle, window.after), _Window(middle, window.end, window.after)]


def _next_window_seconds(previous: int | None, answered: list[int], window_splits: int) -> int | None:
    """The window the next read starts from: after a timeout, the shortest window that answered; else
    twice the previous one, up to a day, so one busy day does not keep later reads in small pieces."""
    if window_splits:
        return min(answered, default=previous)
    return None if previous is None else min(2 * previous, DAY_SECONDS)


def _address(error: requests.exceptions.RequestException, default: str) -> str:
    """The URL a failed request went to, without its query string."""
    request = error.request
    url = request.url if request is not None and request.url else default
    return url.split("?", 1)[0]


@dataclass(frozen=True)
class _Batch:
    records: pl.DataFrame
    done: bool
    next_records_url: str | None


def _parse_batch(body: bytes, columns: list[str]) -> _Batch:
    """A query batch's records as text columns (`columns` only; `attributes` is dropped)."""
    record = pl.Struct(dict.fromkeys(columns, pl.String))
    schema = {"done": pl.Boolean, "nextRecordsUrl": pl.String, "records": pl.List(record)}
    page = pl.read_json(body, schema=schema)
    records = page["records"].explode(empty_as_null=False).struct.unnest()
    return _Batch(records, bool(page["done"][0]), page["nextRecordsUrl"][0])


def _complete(frame: pl.DataFrame, obj: SalesforceObject, fields: list[str]) -> pl.DataFrame:
    """Every field the object declares, null where the org no longer has it."""
    missing = [name for name in obj.fields if name not in fields]
    return frame.with_columns(pl.lit(None, dtype=pl.String).alias(name) for name in missing)
