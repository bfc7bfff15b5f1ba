"""The commands the README promises, run the way a user or CI runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from revenue_pipelines.defs.revenue.marts import CHANNEL_MAPPING
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines_tests.conftest import END, day_range, expected_ids

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_dg_check_defs_passes():
    completed = _run([_tool("dg"), "check", "defs"], {})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "All definitions loaded successfully" in completed.stdout + completed.stderr


def test_dagster_job_execute_runs_the_main_job_on_the_sandbox(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(seed=11, companies=60, days=10, bigquery=True)
    env = {
        **sandbox.env(),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "REVENUE_PIPELINES_DATA_DIR": str(tmp_path / "data"),
    }
    (tmp_path / "home").mkdir()
    first = END.replace(day=END.day - 2)
    command = [_tool("dagster"), "job", "execute", "-m", "revenue_pipelines.definitions", "-j", "daily_revenue_job"]
    completed = _run([*command, "--tags", json.dumps(day_range(first, END))], env)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    for table in ("contacts", "companies", "deals"):
        files = sorted((tmp_path / "data" / "hubspot" / "raw" / table).glob("*.parquet"))
        assert [f.stem for f in files] == ["2026-11-18", "2026-11-19", "2026-11-20"]
        rows = pl.concat([pl.read_parquet(f) for f in files])
        assert sorted(rows["id"].to_list()) == expected_ids(sandbox, table, first, END)
    events = pl.read_parquet(tmp_path / "data" / "bigquery" / "raw" / "ga4_events" / "*.parquet")
    assert events.height == sum(
        sandbox.bigquery.truth(sandbox.bigquery.ga4_export_dataset, f"events_{day:%Y%m%d}").height
        for day in pl.date_range(first, END, eager=True)
    )

    # Attribution's last-touch sessions are GA4's own sessions by medium, under the mapping's channel names.
    attribution = pl.read_parquet(tmp_path / "data" / "revenue" / "marts" / "channel_attribution" / "*.parquet")
    got = (
        attribution.filter(pl.col("model") == "last_touch")
        .group_by(PARTITION_COLUMN, "channel")
        .agg(pl.col("sessions").sum())
        .filter(pl.col("sessions") > 0)
        .sort(PARTITION_COLUMN, "channel")
    )
    ga4 = sandbox.ga4.truth(["date", "sessionMedium"], ["sessions"], first, END, settled=True)
    channels = CHANNEL_MAPPING.filter(pl.col("system") == "ga4").select(sessionMedium="source", channel="channel")
    expected = (
        ga4.join(channels, on="sessionMedium")
        .group_by(pl.col("date").str.to_date("%Y%m%d").alias(PARTITION_COLUMN), "channel")
        .agg(pl.col("sessions").sum())
        .sort(PARTITION_COLUMN, "channel")
    )
    assert expected.height > 5
    assert got.equals(expected)


def test_the_demo_runs_and_prints_a_table_per_asset(tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "REVENUE_PIPELINES_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "home").mkdir()
    completed = _run([sys.executable, "-m", "revenue_pipelines.demo"], env)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    for table in ("hubspot/raw/contacts", "hubspot/raw/companies", "hubspot/raw/deals", "bigquery/raw/ga4_events"):
        line = next(line for line in completed.stdout.splitlines() if line.startswith(f"{table} "))
        cells = line.split()
        assert cells[1] == "7" and int(cells[2]) > 0 and cells[3] == "0"
        assert "rows_match_schema: passed" in line
    expected_checks = {
        "revenue/core/account_identity": ["one_account_per_record: passed"],
        "revenue/marts/pipeline": ["stages_mapped: passed", "amounts_converted: passed"],
        "revenue/marts/accounts": [],
    }
    for asset, checks in expected_checks.items():
        line = next(line for line in completed.stdout.splitlines() if line.startswith(f"{asset} "))
        assert line.split()[1] == "7" and int(line.split()[2]) > 0
        assert all(check in line for check in checks), line
    assert "RunStatus.SUCCESS" in completed.stdout or "SUCCESS" in completed.stdout


def test_the_main_job_runs_in_prod_mode_against_the_sandbox_and_the_bigquery_emulator(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(seed=11, companies=30, days=3, bigquery=True)
    env = {**sandbox.env(), "REVENUE_PIPELINES_ENV": "prod", "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    first = END.replace(day=END.day - 1)
    command = [_tool("dagster"), "job", "execute", "-m", "revenue_pipelines.definitions", "-j", "daily_revenue_job"]
    command += ["-c", str(ROOT / "deploy" / "in_process.yaml")]
    completed = _run([*command, "--tags", json.dumps(day_range(first, END))], env)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]

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
