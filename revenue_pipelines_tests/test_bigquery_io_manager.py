"""The production IO manager against the BigQuery emulator: windows replaced atomically, schemas kept."""

import multiprocessing
import os
import signal
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl

from revenue_pipelines.defs.hubspot.assets import hubspot_states
from revenue_pipelines.lib.bigquery import BigQueryWarehouse, BigQueryWindowIOManager
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.sandbox import Sandbox
from revenue_pipelines_tests.conftest import END, HUBSPOT_ASSETS, bigquery_warehouse, day_range, hubspot_resource

KEY = ["testsrc", "raw", "events"]
TABLE = "testsrc_events"
ROWS_PER_DAY = 3


def io_manager(sandbox: Sandbox, prefix: str) -> BigQueryWindowIOManager:
    return BigQueryWindowIOManager(warehouse=bigquery_warehouse(sandbox), dataset_prefix=prefix)


def frame(first: date, last: date, version: int, rows_per_day: int = ROWS_PER_DAY, **extra) -> pl.DataFrame:
    days = pl.date_range(first, last, eager=True)
    return pl.DataFrame(
        {
            "id": [f"{day}-{n}" for day in days for n in range(rows_per_day)],
            PARTITION_COLUMN: [day for day in days for _ in range(rows_per_day)],
            "version": [version] * (len(days) * rows_per_day),
            "changed_at": [
                datetime(day.year, day.month, day.day, 12, tzinfo=UTC) for day in days for _ in range(rows_per_day)
            ],
        }
    ).with_columns(**{name: pl.lit(value) for name, value in extra.items()})


def events_asset(version: int, rows_per_day: int = ROWS_PER_DAY, **extra) -> dg.AssetsDefinition:
    @dg.asset(
        key=KEY,
        partitions_def=DAILY_INGESTION,
        metadata={"partition_expr": PARTITION_COLUMN},
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def events(context: dg.AssetExecutionContext) -> pl.DataFrame:
        start, end = context.partition_time_window
        return frame(start.date(), (end - timedelta(days=1)).date(), version, rows_per_day, **extra)

    return events


def write(
    sandbox: Sandbox, prefix: str, asset: dg.AssetsDefinition, first: date, last: date
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        resources={"io_manager": io_manager(sandbox, prefix)},
        tags=day_range(first, last),
        raise_on_error=False,
    )


def stored(sandbox: Sandbox, prefix: str) -> pl.DataFrame:
    rows = sandbox.bigquery.client().query_and_wait(f"SELECT * FROM `{sandbox.bigquery.project}.{prefix}raw.{TABLE}`")
    return pl.from_arrow(rows.to_arrow(bqstorage_client=sandbox.bigquery.read_client())).sort("id")


def test_a_re_run_replaces_its_window_and_leaves_the_others(emulator_env):
    sandbox, prefix = emulator_env, "replace_"
    first, last = END - timedelta(days=2), END
    assert write(sandbox, prefix, events_asset(version=1), first, last).success
    result = write(sandbox, prefix, events_asset(version=2), END - timedelta(days=1), END - timedelta(days=1))
    assert result.success

    table = stored(sandbox, prefix)
    assert table.height == 3 * ROWS_PER_DAY  # nothing doubled
    by_day = dict(table.group_by(PARTITION_COLUMN).agg(pl.col("version").unique()).iter_rows())
    assert by_day == {first: [1], END - timedelta(days=1): [2], last: [1]}

    schema = {
        field.name: field.field_type
        for field in sandbox.bigquery.client().get_table(f"{sandbox.bigquery.project}.{prefix}raw.{TABLE}").schema
    }
    assert schema[PARTITION_COLUMN] == "DATE" and schema["changed_at"] == "TIMESTAMP"
    [materialization] = result.asset_materializations_for_node("testsrc__raw__events")
    assert materialization.metadata["table"].value == f"{sandbox.bigquery.project}.{prefix}raw.{TABLE}"


def test_a_new_column_is_added_and_a_changed_type_fails_naming_table_column_and_types(emulator_env):
    sandbox, prefix = emulator_env, "evolve_"
    assert write(sandbox, prefix, events_asset(version=1), END, END).success
    assert write(sandbox, prefix, events_asset(version=2, channel="email"), END, END).success
    assert stored(sandbox, prefix)["channel"].to_list() == ["email"] * ROWS_PER_DAY

    result = write(sandbox, prefix, events_asset(version=3, channel=7), END, END)
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert f"{prefix}raw.{TABLE}" in message and "channel is STRING in the table but INT64 in the output" in message
    assert stored(sandbox, prefix)["version"].unique().to_list() == [2]  # nothing was written


def test_hostile_identifiers_are_refused_before_any_query(emulator_env):
    sandbox = emulator_env
    datasets_before = {dataset.dataset_id for dataset in sandbox.bigquery.client().list_datasets()}
    result = write(sandbox, "x; DROP TABLE raw.testsrc_events; --", events_asset(version=1), END, END)
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "is not a valid BigQuery dataset name" in str(failure.step_failure_data.error)
    assert {dataset.dataset_id for dataset in sandbox.bigquery.client().list_datasets()} == datasets_before


def _rewrite_window(env: dict[str, str], project: str, prefix: str) -> None:
    """In a child process: write version 2 of the window, big enough that the write takes a while."""
    os.environ.update(env)
    dg.materialize(
        [events_asset(version=2, rows_per_day=20_000)],
        resources={
            "io_manager": BigQueryWindowIOManager(warehouse=BigQueryWarehouse(project=project), dataset_prefix=prefix)
        },
        tags=day_range(END - timedelta(days=2), END),
    )


def test_a_run_killed_mid_write_leaves_the_old_window_or_the_new_never_a_mix(emulator_env):
    sandbox, prefix = emulator_env, "killed_"
    assert write(sandbox, prefix, events_asset(version=1, rows_per_day=20_000), END - timedelta(days=2), END).success
    spawn = multiprocessing.get_context("spawn")
    seen = set()
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        child = spawn.Process(target=_rewrite_window, args=(sandbox.bigquery.env(), sandbox.bigquery.project, prefix))
        child.start()
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        versions = stored(sandbox, prefix).group_by("version").len()
        assert versions.height == 1, f"killed after {delay}s: a mix of versions {versions.to_dicts()}"
        assert versions["len"][0] == 3 * 20_000
        seen.add(versions["version"][0])
    assert seen  # every kill left one whole version behind


def test_the_hubspot_raw_tables_and_their_quarantines_land_in_their_layer_datasets(emulator_env):
    sandbox, prefix = emulator_env, "prod_"
    result = dg.materialize(
        HUBSPOT_ASSETS,
        resources={"hubspot": hubspot_resource(sandbox), "io_manager": io_manager(sandbox, prefix)},
        tags=day_range(END - timedelta(days=1), END),
    )
    assert result.success

    client = sandbox.bigquery.client()
    for asset in HUBSPOT_ASSETS:
        raw_key = dg.AssetKey(["hubspot", "raw", asset.node_def.name.removeprefix("hubspot_")])
        materialized = sum(
            event.metadata["rows"].value
            for event in result.asset_materializations_for_node(asset.node_def.name)
            if event.asset_key == raw_key
        )
        table = asset.node_def.name  # hubspot_<table>
        rows = client.query_and_wait(f"SELECT COUNT(*) AS n FROM `{sandbox.bigquery.project}.{prefix}raw.{table}`")
        assert next(iter(rows))["n"] == materialized > 0
        quarantine = client.get_table(f"{sandbox.bigquery.project}.{prefix}quarantine.{table}")
        assert quarantine.time_partitioning.field == PARTITION_COLUMN


def test_current_state_in_bigquery_day_by_day_equals_one_rebuild(emulator_env):
    """The production path: the first day finds no state table, each next day reads the one before."""
    sandbox = emulator_env
    first, last = END - timedelta(days=2), END

    def build(prefix: str, start: date, end: date, instance: dg.DagsterInstance) -> None:
        resources = {"hubspot": hubspot_resource(sandbox), "io_manager": io_manager(sandbox, prefix)}
        assets = [*HUBSPOT_ASSETS, *hubspot_states]
        assert dg.materialize(assets, resources=resources, tags=day_range(start, end), instance=instance).success

    with dg.DagsterInstance.ephemeral() as instance:
        build("state_rebuilt_", first, last, instance)
    with dg.DagsterInstance.ephemeral() as instance:
        for offset in range(3):
            build("state_daily_", first + timedelta(days=offset), first + timedelta(days=offset), instance)

    client = sandbox.bigquery.client()
    for table in ("contacts", "companies", "deals"):
        rebuilt, daily = (
            pl.from_arrow(
                client.query_and_wait(
                    f"SELECT * FROM `{sandbox.bigquery.project}.{prefix}core.hubspot_{table}`"
                ).to_arrow()
            ).sort(PARTITION_COLUMN, "id")
            for prefix in ("state_rebuilt_", "state_daily_")
        )
        assert rebuilt.height > 0 and rebuilt[PARTITION_COLUMN].n_unique() == 3
        assert rebuilt.equals(daily), table
