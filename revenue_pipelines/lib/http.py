"""The transport retry every connector uses, and the one rule for failing fast on a wrong address.

Every retry is a `urllib3.Retry` made by `transport_retry`: urllib3 drives it under the read
connectors, `send_with_retries` under a sender that must renew its headers on every attempt.

Transient trouble in the middle of a read (429, 5xx, a dropped connection) is retried patiently.
A connector that has not yet had a single answer from its service is different: a refused
connection, a name that does not resolve or a certificate that is not trusted then means the
configuration is wrong, and no retry will fix it. Such a first contact gets two quick tries, then
fails the step without step retries, naming the variable to fix (`unreachable`).
"""

import socket
import ssl
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
import urllib3
from urllib3.exceptions import HTTPError, InvalidHeader, NameResolutionError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError

RETRYABLE_STATUSES = (429, 500, 502, 503, 504)
FIRST_CONTACT_CONNECT_RETRIES = 2  # a restarting server gets a second; a wrong address fails in seconds


def transport_retry(
    max_retries: int,
    backoff_factor_seconds: float,
    backoff_max_seconds: float,
    statuses: Collection[int] = RETRYABLE_STATUSES,
) -> urllib3.Retry:
    """Retries on throttling, server errors (`statuses`) and dropped connections.

    Retry-After is honoured when the server sends it, else the wait doubles from
    `backoff_factor_seconds` up to `backoff_max_seconds`, with jitter so parallel steps spread out.
    Every method is retried: the connectors read (even where the API reads through a POST), and the
    writers are safe to repeat: outbound webhooks send a stable id their receivers de-duplicate by,
    HubSpot write-back sets absolute values, which a repeated request leaves the same.
    The last failed response is returned rather than raised, so the client reports its own error.
    A TLS failure is never retried: the same certificate comes back.
    """
    return urllib3.Retry(
        total=max_retries,
        other=0,
        allowed_methods=None,
        status_forcelist=statuses,
        backoff_factor=backoff_factor_seconds,
        backoff_jitter=backoff_factor_seconds,
        backoff_max=backoff_max_seconds,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


@dataclass(frozen=True)
class Attempts:
    """How one request fared under its retry policy."""

    response: urllib3.BaseHTTPResponse | None
    """The last answer, body read; None when the last attempt got none."""
    outcomes: tuple[int | str, ...]
    """Per attempt, the HTTP status or the transport error's name (e.g. `ReadTimeoutError`)."""


def send_with_retries(
    pool: urllib3.PoolManager,
    method: str,
    url: str,
    *,
    body: bytes,
    headers: Callable[[], Mapping[str, str]],
    retry: urllib3.Retry,
) -> Attempts:
    """One request under `retry` (backoff, jitter, Retry-After, which statuses and errors), attempted
    here rather than inside urllib3 so that each attempt gets fresh `headers()` (a signature over the
    attempt's own timestamp, which receivers hold to a few minutes) and every outcome is kept."""
    outcomes: list[int | str] = []
    while True:
        response: urllib3.BaseHTTPResponse | None = None
        error: HTTPError | None = None
        try:
            response = pool.urlopen(method, url, body=body, headers=dict(headers()), retries=False, redirect=False)
        except HTTPError as raised:  # timeouts, refused or dropped connections, TLS
            error = raised
        outcomes.append(type(error).__name__ if response is None else response.status)
        if response is not None and not retry.is_retry(method, response.status, "Retry-After" in response.headers):
            return Attempts(response, tuple(outcomes))
        try:
            retry = retry.increment(method, url, response=response, error=error)
        except HTTPError:  # retries spent, or an error urllib3 never retries
            return Attempts(response, tuple(outcomes))
        try:
            retry.sleep(response)
        except InvalidHeader:  # a Retry-After that is neither seconds nor a date: back off instead
            retry.sleep()


def first_contact_retry(retry: urllib3.Retry) -> urllib3.Retry:
    """`retry` for a connector's first request: connection errors get two quick tries, not minutes."""
    return retry.new(connect=FIRST_CONTACT_CONNECT_RETRIES, backoff_max=min(retry.backoff_max, 2.0))


def unreachable(service: str, url: str, variable: str, error: BaseException) -> dg.Failure | None:
    """A non-retryable failure naming `variable` when `error` says `url` cannot be reached at all
    (connection refused, DNS, TLS), else None. For a connector's first contact with its service."""
    reason = _connection_failure(error)
    if reason is None:
        return None
    return dg.Failure(
        description=f"{service} is unreachable at {url}: {reason}. Check {variable}.",
        allow_retries=False,
    )


def _connection_failure(error: BaseException) -> str | None:
    """What kept the connection from being made, in words; None if it was made."""
    causes = list(_causes(error))
    for kinds, reason in (
        ((Urllib3SSLError, ssl.SSLError), None),
        ((NameResolutionError, socket.gaierror), "the host name does not resolve"),
        ((ConnectionRefusedError,), "the connection was refused"),
        ((NewConnectionError,), "no connection could be made"),
    ):
        found = next((cause for cause in causes if isinstance(cause, kinds)), None)
        if found is not None:
            return reason or f"the TLS handshake failed ({_ssl_reason(causes)})"
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and everything it wraps: causes, contexts, urllib3's `reason`, requests' first argument."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending += [item for item in wrapped if isinstance(item, BaseException)]


def _ssl_reason(causes: list[BaseException]) -> str:
    for cause in causes:
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return str(getattr(cause, "verify_message", None) or cause.reason).lower().replace("_", " ")
    return "the certificate or protocol was refused"
