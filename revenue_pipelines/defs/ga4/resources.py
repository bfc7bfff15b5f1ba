"""Google Analytics 4's Data API through google-analytics-data: one report over a window of days."""

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit

import dagster as dg
import google.auth
import polars as pl
import requests
from google.analytics.data_v1beta import BetaAnalyticsDataClient
from google.analytics.data_v1beta.types import (
    DateRange,
    Dimension,
    Metric,
    OrderBy,
    RunReportRequest,
    RunReportResponse,
)
from google.api_core import exceptions, retry
from google.auth.credentials import AnonymousCredentials, Credentials
from google.oauth2 import service_account
from pydantic import Field, PrivateAttr

from revenue_pipelines.defs.ga4.reports import Report

SCOPES = ["https://www.googleapis.com/auth/analytics.readonly"]
MAX_PAGE_SIZE = 250_000  # GA4 returns at most this many rows per request
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
READ_ATTEMPTS = 3  # a report whose row count moves while it is paged is read again from the start
# Failures that a later attempt can get past: server errors, timeouts and dropped connections.
TRANSIENT = (
    exceptions.InternalServerError,
    exceptions.BadGateway,
    exceptions.ServiceUnavailable,
    exceptions.GatewayTimeout,
    exceptions.DeadlineExceeded,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)

logger = dg.get_dagster_logger("ga4")


@dataclass
class ReportRead:
    """One report over a window, with what GA4 said about the numbers and what reading them cost."""

    rows: pl.DataFrame
    """One row per date and dimension combination; all text, `date` as YYYY-MM-DD."""
    requests: int = 0
    quota_waits: int = 0
    """Times a request met an exhausted hourly or concurrency quota and waited for it to refill."""
    sampled: list[dict[str, int]] = field(default_factory=list)
    """GA4's samplingMetadatas: samples read and sampling space size, per date range sampled."""
    thresholded: bool = False
    """GA4 withheld rows with few users (Google signals or demographics)."""
    other_row: bool = False
    """GA4 folded rows beyond its cardinality limit into a row whose values read "(other)"."""
    quota: dict[str, tuple[int, int]] = field(default_factory=dict)
    """propertyQuota after the last request: name -> (consumed by it, remaining)."""


class GA4Resource(dg.ConfigurableResource):
    """GA4's Data API (runReport) for one property.

    A report over a window is one request per 250,000 rows, ordered by every dimension so offset
    paging is stable. Server errors and dropped connections are retried with jittered backoff; an
    exhausted hourly or concurrency quota is waited out (GA4 refills it within the hour) up to
    `max_quota_wait_seconds`, while an exhausted daily quota fails at once with the reason.
    """

    property_id: str = Field(description="The numeric GA4 property id; supply with EnvVar.")
    api_endpoint: str | None = Field(
        default=None, description="Unset for Google's endpoint; the sandbox's URL for local runs."
    )
    service_account_json: str | None = Field(
        default=None,
        description="A service account key (JSON text); supply with EnvVar. Unset: Application Default "
        "Credentials, or no credentials at all when the endpoint is this machine (the sandbox).",
    )
    page_size: int = Field(default=100_000, ge=1, le=MAX_PAGE_SIZE, description="Rows per request.")
    timeout_seconds: float = Field(default=120.0, description="Deadline of one request.")
    backoff_factor_seconds: float = Field(default=1.0, description="First wait after a server error; doubles.")
    backoff_max_seconds: float = Field(default=60.0, description="Longest wait between two attempts.")
    retry_deadline_seconds: float = Field(default=600.0, description="Give up on server errors after this long.")
    quota_poll_seconds: float = Field(default=60.0, description="How often to try again while a quota refills.")
    max_quota_wait_seconds: float = Field(
        default=3900.0, description="Longest wait for an hourly quota to refill before failing the step."
    )

    _client: BetaAnalyticsDataClient = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if not self.property_id.isdigit():
            raise dg.Failure(
                description=f"GA4_PROPERTY_ID must be the numeric property id (Admin > Property details), "
                f"not {self.property_id!r}.",
                allow_retries=False,
            )
        options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
        self._client = BetaAnalyticsDataClient(
            credentials=self._credentials(), transport="rest", client_options=options
        )

    def read_report(self, report: Report, first: date, last: date) -> ReportRead:
        """Every row of `report` for the days first..last (inclusive)."""
        for _ in range(READ_ATTEMPTS):
            read = self._read_pages(report, first, last)
            if read is not None:
                return read
            logger.info(f"GA4 report {report.name}: the row count changed while paging (late data); reading again.")
        raise dg.Failure(
            description=f"GA4 report {report.name}: the row count kept changing while it was paged "
            f"({READ_ATTEMPTS} attempts); GA4 is still processing {first}..{last}. Try again later.",
            allow_retries=True,
        )

    def _read_pages(self, report: Report, first: date, last: date) -> ReportRead | None:
        """One consistent read, or None when the report changed between pages."""
        read = ReportRead(rows=pl.DataFrame())
        pages: list[pl.DataFrame] = []
        row_count: int | None = None
        while row_count is None or read.requests * self.page_size < row_count:
            response = self._run(report, first, last, offset=read.requests * self.page_size, read=read)
            if row_count is not None and response.row_count != row_count:
                return None
            row_count = response.row_count
            pages.append(_rows(report, response))
            _note(read, response)
        read.rows = pl.concat([_rows(report, RunReportResponse()), *pages], rechunk=True).with_columns(
            pl.col("date").str.strptime(pl.Date, "%Y%m%d", strict=False).cast(pl.String).fill_null(pl.col("date"))
        )
        return read

    def _run(self, report: Report, first: date, last: date, offset: int, read: ReportRead) -> RunReportResponse:
        request = RunReportRequest(
            property=f"properties/{self.property_id}",
            dimensions=[Dimension(name=name) for name in report.all_dimensions],
            metrics=[Metric(name=name) for name in report.metrics],
            date_ranges=[DateRange(start_date=first.isoformat(), end_date=last.isoformat())],
            order_bys=[
                OrderBy(dimension=OrderBy.DimensionOrderBy(dimension_name=name)) for name in report.all_dimensions
            ],
            limit=self.page_size,
            offset=offset,
            return_property_quota=True,
        )
        transient = retry.Retry(
            predicate=retry.if_exception_type(*TRANSIENT),
            initial=self.backoff_factor_seconds,
            maximum=self.backoff_max_seconds,
            timeout=self.retry_deadline_seconds,
        )

        def counted_quota_wait(error: Exception) -> None:
            read.quota_waits += 1
            logger.warning(f"GA4 report {report.name}: {error.message}; waiting for the quota to refill.")

        refill = retry.Retry(
            predicate=_refills_within_the_hour,
            initial=self.quota_poll_seconds,
            maximum=self.quota_poll_seconds,
            multiplier=1.0,
            timeout=self.max_quota_wait_seconds,
            on_error=counted_quota_wait,
        )
        try:
            response = refill(transient(self._client.run_report))(request, retry=None, timeout=self.timeout_seconds)
        except exceptions.TooManyRequests as error:
            raise dg.Failure(
                description=f"GA4 quota for property {self.property_id}: {error.message} This does not refill "
                "within the hour; the step stops rather than wait.",
                allow_retries=False,
            ) from None
        except exceptions.RetryError as error:
            raise dg.Failure(
                description=f"GA4 report {report.name}: gave up waiting for GA4: {error}",
                allow_retries=True,
            ) from None
        except exceptions.BadRequest as error:  # InvalidArgument's parent, which is what REST raises
            raise dg.Failure(
                description=f"GA4 rejected report {report.name}: {error.message}", allow_retries=False
            ) from None
        read.requests += 1
        return response

    def _credentials(self) -> Credentials:
        if self.service_account_json:
            try:
                info = json.loads(self.service_account_json)
                return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
            except (ValueError, KeyError):
                # The message names the setting, never its contents.
                raise dg.Failure(
                    description="GA4_SERVICE_ACCOUNT_JSON is not a service account key (JSON with "
                    "client_email, private_key and token_uri).",
                    allow_retries=False,
                ) from None
        if self.api_endpoint and urlsplit(self.api_endpoint).hostname in LOOPBACK_HOSTS:
            return AnonymousCredentials()  # the sandbox on this machine
        credentials, _ = google.auth.default(scopes=SCOPES)
        return credentials


def _refills_within_the_hour(error: Exception) -> bool:
    """Hourly and concurrency quotas refill by themselves; a daily one does not until tomorrow.

    Over REST, google-api-core picks the exception class by HTTP status alone: a quota's 429 is
    `TooManyRequests` (the parent of `ResourceExhausted`), so that is what is matched.
    """
    return isinstance(error, exceptions.TooManyRequests) and "per day" not in (error.message or "").lower()


def _rows(report: Report, response: RunReportResponse) -> pl.DataFrame:
    """A response's rows as text columns named by their API names."""
    columns = [*report.all_dimensions, *report.metrics]
    rows = [
        [value.value for value in row.dimension_values] + [value.value for value in row.metric_values]
        for row in RunReportResponse.pb(response).rows
    ]
    return pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String), orient="row")


def _note(read: ReportRead, response: RunReportResponse) -> None:
    """Keep what GA4 says about the numbers and its quota."""
    metadata = response.metadata
    read.thresholded |= metadata.subject_to_thresholding
    read.other_row |= metadata.data_loss_from_other_row
    read.sampled += [
        {"samples_read": item.samples_read_count, "sampling_space": item.sampling_space_size}
        for item in metadata.sampling_metadatas
    ]
    quota = response.property_quota
    for name in (
        "tokens_per_day",
        "tokens_per_hour",
        "tokens_per_project_per_hour",
        "concurrent_requests",
        "server_errors_per_project_per_hour",
        "potentially_thresholded_requests_per_hour",
    ):
        status = getattr(quota, name)
        read.quota[name] = (status.consumed, status.remaining)


def report_days(start: datetime, end: datetime) -> tuple[date, date]:
    """The report dates of a partition window [start, end): first and last day, inclusive."""
    return start.date(), (end - timedelta(days=1)).date()
