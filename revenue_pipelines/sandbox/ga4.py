"""Google Analytics 4's Data API (v1beta `runReport`, REST) served from the synthetic property.

A report aggregates the fact table of `ga4_data` over the requested dimensions and date ranges.
What makes GA4 awkward to ingest is here too, each switched by an attribute a test sets:

- Late data: a day `age` days before `today` shows the share 1 - 0.3**age of its rows (70%, 91%,
  97.3% for 1, 2, 3 days) while `age <= late_days`, all of them after; moving `today` settles it.
- Quotas: every report costs 1 + (fact rows in its date ranges) // 10,000 tokens, counted against
  rolling hour and day windows (`hour_seconds`, `day_seconds`, compressible for tests); more than
  `concurrent_requests` reports in flight, or a spent quota, answer 429 RESOURCE_EXHAUSTED. Server
  errors, scripted 5xx faults included, spend `server_errors_per_project_per_hour`.
- `other_row_limit`: a day with more rows than this for the requested dimensions keeps its largest
  rows and folds the rest into "(other)" (`dataLossFromOtherRow`).
- `sampling_threshold_sessions`: a date range with more sessions is estimated from a sample
  (`samplingMetadatas`). GA4 counts its samples in events; the synthetic facts have no event
  counts, so here they are counted in sessions (only their ratio means anything to a reader).
- `thresholding`: reports with `country` drop rows of fewer than `threshold_min_users` users
  (`subjectToThresholding`) and count against the potentially-thresholded-requests quota.

`totalUsers` is not additive: merging n fact rows counts max(largest row, ceil(sum / (1 + 0.1 ln n)))
users, as people come back across days, pages and sources. Ground truth (`truth`) is the report
without sampling, thresholding or "(other)".
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any, NamedTuple

import polars as pl

from revenue_pipelines.sandbox.ga4_data import ADDITIVE_METRICS, DIMENSIONS, METRICS, generate_property
from revenue_pipelines.sandbox.server import (
    ApiError,
    Request,
    Response,
    Route,
    Service,
    json_response,
    page_response,
    retry_after_header,
)

PROPERTY_ID = "123456789"
DEFAULT_ROWS_PER_DAY = 300
DOCS = "https://developers.google.com/analytics/devguides/reporting/data/v1"
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 250_000  # a larger limit is cut to this, silently, as GA4 does
MAX_DATE_RANGES = 4
MAX_DIMENSIONS = 9
MAX_METRICS = 10
TOKEN_ROWS = 10_000  # a report costs one token, plus one per this many fact rows it scans
LATE_SHORTFALL = 0.3  # a day `age` days old lacks LATE_SHORTFALL**age of its rows
USER_OVERLAP = 0.1
OTHER = "(other)"
HIGH_CARDINALITY = ("landingPage",)  # what "(other)" replaces first
THRESHOLDED_DIMENSIONS = ("country",)  # GA4 thresholds demographic and location reports
METRIC_TYPE_NUMBERS = {"TYPE_INTEGER": 1, "TYPE_FLOAT": 2, "TYPE_CURRENCY": 9}
ORDER_TYPES = ("ORDER_TYPE_UNSPECIFIED", "ALPHANUMERIC", "CASE_INSENSITIVE_ALPHANUMERIC", "NUMERIC")
REQUEST_FIELDS = frozenset(
    {
        "property", "dimensions", "metrics", "dateRanges", "dimensionFilter", "metricFilter", "offset",
        "limit", "metricAggregations", "orderBys", "currencyCode", "cohortSpec", "keepEmptyRows",
        "returnPropertyQuota", "comparisons",
    }
)  # fmt: skip
UNSUPPORTED_FIELDS = ("dimensionFilter", "metricFilter", "metricAggregations", "cohortSpec", "comparisons")
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
SERVER_MESSAGES = {  # Google's words for scripted `status` faults
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}
PERMISSION_MESSAGE = (
    "User does not have sufficient permissions for this property. "
    f"To learn more about Property ID, see {DOCS}/property-id."
)
HOUR_RETURN = f"These quota tokens will return in under an hour. To learn more, see {DOCS}/quotas"


CONCURRENCY_MESSAGE = "Exhausted concurrent requests quota."


class Quota(NamedTuple):
    """One of propertyQuota's buckets; its limit is the GA4 attribute of the same name in snake case."""

    name: str
    counts: str  # what spends it: "tokens", "server_errors" or "thresholded_requests"
    per: str  # "hour" or "day": the rolling window it refills over
    message: str  # GA4's 429 when it is spent


QUOTAS = (
    Quota(
        "tokensPerDay",
        "tokens",
        "day",
        f"Exhausted property tokens per day. These quota tokens will return in under 24 hours. "
        f"To learn more, see {DOCS}/quotas",
    ),
    Quota("tokensPerHour", "tokens", "hour", f"Exhausted property tokens per hour. {HOUR_RETURN}"),
    Quota("serverErrorsPerProjectPerHour", "server_errors", "hour", f"Exhausted server errors quota. {HOUR_RETURN}"),
    Quota(
        "potentiallyThresholdedRequestsPerHour",
        "thresholded_requests",
        "hour",
        f"Exhausted potentially thresholded requests quota. {HOUR_RETURN}",
    ),
    Quota(
        "tokensPerProjectPerHour", "tokens", "hour", f"Exhausted property tokens for a project per hour. {HOUR_RETURN}"
    ),
)


class DateRange(NamedTuple):
    start: date
    end: date
    name: str | None = None


class SortKey(NamedTuple):
    column: str
    descending: bool
    order_type: str  # ORDER_TYPES, or "METRIC"


@dataclass(frozen=True)
class Query:
    """A runReport request, validated."""

    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    date_ranges: tuple[DateRange, ...]
    order_bys: tuple[SortKey, ...] = ()
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    keep_empty_rows: bool = False
    return_property_quota: bool = False

    @property
    def output_dimensions(self) -> tuple[str, ...]:
        """With several date ranges GA4 adds `dateRange` (its name, or date_range_<i>) last."""
        return (*self.dimensions, "dateRange") if len(self.date_ranges) > 1 else self.dimensions

    @property
    def thresholdable(self) -> bool:
        return any(name in THRESHOLDED_DIMENSIONS for name in self.dimensions)


@dataclass(frozen=True)
class Report:
    """Every row of a report, in order, and what GA4 says about them."""

    frame: pl.DataFrame
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    samples: tuple[tuple[int, int], ...]  # (samples read, sampling space size) per sampled range
    data_loss_from_other_row: bool
    subject_to_thresholding: bool
    rows_scanned: int


@dataclass(frozen=True)
class _Treatment:
    """What a report undergoes besides aggregation: served reports get all of it, truth none."""

    today: date | None  # None: every day settled
    other_row_limit: int | None = None
    sampling_threshold_sessions: int | None = None
    threshold_min_users: int | None = None


class _Spending:
    """Amounts spent at monotonic instants; a quota's use is what its window still holds."""

    def __init__(self) -> None:
        self._spent: deque[tuple[float, int]] = deque()

    def add(self, amount: int, at: float) -> None:
        if amount:
            self._spent.append((at, amount))

    def within(self, seconds: float, now: float) -> int:
        return sum(amount for at, amount in self._spent if at > now - seconds)

    def forget_before(self, moment: float) -> None:
        while self._spent and self._spent[0][0] <= moment:
            self._spent.popleft()

    def clear(self) -> None:
        self._spent.clear()


class GA4(Service):
    """A GA4 property of a sandbox: its traffic, quotas, late data and report metadata.

    Tests tune the public attributes; reports read them per request.
    """

    def __init__(self, *, seed: int, days: int, end_date: date | None, rows_per_day: int | None):
        super().__init__(limiter=None, send_retry_after=False)
        self.facts = generate_property(seed, days, end_date, rows_per_day or DEFAULT_ROWS_PER_DAY)
        """The fact table, every day complete: what reports aggregate (see `generate_property`)."""
        # Each fact row is a partial aggregate of itself, so one merge serves every stage.
        self._partials = self.facts.with_columns(
            user_sum=pl.col("totalUsers"), user_max=pl.col("totalUsers"), fact_rows=pl.lit(1, pl.Int64)
        ).drop("totalUsers")
        self.property_id = PROPERTY_ID
        self.dates: tuple[date, date] = (self.facts["day"].min(), self.facts["day"].max())  # first, last
        self.today: date = self.dates[1] + timedelta(days=1)
        self.late_days = 3
        self.other_row_limit: int | None = None
        self.sampling_threshold_sessions: int | None = None
        self.thresholding = False
        self.threshold_min_users = 10
        self.latency_seconds = 0.0  # time each report takes, so concurrent ones overlap
        # Standard (non-360) property limits.
        self.tokens_per_day = 200_000
        self.tokens_per_hour = 40_000
        self.tokens_per_project_per_hour = 14_000
        self.concurrent_requests = 10
        self.server_errors_per_project_per_hour = 10
        self.potentially_thresholded_requests_per_hour = 120
        self.hour_seconds = 3600.0
        self.day_seconds = 86_400.0
        self.quota_exhaustions = 0
        self._spending = {quota.counts: _Spending() for quota in QUOTAS}
        self._in_flight = 0
        self._lock = threading.Lock()

    # --- ground truth -------------------------------------------------------------------------

    def truth(
        self,
        dimensions: Sequence[str],
        metrics: Sequence[str],
        start: date | str,
        end: date | str,
        *,
        settled: bool = False,
    ) -> pl.DataFrame:
        """The rows a report over start..end returns as of `today` (or, `settled`, once every day
        is complete), unsampled, unthresholded and without "(other)", in the order a report without
        orderBys has: first metric descending, then the dimensions. Columns are the API names;
        dimensions as text, integer metrics Int64, the others Float64."""
        try:
            _check_names(dimensions, DIMENSIONS, "dimension")
            _check_names(metrics, METRICS, "metric")
            date_range = DateRange(self._date(start, "startDate"), self._date(end, "endDate"))
        except ApiError as error:
            raise ValueError(error.message) from None
        query = Query(tuple(dimensions), tuple(metrics), (date_range,))
        return self._report(query, _Treatment(today=None if settled else self.today)).frame

    @property
    def tokens_consumed_hour(self) -> int:
        with self._lock:
            return self._spending["tokens"].within(self.hour_seconds, time.monotonic())

    @property
    def tokens_consumed_day(self) -> int:
        with self._lock:
            return self._spending["tokens"].within(self.day_seconds, time.monotonic())

    def reset_quota(self) -> None:
        """Refill every quota now."""
        with self._lock:
            for spending in self._spending.values():
                spending.clear()

    # --- HTTP ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        # GA4 reads the caller's OAuth token; the sandbox lets anyone in (the client sends none
        # with AnonymousCredentials), so routes skip `refusal` and HubSpot's token never applies.
        return [
            Route("POST", re.compile(r"/v1beta/properties/(?P<property>[^/:]*):runReport"), self._run_report, False),
            Route("POST", re.compile(r"/v1beta/.*"), self._not_found, False),
            Route("GET", re.compile(r"/v1beta/.*"), self._not_found, False),
        ]

    def refusal(self, request: Request) -> Response | None:
        return None

    def error(self, status: int, message: str, category: str) -> Response:
        """Google's error body; `category` is a google.rpc status name, or one of the server's own."""
        if status >= 500:
            with self._lock:
                self._spending["server_errors"].add(1, time.monotonic())
        if category == "INTERNAL_ERROR":  # a scripted fault or a crash: Google's words for it
            message = SERVER_MESSAGES.get(status, message)
        name = category if category in STATUS_NAMES.values() else STATUS_NAMES.get(status, "UNKNOWN")
        return json_response(status, {"error": {"code": status, "message": message, "status": name}})

    def rate_limited(self, retry_after: float | None) -> Response:
        response = self.error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")
        if retry_after is not None:
            response.headers.update(retry_after_header(retry_after))
        return response

    def _not_found(self, request: Request) -> Response:
        return self.error(404, f"Method not found: {request.method} {request.path}", "NOT_FOUND")

    def _run_report(self, request: Request) -> Response:
        property_id = request.params["property"]
        if not property_id.isdigit():
            raise ApiError(
                400,
                f"Invalid property ID: {property_id}. A numeric Property ID is required. "
                f"To learn more about Property ID, see {DOCS}/property-id.",
                "INVALID_ARGUMENT",
            )
        if property_id != self.property_id:
            raise ApiError(403, PERMISSION_MESSAGE, "PERMISSION_DENIED")
        with self._running() as others_in_flight:
            if self.latency_seconds:
                time.sleep(self.latency_seconds)
            query = self._query(_request_body(request))
            counted = self.thresholding and query.thresholdable
            self._admit()
            report = self._report(query, self._served_treatment())
            cost = 1 + report.rows_scanned // TOKEN_ROWS
            with self._lock:
                now = time.monotonic()
                spent = {"tokens": cost, "server_errors": 0, "thresholded_requests": int(counted)}
                for counts, amount in spent.items():
                    self._spending[counts].add(amount, now)
                quota = self._property_quota(spent, others_in_flight, now) if query.return_property_quota else None
        enum_numbers = "enum-encoding=int" in (request.parameter("$alt") or "")
        return _render(report, query, quota, enum_numbers)

    # --- quotas -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _running(self) -> Iterator[int]:
        """Hold one of the property's concurrent request slots; yields how many others are held."""
        with self._lock:
            if self._in_flight >= self.concurrent_requests:
                self.quota_exhaustions += 1
                raise ApiError(429, CONCURRENCY_MESSAGE, "RESOURCE_EXHAUSTED")
            others = self._in_flight
            self._in_flight += 1
        try:
            yield others
        finally:
            with self._lock:
                self._in_flight -= 1

    def _admit(self) -> None:
        """Refuse the report if any quota is spent: then GA4 refuses every request to the property."""
        with self._lock:
            now = time.monotonic()
            for spending in self._spending.values():
                spending.forget_before(now - max(self.hour_seconds, self.day_seconds))
            for quota in QUOTAS:
                if self._used(quota, now) >= self._limit(quota):
                    self.quota_exhaustions += 1
                    raise ApiError(429, quota.message, "RESOURCE_EXHAUSTED")

    def _used(self, quota: Quota, now: float) -> int:
        return self._spending[quota.counts].within(self.day_seconds if quota.per == "day" else self.hour_seconds, now)

    def _limit(self, quota: Quota) -> int:
        return getattr(self, re.sub(r"(?<!^)(?=[A-Z])", "_", quota.name).lower())

    def _property_quota(self, spent: dict[str, int], others_in_flight: int, now: float) -> dict[str, Any]:
        """propertyQuota after this request: what it spent of each bucket and what remains."""
        statuses = {
            quota.name: {"consumed": spent[quota.counts], "remaining": self._limit(quota) - self._used(quota, now)}
            for quota in QUOTAS
        }
        statuses["concurrentRequests"] = {"consumed": 0, "remaining": self.concurrent_requests - others_in_flight}
        return statuses

    # --- reports ------------------------------------------------------------------------------

    def _served_treatment(self) -> _Treatment:
        return _Treatment(
            today=self.today,
            other_row_limit=self.other_row_limit,
            sampling_threshold_sessions=self.sampling_threshold_sessions,
            threshold_min_users=self.threshold_min_users if self.thresholding else None,
        )

    def _query(self, body: dict[str, Any]) -> Query:
        """Validate a request body in GA4's order: field names, limit and offset, date ranges,
        then the counts of dimensions and metrics."""
        dimensions = tuple(_names(body.get("dimensions"), "dimensions"))
        metrics = tuple(_names(body.get("metrics"), "metrics"))
        _check_names(dimensions, DIMENSIONS, "dimension")
        _check_names(metrics, METRICS, "metric")
        for name in UNSUPPORTED_FIELDS:
            if body.get(name):
                raise ApiError(400, f"The sandbox does not implement {name}.", "INVALID_ARGUMENT")
        limit = _int64(body.get("limit"), "limit") or DEFAULT_LIMIT
        offset = _int64(body.get("offset"), "offset")
        ranges = body.get("dateRanges") or []
        if not isinstance(ranges, list) or not ranges:
            raise ApiError(400, "A dateRange is required.", "INVALID_ARGUMENT")
        if len(ranges) > MAX_DATE_RANGES:
            raise ApiError(
                400,
                f"Requests are limited to {MAX_DATE_RANGES} dateRanges.\n  This request contains {len(ranges)} "
                "dateRanges.",
                "INVALID_ARGUMENT",
            )
        date_ranges = tuple(self._date_range(item) for item in ranges)
        if len(dimensions) > MAX_DIMENSIONS or len(metrics) > MAX_METRICS:
            kind, most = (
                ("dimensions", MAX_DIMENSIONS) if len(dimensions) > MAX_DIMENSIONS else ("metrics", MAX_METRICS)
            )
            raise ApiError(400, f"Requests are limited to {most} {kind} within a nested request.", "INVALID_ARGUMENT")
        if not dimensions and not metrics:
            raise ApiError(400, "Requests require dimensions and/or metrics.", "INVALID_ARGUMENT")
        query = Query(
            dimensions,
            metrics,
            date_ranges,
            offset=offset,
            limit=min(limit, MAX_LIMIT),
            keep_empty_rows=bool(body.get("keepEmptyRows")),
            return_property_quota=bool(body.get("returnPropertyQuota")),
        )
        return replace(query, order_bys=tuple(_sort_key(item, query) for item in body.get("orderBys") or []))

    def _date_range(self, item: Any) -> DateRange:
        item = item if isinstance(item, dict) else {}
        start = self._date(item.get("startDate"), "startDate")
        end = self._date(item.get("endDate"), "endDate")
        if start > end:
            raise ApiError(
                400,
                f"start_date must be less than or equal to end_date. start_date = {start} and end_date = {end}",
                "INVALID_ARGUMENT",
            )
        return DateRange(start, end, item.get("name") or None)

    def _date(self, raw: date | str | None, field: str) -> date:
        """A date as GA4 takes it: YYYY-MM-DD, today, yesterday or NdaysAgo (from the property's today)."""
        if isinstance(raw, date):
            return raw
        relative = re.fullmatch(r"(\d+)daysAgo", raw or "")
        if raw == "today":
            return self.today
        if raw == "yesterday":
            return self.today - timedelta(days=1)
        if relative:
            return self.today - timedelta(days=int(relative[1]))
        if re.fullmatch(r"\d{4}-\d\d-\d\d", raw or ""):
            with contextlib.suppress(ValueError):
                return date.fromisoformat(raw)
        raise ApiError(
            400,
            f"Invalid {field} : {raw}. {field} must be YYYY-MM-DD, NdaysAgo, yesterday, or today.",
            "INVALID_ARGUMENT",
        )

    def _report(self, query: Query, treatment: _Treatment) -> Report:
        frames = []
        samples = []
        data_loss = False
        scanned = 0
        for index, date_range in enumerate(query.date_ranges):
            rows = self._partials.filter(pl.col("day").is_between(date_range.start, date_range.end))
            scanned += rows.height
            if treatment.today is not None:
                rows = rows.filter(pl.col("arrival") < _completeness(treatment.today, self.late_days))
            rows, scale, sample = _sample(rows, treatment.sampling_threshold_sessions)
            samples += [sample] if sample else []
            if treatment.other_row_limit is not None:
                rows, folded = _fold_other(rows, query.dimensions, treatment.other_row_limit)
                data_loss |= folded
            frame = _finish(_merge(rows, query.dimensions), scale)
            if treatment.threshold_min_users is not None and query.thresholdable:
                frame = frame.filter(pl.col("totalUsers") >= treatment.threshold_min_users)
            if query.metrics and not query.keep_empty_rows:
                frame = frame.filter(pl.any_horizontal(pl.col(name) != 0 for name in query.metrics))
            if len(query.date_ranges) > 1:
                frame = frame.with_columns(dateRange=pl.lit(date_range.name or f"date_range_{index}"))
            frames.append(frame.select(*query.output_dimensions, *query.metrics))
        frame = pl.concat(frames)
        keys = _sort_keys(query)
        if keys:
            frame = frame.sort(
                [_sort_expression(key) for key in keys],
                descending=[key.descending for key in keys],
                nulls_last=True,
            )
        return Report(
            frame,
            query.output_dimensions,
            query.metrics,
            tuple(samples),
            data_loss,
            treatment.threshold_min_users is not None and query.thresholdable,
            scanned,
        )


# --- the report engine: fact rows -> report rows ----------------------------------------------


def _completeness(today: date, late_days: int) -> pl.Expr:
    """The share of a day's rows GA4 has processed by `today`: none of today or later."""
    age = (pl.lit(today) - pl.col("day")).dt.total_days()
    return pl.when(age > late_days).then(1.0).when(age <= 0).then(0.0).otherwise(1 - LATE_SHORTFALL**age)


def _sample(rows: pl.DataFrame, threshold: int | None) -> tuple[pl.DataFrame, float, tuple[int, int] | None]:
    """Above `threshold` sessions, the rows of a deterministic sample of about `threshold` sessions,
    the factor that scales its sums to estimates, and (samples read, sampling space size)."""
    space = int(rows["sessions"].sum())
    if threshold is None or space <= threshold:
        return rows, 1.0, None
    rate = threshold / space
    sampled = rows.filter(pl.col("sample") < rate)
    return sampled, 1 / rate, (int(sampled["sessions"].sum()), space)


def _merge(rows: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Partial aggregates (fact rows are partials of themselves) merged per `keys`."""
    sums = [pl.col(name).sum() for name in (*ADDITIVE_METRICS, "user_sum", "fact_rows")]
    merged = [*sums, pl.col("user_max").max()]
    return rows.group_by(keys).agg(merged) if keys else rows.select(merged)


def _fold_other(rows: pl.DataFrame, dimensions: Sequence[str], limit: int) -> tuple[pl.DataFrame, bool]:
    """Each day's rows for `dimensions` beyond its `limit` largest (by sessions, then values) with
    their high-cardinality dimensions (else all but date) set to "(other)"; and whether any were."""
    daily = _merge(rows, ["day", *dimensions])
    if daily.group_by("day").len()["len"].max() <= limit:
        return daily, False
    folded = [name for name in dimensions if name in HIGH_CARDINALITY] or [n for n in dimensions if n != "date"]
    ranked = daily.sort(["day", "sessions", *dimensions], descending=[False, True, *[False] * len(dimensions)])
    beyond = pl.col("day").cum_count().over("day") > limit
    return ranked.with_columns(
        pl.when(beyond).then(pl.lit(OTHER)).otherwise(pl.col(name)).alias(name) for name in folded
    ), True


def _finish(partials: pl.DataFrame, scale: float) -> pl.DataFrame:
    """Metrics from partial aggregates, sampled sums scaled to estimates. Revenue is kept in whole
    cents so float sums do not depend on the order they were added in."""
    estimate = {name: pl.col(name) * scale for name in ("sessions", "engagedSessions", "user_sum", "fact_rows")}
    overlap = 1 + USER_OVERLAP * estimate["fact_rows"].log()
    users = pl.max_horizontal(pl.col("user_max"), (estimate["user_sum"] / overlap).ceil())
    return partials.with_columns(
        sessions=estimate["sessions"].round().cast(pl.Int64),
        totalUsers=users.round().cast(pl.Int64),
        engagedSessions=estimate["engagedSessions"].round().cast(pl.Int64),
        keyEvents=pl.col("keyEvents") * scale,
        totalRevenue=pl.col("totalRevenue").round(2) * scale,
    )


def _sort_keys(query: Query) -> list[SortKey]:
    """The orderBys, then (without any) the first metric descending, then every dimension: ties
    never depend on chance, so offset paging is stable."""
    keys = list(query.order_bys)
    if not keys and query.metrics:
        keys.append(SortKey(query.metrics[0], True, "METRIC"))
    return keys + [SortKey(name, False, "ALPHANUMERIC") for name in query.output_dimensions]


def _sort_expression(key: SortKey) -> pl.Expr:
    column = pl.col(key.column)
    if key.order_type == "CASE_INSENSITIVE_ALPHANUMERIC":
        return column.str.to_lowercase()
    if key.order_type == "NUMERIC":
        return column.cast(pl.Float64, strict=False)
    return column


# --- the wire ---------------------------------------------------------------------------------


def _request_body(request: Request) -> dict[str, Any]:
    """The JSON body, rejected as GA4's transcoding layer rejects it; snake_case names accepted."""
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as error:
        raise ApiError(400, f"Invalid JSON payload received. {error}", "INVALID_ARGUMENT") from None
    if not isinstance(body, dict):
        raise ApiError(
            400, 'Invalid JSON payload received. Unknown name "": Root element must be a message.', "INVALID_ARGUMENT"
        )
    named = {re.sub(r"_([a-z])", lambda match: match[1].upper(), key): value for key, value in body.items()}
    unknown = [key for key, camel in zip(body, named, strict=True) if camel not in REQUEST_FIELDS]
    if unknown:
        raise ApiError(
            400,
            " ".join(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.' for key in unknown),
            "INVALID_ARGUMENT",
        )
    return named


def _names(items: Any, field: str) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) and item.get("name") for item in items):
        raise ApiError(400, f"Each of {field} needs a name.", "INVALID_ARGUMENT")
    return [str(item["name"]) for item in items]


def _check_names(names: Sequence[str], catalog: dict[str, str], kind: str) -> None:
    """GA4's words for an unknown or repeated name (one space after "dimension.", two after "metric.")."""
    for name in names:
        if name not in catalog:
            gap = "  " if kind == "metric" else " "
            raise ApiError(
                400,
                f"Field {name} is not a valid {kind}.{gap}For a list of valid dimensions and metrics, "
                f"see {DOCS}/api-schema ",
                "INVALID_ARGUMENT",
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        prefix = "Duplicate metrics are not allowed. " if kind == "metric" else ""
        raise ApiError(400, f"{prefix}Found duplicate {kind}s: {', '.join(repeated)}", "INVALID_ARGUMENT")


def _int64(raw: Any, field: str) -> int:
    """proto3 JSON int64: a string or a number; absent is 0."""
    if raw is None:
        return 0
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid value at '{field}' (TYPE_INT64), {json.dumps(raw)}", "INVALID_ARGUMENT") from None
    if value < 0:
        raise ApiError(400, f"{field} must be positive. The API received {field} = {value}", "INVALID_ARGUMENT")
    return value


def _sort_key(item: Any, query: Query) -> SortKey:
    """One orderBy: by a requested dimension (with its orderType, a name or its number) or metric."""
    item = item if isinstance(item, dict) else {}
    descending = bool(item.get("desc"))
    if isinstance(item.get("metric"), dict):
        name = item["metric"].get("metricName")
        order_type = "METRIC"
        requested = query.metrics
    elif isinstance(item.get("dimension"), dict):
        name = item["dimension"].get("dimensionName")
        raw_type = item["dimension"].get("orderType") or 0
        order_type = ORDER_TYPES[raw_type] if raw_type in range(len(ORDER_TYPES)) else raw_type
        if order_type not in ORDER_TYPES:
            raise ApiError(400, f"Invalid value at 'order_bys[].dimension.order_type', {raw_type}", "INVALID_ARGUMENT")
        requested = query.output_dimensions
    else:
        raise ApiError(400, "The sandbox orders by a dimension or a metric only.", "INVALID_ARGUMENT")
    if name not in requested:
        raise ApiError(
            400,
            f"Field {name} exists in OrderBy but is not defined in input Dimensions/Metrics list",
            "INVALID_ARGUMENT",
        )
    return SortKey(name, descending, order_type)


def _render(report: Report, query: Query, quota: dict[str, Any] | None, enum_numbers: bool) -> Response:
    """The RunReportResponse: rows encoded in bulk, empty fields omitted as proto3 JSON omits them."""
    page = report.frame.slice(query.offset, query.limit)
    metadata: dict[str, Any] = {"currencyCode": "USD", "timeZone": "Etc/UTC"}
    if report.data_loss_from_other_row:
        metadata["dataLossFromOtherRow"] = True
    if report.samples:
        metadata["samplingMetadatas"] = [
            {"samplesReadCount": str(read), "samplingSpaceSize": str(space)} for read, space in report.samples
        ]
    if report.subject_to_thresholding:
        metadata["subjectToThresholding"] = True
    fields: dict[str, Any] = {}
    if report.dimensions:
        fields["dimensionHeaders"] = [{"name": name} for name in report.dimensions]
    if report.metrics:
        fields["metricHeaders"] = [
            {"name": name, "type": METRIC_TYPE_NUMBERS[METRICS[name]] if enum_numbers else METRICS[name]}
            for name in report.metrics
        ]
    if report.frame.height:
        fields["rowCount"] = report.frame.height
    fields["metadata"] = metadata
    if quota is not None:
        fields["propertyQuota"] = quota
    fields["kind"] = "analyticsData#runReport"
    if not page.height:
        return json_response(200, fields)
    return page_response(_row_records(page, report.dimensions, report.metrics), key="rows", **fields)


def _row_records(page: pl.DataFrame, dimensions: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """Each row as JSON text: values are strings, floats written as protobuf writes doubles.
    Values are encoded one by one and joined as text, ten times faster than encoding nested lists."""
    metric_texts = [
        pl.col(name).cast(pl.String) if METRICS[name] == "TYPE_INTEGER" else pl.lit(_double_texts(page[name]))
        for name in metrics
    ]
    fields = [
        pl.concat_str(
            pl.lit(f'"{field}":['),
            pl.concat_str([pl.struct(value.alias("value")).struct.json_encode() for value in values], separator=","),
            pl.lit("]"),
        )
        for field, values in (
            ("dimensionValues", [pl.col(name) for name in dimensions]),
            ("metricValues", metric_texts),
        )
        if values
    ]
    return (
        page.select(pl.concat_str(pl.lit("{"), pl.concat_str(fields, separator=","), pl.lit("}"))).to_series().to_list()
    )


def _double_texts(values: pl.Series) -> pl.Series:
    """protobuf's DoubleToBuffer: %.15g, or %.17g when that does not read back the same value;
    whole values therefore without a decimal point ("3", not "3.0")."""
    whole = (values == values.floor()) & (values.abs() < 1e15)
    texts = values.cast(pl.Int64, strict=False).cast(pl.String)
    fractional = (~whole).arg_true()
    if len(fractional):
        texts = texts.scatter(fractional, [_double_text(value) for value in values.gather(fractional)])
    return texts.rename(values.name)


def _double_text(value: float) -> str:
    short = f"{value:.15g}"
    return short if float(short) == value else f"{value:.17g}"
