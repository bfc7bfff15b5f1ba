"""`crm_change_sensor`: the receiver's queued CRM events become runs of the raw tables they touch.

Each tick:

1. Settles earlier batches. A batch's events are marked with its run key (the sensor never knows the
   run id: the daemon creates the run after the tick). For each such marker the run is found by its
   `dagster/run_key` tag: succeeded, its events are re-marked with the run's id (the marker then
   names the run for good); failed or canceled, its events are released and go out again in this
   tick under a new key; not created yet, the batch stays open (unless the cursor does not know it:
   then the tick that marked it never completed, and its events are released).
2. Takes pending events, maps each to its raw table, and groups them by the UTC day of
   `occurred_at` (the partition the change lands in; `received_at` when the sender gave no time).
   Events of an object type no raw table holds are marked `skipped-unmapped` (they stay in the
   queue, so a redelivery is still a duplicate, and are never taken again).
3. Requests one run per day: that partition, the affected raw tables (with their quarantine
   siblings, which the same step writes) and everything downstream except the Slack deliveries
   (the digest covers whole days; the daily run posts it).
4. Purges events launched (or skipped) more than the retention ago, in one bounded delete; those of
   a batch still open stay.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from revenue_pipelines.lib.partitions import DAILY_INGESTION
from revenue_pipelines.receiver.database import sqlite_url
from revenue_pipelines.receiver.queue import EventQueue, QueuedEvent, open_queue

SENSOR_NAME = "crm_change_sensor"
JOB_NAME = "daily_revenue_job"
KEY_PREFIX = "crm-changes-"
SKIPPED = "skipped-unmapped"
BATCH_TAG = "revenue_pipelines/crm_batch"
EVENTS_TAG = "revenue_pipelines/crm_events"
MAX_EVENTS_PER_TICK = 10_000
MAX_PURGED_PER_TICK = 10_000
FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)

# (source, object type as the sender names it) -> raw table
RAW_TABLES: dict[tuple[str, str], dg.AssetKey] = {
    **{
        ("hubspot", singular): dg.AssetKey(["hubspot", "raw", table])
        for singular, table in (("contact", "contacts"), ("company", "companies"), ("deal", "deals"))
    },
    **{
        ("salesforce", sobject): dg.AssetKey(["salesforce", "raw", table])
        for sobject, table in (
            ("Account", "accounts"),
            ("Contact", "contacts"),
            ("Lead", "leads"),
            ("Opportunity", "opportunities"),
        )
    },
}
# Slack messages are a day's news, posted by the daily run: a change during the day does not repost them.
NOT_REFRESHED = dg.AssetSelection.key_prefixes(["slack"], ["routes", "slack"])


@dataclass
class Cursor:
    last_id: int = 0
    """The highest event id any tick has seen."""
    open: dict[str, int] | None = None
    """Run key -> number of events, for batches whose run has not finished yet."""
    queue_depth: int = 0
    oldest_pending_seconds: float | None = None
    """As the tick left the queue: the UI shows the cursor (a sensor has no metadata of its own)."""

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls(open={})
        data = json.loads(text)
        return cls(last_id=int(data.get("last_id", 0)), open=dict(data.get("open", {})))

    def dump(self) -> str:
        return json.dumps(
            {
                "last_id": self.last_id,
                "open": self.open or {},
                "queue_depth": self.queue_depth,
                "oldest_pending_seconds": self.oldest_pending_seconds,
            },
            sort_keys=True,
        )


def raw_table(event: QueuedEvent) -> dg.AssetKey | None:
    return RAW_TABLES.get((event.source, event.object_type or ""))


def event_day(event: QueuedEvent) -> date:
    moment = event.occurred_at or event.received_at or datetime.now(UTC)
    return moment.astimezone(UTC).date()


def batch_name(day: date, ids: Iterable[int]) -> str:
    ids = list(ids)
    return f"{KEY_PREFIX}{day.isoformat()}-{min(ids)}-{max(ids)}"


def crm_change_sensor(database_url: sa.URL | None, interval_seconds: int, retention: timedelta) -> dg.SensorDefinition:
    """The sensor over the queue in the database at `database_url` (None: the SQLite file
    `<instance root>/receiver/queue.db`); events launched more than `retention` ago are purged."""

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=JOB_NAME,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Turns the webhook receiver's queued CRM changes into runs: one per day changed, of the raw tables "
            "touched and everything downstream but the Slack digest. A failed run's changes go out again."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        url = database_url or _instance_database_url(context.instance)
        cursor = Cursor.parse(context.cursor)
        if url is None or (url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()):
            context.log.info(f"no queue at {url}: nothing to do")  # a SQLite URL: no password in it
            return dg.SensorResult(run_requests=[], cursor=cursor.dump())
        with open_queue(url) as queue:
            released = _settle(context, queue, cursor)
            requests, skipped = _requests(context, queue, cursor)
            purged = queue.purge(retention, MAX_PURGED_PER_TICK, keep_prefix=KEY_PREFIX)
            cursor.queue_depth = queue.depth()
            oldest = queue.oldest_age_seconds()
            cursor.oldest_pending_seconds = None if oldest is None else round(oldest, 1)
        summary = (
            f"{len(requests)} run(s) requested, {released} event(s) of failed runs released, {skipped} skipped "
            f"(no raw table), {purged} purged (launched over {retention.days} days ago); "
            f"queue depth {cursor.queue_depth}, oldest pending {cursor.oldest_pending_seconds} s"
        )
        context.log.info(summary)
        # A sensor has no metadata of its own in the UI: the tick's log, its skip reason and its cursor carry these.
        return dg.SensorResult(run_requests=requests, cursor=cursor.dump(), skip_reason=None if requests else summary)

    return _sensor


def _instance_database_url(instance: dg.DagsterInstance) -> sa.URL | None:
    root = getattr(instance, "root_directory", None)
    return sqlite_url(Path(root) / "receiver" / "queue.db") if root else None


def _settle(context: dg.SensorEvaluationContext, queue: EventQueue, cursor: Cursor) -> int:
    """Close the batches whose run has finished; release those of failed runs. Events released."""
    assert cursor.open is not None
    released = 0
    for key, ids in queue.markers(KEY_PREFIX).items():
        runs = context.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": key}), limit=1)
        if not runs:
            if key in cursor.open:
                continue  # requested; the daemon has not created the run yet
            released += queue.release(key)  # the tick that marked them never completed
            context.log.warning(f"{key}: no run and not in the cursor; its {len(ids)} event(s) go out again")
            continue
        run = runs[0]
        if run.status in FAILED:
            released += queue.release(key)
            cursor.open.pop(key, None)
            context.log.info(f"{key}: run {run.run_id} {run.status.value}; its {len(ids)} event(s) go out again")
        elif run.status == dg.DagsterRunStatus.SUCCESS:
            queue.remark(key, run.run_id)
            cursor.open.pop(key, None)
    return released


def _requests(
    context: dg.SensorEvaluationContext, queue: EventQueue, cursor: Cursor
) -> tuple[list[dg.RunRequest], int]:
    assert cursor.open is not None
    events = queue.pending(MAX_EVENTS_PER_TICK)
    if not events:
        return [], 0
    cursor.last_id = max(cursor.last_id, max(event.id for event in events))
    unmapped = [event for event in events if raw_table(event) is None]
    if unmapped:
        kinds = Counter(f"{event.source}/{event.object_type}" for event in unmapped)
        context.log.info(f"skipped {len(unmapped)} event(s) no raw table holds: {dict(kinds)}")
        queue.mark_launched([event.id for event in unmapped], SKIPPED)

    first = date.fromisoformat(DAILY_INGESTION.get_first_partition_key())
    last = date.fromisoformat(DAILY_INGESTION.get_last_partition_key())
    by_day: dict[date, list[QueuedEvent]] = defaultdict(list)
    for event in events:
        if raw_table(event) is not None:
            # A clock ahead of ours lands in today; a change before the first partition in the first.
            by_day[min(max(event_day(event), first), last)].append(event)

    graph = context.repository_def.asset_graph
    requests = []
    for day, day_events in sorted(by_day.items()):
        changed = dg.AssetSelection.assets(*sorted({raw_table(event) for event in day_events}))
        selection = (changed.required_multi_asset_neighbors() | changed.downstream()) - NOT_REFRESHED
        name = batch_name(day, (event.id for event in day_events))
        attempt = 1 + len(context.instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: name})))
        key = f"{name}-{attempt}"
        requests.append(
            dg.RunRequest(
                run_key=key,
                partition_key=day.isoformat(),
                asset_selection=sorted(selection.resolve(graph)),
                tags={BATCH_TAG: name, EVENTS_TAG: str(len(day_events))},
            )
        )
        queue.mark_launched([event.id for event in day_events], key)
        cursor.open[key] = len(day_events)
    return requests, len(unmapped)
