"""A threaded HTTP/1.1 keep-alive server, plain or TLS, that any sandboxed API plugs its routes into.

The server owns everything that is the same for every API: routing, the rolling-window rate
limit, scripted transport faults, the request log and JSON framing. A `Service` supplies the
routes, decides who may call them, and speaks its own error dialect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from revenue_pipelines.sandbox.faults import FaultPlan

logger = logging.getLogger(__name__)
JSON_CONTENT_TYPE = "application/json;charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str]  # named groups of the route's path pattern
    scheme: str  # of the listener: http or https

    @property
    def bearer_token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def parameter(self, name: str) -> str | None:
        """The last value of the query parameter `name`, if given."""
        values = self.query.get(name)
        return values[-1] if values else None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.headers.get('Host', 'localhost')}"

    def form(self) -> dict[str, str]:
        """The last value of each field of an application/x-www-form-urlencoded body."""
        return {name: values[-1] for name, values in parse_qs(self.body.decode("utf-8", "replace")).items()}

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as error:
            raise ApiError(400, f"Invalid JSON body: {error}", "VALIDATION_ERROR") from error


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, compact_json(payload).encode(), {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})})


def oauth_error(error: str, description: str, status: int = 400) -> Response:
    """RFC 6749's error body, which token endpoints answer instead of their API's own."""
    return json_response(status, {"error": error, "error_description": description})


def page_response(records: list[str], key: str = "results", **fields: Any) -> Response:
    """A `{key: [...], **fields}` body around records that are already JSON text."""
    rest = "".join(f",{compact_json(name)}:{compact_json(value)}" for name, value in fields.items())
    body = f"{{{compact_json(key)}:[{','.join(records)}]{rest}}}"
    return Response(200, body.encode(), {"Content-Type": JSON_CONTENT_TYPE})


class ApiError(Exception):
    """Raised by a route handler to answer with the service's error body."""

    def __init__(self, status: int, message: str, category: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[Request], Response]
    authenticated: bool = True  # False: the service's `refusal` is skipped (e.g. the route that issues tokens)


class Admission(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    window_seconds: float
    retry_after: float  # seconds until the window admits another request (0 when allowed)


class RollingWindowLimiter:
    """At most `limit` requests per key in any `window_seconds`; rejected requests do not count."""

    def __init__(self, limit: int, window_seconds: float):
        self.limit = limit
        self.window_seconds = window_seconds
        self._history: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> Admission:
        now = time.monotonic()
        with self._lock:
            history = self._history.setdefault(key, deque())
            while history and history[0] <= now - self.window_seconds:
                history.popleft()
            if len(history) >= self.limit:
                retry_after = history[0] + self.window_seconds - now
                return Admission(False, self.limit, 0, self.window_seconds, retry_after)
            history.append(now)
            return Admission(True, self.limit, self.limit - len(history), self.window_seconds, 0.0)


class Service:
    """One API the sandbox speaks: its routes, credentials, rate limit and error dialect.

    The limiter, if any, counts requests per bearer token.
    """

    def __init__(self, limiter: RollingWindowLimiter | None, send_retry_after: bool):
        self.limiter = limiter
        self.send_retry_after = send_retry_after

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error(self, status: int, message: str, category: str) -> Response:
        raise NotImplementedError

    def rate_limited(self, retry_after: float | None) -> Response:
        raise NotImplementedError

    def refusal(self, request: Request) -> Response | None:
        """The answer to a request that may not go on (bad credentials, a spent quota), else None.

        Called once per request to an authenticated route or to no route at all, so a service
        may count calls here.
        """
        raise NotImplementedError

    def rate_limit_headers(self, admission: Admission) -> dict[str, str]:
        return {}

    def common_headers(self) -> dict[str, str]:
        """Headers on every response of this service, errors and scripted faults included."""
        return {}

    def retry_after_headers(self, seconds: float) -> dict[str, str]:
        """How this service says "come back in `seconds`"."""
        return retry_after_header(seconds)


def retry_after_header(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds, rounded up: HTTP allows only digits, and urllib3 rejects others."""
    return {"Retry-After": str(math.ceil(seconds))}


class LoggedRequest(NamedTuple):
    method: str
    path: str
    query: str
    status: int | None  # None when a fault dropped the connection without an answer


class RequestLog:
    """Thread-safe record of every request the sandbox handled, for tests to count."""

    def __init__(self) -> None:
        self._entries: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def count(self, method: str | None = None, path_contains: str | None = None, status: int | None = None) -> int:
        return sum(
            1
            for entry in self.log()
            if (method is None or entry.method == method)
            and (path_contains is None or path_contains in entry.path)
            and (status is None or entry.status == status)
        )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and a small body leave in one segment
    server: ApiServer

    def do_GET(self) -> None:
        self.server.handle_http(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request log is the record, and tests should not spam stderr."""


class ApiServer(ThreadingHTTPServer):
    """Serves the routes of its services on one listener until `stop()`; over TLS given an `ssl_context`."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        services: list[Service],
        faults: FaultPlan,
        log: RequestLog,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__((host, port), _Handler)
        self._ssl_context = ssl_context
        self.scheme = "http" if ssl_context is None else "https"
        self._routes = [(route, service) for service in services for route in service.routes()]
        self._default_service = services[0]
        self._faults = faults
        self._log = log
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox {self.url}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close idle keep-alive connections so their threads end, release the port."""
        self.shutdown()
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # already closed by the client
                    connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept, wrapping TLS connections without the handshake: the connection's own thread does
        it (`finish_request`), so a slow or failing client never holds up the accept loop."""
        connection, address = super().get_request()
        if self._ssl_context is not None:
            connection = self._ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except OSError:  # e.g. a client that does not trust the certificate: nothing to answer
                return
        super().finish_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_http(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        route, service, params = self._match(handler.command, split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        request = Request(handler.command, split.path, query, handler.headers, body, params, self.scheme)
        fault = self._faults.take(handler.path)
        kind = fault.kind if fault else None
        if kind == "drop":
            self._log.append(LoggedRequest(request.method, request.path, split.query, None))
            handler.close_connection = True
            return
        if kind == "slow":
            time.sleep(fault.params["seconds"])
        if kind == "rate_limit":
            response = service.rate_limited(fault.params["retry_after"])
        elif kind == "status":
            status = fault.params["status"]
            response = service.error(status, HTTPStatus(status).phrase, "INTERNAL_ERROR")
            if fault.params["retry_after"] is not None:
                response.headers.update(service.retry_after_headers(fault.params["retry_after"]))
        else:
            response = self._respond(route, service, request)
        response.headers.update(service.common_headers())
        self._log.append(LoggedRequest(request.method, request.path, split.query, response.status))
        self._write(handler, response, truncate=kind == "drop_mid_body")

    def _match(self, method: str, path: str) -> tuple[Route | None, Service, dict[str, str]]:
        for route, service in self._routes:
            match = route.pattern.fullmatch(path)
            if match and route.method == method:
                return route, service, match.groupdict()
        return None, self._default_service, {}

    @staticmethod
    def _respond(route: Route | None, service: Service, request: Request) -> Response:
        if route is None or route.authenticated:
            refusal = service.refusal(request)
            if refusal is not None:
                return refusal
        if route is None:
            return service.error(404, f"No route for {request.method} {request.path}", "OBJECT_NOT_FOUND")
        admission = service.limiter.admit(request.bearer_token or "") if service.limiter else None
        if admission and not admission.allowed:
            return service.rate_limited(admission.retry_after if service.send_retry_after else None)
        try:
            response = route.handler(request)
        except ApiError as error:
            response = service.error(error.status, error.message, error.category)
        except Exception:
            logger.exception("sandbox route %s %s failed", request.method, request.path)
            response = service.error(500, "internal error", "INTERNAL_ERROR")
        if admission:
            response.headers.update(service.rate_limit_headers(admission))
        return response

    @staticmethod
    def _write(handler: _Handler, response: Response, truncate: bool) -> None:
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(response.body)))
        handler.end_headers()
        handler.wfile.write(response.body[: len(response.body) // 2] if truncate else response.body)
        if truncate:
            handler.close_connection = True
