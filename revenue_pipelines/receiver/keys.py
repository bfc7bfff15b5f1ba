"""API keys for the receiver's launch API: scopes, an expiry, revocation, rotation with an overlap,
and a per-key rate limit.

A token is `<key id>.<secret>`: the id is public (lists, the audit, logs) and finds the row; the
secret is `secrets.token_urlsafe(32)` (256 random bits), shown once when the key is made and stored
only as its SHA-256. A slow KDF protects guessable passwords; a 256-bit random secret needs none, and
the digest is compared in constant time.

The rate limit is a token bucket per key (capacity `rate_per_minute`, refilled at
`rate_per_minute / 60` a second) held in this process's memory: one receiver process enforces it
exactly; N replicas behind a balancer allow up to N times the rate. We run one receiver; storing the
buckets in the database would add a write to every request for a case we do not have.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from revenue_pipelines.receiver.audit import UNKNOWN_ACTOR
from revenue_pipelines.receiver.database import UtcDateTime, metadata
from revenue_pipelines.receiver.verifiers import Refused

log = logging.getLogger("revenue_pipelines.receiver")

SCOPES = ("launch", "read")
KEY_ID_PREFIX = "rk_"
KEY_ID = re.compile(r"^rk_[0-9a-f]{12}$")
SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
UNAUTHORIZED = "missing or invalid API key"

keys_table = sa.Table(
    "receiver_api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("scopes", sa.String(100), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime()),
    sa.Column("revoked_at", UtcDateTime()),
    sa.Column("rate_per_minute", sa.Integer(), nullable=False),
)


@dataclass(frozen=True)
class ApiKey:
    """What a caller is, never the secret."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rate_per_minute: int

    @property
    def actor(self) -> str:
        """Who this key is in the audit."""
        return f"key:{self.key_id}"


class KeyRefused(Refused):
    """A request refused for its key. `reason` is what the client is told (for a 401 always the same,
    so a caller cannot probe which keys exist or have expired); `detail` is the precise reason, for
    the audit and the log; `actor` is the key (`key:<id>`) when the token named one, else `unknown`."""

    def __init__(
        self, status: int, reason: str, *, detail: str, actor: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, reason, headers)
        self.detail = detail
        self.actor = actor


class UnknownKey(LookupError):
    pass


class KeyStore:
    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`clock` says when keys are made and expire and refills the buckets (a test pins it)."""
        self._engine = engine
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, datetime]] = {}  # key id -> (tokens, when counted)

    def create(
        self, name: str, scopes: Sequence[str], expires_in: timedelta | None, rate_per_minute: int = 60
    ) -> tuple[ApiKey, str]:
        """The key and its secret token, which is shown this once and stored only hashed."""
        if not name.strip():
            raise ValueError("a key needs a name")
        if not scopes or set(scopes) - set(SCOPES):
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        now = self._clock()
        key = ApiKey(
            key_id=KEY_ID_PREFIX + secrets.token_hex(6),
            name=name.strip(),
            scopes=tuple(scope for scope in SCOPES if scope in scopes),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            revoked_at=None,
            rate_per_minute=rate_per_minute,
        )
        token = f"{key.key_id}.{secrets.token_urlsafe(32)}"
        with self._engine.begin() as connection:
            connection.execute(
                keys_table.insert().values(
                    key_id=key.key_id,
                    name=key.name,
                    scopes=" ".join(key.scopes),
                    secret_sha256=_digest(token),
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=None,
                    rate_per_minute=key.rate_per_minute,
                )
            )
        return key, token

    def list(self) -> list[ApiKey]:
        """Every key, oldest first, revoked and expired ones included."""
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(keys_table).order_by(keys_table.c.created_at, keys_table.c.key_id))
            return [_key(row) for row in rows]

    def get(self, key_id: str) -> ApiKey:
        with self._engine.connect() as connection:
            row = connection.execute(sa.select(keys_table).where(keys_table.c.key_id == key_id)).first()
        if row is None:
            raise UnknownKey(f"no key {key_id}")
        return _key(row)

    def rotate(self, key_id: str, overlap: timedelta) -> tuple[ApiKey, str]:
        """A new key with the same name/scopes/rate; the old one expires after `overlap`.

        The new key lives as long as the old one was made to (a 90-day key gives another 90 days);
        an old key that would expire sooner than `overlap` keeps its own expiry."""
        if overlap < timedelta(0):
            raise ValueError("overlap cannot be negative")
        old = self.get(key_id)
        if old.revoked_at is not None:
            raise ValueError(f"{key_id} is revoked: create a new key instead")
        lifetime = old.expires_at - old.created_at if old.expires_at is not None else None
        new, token = self.create(old.name, old.scopes, lifetime, old.rate_per_minute)
        ends = new.created_at + overlap
        with self._engine.begin() as connection:
            connection.execute(
                keys_table.update()
                .where(keys_table.c.key_id == key_id)
                .where(sa.or_(keys_table.c.expires_at.is_(None), keys_table.c.expires_at > ends))
                .values(expires_at=ends)
            )
        return new, token

    def revoke(self, key_id: str) -> ApiKey:
        """Refuse the key from now on; revoking it again changes nothing."""
        with self._engine.begin() as connection:
            connection.execute(
                keys_table.update()
                .where(keys_table.c.key_id == key_id, keys_table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
        return self.get(key_id)

    def authorize(self, authorization: str | None, scope: str) -> ApiKey:
        """From the `Authorization: Bearer <token>` header value: the key, or `KeyRefused` with 401
        (missing, malformed, unknown, wrong secret, expired, revoked), 403 (scope not granted) or 429
        with `Retry-After` (the key's bucket is empty). Blocking: call it in a thread."""
        if scope not in SCOPES:
            raise ValueError(f"no scope {scope!r}: the scopes are {', '.join(SCOPES)}")  # a bug, not a refusal
        if not authorization:
            raise _unauthorized("no Authorization header", None)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        key_id, _, secret = token.partition(".")
        if scheme.lower() != "bearer" or not KEY_ID.match(key_id) or not SECRET.match(secret):
            raise _unauthorized("not a Bearer API key", None)
        with self._engine.connect() as connection:
            row = connection.execute(sa.select(keys_table).where(keys_table.c.key_id == key_id)).first()
        if row is None:
            raise _unauthorized(f"unknown key {key_id}", None)
        if not hmac.compare_digest(_digest(token), row.secret_sha256):
            raise _unauthorized(f"wrong secret for {key_id}", None)  # not that key: anyone can name one
        key = _key(row)
        now = self._clock()
        if key.revoked_at is not None:
            raise _unauthorized(f"revoked at {key.revoked_at.isoformat()}", key)
        if key.expires_at is not None and key.expires_at <= now:
            raise _unauthorized(f"expired at {key.expires_at.isoformat()}", key)
        if scope not in key.scopes:
            reason = f"this key does not have the {scope} scope"
            raise _refusal(403, reason, reason, key)
        if (wait := self._take(key, now)) > 0:
            reason = f"rate limit of {key.rate_per_minute} requests a minute"
            raise _refusal(429, reason, reason, key, {"Retry-After": str(wait)})
        return key

    def _take(self, key: ApiKey, now: datetime) -> int:
        """Take a token from the key's bucket: 0 when there was one, else the whole seconds until there is."""
        per_second = key.rate_per_minute / 60
        with self._lock:
            tokens, counted = self._buckets.get(key.key_id, (float(key.rate_per_minute), now))
            now = max(now, counted)  # threads may arrive out of order: time in the bucket only moves forward
            elapsed = (now - counted).total_seconds()
            tokens = min(float(key.rate_per_minute), tokens + elapsed * per_second)
            if tokens >= 1:
                self._buckets[key.key_id] = (tokens - 1, now)
                return 0
            self._buckets[key.key_id] = (tokens, now)
            return max(1, math.ceil(round((1 - tokens) / per_second, 3)))  # 1.0000000001 s is 1 s


def _unauthorized(detail: str, key: ApiKey | None) -> KeyRefused:
    return _refusal(401, UNAUTHORIZED, detail, key, {"WWW-Authenticate": "Bearer"})


def _refusal(
    status: int, reason: str, detail: str, key: ApiKey | None, headers: dict[str, str] | None = None
) -> KeyRefused:
    """Logged here, so the precise reason is on record whoever catches it."""
    actor = key.actor if key else UNKNOWN_ACTOR
    log.warning("api key refused: status=%d actor=%s reason=%s", status, actor, detail)
    return KeyRefused(status, reason, detail=detail, actor=actor, headers=headers)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key(row: sa.Row) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        rate_per_minute=row.rate_per_minute,
    )
