"""`make demo`: the main job on the embedded default, end to end.

Starts the sandbox, runs `daily_revenue_job` over the last 7 days as one run through the same
`dagster job execute` a CI pipeline would use, prints each step as it ends (read from the run's
event log while the command runs), then what each asset produced, what each route delivered and
where, and the Slack digest the sandbox's channel got (its chart is kept under the data folder), and
exits non-zero if anything failed. The run stays in the local instance, so `make dev` shows it afterwards.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from revenue_pipelines.defs.slack.assets import DIGEST_KEY
from revenue_pipelines.environment import get_environment
from revenue_pipelines.lib.processes import dying_with_this_process
from revenue_pipelines.lib.slack import DIGEST_EVENT
from revenue_pipelines.sandbox import Sandbox, postgres

JOB = "daily_revenue_job"
DAYS = 7
DEMO_MESS = 0.002  # about 1 record in 500 holds an odd value, as in a tidy real portal
# One process for every step: on one machine, a process per step costs more than it saves.
IN_PROCESS = str(Path(__file__).resolve().parents[1] / "deploy" / "in_process.yaml")
POLL_SECONDS = 0.5
STEP_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "FAILED",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
    dg.DagsterEventType.STEP_UP_FOR_RETRY: "retrying",
}


def main() -> int:
    if not os.environ.get("DAGSTER_HOME"):  # `make demo` sets it; a bare run gets a throwaway instance
        os.environ["DAGSTER_HOME"] = tempfile.mkdtemp(prefix="revenue_pipelines_demo_")
    last_day = (datetime.now(UTC) - timedelta(days=1)).date()
    first_day = last_day - timedelta(days=DAYS - 1)
    range_tags = {
        "dagster/asset_partition_range_start": first_day.isoformat(),
        "dagster/asset_partition_range_end": last_day.isoformat(),
    }
    instance = dg.DagsterInstance.get()
    previous = _latest_run_id(instance)
    with (
        demo_sandbox(last_day) as sandbox,
        routes_database() as database,
        tempfile.TemporaryFile("w+") as output,
    ):
        print(
            f"Sandbox serving HubSpot and GA4 at {sandbox.url}, Salesforce at {sandbox.salesforce_url}, "
            f"BigQuery at {sandbox.bigquery.endpoint}; running {JOB} for {first_day}..{last_day} in one run.",
            flush=True,
        )
        dagster = str(Path(sys.executable).with_name("dagster"))  # the CLI of this environment
        command = [dagster, "job", "execute", "-m", "revenue_pipelines.definitions", "-j", JOB, "-c", IN_PROCESS]
        command += ["--tags", json.dumps(range_tags)]
        # The example file route writes beside the data; the others' targets come from the sandbox.
        folder = Path(get_environment().io_manager.base_dir) / "deliveries"
        folder.mkdir(parents=True, exist_ok=True)  # a files route writes into a folder that exists
        deliveries = {"ROUTES_FILES_URL": str(folder)}
        process = subprocess.Popen(  # noqa: S603 (our own CLI)
            dying_with_this_process(command),  # a demo stopped with Ctrl-C or kill leaves no run behind
            env={**os.environ, **sandbox.env(), **deliveries, **database},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        run_id = follow(instance, process, previous)
        output.seek(0)
        log = output.read()
        posted = latest_digest(sandbox)

    if run_id is None:
        sys.stderr.write(log[-10000:])
        print(f"{JOB} did not start.")
        return 1
    print()
    print(summary(instance, run_id))
    if posted:
        print(f"\n{posted}")
    print(f"\nRun {run_id}: {instance.get_run_by_id(run_id).status.value}. Browse it with `make dev`.")
    if process.returncode != 0:
        sys.stderr.write(_failure_lines(log))
    return process.returncode


def demo_sandbox(last_day: date) -> Sandbox:
    """The sandbox the demo reads (its ground truth is the same, started or not), with a little of
    the mess real portals hold, so the demo shows what the WARN checks report."""
    return Sandbox(end_date=last_day, bigquery=True, object_storage=True, mess=DEMO_MESS)


@contextlib.contextmanager
def routes_database() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL for the example PostgreSQL route (its ROUTES_PG_* settings), where
    PostgreSQL is installed; else nothing, and that route is left out with a warning."""
    if not postgres.available():
        print("PostgreSQL is not installed here: the example PostgreSQL route is left out.", flush=True)
        yield {}
        return
    with postgres.throwaway_cluster() as settings:
        yield {name.replace("DAGSTER_PG_", "ROUTES_PG_"): value for name, value in settings.items()}


def latest_digest(sandbox: Sandbox) -> str | None:
    """The newest day's digest as the sandbox's Slack got it, in plain text, with where its chart is kept."""
    digests = [
        message
        for message in sandbox.slack.messages("revenue")
        if (message.metadata or {}).get("event_type") == DIGEST_EVENT
    ]
    if not digests:
        return None
    message = max(digests, key=lambda m: m.metadata["event_payload"]["day"])
    day = message.metadata["event_payload"]["day"]
    texts = [block["text"]["text"] for block in message.blocks if "text" in block]
    texts += [element["text"] for block in message.blocks for element in block.get("elements", [])]
    chart = Path(get_environment().slack_digest_io_manager.chart_dir).joinpath(*DIGEST_KEY.path, f"{day}.png")
    lines = [f"Slack digest posted to #revenue (the sandbox's Slack) for {day}:", *texts]
    lines.append(f"Chart sent with it: {os.path.relpath(chart)}")
    return "\n".join(line.replace("*", "").replace("  _(", "  (").replace(")_", ")") for line in lines)


def _latest_run_id(instance: dg.DagsterInstance) -> str | None:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB), limit=1)
    return runs[0].run_id if runs else None


def follow(instance: dg.DagsterInstance, process: subprocess.Popen, previous: str | None) -> str | None:
    """Print one line per step as it ends, until `process` (running the job) exits; the id of the run
    it made (the job's latest run other than `previous`), None if it made none."""
    run_id, cursor, steps, ended = None, None, 0, 0
    while True:
        exited = process.poll() is not None
        if run_id is None and (latest := _latest_run_id(instance)) != previous:
            run_id = latest
            run = instance.get_run_by_id(run_id)
            steps = len(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id).step_keys_to_execute)
            print(f"Run {run_id} started: {steps} steps.", flush=True)
        more = False
        if run_id is not None:
            connection = instance.get_records_for_run(run_id, cursor=cursor, of_type=set(STEP_ENDS))
            for record in connection.records:
                event = record.event_log_entry.dagster_event
                ended += event.event_type != dg.DagsterEventType.STEP_UP_FOR_RETRY
                print(_step_line(event, ended, steps), flush=True)
            cursor, more = connection.cursor, connection.has_more
        if exited and not more:  # the last look came after the exit: nothing is left to print
            return run_id
        if not more:
            time.sleep(POLL_SECONDS)


def _step_line(event: dg.DagsterEvent, ended: int, steps: int) -> str:
    line = f"[{ended:>{len(str(steps))}}/{steps}] {event.step_key}: {STEP_ENDS[event.event_type]}"
    if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
        line += f" in {event.event_specific_data.duration_ms / 1000:.1f} s"
    return line


VERDICTS = ("passed", "warn", "FAILED")
"""A check's verdicts, least alarming first; an asset's line shows each check's worst of the run."""


def _verdict(evaluation: dg.AssetCheckEvaluation) -> str:
    """`warn` for a WARN check that did not pass: it reports what to look at, it does not fail the run."""
    if evaluation.passed:
        return "passed"
    return "warn" if evaluation.severity == dg.AssetCheckSeverity.WARN else "FAILED"


def summary(instance: dg.DagsterInstance, run_id: str) -> str:
    """One line per asset of the run: rows, quarantined rows, checks and where the output is; then
    the checks that did not pass, and one line per route: rows delivered, where, its check."""
    assets: dict[str, dict[str, object]] = {}
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            row = assets.setdefault(materialization.asset_key.to_user_string(), {"checks": {}})
            metadata = materialization.metadata
            row["partitions"] = int(row.get("partitions", 0)) + 1
            # Each partition counts its own day: the rows written add up.
            for name in ("rows", "quarantined_rows"):
                if name in metadata:
                    row[name] = int(row.get(name, 0)) + metadata[name].value
            if "path" in metadata:
                row["path"] = metadata["path"].value
            if "destination" in metadata:  # a route; a range run repeats the run's totals per day
                row["delivered"] = (metadata["rows_delivered"].value, metadata["destination"].value)
            # A state or mart counts what it holds as of the last day, under its own name.
            held = next((name for name in ("records", "deals", "accounts") if name in metadata), None)
            if held:
                row["rows"] = metadata[held].value
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            row = assets.setdefault(evaluation.asset_key.to_user_string(), {"checks": {}})
            checks, name, verdict = row["checks"], evaluation.check_name, _verdict(evaluation)
            if name not in checks or VERDICTS.index(verdict) >= VERDICTS.index(checks[name][0]):
                checks[name] = (verdict, evaluation.description)

    header = ("asset", "partitions", "rows", "quarantined", "checks", "output")
    lines = [header]
    for key in sorted(assets):
        row = assets[key]
        lines.append(
            (
                key,
                str(row.get("partitions", 0)),
                str(row.get("rows", "")),
                str(row.get("quarantined_rows", "")),
                ", ".join(f"{name}: {verdict}" for name, (verdict, _) in row["checks"].items()) or "-",
                os.path.relpath(str(row["path"])) if "path" in row else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    notes = [
        f"{verdict}: {key} {name}: {description or 'no description'}"
        for key in sorted(assets)
        for name, (verdict, description) in assets[key]["checks"].items()
        if verdict != "passed"
    ]
    routes = [
        f"{key}: {rows:,} rows, last to {destination}; "
        + ", ".join(f"{name}: {verdict}" for name, (verdict, _) in assets[key]["checks"].items())
        for key in sorted(assets)
        if "delivered" in assets[key]
        for rows, destination in [assets[key]["delivered"]]
    ]
    return "\n".join(
        [*table, *([""] if notes else []), *notes, *(["", "Routes delivered:", *routes] if routes else [])]
    )


def _failure_lines(output: str) -> str:
    wanted = [line for line in output.splitlines() if "ERROR" in line or "FAILURE" in line or "Error" in line]
    return "\n".join(wanted[-40:]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
