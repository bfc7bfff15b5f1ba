"""The transport retry every connector uses: the same statuses, backoff and Retry-After rules."""

import urllib3

RETRYABLE_STATUSES = (429, 500, 502, 503, 504)


def transport_retry(max_retries: int, backoff_factor_seconds: float, backoff_max_seconds: float) -> urllib3.Retry:
    """Retries on throttling, server errors and dropped connections.

    Retry-After is honoured when the server sends it, else the wait doubles from
    `backoff_factor_seconds` up to `backoff_max_seconds`, with jitter so parallel steps spread out.
    Every method is retried: the connectors only read, even where the API reads through a POST.
    The last failed response is returned rather than raised, so the client reports its own error.
    """
    return urllib3.Retry(
        total=max_retries,
        allowed_methods=None,
        status_forcelist=RETRYABLE_STATUSES,
        backoff_factor=backoff_factor_seconds,
        backoff_jitter=backoff_factor_seconds,
        backoff_max=backoff_max_seconds,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
