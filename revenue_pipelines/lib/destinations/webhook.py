"""Outbound webhooks: a route's rows POSTed as signed JSON batches (issue 17).

A batch's body is `{"type": "route.batch", "data": {"route", "partition_key", "batch", "batches",
"rows": [...]}}`, signed with the Standard Webhooks scheme by the `standardwebhooks` library
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), anew on every attempt so a late retry is
not refused as stale. The secret is per route, from the resource's `signing_secrets`, bound to
ROUTE_WEBHOOK_SECRETS as `route_name=whsec_...,other_route=whsec_...`.

The `webhook-id` is derived from route, partition key, batch index and the batch's content, so a
re-run sends the same ids and receivers de-duplicate. Batches go in order, each after the one
before was accepted; 429, 408, 409, 425, 5xx, timeouts and dropped connections are retried with
backoff, jitter and Retry-After (`lib/http.py`); any other 4xx is final. A batch that is not
accepted goes, with every later one, to the dead-letter folder (one JSON file per batch, named by
its id, without the signature), and `deliver` returns normally with them in
`Delivery.dead_letters`: the route's blocking check fails on them, and the materialization's
metadata names them. The next delivery of the same route and partition sends its dead letters
first, with their ids, to the route's url as it is then, then the current rows, and removes each
file once its batch is accepted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import certifi
import dagster as dg
import polars as pl
import urllib3
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from revenue_pipelines.lib.destinations import Delivery
from revenue_pipelines.lib.http import Attempts, send_with_retries, transport_retry

SECRETS_VARIABLE = "ROUTE_WEBHOOK_SECRETS"
ANY_ROUTE = "*"
EVENT_TYPE = "route.batch"
# Throttling, timeouts, conflicts and "too early" pass; any other 4xx will be refused again.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, *range(500, 600)})
REFUSAL_EXCERPT_CHARS = 500
SECRET_HEADERS = ("webhook-signature", "authorization")  # never written to a dead letter


class WebhookDestination(BaseModel):
    """A route's `destination:` block for outbound webhooks."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webhook"] = Field(description="Outbound webhooks: signed JSON batches POSTed to `url`.")
    url: AnyHttpUrl = Field(
        description="The receiver's http(s) URL. User info, if any, is sent as Basic authentication; "
        "neither it nor the query appears in metadata or dead letters."
    )
    batch_size: int = Field(default=1_000, ge=1, le=10_000, description="Rows per POST.")


@dataclass(frozen=True)
class _Batch:
    index: int
    webhook_id: str
    rows: int
    body: bytes


class WebhookResource(dg.ConfigurableResource):
    """Sends routes' rows to their webhook receivers; see the module docstring."""

    signing_secrets: str = Field(
        description=f"`route=whsec_...` pairs, comma-separated: each route's Standard Webhooks secret. "
        f"Supply with EnvVar({SECRETS_VARIABLE!r})."
    )
    dead_letter_dir: str = Field(description="Folder of the batches not delivered, a sub-folder per route.")
    max_attempts: int = Field(default=6, ge=1, le=20, description="Attempts per batch before it is dead-lettered.")
    backoff_factor_seconds: float = Field(
        default=1.0, ge=0, description="First backoff; doubles per retry, plus jitter."
    )
    backoff_max_seconds: float = Field(
        default=60.0, ge=0, description="Longest wait between two attempts, a Retry-After's included."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Connect and read timeout per attempt.")

    def deliver(
        self,
        frame: pl.DataFrame,
        destination: WebhookDestination,
        *,
        route: str,
        partition_key: str,
        log: logging.Logger,
    ) -> Delivery:
        signer = self._signer(route)
        url, authorization = _without_userinfo(str(destination.url))
        uri = urlunsplit(urlsplit(url)._replace(query="", fragment=""))
        letters = _DeadLetters(Path(self.dead_letter_dir), route, partition_key)
        stale = [letter for letter in letters.pending() if not _is_current(letter, frame, destination, route)]
        batch_count = -(-frame.height // destination.batch_size)
        current = (_batch(frame, destination, route, partition_key, index) for index in range(batch_count))
        outbox: Iterator[tuple[_Batch, bool]] = itertools.chain(
            (
                (_Batch(letter["batch"], letter["webhook_id"], letter["rows"], letter["body"].encode()), False)
                for letter in stale
            ),
            ((batch, True) for batch in current),
        )
        retry = transport_retry(
            self.max_attempts - 1, self.backoff_factor_seconds, self.backoff_max_seconds, statuses=RETRYABLE_STATUSES
        ).new(retry_after_max=self.backoff_max_seconds)

        delivered_rows = delivered_bytes = 0
        digest = hashlib.sha256()
        attempts: list[int] = []  # per current batch sent
        statuses: list[list[int | str]] = []
        redelivered: list[str] = []  # dead letters accepted this time
        dead_letters: list[str] = []
        timeout = urllib3.Timeout(connect=min(10.0, self.timeout_seconds), read=self.timeout_seconds)
        with urllib3.PoolManager(num_pools=1, maxsize=1, timeout=timeout, ca_certs=certifi.where()) as pool:
            for batch, is_current in outbox:
                headers = {"content-type": "application/json", "webhook-id": batch.webhook_id, **authorization}
                if dead_letters:  # an earlier batch failed: this one waits behind it
                    dead_letters.append(letters.write(batch, uri, headers, None))
                    continue
                signed = functools.partial(_signed, signer, headers, batch)
                outcome = send_with_retries(pool, "POST", url, body=batch.body, headers=signed, retry=retry)
                if is_current:
                    attempts.append(len(outcome.outcomes))
                    statuses.append(list(outcome.outcomes))
                if len(outcome.outcomes) > 1:
                    log.warning("webhook %s batch %s (%s): %s", route, batch.index, batch.webhook_id, outcome.outcomes)
                if outcome.response is None or not 200 <= outcome.response.status < 300:
                    dead_letters.append(letters.write(batch, uri, headers, outcome))
                    log.error(
                        "webhook %s batch %s (%s) not delivered to %s: %s; it and every later batch are dead letters",
                        route, batch.index, batch.webhook_id, uri, _refusal(outcome),
                    )  # fmt: skip
                    continue
                if letters.remove(batch.webhook_id):
                    redelivered.append(batch.webhook_id)
                if is_current:
                    delivered_rows += batch.rows
                    delivered_bytes += len(batch.body)
                    digest.update(batch.body)
        log.info(
            "webhook %s partition %s: %s of %s rows in %s batches to %s, %s redelivered, %s dead letters",
            route, partition_key, delivered_rows, frame.height, batch_count, uri, len(redelivered), len(dead_letters),
        )  # fmt: skip
        return Delivery(
            uri=uri,
            rows=delivered_rows,
            bytes=delivered_bytes,
            checksum=f"sha256:{digest.hexdigest()}",
            answer={"batches": batch_count, "attempts": attempts, "statuses": statuses, "redelivered": redelivered},
            dead_letters=tuple(dead_letters),
        )

    def _signer(self, route: str) -> Webhook:
        """The route's signer (its own secret, else the `*=` one every route shares); a route without a
        usable secret fails the run, naming the variable only."""
        pairs = (entry.partition("=") for entry in self.signing_secrets.split(","))
        secrets = {name.strip(): secret.strip() for name, separator, secret in pairs if separator}
        secret = secrets.get(route, secrets.get(ANY_ROUTE))
        if secret is None:
            raise dg.Failure(
                f"No webhook signing secret for route {route!r}: add `{route}=whsec_...` to {SECRETS_VARIABLE}.",
                allow_retries=False,
            )
        try:
            return Webhook(secret)
        except (ValueError, EmptyWebhookSecretError) as error:  # binascii.Error is a ValueError
            raise dg.Failure(
                f"The webhook signing secret for route {route!r} in {SECRETS_VARIABLE} is not a whsec_ "
                f"base64 secret ({type(error).__name__}).",
                allow_retries=False,
            ) from None


def _batch(frame: pl.DataFrame, destination: WebhookDestination, route: str, partition_key: str, index: int) -> _Batch:
    """Batch `index` of `frame`, its id a function of route, partition, index and content alone."""
    rows = frame.slice(index * destination.batch_size, destination.batch_size)
    rows_json = rows.write_json().encode() if rows.height else b"[]"
    content = hashlib.sha256(rows_json).hexdigest()
    webhook_id = "msg_" + hashlib.sha256(f"{route}\n{partition_key}\n{index}\n{content}".encode()).hexdigest()[:32]
    envelope = {
        "route": route,
        "partition_key": partition_key,
        "batch": index,
        "batches": -(-frame.height // destination.batch_size),
    }
    head = json.dumps({"type": EVENT_TYPE, "data": envelope}, separators=(",", ":")).encode()
    body = head[:-2] + b',"rows":' + rows_json + b"}}"
    return _Batch(index, webhook_id, rows.height, body)


def _is_current(letter: dict[str, Any], frame: pl.DataFrame, destination: WebhookDestination, route: str) -> bool:
    """Whether the current rows hold the dead letter's batch unchanged (then it is sent in its place)."""
    index = letter["batch"]
    if index * destination.batch_size >= frame.height:
        return False
    return _batch(frame, destination, route, letter["partition_key"], index).webhook_id == letter["webhook_id"]


def _signed(signer: Webhook, headers: dict[str, str], batch: _Batch) -> dict[str, str]:
    """`headers` with this attempt's timestamp and signature."""
    now = datetime.now(UTC)
    signature = signer.sign(batch.webhook_id, now, batch.body.decode())
    return {**headers, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}


def _without_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """`url` without user info, and that user info as a Basic Authorization header."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    header = {"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
    return urlunsplit(parts._replace(netloc=netloc)), header


def _refusal(outcome: Attempts) -> str:
    """What the receiver said, for a dead letter and the log: status and the body's start."""
    if outcome.response is None:
        return f"no answer ({outcome.outcomes[-1]})"
    text = outcome.response.data.decode("utf-8", "replace")[:REFUSAL_EXCERPT_CHARS]
    return f"HTTP {outcome.response.status}: {text}"


class _DeadLetters:
    """The dead letters of one route and partition: `<dead_letter_dir>/<route>/<webhook-id>.json`.

    A letter keeps the place it was first given (`queued_at_ns`, `position`), so letters from
    several failed runs are redelivered in the order they were meant to arrive.
    """

    def __init__(self, root: Path, route: str, partition_key: str):
        self.folder = root / quote(route, safe="")
        self.partition_key = partition_key
        self._queued_at_ns = time.time_ns()
        self._position = 0

    def pending(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        letters = [json.loads(path.read_text()) for path in self.folder.glob("*.json")]
        mine = [letter for letter in letters if letter["partition_key"] == self.partition_key]
        return sorted(mine, key=lambda letter: (letter["queued_at_ns"], letter["position"]))

    def write(self, batch: _Batch, uri: str, headers: dict[str, str], outcome: Attempts | None) -> str:
        path = self.folder / f"{batch.webhook_id}.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        self._position += 1
        letter = {
            "webhook_id": batch.webhook_id,
            "partition_key": self.partition_key,
            "batch": batch.index,
            "rows": batch.rows,
            "url": uri,
            "headers": {name: value for name, value in headers.items() if name not in SECRET_HEADERS},
            "last_status": None if outcome is None or outcome.response is None else outcome.response.status,
            "attempts": [] if outcome is None else list(outcome.outcomes),
            "answer": "not attempted: an earlier batch was not delivered" if outcome is None else _refusal(outcome),
            "queued_at_ns": previous.get("queued_at_ns", self._queued_at_ns),
            "position": previous.get("position", self._position),
            "body": batch.body.decode(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(letter, indent=1))
        os.replace(temporary, path)
        return str(path)

    def remove(self, webhook_id: str) -> bool:
        """Forget a delivered batch's letter; whether there was one."""
        path = self.folder / f"{webhook_id}.json"
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed
