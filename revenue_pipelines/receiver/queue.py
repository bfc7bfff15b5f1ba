"""The receiver's queue: every accepted event, committed before the sender hears 2xx.

One row per event, unique by (source, event_id), so a redelivery is acknowledged and stored once.
A row stays pending until a run takes it (`mark_launched`); a failed run's rows go back to pending
(`release`). Rows are kept after launch, which is what makes a late redelivery a duplicate.

`EventQueue` is the interface the receiver and the sensor use; `SqliteEventQueue` is the embedded
default (a file under the Dagster instance folder). A PostgreSQL implementation is to follow with
the same interface and the same table.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

TABLE = "receiver_events"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    object_type TEXT,
    object_id TEXT,
    occurred_at TEXT,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    launched_run_id TEXT,
    launched_at TEXT,
    UNIQUE (source, event_id)
);
CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (launched_run_id, id);
"""


@dataclass(frozen=True)
class Event:
    """One change a sender reported, as the receiver accepted it."""

    source: str
    """`hubspot`, `salesforce`, or a Standard Webhooks source's name."""
    event_id: str
    """Unique per source: HubSpot's `<portalId>:<eventId>`, Salesforce's Notification Id, `webhook-id`."""
    object_type: str | None
    """`contact`, `deal`, `Opportunity`, ... as the sender names it."""
    object_id: str | None
    occurred_at: datetime | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class QueuedEvent(Event):
    id: int = 0
    received_at: datetime | None = None
    launched_run_id: str | None = None


class EventQueue(Protocol):
    def put(self, events: Sequence[Event]) -> int:
        """Commit the events durably (before returning); the number that were new."""
        ...

    def depth(self) -> int:
        """Events no run has taken."""
        ...

    def oldest_age_seconds(self) -> float | None:
        """Seconds since the oldest pending event was received; None when nothing is pending."""
        ...

    def pending(self, limit: int) -> list[QueuedEvent]:
        """Up to `limit` pending events, oldest first."""
        ...

    def mark_launched(self, ids: Iterable[int], run_id: str) -> int:
        """Record that `run_id` takes these events (by `QueuedEvent.id`); the number marked."""
        ...

    def release(self, run_id: str) -> int:
        """Make a failed run's events pending again; the number released."""
        ...

    def markers(self, prefix: str) -> dict[str, list[int]]:
        """The events taken under each marker (a run id or run key) starting with `prefix`."""
        ...

    def remark(self, marker: str, run_id: str) -> int:
        """Move the events taken under `marker` to `run_id` (once the run's id is known); the number moved."""
        ...

    def close(self) -> None: ...


def _timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds: fixed width, so text order is time order."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class SqliteEventQueue:
    """The queue in a SQLite file: WAL, `synchronous=FULL` (a commit survives power loss, not only
    a killed process), one connection shared by the receiver's threads under a lock."""

    def __init__(self, path: Path | str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`clock` says when events arrive and how old they are (a test pins it)."""
        self.path = Path(path)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._connection.executescript(SCHEMA)

    def put(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        received_at = _timestamp(self._clock())
        rows = [
            (
                event.source,
                event.event_id,
                event.object_type,
                event.object_id,
                _timestamp(event.occurred_at),
                received_at,
                json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False),
            )
            for event in events
        ]
        with self._lock:
            before = self._connection.total_changes
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    f"INSERT INTO {TABLE} (source, event_id, object_type, object_id, occurred_at, received_at, "  # noqa: S608
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id) DO NOTHING",
                    rows,
                )
                new = self._connection.total_changes - before
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        return new

    def depth(self) -> int:
        with self._lock:
            (count,) = self._connection.execute(
                f"SELECT count(*) FROM {TABLE} WHERE launched_run_id IS NULL"  # noqa: S608
            ).fetchone()
        return count

    def oldest_age_seconds(self) -> float | None:
        with self._lock:
            (oldest,) = self._connection.execute(
                f"SELECT min(received_at) FROM {TABLE} WHERE launched_run_id IS NULL"  # noqa: S608
            ).fetchone()
        if oldest is None:
            return None
        return max(0.0, (self._clock() - datetime.fromisoformat(oldest)).total_seconds())

    def pending(self, limit: int) -> list[QueuedEvent]:
        with self._lock:
            rows = self._connection.execute(
                f"SELECT id, source, event_id, object_type, object_id, occurred_at, received_at, payload, "  # noqa: S608
                f"launched_run_id FROM {TABLE} WHERE launched_run_id IS NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            QueuedEvent(
                id=row[0],
                source=row[1],
                event_id=row[2],
                object_type=row[3],
                object_id=row[4],
                occurred_at=datetime.fromisoformat(row[5]) if row[5] else None,
                received_at=datetime.fromisoformat(row[6]),
                payload=json.loads(row[7]),
                launched_run_id=row[8],
            )
            for row in rows
        ]

    def mark_launched(self, ids: Iterable[int], run_id: str) -> int:
        launched_at = _timestamp(self._clock())
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                marked = 0
                for event_id in ids:
                    marked += self._connection.execute(
                        f"UPDATE {TABLE} SET launched_run_id = ?, launched_at = ? "  # noqa: S608
                        "WHERE id = ? AND launched_run_id IS NULL",
                        (run_id, launched_at, event_id),
                    ).rowcount
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        return marked

    def release(self, run_id: str) -> int:
        with self._lock:
            return self._connection.execute(
                f"UPDATE {TABLE} SET launched_run_id = NULL, launched_at = NULL WHERE launched_run_id = ?",  # noqa: S608
                (run_id,),
            ).rowcount

    def markers(self, prefix: str) -> dict[str, list[int]]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._lock:
            rows = self._connection.execute(
                f"SELECT launched_run_id, id FROM {TABLE} WHERE launched_run_id LIKE ? ESCAPE '\\' ORDER BY id",  # noqa: S608
                (escaped + "%",),
            ).fetchall()
        found: dict[str, list[int]] = {}
        for marker, event_id in rows:
            found.setdefault(marker, []).append(event_id)
        return found

    def remark(self, marker: str, run_id: str) -> int:
        with self._lock:
            return self._connection.execute(
                f"UPDATE {TABLE} SET launched_run_id = ? WHERE launched_run_id = ?",  # noqa: S608
                (run_id, marker),
            ).rowcount

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> SqliteEventQueue:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
