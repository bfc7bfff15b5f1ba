"""`crm_change_sensor`: queued CRM events become one run per day changed, of the raw tables touched and
what is downstream of them (Slack aside), once; a failed run's events go out again."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa

from revenue_pipelines.definitions import defs
from revenue_pipelines.defs.triggers.sensors import BATCH_TAG, SKIPPED, crm_change_sensor
from revenue_pipelines.environment import get_environment
from revenue_pipelines.receiver.database import database_url, sqlite_url
from revenue_pipelines.receiver.queue import Event, open_queue
from revenue_pipelines_tests.conftest import END, read_layer, run_main_job
from revenue_pipelines_tests.postgres_server import fresh_database
from revenue_pipelines_tests.receiver_process import receiver_env, start

DAY = datetime(2026, 11, 18, 9, 30, tzinfo=UTC)
CONTACTS = dg.AssetKey(["hubspot", "raw", "contacts"])
OPPORTUNITIES = dg.AssetKey(["salesforce", "raw", "opportunities"])


def key(text: str) -> dg.AssetKey:
    return dg.AssetKey(text.split("/"))


def event(source: str, object_type: str, object_id: str, at: datetime) -> Event:
    return Event(source, uuid.uuid4().hex, object_type, object_id, at, {"objectId": object_id})


def tick(queue: Path | sa.URL, instance: dg.DagsterInstance, cursor: str | None = None, retention_days: int = 7):
    """One tick of the sensor over the queue in the SQLite file or at the URL `queue`."""
    url = sqlite_url(queue) if isinstance(queue, Path) else queue
    sensor = crm_change_sensor(url, 30, timedelta(days=retention_days))
    context = dg.build_sensor_context(instance=instance, repository_def=defs().get_repository_def(), cursor=cursor)
    return sensor.evaluate_tick(context)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_the_sensor_is_on_by_default_every_thirty_seconds_and_targets_the_daily_job():
    sensor = defs().get_sensor_def("crm_change_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == get_environment().crm_change_sensor_interval_seconds == 30
    assert sensor.job_name == "daily_revenue_job"


def test_no_queue_file_means_nothing_to_do(tmp_path, instance):
    result = tick(tmp_path / "absent.db", instance)
    assert result.run_requests == []
    assert not (tmp_path / "absent.db").exists()


def test_one_day_of_changes_is_one_run_of_the_raw_tables_and_downstream_but_not_slack(tmp_path, instance):
    path = tmp_path / "queue.db"
    with open_queue(sqlite_url(path)) as queue:
        queue.put([event("hubspot", "contact", "1", DAY), event("hubspot", "contact", "2", DAY + timedelta(hours=3))])
        queue.put([event("salesforce", "Opportunity", "006A", DAY)])
        queue.put([event("hubspot", "ticket", "9", DAY)])  # no raw table holds tickets

    result = tick(path, instance)

    [request] = result.run_requests
    assert request.partition_key == "2026-11-18"
    selected = set(request.asset_selection)
    assert {CONTACTS, OPPORTUNITIES} <= selected
    assert {key("hubspot/quarantine/contacts"), key("salesforce/quarantine/opportunities")} <= selected
    downstream = {key("hubspot/core/contacts"), key("salesforce/core/opportunities"), key("revenue/marts/pipeline")}
    assert downstream <= selected
    assert not any(asset.path[0] == "slack" for asset in selected)
    assert key("hubspot/raw/deals") not in selected  # nothing changed there
    assert request.run_key == "crm-changes-2026-11-18-1-3-1"
    assert request.tags["revenue_pipelines/crm_events"] == "3"

    cursor = json.loads(result.cursor)
    assert cursor["last_id"] == 4
    assert cursor["open"] == {request.run_key: 3}
    assert cursor["queue_depth"] == 0
    with open_queue(sqlite_url(path)) as queue:
        assert queue.markers("crm-changes-") == {request.run_key: [1, 2, 3]}
        assert queue.markers(SKIPPED) == {SKIPPED: [4]}

    # The daemon restarts and ticks again before the run exists: nothing is launched twice.
    again = tick(path, instance, result.cursor)
    assert again.run_requests == []
    assert json.loads(again.cursor)["open"] == {request.run_key: 3}


def test_changes_of_two_days_are_two_runs(tmp_path, instance):
    path = tmp_path / "queue.db"
    with open_queue(sqlite_url(path)) as queue:
        queue.put([event("hubspot", "deal", "1", DAY), event("salesforce", "Account", "001A", DAY + timedelta(days=1))])

    requests = tick(path, instance).run_requests

    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("2026-11-18", "crm-changes-2026-11-18-1-1-1"),
        ("2026-11-19", "crm-changes-2026-11-19-2-2-1"),
    ]
    assert key("hubspot/raw/deals") in requests[0].asset_selection
    assert key("salesforce/raw/accounts") not in requests[0].asset_selection
    assert key("salesforce/raw/accounts") in requests[1].asset_selection


def record_run(instance: dg.DagsterInstance, request: dg.RunRequest, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    """The run the daemon would have launched for `request`, finished with `status`."""
    return instance.add_run(
        dg.DagsterRun(
            job_name="daily_revenue_job",
            run_id=str(uuid.uuid4()),
            status=status,
            tags={**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": "crm_change_sensor"},
        )
    )


def test_a_failed_runs_events_go_out_again_under_a_new_key_and_a_successful_one_closes(tmp_path, instance):
    path = tmp_path / "queue.db"
    with open_queue(sqlite_url(path)) as queue:
        queue.put([event("hubspot", "contact", "1", DAY)])
    first = tick(path, instance)
    [request] = first.run_requests
    record_run(instance, request, dg.DagsterRunStatus.FAILURE)

    second = tick(path, instance, first.cursor)

    [retry] = second.run_requests
    assert retry.run_key == "crm-changes-2026-11-18-1-1-2" != request.run_key
    assert retry.tags[BATCH_TAG] == request.tags[BATCH_TAG]
    assert retry.partition_key == request.partition_key
    assert json.loads(second.cursor)["open"] == {retry.run_key: 1}

    run = record_run(instance, retry, dg.DagsterRunStatus.SUCCESS)
    third = tick(path, instance, second.cursor)
    assert third.run_requests == []
    assert json.loads(third.cursor)["open"] == {}
    with open_queue(sqlite_url(path)) as queue:
        assert queue.markers(run.run_id) == {run.run_id: [1]}  # the run's id replaces its key
        assert queue.depth() == 0


def test_events_marked_by_a_tick_that_never_completed_go_out_again(tmp_path, instance):
    path = tmp_path / "queue.db"
    with open_queue(sqlite_url(path)) as queue:
        queue.put([event("hubspot", "contact", "1", DAY)])
    tick(path, instance)  # its cursor is lost, no run was created

    [request] = tick(path, instance, None).run_requests
    assert request.run_key == "crm-changes-2026-11-18-1-1-1"


def test_a_tick_purges_what_was_launched_or_skipped_before_the_retention_but_not_an_open_batch(tmp_path, instance):
    path = tmp_path / "queue.db"
    open_key = "crm-changes-2026-11-18-3-3-1"
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    with open_queue(sqlite_url(path), clock=lambda: eight_days_ago) as queue:
        queue.put([event("hubspot", "contact", str(n), DAY) for n in range(3)])
        queue.mark_launched([1], "a-run-id")
        queue.mark_launched([2], SKIPPED)
        queue.mark_launched([3], open_key)  # its run is still queued
    cursor = json.dumps({"open": {open_key: 1}})

    kept = tick(path, instance, cursor, retention_days=9)
    assert "0 purged (launched over 9 days ago)" in kept.skip_message
    purged = tick(path, instance, cursor)

    assert purged.run_requests == []
    assert "2 purged (launched over 7 days ago)" in purged.skip_message
    with open_queue(sqlite_url(path)) as queue:
        assert queue.markers("") == {open_key: [3]}


def test_the_sensor_drains_a_queue_in_postgresql(postgres, instance):
    with fresh_database(postgres) as settings:
        url = database_url(settings)
        with open_queue(url) as queue:
            queue.put([event("hubspot", "deal", "1", DAY)])

        [request] = tick(url, instance).run_requests

        assert (request.partition_key, request.run_key) == ("2026-11-18", "crm-changes-2026-11-18-1-1-1")
        with open_queue(url) as queue:
            assert queue.markers("crm-changes-") == {request.run_key: [1]}


@pytest.mark.timeout(600)
def test_a_contact_touched_in_the_sandbox_reaches_raw_and_core_through_receiver_and_sensor(
    sandbox_factory, tmp_path, monkeypatch, instance
):
    # With BigQuery's emulator: the marts downstream of contacts read billing, so the daily run needs it.
    sandbox = sandbox_factory(seed=11, companies=30, days=3, bigquery=True)
    queue_path = tmp_path / "queue.db"
    secrets = sandbox.env()
    env = receiver_env(
        queue_path,
        HUBSPOT_APP_CLIENT_SECRET=secrets["HUBSPOT_APP_CLIENT_SECRET"],
        SALESFORCE_ORGANIZATION_ID=secrets["SALESFORCE_ORGANIZATION_ID"],
        RECEIVER_PUBLIC_URL=None,
    )
    start_of_end = datetime.combine(END, datetime.min.time(), tzinfo=UTC)
    truth = sandbox.hubspot.truth("contacts")
    contact = truth.filter(~pl.col("archived") & (pl.col("updated_at") < start_of_end))["id"][0]
    at = start_of_end + timedelta(hours=12)
    data_dir = tmp_path / "data"
    run_env = {"REVENUE_PIPELINES_DATA_DIR": str(data_dir)}
    # The day as the daily run left it, before the change: the contact is not in it.
    _, baseline = run_main_job(sandbox, monkeypatch, instance, END, END, env=run_env)
    assert baseline.success
    assert contact not in read_layer(data_dir, "hubspot", "raw", "contacts")["id"].cast(pl.Int64).to_list()
    receiver = start(env, tmp_path / "receiver.log")
    try:
        sandbox.webhooks.send_to(receiver.url)
        sandbox.hubspot.touch("contacts", [contact], at)
        deadline = time.monotonic() + 20
        with open_queue(sqlite_url(queue_path)) as queue:
            while queue.depth() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        receiver.stop()

    first = tick(queue_path, instance)
    [request] = first.run_requests
    assert tick(queue_path, instance, first.cursor).run_requests == []
    assert request.partition_key == END.isoformat()

    # The run the daemon would launch for the request, in this process (its key tagged as the daemon tags it).
    for name, value in {**sandbox.env(), **run_env}.items():
        monkeypatch.setenv(name, value)
    get_environment.cache_clear()
    try:
        result = dg.materialize(
            defs().assets,
            selection=request.asset_selection,
            resources=get_environment().resources(),
            instance=instance,
            partition_key=request.partition_key,
            tags={"dagster/run_key": request.run_key, **request.tags},
            raise_on_error=False,
        )
    finally:
        get_environment.cache_clear()
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert {CONTACTS, key("hubspot/core/contacts")} <= materialized
    assert not any(asset.path[0] == "slack" for asset in materialized)

    for layer in ("raw", "core"):
        rows = read_layer(data_dir, "hubspot", layer, "contacts").filter(pl.col("id").cast(pl.Int64) == contact)
        assert rows.height == 1, layer
        assert rows["updated_at"].cast(pl.String)[0].startswith(f"{END} 12:00"), (layer, rows["updated_at"][0])

    # The run is the batch's: the next tick settles it, launches nothing, and names the run on its events.
    third = tick(queue_path, instance, first.cursor)
    assert third.run_requests == []
    assert json.loads(third.cursor)["open"] == {}
    [run] = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": request.run_key}))
    with open_queue(sqlite_url(queue_path)) as queue:
        assert len(queue.markers(run.run_id)[run.run_id]) == 1
