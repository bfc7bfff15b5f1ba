"""The audit trail: who did what, when, with what outcome, from where.

Appended to by the receiver (every refused request: webhooks and API calls; every launch) and by
the `keys` commands (every key operation); read with `python -m revenue_pipelines.receiver audit`.
Accepted webhook deliveries are not audited: the queue is their record. Rows are never updated.
An entry holds no secret: actors are names (`webhook:hubspot`, `key:rk_...`, `cli:alice`), reasons
are the refusals' own (which never quote a secret, a signature or a body).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from revenue_pipelines.receiver.database import UtcDateTime, metadata
from revenue_pipelines.receiver.verifiers import Refused

audit_table = sa.Table(
    "receiver_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(500), nullable=False),
    sa.Column("client", sa.String(100)),
    sa.Column("detail", sa.JSON()),
)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    """`webhook:<source>`, `key:<key id>`, `cli:<os user>`, or `unknown`."""
    action: str
    """`webhook`, `launch`, `keys.create`, ..."""
    outcome: str
    """`ok`, `refused <status>: <reason>` (the caller's fault) or `failed <status>: <reason>` (ours)."""
    client: str | None
    """The client's address, for requests."""
    detail: Mapping[str, Any] | None


UNKNOWN_ACTOR = "unknown"
"""A request that proved no identity (no key, a forged one, an unknown webhook source)."""


def refused(refusal: Refused) -> str:
    """The outcome of a refused request: `refused <status>` for the caller's fault, `failed <status>`
    for ours (5xx), and the precise reason, which for an API key (`keys.KeyRefused.detail`) is more
    than the client is told."""
    verb = "failed" if refusal.status >= 500 else "refused"
    return f"{verb} {refusal.status}: {getattr(refusal, 'detail', refusal.reason)}"


class AuditLog:
    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`clock` stamps the entries (a test pins it)."""
        self._engine = engine
        self._clock = clock

    def record(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        client: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one entry, committed before returning. Blocking: the receiver calls it in a thread."""
        with self._engine.begin() as connection:
            connection.execute(
                audit_table.insert().values(
                    at=self._clock(),
                    actor=actor,
                    action=action,
                    outcome=outcome,
                    client=client,
                    detail=dict(detail) if detail is not None else None,
                )
            )

    def since(self, since: datetime, limit: int | None = None) -> list[AuditEntry]:
        """Entries at or after `since`, oldest first; with `limit`, the latest `limit` of them (as `tail`)."""
        query = (
            sa.select(audit_table)
            .where(audit_table.c.at >= since)
            .order_by(audit_table.c.at.desc(), audit_table.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        return [AuditEntry(**row._mapping) for row in reversed(rows)]
