"""Google Analytics 4's Data API through google-analytics-data: one report over a window of days."""

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit

import dagster as dg
import google.auth
import google.auth.exceptions
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
from revenue_pipelines.lib.http import FIRST_CONTACT_CONNECT_RETRIES, unreachable

SCOPES = ["https://www.googleapis.com/auth/analytics.readonly"]
MAX_PAGE_SIZE = 250_000  # GA4 returns at most this many rows per request
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
GOOGLE_ENDPOINT = "https://analyticsdata.googleapis.com"
READ_ATTEMPTS = 3  # a report whose row count moves while it is paged is read again from the start
# Failures that a later attempt can get past: server errors, timeouts and dropped connections
# (a connection that cannot be made at all is one only once GA4 has answered; see `_retryable`).
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
    """GA4's samplingMetadatas, per date range sampled: the events it read (samplesReadCount) of the
    events it could have read (samplingSpaceSize)."""
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

    Configuration mistakes fail the step at once, without step retries, naming the variable: no or
    refused credentials, a property GA4 refuses, and an endpoint that cannot be reached before GA4
    has answered once (connection refused, DNS, TLS; two quick tries, as `lib/http.py` rules).
    """

    property_id: str = Field(description="The numeric GA4 property id; supply with EnvVar.")
    api_endpoint: str | None = Field(
        default=None,
        description="Unset for Google's endpoint; the sandbox's URL for local runs. Without a scheme "
        "the client speaks https, so an http endpoint needs the full http://host:port form.",
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

    _client: BetaAnalyticsDataClient | None = PrivateAttr(default=None)
    _answered: bool = PrivateAttr(default=False)
    """GA4 has answered a request, so the endpoint is right: connection trouble is transient from now on."""
    _failed_contacts: int = PrivateAttr(default=0)
    _client_credentials: Credentials | None = PrivateAttr(default=None)

    @property
    def endpoint(self) -> str:
        """Where requests go, as the client reads `api_endpoint`: https unless it names a scheme."""
        endpoint = self.api_endpoint or GOOGLE_ENDPOINT
        return endpoint if "://" in endpoint else f"https://{endpoint}"

    def _connected(self) -> BetaAnalyticsDataClient:
        """The client, made at the first request rather than in `setup_for_execution`.

        A resource whose setup raises is retried by the step's RetryPolicy under the multiprocess
        executor, whatever the Failure's `allow_retries` says; a step's own Failure is not.
        """
        if self._client is None:
            if not self.property_id.isdigit():
                raise dg.Failure(
                    description="GA4_PROPERTY_ID must be the numeric property id (Admin > Property details), "
                    f"not {self.property_id!r}.",
                    allow_retries=False,
                )
            problem = _endpoint_problem(self.api_endpoint) if self.api_endpoint else None
            if problem:
                raise dg.Failure(description=f"GA4_API_ENDPOINT {problem}", allow_retries=False)
            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            self._client_credentials = self._credentials()
            self._client = BetaAnalyticsDataClient(
                credentials=self._client_credentials, transport="rest", client_options=options
            )
        return self._client

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
            predicate=self._retryable,
            initial=self.backoff_factor_seconds,
            maximum=self.backoff_max_seconds,
            timeout=self.retry_deadline_seconds,
        )

        def counted_quota_wait(error: Exception) -> None:
            read.quota_waits += 1
            logger.warning(f"GA4 report {report.name}: {_ga4_says(error)} Waiting for the quota to refill.")

        refill = retry.Retry(
            predicate=_refills_within_the_hour,
            initial=self.quota_poll_seconds,
            maximum=self.quota_poll_seconds,
            multiplier=1.0,
            timeout=self.max_quota_wait_seconds,
            on_error=counted_quota_wait,
        )
        try:
            response = refill(transient(self._connected().run_report))(
                request, retry=None, timeout=self.timeout_seconds
            )
        except exceptions.TooManyRequests as error:
            raise dg.Failure(
                description=f"GA4 property {self.property_id} has used up its quota of {_quota(error)}. It "
                "refills within 24 hours, not within the hour, so the step stops instead of waiting; "
                "materialize these days again tomorrow.",
                allow_retries=False,
            ) from None
        except exceptions.RetryError as error:
            cause = error.cause
            reason = _ga4_says(cause) if isinstance(cause, exceptions.GoogleAPICallError) else repr(cause)
            raise dg.Failure(
                description=f"GA4 report {report.name}: GA4 was still failing when the retries ran out "
                f"({reason}). The step will be tried again later.",
                allow_retries=True,
            ) from None
        except exceptions.BadRequest as error:  # InvalidArgument's parent, which is what REST raises
            raise dg.Failure(
                description=f"GA4 rejected report {report.name}: {_ga4_says(error)}", allow_retries=False
            ) from None
        except (exceptions.Unauthorized, google.auth.exceptions.RefreshError) as error:
            reason = _ga4_says(error) if isinstance(error, exceptions.GoogleAPICallError) else error.args[0]
            raise dg.Failure(
                description=f"GA4 refused the credentials of {self._credential_source()}: {reason} "
                f"{self._credential_fix()}",
                allow_retries=False,
            ) from None
        except exceptions.Forbidden as error:
            raise dg.Failure(
                description=f"GA4 refused access to property {self.property_id}: {_ga4_says(error)} Check "
                f"GA4_PROPERTY_ID, and that the identity of {self._credential_source()} is a Viewer of the "
                "property (Admin > Property access management).",
                allow_retries=False,
            ) from None
        except (requests.exceptions.ConnectionError, google.auth.exceptions.TransportError) as error:
            raise (self._unreachable(error) or error) from None  # only what could not connect gets here
        read.requests += 1
        self._answered = True
        return response

    def _retryable(self, error: Exception) -> bool:
        """Transient trouble is retried. Until GA4 has answered once, a connection that cannot be made
        (refused, DNS) gets two quick tries and then is a wrong setting; a TLS failure is never retried."""
        if isinstance(error, exceptions.GoogleAPICallError):
            self._answered = True
        transient = isinstance(error, (*TRANSIENT, google.auth.exceptions.TransportError)) or (
            isinstance(error, google.auth.exceptions.RefreshError) and error.retryable
        )
        if not transient or isinstance(error, requests.exceptions.SSLError):
            return False
        if self._answered or self._unreachable(error) is None:
            return True
        self._failed_contacts += 1
        return self._failed_contacts <= FIRST_CONTACT_CONNECT_RETRIES

    def _unreachable(self, error: Exception) -> dg.Failure | None:
        """The failure naming the setting to fix when `error` could not connect, else None: GA4 itself,
        or the endpoint that issues tokens for the credentials (google-auth's TransportError)."""
        if isinstance(error, google.auth.exceptions.TransportError):
            token_uri = getattr(self._client_credentials, "token_uri", None) or "Google's token endpoint"
            return unreachable("The token endpoint of GA4's credentials", token_uri, self._credential_source(), error)
        return unreachable("GA4", self.endpoint, "GA4_API_ENDPOINT", error)

    def _credential_source(self) -> str:
        if self.service_account_json:
            return "GA4_SERVICE_ACCOUNT_JSON"
        return "Application Default Credentials (GA4_SERVICE_ACCOUNT_JSON is unset)"

    def _credential_fix(self) -> str:
        if self.service_account_json:
            return "Set GA4_SERVICE_ACCOUNT_JSON to a current key of a service account that can read the property."
        return (
            "Set GA4_SERVICE_ACCOUNT_JSON to a service account key, or renew Application Default Credentials "
            "(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS)."
        )

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
        if urlsplit(self.endpoint).hostname in LOOPBACK_HOSTS:
            return AnonymousCredentials()  # the sandbox on this machine
        try:
            credentials, _ = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as error:
            raise dg.Failure(
                description="GA4 has no credentials: GA4_SERVICE_ACCOUNT_JSON is unset, so Application Default "
                f"Credentials are used, and there are none ({error}). {self._credential_fix()}",
                allow_retries=False,
            ) from None
        return credentials


def _endpoint_problem(endpoint: str) -> str | None:
    """Why GA4_API_ENDPOINT cannot work, in words, or None. The client puts https:// before
    anything that does not start with http:// or https:// (an ftp:// endpoint becomes https://ftp://)."""
    has_scheme = "://" in endpoint
    parts = urlsplit(endpoint if has_scheme else f"//{endpoint}")
    if has_scheme and parts.scheme not in ("http", "https"):
        return f"{endpoint!r} must start with https:// or http://, or name just the host."
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        return f"{endpoint!r} has a port that is not a number."
    if not parts.hostname:
        return f"{endpoint!r} names no host."
    if not has_scheme and parts.hostname in LOOPBACK_HOSTS:
        return (
            f"{endpoint!r} has no scheme, so the client would speak https to this machine; the sandbox "
            f"speaks http: write http://{endpoint}."
        )
    return None


def _ga4_says(error: exceptions.GoogleAPICallError) -> str:
    """GA4's own message, without the method and request URL that google-api-core puts before it over REST."""
    request = getattr(error.response, "request", None)
    if request is None:
        return error.message
    return error.message.removeprefix(f"{request.method} {request.url}: ")


def _quota(error: exceptions.TooManyRequests) -> str:
    """Which quota GA4 says is spent: the first sentence of its message ("Exhausted property tokens per day")."""
    return _ga4_says(error).split(". ")[0].removeprefix("Exhausted ").rstrip(".")


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
        {"events_read": item.samples_read_count, "events_in_sampling_space": item.sampling_space_size}
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
