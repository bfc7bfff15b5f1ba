"""The receiver's queue: every accepted event, committed before the sender hears 2xx.

One row per event, unique by (source, event_id), so a redelivery is acknowledged and stored once.
A row stays pending until a run takes it (`mark_launched`); a failed run's rows go back to pending
(`release`). Rows are kept after launch, which is what makes a late redelivery a duplicate, until
the sensor purges them after the retention (`purge`).

`EventQueue` is the interface the receiver and the sensor use; `SqlEventQueue` is its one
implementation, SQLAlchemy Core over the receiver's database (`database.py`): a SQLite file on the
embedded default, the Dagster instance's PostgreSQL in PROD, the same statements on both.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from revenue_pipelines.receiver.database import UtcDateTime, connect, metadata

MARK_CHUNK = 1_000
"""Ids per UPDATE in `mark_launched`: far below SQLite's limit on bound parameters."""

events_table = sa.Table(
    "receiver_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("object_type", sa.Text),
    sa.Column("object_id", sa.Text),
    sa.Column("occurred_at", UtcDateTime),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("launched_run_id", sa.Text),
    sa.Column("launched_at", UtcDateTime),
    sa.UniqueConstraint("source", "event_id", name="receiver_events_source_event_id"),
    # Ids never come back after a purge (SQLite would reuse the highest otherwise); batches are named by them.
    sqlite_autoincrement=True,
)
# `pending`, `depth` and `oldest_age_seconds` read only the pending rows, however many are kept.
sa.Index(
    "receiver_events_pending",
    events_table.c.id,
    postgresql_where=events_table.c.launched_run_id.is_(None),
    sqlite_where=events_table.c.launched_run_id.is_(None),
)
# `markers(prefix)` is `LIKE 'prefix%'`, which a PostgreSQL index serves only with `text_pattern_ops`
# (the database's collation may not order text byte by byte); it serves `release`'s and `remark`'s `=` too.
sa.Index(
    "receiver_events_marker",
    events_table.c.launched_run_id,
    postgresql_ops={"launched_run_id": "text_pattern_ops"},
)
sa.Index("receiver_events_launched_at", events_table.c.launched_at)  # `purge`


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

    async def put_async(self, events: Sequence[Event]) -> int:
        """`put` for an event loop: it waits for the commit without holding a thread."""
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

    def purge(self, older_than: timedelta, limit: int, keep_prefix: str) -> int:
        """Delete up to `limit` events taken more than `older_than` ago, except those under a marker
        starting with `keep_prefix` (a batch still open); the number deleted."""
        ...

    def close(self) -> None: ...


@dataclass
class _Put:
    """One caller's events, waiting for the writer; `done` holds how many were new, once committed.
    A caller that gave up before the writer took its put (a cancelled request) is never written."""

    rows: list[dict[str, Any]]
    done: Future[int]


class SqlEventQueue:
    """The queue over an engine from `database.connect`; it owns the engine and disposes of it on close.

    Group commit: `put` (or `put_async`, which the receiver's event loop awaits) hands its rows to
    one writer thread and waits. The writer takes every put waiting at that moment into one
    transaction, and completes each caller only after COMMIT, so a caller's 2xx still follows its
    own events' commit, while concurrent senders share commits (an fsync each on SQLite) instead of
    queueing for one apiece. Should a batch fail, its puts are retried one by one, so one caller's bad events
    fail only that caller. The other methods (the sensor's) run on the engine's pool directly.
    """

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`clock` says when events arrive and how old they are (a test pins it)."""
        self.engine = engine
        self._clock = clock
        self._insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[engine.dialect.name]
        self._waiting: queue.SimpleQueue[_Put | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

    def put(self, events: Sequence[Event]) -> int:
        return self._submit(events).result()

    async def put_async(self, events: Sequence[Event]) -> int:
        return await asyncio.wrap_future(self._submit(events))

    def _submit(self, events: Sequence[Event]) -> Future[int]:
        if not events:
            nothing: Future[int] = Future()
            nothing.set_result(0)
            return nothing
        received_at = self._clock()
        waiting = _Put(
            rows=[
                {
                    "source": event.source,
                    "event_id": event.event_id,
                    "object_type": event.object_type,
                    "object_id": event.object_id,
                    "occurred_at": event.occurred_at,
                    "received_at": received_at,
                    "payload": event.payload,
                }
                for event in events
            ],
            done=Future(),
        )
        with self._writer_lock:
            if self._closed:
                raise RuntimeError("the queue is closed")
            if self._writer is None:  # started on the first put: the sensor never puts
                self._writer = threading.Thread(target=self._write, name="receiver-queue-writer", daemon=True)
                self._writer.start()
            self._waiting.put(waiting)
        return waiting.done

    def _write(self) -> None:
        while True:
            batch = [self._waiting.get()]
            while not self._waiting.empty() and batch[-1] is not None:
                batch.append(self._waiting.get())
            puts = [item for item in batch if item is not None and item.done.set_running_or_notify_cancel()]
            if puts:
                self._commit(puts)
            if batch[-1] is None:  # closing: everything put before it is committed
                return

    def _commit(self, puts: list[_Put]) -> None:
        """Insert the puts' rows in one transaction, then tell each caller how many of its rows were
        new: a key inserted counts for the first row that carries it, in the order the puts came."""
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for put in puts:
            for row in put.rows:
                unique.setdefault((row["source"], row["event_id"]), row)
        statement = (
            self._insert(events_table)
            .on_conflict_do_nothing(index_elements=["source", "event_id"])
            .returning(events_table.c.source, events_table.c.event_id)
        )
        try:
            with self.engine.begin() as connection:
                inserted = {tuple(row) for row in connection.execute(statement, list(unique.values()))}
        except Exception as error:
            if len(puts) == 1:
                puts[0].done.set_exception(error)
            else:
                for put in puts:
                    self._commit([put])
            return
        for put in puts:
            new = 0
            for row in put.rows:
                key = (row["source"], row["event_id"])
                if key in inserted:
                    inserted.discard(key)
                    new += 1
            put.done.set_result(new)

    def depth(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(events_table).where(events_table.c.launched_run_id.is_(None))
            ).scalar_one()

    def oldest_age_seconds(self) -> float | None:
        with self.engine.connect() as connection:
            oldest = connection.execute(
                sa.select(sa.func.min(events_table.c.received_at)).where(events_table.c.launched_run_id.is_(None))
            ).scalar_one()
        if oldest is None:
            return None
        return max(0.0, (self._clock() - oldest).total_seconds())

    def pending(self, limit: int) -> list[QueuedEvent]:
        """No `FOR UPDATE SKIP LOCKED`: the sensor is the only reader that takes events, one tick at
        a time, and `mark_launched` takes only rows still pending, so no event is taken twice."""
        columns = events_table.c
        statement = (
            sa.select(
                columns.id,
                columns.source,
                columns.event_id,
                columns.object_type,
                columns.object_id,
                columns.occurred_at,
                columns.received_at,
                columns.payload,
                columns.launched_run_id,
            )
            .where(columns.launched_run_id.is_(None))
            .order_by(columns.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [QueuedEvent(**row) for row in connection.execute(statement).mappings()]

    def mark_launched(self, ids: Iterable[int], run_id: str) -> int:
        ids = list(ids)
        columns = events_table.c
        launched_at = self._clock()
        marked = 0
        with self.engine.begin() as connection:
            for start in range(0, len(ids), MARK_CHUNK):
                marked += connection.execute(
                    events_table.update()
                    .where(columns.id.in_(ids[start : start + MARK_CHUNK]), columns.launched_run_id.is_(None))
                    .values(launched_run_id=run_id, launched_at=launched_at)
                ).rowcount
        return marked

    def release(self, run_id: str) -> int:
        return self._rowcount(
            events_table.update()
            .where(events_table.c.launched_run_id == run_id)
            .values(launched_run_id=None, launched_at=None)
        )

    def markers(self, prefix: str) -> dict[str, list[int]]:
        columns = events_table.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(columns.launched_run_id, columns.id).where(_starts_with(prefix)).order_by(columns.id)
            ).all()
        found: dict[str, list[int]] = {}
        for marker, event_id in rows:
            found.setdefault(marker, []).append(event_id)
        return found

    def remark(self, marker: str, run_id: str) -> int:
        return self._rowcount(
            events_table.update().where(events_table.c.launched_run_id == marker).values(launched_run_id=run_id)
        )

    def purge(self, older_than: timedelta, limit: int, keep_prefix: str) -> int:
        """One bounded DELETE (a subquery with LIMIT: neither database deletes with a limit of its own)."""
        columns = events_table.c
        expired = (
            sa.select(columns.id)
            .where(columns.launched_at < self._clock() - older_than, ~_starts_with(keep_prefix))
            .order_by(columns.id)
            .limit(limit)
        )
        return self._rowcount(events_table.delete().where(columns.id.in_(expired.scalar_subquery())))

    def _rowcount(self, statement: sa.Executable) -> int:
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount

    def close(self) -> None:
        """Commit what was put, stop the writer, and close every pooled connection."""
        with self._writer_lock:
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._waiting.put(None)
        if writer is not None:
            writer.join()
        self.engine.dispose()

    def __enter__(self) -> SqlEventQueue:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_queue(url: sa.URL | str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> SqlEventQueue:
    """The queue in the database at `url` (its tables created if missing), on an engine of its own."""
    return SqlEventQueue(connect(url), clock)


def _starts_with(prefix: str) -> sa.ColumnElement[bool]:
    """`launched_run_id LIKE 'prefix%'`, the prefix's own `%`, `_` and `\\` taken literally; the pattern
    is a bound value complete in itself, so PostgreSQL's planner can use the marker index."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return events_table.c.launched_run_id.like(escaped + "%", escape="\\")
