"""`crm_change_sensor` under the real Dagster daemon: killed with SIGKILL once it has launched a batch's
run, then restarted, it launches nothing twice and goes on with what arrived meanwhile.

The runs stay queued (`max_concurrent_runs: 0`): this is about what the daemon launches, not what
the runs do, which test_crm_change_sensor.py covers."""

import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from revenue_pipelines.defs.triggers.sensors import BATCH_TAG, SENSOR_NAME
from revenue_pipelines.receiver.database import sqlite_url
from revenue_pipelines.receiver.queue import Event, open_queue
from revenue_pipelines_tests.child_process import kill, spawn, stop

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and PDEATHSIG")

FIRST_DAY = datetime(2026, 11, 18, 9, 30, tzinfo=UTC)
SECOND_DAY = datetime(2026, 11, 19, 14, 0, tzinfo=UTC)
QUEUED_ONLY = """\
concurrency:
  runs:
    max_concurrent_runs: 0  # runs are launched and stay queued
telemetry:
  enabled: false
"""


def contact_changed(contact_id: str, at: datetime) -> Event:
    return Event("hubspot", uuid.uuid4().hex, "contact", contact_id, at, {"objectId": contact_id})


def wait_for[T](what: str, probe: Callable[[], T | None], log: Path, timeout: float = 180.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; the daemon said:\n{log.read_text(errors='replace')[-4000:]}")


def test_a_daemon_killed_after_launching_and_restarted_launches_nothing_twice(sandbox, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(QUEUED_ONLY)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("RECEIVER_", "DAGSTER_"))},
        **sandbox.env(),  # the daemon resolves the job's credentials when it creates a run
        "DAGSTER_HOME": str(home),  # the receiver's queue is found under it, as the receiver writes it
        "CRM_CHANGE_SENSOR_INTERVAL_SECONDS": "1",
        "REVENUE_PIPELINES_SLACK": "off",
    }
    daemon_command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "revenue_pipelines.definitions"]
    queue_url = sqlite_url(
        home / "receiver" / "queue.db"
    )  # where the receiver and the sensor find it under DAGSTER_HOME
    log, restarted_log = tmp_path / "daemon.log", tmp_path / "daemon-restarted.log"
    with open_queue(queue_url) as queue:
        queue.put([contact_changed("1", FIRST_DAY), contact_changed("2", FIRST_DAY)])

    with dg.DagsterInstance.from_config(str(home)) as instance:

        def batch_runs() -> list[dg.RunRecord]:
            return [record for record in instance.get_run_records() if BATCH_TAG in record.dagster_run.tags]

        daemon = spawn(daemon_command, env, log)
        try:
            [first_run] = wait_for("the first batch's run", batch_runs, log)
            kill(daemon)
            with open_queue(queue_url) as queue:
                queue.put([contact_changed("3", SECOND_DAY)])  # arrives while the daemon is down

            daemon = spawn(daemon_command, env, restarted_log)
            runs = wait_for(
                "the second batch's run", lambda: runs if len(runs := batch_runs()) > 1 else None, restarted_log
            )
            second_launched_at = max(record.create_timestamp.timestamp() for record in runs)

            def ticks_after_restart() -> list:
                [state] = [
                    state
                    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                    if state.name == SENSOR_NAME
                ]
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
                done = [
                    tick
                    for tick in ticks
                    if tick.timestamp > second_launched_at and tick.status in (TickStatus.SKIPPED, TickStatus.SUCCESS)
                ]
                return done if len(done) >= 2 else None

            wait_for("two more ticks of the restarted daemon", ticks_after_restart, restarted_log)
        finally:
            stop(daemon)

        runs = [record.dagster_run for record in batch_runs()]
        keys = sorted(run.tags["dagster/run_key"] for run in runs)
        assert keys == ["crm-changes-2026-11-18-1-2-1", "crm-changes-2026-11-19-3-3-1"]
        assert first_run.dagster_run.run_id in {run.run_id for run in runs}
        assert {run.tags["dagster/partition"] for run in runs} == {"2026-11-18", "2026-11-19"}
        with open_queue(queue_url) as queue:
            assert queue.depth() == 0
            assert queue.markers("crm-changes-") == {keys[0]: [1, 2], keys[1]: [3]}
