"""`make demo`: the main job on the embedded default, end to end.

Starts the sandbox, runs `daily_revenue_job` over the last 7 days as one run through the same
`dagster job execute` a CI pipeline would use, prints what each asset produced, and exits non-zero
if anything failed. The run stays in the local instance, so `make dev` shows it afterwards.
"""

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from revenue_pipelines.sandbox import Sandbox

JOB = "daily_revenue_job"
DAYS = 7
# One process for every step: on one machine, a process per step costs more than it saves.
IN_PROCESS = str(Path(__file__).resolve().parents[1] / "deploy" / "in_process.yaml")


def main() -> int:
    if not os.environ.get("DAGSTER_HOME"):  # `make demo` sets it; a bare run gets a throwaway instance
        os.environ["DAGSTER_HOME"] = tempfile.mkdtemp(prefix="revenue_pipelines_demo_")
    last_day = (datetime.now(UTC) - timedelta(days=1)).date()
    first_day = last_day - timedelta(days=DAYS - 1)
    range_tags = {
        "dagster/asset_partition_range_start": first_day.isoformat(),
        "dagster/asset_partition_range_end": last_day.isoformat(),
    }
    with Sandbox(end_date=last_day, bigquery=True) as sandbox:
        print(
            f"Sandbox serving HubSpot and GA4 at {sandbox.url}, Salesforce at {sandbox.salesforce_url}, "
            f"BigQuery at {sandbox.bigquery.endpoint}; running {JOB} for {first_day}..{last_day} in one run."
        )
        dagster = str(Path(sys.executable).with_name("dagster"))  # the CLI of this environment
        command = [dagster, "job", "execute", "-m", "revenue_pipelines.definitions", "-j", JOB, "-c", IN_PROCESS]
        command += ["--tags", json.dumps(range_tags)]
        completed = subprocess.run(command, env={**os.environ, **sandbox.env()}, capture_output=True, text=True)  # noqa: S603 (our own CLI)

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB), limit=1)
    if not runs:
        sys.stderr.write(completed.stdout[-5000:] + completed.stderr[-5000:])
        print(f"{JOB} did not start.")
        return 1
    run = runs[0]
    print(summary(instance, run.run_id))
    print(f"\nRun {run.run_id}: {run.status.value}. Browse it with `make dev`.")
    if completed.returncode != 0:
        sys.stderr.write(_failure_lines(completed.stdout + completed.stderr))
    return completed.returncode


def summary(instance: dg.DagsterInstance, run_id: str) -> str:
    """One line per asset of the run: rows, quarantined rows, checks and where the output is."""
    assets: dict[str, dict[str, object]] = {}
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            row = assets.setdefault(materialization.asset_key.to_user_string(), {"checks": []})
            metadata = materialization.metadata
            row["partitions"] = int(row.get("partitions", 0)) + 1
            for name in ("rows", "quarantined_rows", "path"):
                if name in metadata:
                    row[name] = metadata[name].value
            # A state or mart counts what it holds as of the last day, under its own name.
            held = next((name for name in ("records", "deals", "accounts") if name in metadata), None)
            if held:
                row["rows"] = metadata[held].value
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            row = assets.setdefault(evaluation.asset_key.to_user_string(), {"checks": []})
            row["checks"].append(f"{evaluation.check_name}: {'passed' if evaluation.passed else 'FAILED'}")

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
                ", ".join(row["checks"]) or "-",
                os.path.relpath(str(row["path"])) if "path" in row else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def _failure_lines(output: str) -> str:
    wanted = [line for line in output.splitlines() if "ERROR" in line or "FAILURE" in line or "Error" in line]
    return "\n".join(wanted[-40:]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
