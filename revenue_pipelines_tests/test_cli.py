"""The commands the README promises, run the way a user or CI runs them."""

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.revenue.marts import CHANNEL_MAPPING
from revenue_pipelines.demo import demo_sandbox, summary
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines_tests.conftest import END, expected_ids, run_main_job

ROOT = Path(__file__).resolve().parents[1]
# The demo's run takes about a minute alone; a machine shared with other work can make it ten times longer.
CLI_RUN_TIMEOUT = 900
PROJECT_ROUTES = {"REVENUE_PIPELINES_ROUTES": ""}  # the project's routes file, not the tests' empty one


def _run(command: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_dg_check_defs_passes():
    completed = _run([_tool("dg"), "check", "defs"], PROJECT_ROUTES)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "All definitions loaded successfully" in completed.stdout + completed.stderr


@pytest.mark.timeout(CLI_RUN_TIMEOUT + 60)
def test_the_demo_runs_the_main_job_with_dagster_job_execute_showing_progress_and_reconciling(tmp_path):
    """The suite's one end-to-end CLI run: `make demo`'s, which is `dagster job execute` on the sandbox."""
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "REVENUE_PIPELINES_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "home").mkdir()
    completed = _run([sys.executable, "-m", "revenue_pipelines.demo"], env | PROJECT_ROUTES, timeout=CLI_RUN_TIMEOUT)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    lines = completed.stdout.splitlines()

    # Each step as it ends, before the table.
    progress = [line for line in lines if re.match(r"\[ *\d+/\d+\] ", line)]
    steps = int(progress[-1].split("/")[1].split("]")[0])
    assert len(progress) == steps > 20
    assert all(": done in " in line for line in progress)
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("asset "))

    for table in ("hubspot/raw/contacts", "hubspot/raw/companies", "hubspot/raw/deals", "bigquery/raw/ga4_events"):
        line = _line_of(lines, f"{table} ")
        cells = line.split()
        assert cells[1] == "7" and int(cells[2]) > 0 and cells[3] == "0"
        assert "rows_match_schema: passed" in line
    expected_checks = {
        "revenue/core/account_identity": ["one_account_per_record: passed", "salesforce_accounts_matched: warn"],
        "revenue/marts/pipeline": ["stages_mapped: passed", "amounts_converted: passed"],
        "revenue/marts/accounts": [],
    }
    for asset, checks in expected_checks.items():
        line = _line_of(lines, f"{asset} ")
        assert line.split()[1] == "7" and int(line.split()[2]) > 0
        assert all(check in line for check in checks), line
    # A WARN check that fired says what it found, and is no failure.
    assert _line_of(lines, "warn: revenue/core/account_identity salesforce_accounts_matched:").endswith(
        "Salesforce accounts matched no HubSpot company or billing account"
    )
    assert "FAILED" not in completed.stdout
    assert "SUCCESS" in completed.stdout
    # The day's digest, as the sandbox's Slack got it, and the chart sent with it.
    digest_at = lines.index(next(line for line in lines if line.startswith("Slack digest posted to #revenue")))
    assert lines[digest_at + 1].startswith("Revenue digest for ") and "New pipeline:" in lines[digest_at + 2]
    chart = _line_of(lines, "Chart sent with it: ").removeprefix("Chart sent with it: ")
    # The project's example routes, each with where it delivered and its check.
    assert "Routes delivered:" in lines
    for route in (
        "routes/slack/enterprise_accounts_digest",
        "routes/webhook/accounts_changes",
        "routes/files/accounts_csv",
        "routes/files/pipeline_export",
        "routes/files/daily_metrics_parquet",
        "routes/postgres/pipeline_table",  # PostgreSQL is installed where the tests run
    ):
        assert _line_of(lines, f"{route}: ").endswith("rows_delivered: passed")
    assert _line_of(lines, "routes/files/pipeline_export: ").split("last to ")[1].startswith("s3://revenue-exports/")
    csv_files = sorted((tmp_path / "data" / "deliveries" / "accounts_csv").glob("*.csv"))
    assert len(csv_files) == 7
    assert (ROOT / chart).is_file()  # the demo runs in ROOT

    # What landed reconciles with the demo sandbox's ground truth.
    first, last = map(date.fromisoformat, re.search(r" for (\S+)\.\.(\S+) in one run", completed.stdout).groups())
    sandbox, data = demo_sandbox(last), tmp_path / "data"
    # The demo's portals hold a little mess: where some falls in the week, a WARN check says so.
    contacts_in_week = [str(i) for i in expected_ids(sandbox, "contacts", first, last)]
    odd = sandbox.mess.filter(
        pl.col("kind").is_in(["broken_email", "word_phone"]) & pl.col("id").is_in(contacts_in_week)
    )
    verdict = "warn" if odd.height else "passed"
    assert f"fields_well_formed: {verdict}" in _line_of(lines, "hubspot/raw/contacts ")
    days = [f"{day:%Y-%m-%d}" for day in pl.date_range(first, last, eager=True)]
    for table in ("contacts", "companies", "deals"):
        files = sorted((data / "hubspot" / "raw" / table).glob("*.parquet"))
        assert [f.stem for f in files] == days
        rows = pl.concat([pl.read_parquet(f) for f in files])
        assert sorted(rows["id"].to_list()) == expected_ids(sandbox, table, first, last)
    events = pl.read_parquet(data / "bigquery" / "raw" / "ga4_events" / "*.parquet")
    assert events.height == sum(
        sandbox.bigquery.truth(sandbox.bigquery.ga4_export_dataset, f"events_{day:%Y%m%d}").height
        for day in pl.date_range(first, last, eager=True)
    )

    # Attribution's last-touch sessions are GA4's own sessions by medium, under the mapping's channel names.
    attribution = pl.read_parquet(data / "revenue" / "marts" / "channel_attribution" / "*.parquet")
    got = (
        attribution.filter(pl.col("model") == "last_touch")
        .group_by(PARTITION_COLUMN, "channel")
        .agg(pl.col("sessions").sum())
        .filter(pl.col("sessions") > 0)
        .sort(PARTITION_COLUMN, "channel")
    )
    ga4 = sandbox.ga4.truth(["date", "sessionMedium"], ["sessions"], first, last, settled=True)
    channels = CHANNEL_MAPPING.filter(pl.col("system") == "ga4").select(sessionMedium="source", channel="channel")
    expected = (
        ga4.join(channels, on="sessionMedium")
        .group_by(pl.col("date").str.to_date("%Y%m%d").alias(PARTITION_COLUMN), "channel")
        .agg(pl.col("sessions").sum())
        .sort(PARTITION_COLUMN, "channel")
    )
    assert expected.height > 5
    assert got.equals(expected)


def _line_of(lines: list[str], start: str) -> str:
    """The first line that starts with `start`."""
    return next(line for line in lines if line.startswith(start))


def test_the_demo_prints_a_failed_error_check_as_failed_and_a_failed_warn_check_as_warn():
    @dg.asset(
        check_specs=[
            dg.AssetCheckSpec("ids_unique", asset="table"),
            dg.AssetCheckSpec("names_filled", asset="table"),
        ]
    )
    def table():
        yield dg.Output(1, metadata={"rows": 3})
        yield dg.AssetCheckResult(check_name="ids_unique", passed=False, description="2 ids twice")
        yield dg.AssetCheckResult(
            check_name="names_filled", passed=False, severity=dg.AssetCheckSeverity.WARN, description="1 name empty"
        )

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([table], instance=instance, raise_on_error=False)
        printed = summary(instance, result.run_id).splitlines()
    assert printed[1].split()[:2] == ["table", "1"]
    assert "ids_unique: FAILED, names_filled: warn" in printed[1]
    assert printed[-2:] == ["FAILED: table ids_unique: 2 ids twice", "warn: table names_filled: 1 name empty"]


@pytest.mark.timeout(900)
def test_the_main_job_runs_in_prod_mode_against_the_sandbox_and_the_bigquery_emulator(
    sandbox_factory, monkeypatch, tmp_path
):
    """PROD's resources, read from the environment as `dagster job execute` reads them, run in this process.

    The defs modules bound the resources of the environment they were first imported in (LOCAL's, in
    this process), so the run is given PROD's.
    """
    sandbox = sandbox_factory(seed=11, companies=30, days=3, bigquery=True)
    first = END.replace(day=END.day - 1)
    with dg.DagsterInstance.ephemeral() as instance:
        environment, result = run_main_job(
            sandbox,
            monkeypatch,
            instance,
            first,
            END,
            env={
                "REVENUE_PIPELINES_ENV": "prod",
                "DAGSTER_WEBSERVER_URL": "https://dagster.example.com",
                "ROUTES_DEAD_LETTER_DIR": str(tmp_path / "dead_letters"),  # the sandbox's webhook secret is set
            },
        )
    assert environment.name == "prod"
    assert result.success, [event.message for event in result.all_events if event.is_failure]

    client, project = sandbox.bigquery.client(), sandbox.bigquery.project
    for table in ("contacts", "companies", "deals"):
        rows = client.query_and_wait(f"SELECT id FROM `{project}.raw.hubspot_{table}`")
        assert sorted(int(row["id"]) for row in rows) == expected_ids(sandbox, table, first, END)
    assert {"raw", "quarantine", "core", "marts"} <= {dataset.dataset_id for dataset in client.list_datasets()}
    tables = {table.table_id for table in client.list_tables(f"{project}.raw")}
    assert {"salesforce_opportunities", "ga4_traffic_by_channel", "hubspot_deals"} <= tables
    core = {table.table_id for table in client.list_tables(f"{project}.core")}
    assert {"hubspot_deals", "salesforce_accounts", "bigquery_billing_invoices", "revenue_account_identity"} <= core
    marts = {table.table_id for table in client.list_tables(f"{project}.marts")}
    assert {"revenue_pipeline", "revenue_accounts"} <= marts
