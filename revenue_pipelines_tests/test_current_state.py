"""Current state: the day-by-day fold of changes, against crafted cases and the sandbox's truth."""

import shutil
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.defs.hubspot.assets import hubspot_states
from revenue_pipelines.defs.salesforce.assets import salesforce_states
from revenue_pipelines.lib.current_state import HISTORY_SINCE, apply_changes
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines_tests.conftest import (
    END,
    HUBSPOT_ASSETS,
    SALESFORCE_ASSETS,
    hubspot_resource,
    materialize_hubspot,
    materialize_range,
    materialize_salesforce,
    read_layer,
    salesforce_resource,
)

DAY_0 = date(2026, 3, 1)
ARCHIVED = pl.col("archived")


def _at(day: date, hour: int) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=hour)


def _changes(*rows: tuple[int, date, int, str, bool]) -> pl.DataFrame:
    """Change rows (id, day, hour, name, archived), as a raw partition holds them."""
    return pl.DataFrame(
        [
            {"id": id_, PARTITION_COLUMN: day, "changed_at": _at(day, hour), "name": name, "archived": archived}
            for id_, day, hour, name, archived in rows
        ],
        schema={
            "id": pl.Int64,
            PARTITION_COLUMN: pl.Date,
            "changed_at": pl.Datetime("ms", "UTC"),
            "name": pl.Utf8,
            "archived": pl.Boolean,
        },
    )


def _snapshot(frame: pl.DataFrame, day: date) -> dict[int, str]:
    rows = frame.filter(pl.col(PARTITION_COLUMN) == day)
    return dict(zip(rows["id"].to_list(), rows["name"].to_list(), strict=True))


def test_changes_apply_day_by_day_with_archives_restores_and_same_day_versions():
    day_1, day_2, day_3 = (DAY_0 + timedelta(days=offset) for offset in (1, 2, 3))
    previous = _changes((1, DAY_0, 3, "one", False), (2, DAY_0, 4, "two", False)).drop("archived")
    changes = _changes(
        (1, day_1, 9, "one v2", False),  # updated
        (3, day_1, 10, "three", False),  # created
        (2, day_2, 8, "two", True),  # archived
        (3, day_2, 7, "three v2", False),  # two versions in one day: the later wins
        (3, day_2, 15, "three v3", False),
        (2, day_3, 1, "two again", False),  # restored
        (4, day_3, 2, "four", False),  # created and archived the same day
        (4, day_3, 5, "four", True),
    )

    state = apply_changes(previous, changes, [day_1, day_2, day_3], ARCHIVED)

    assert _snapshot(state, day_1) == {1: "one v2", 2: "two", 3: "three"}
    assert _snapshot(state, day_2) == {1: "one v2", 3: "three v3"}
    assert _snapshot(state, day_3) == {1: "one v2", 2: "two again", 3: "three v3"}
    assert state.columns == ["id", "changed_at", "name", PARTITION_COLUMN]  # the archive flag is applied, not kept
    assert state.select(PARTITION_COLUMN, "id").is_duplicated().sum() == 0


def test_a_quiet_day_carries_the_state_and_new_columns_start_empty():
    day_1, day_2 = DAY_0 + timedelta(days=1), DAY_0 + timedelta(days=2)
    previous = _changes((1, DAY_0, 3, "one", False)).drop("archived")
    changes = _changes((2, day_2, 1, "two", False)).with_columns(industry=pl.lit("Retail"))

    state = apply_changes(previous, changes, [day_1, day_2], ARCHIVED)

    assert _snapshot(state, day_1) == {1: "one"}
    assert _snapshot(state, day_2) == {1: "one", 2: "two"}
    assert state.filter(pl.col("id") == 1)["industry"].to_list() == [None, None]


def test_nothing_before_and_nothing_changed_is_an_empty_state():
    state = apply_changes(None, _changes(), [DAY_0], ARCHIVED)
    assert state.height == 0
    assert state.columns == ["id", "changed_at", "name", PARTITION_COLUMN]


# --- through Dagster, against the sandbox -------------------------------------------------------

FIRST = END - timedelta(days=9)


def _states(data_dir, source: str) -> dict[str, pl.DataFrame]:
    tables = [path.name for path in sorted((data_dir / source / "core").iterdir())]
    return {table: read_layer(data_dir, source, "core", table).sort(PARTITION_COLUMN, "id") for table in tables}


@pytest.mark.parametrize(
    ("source", "raw_assets", "states"),
    [("hubspot", HUBSPOT_ASSETS, hubspot_states), ("salesforce", SALESFORCE_ASSETS, salesforce_states)],
)
def test_day_by_day_state_equals_a_full_rebuild_and_the_sandbox(sandbox, tmp_path, source, raw_assets, states):
    rebuilt, daily = tmp_path / "rebuilt", tmp_path / "daily"
    materialize = materialize_hubspot if source == "hubspot" else materialize_salesforce
    assert materialize(sandbox, rebuilt, FIRST, END).success
    shutil.copytree(rebuilt / source / "raw", daily / source / "raw")
    if source == "hubspot":
        resources = {"hubspot": hubspot_resource(sandbox)}
    else:
        resources = {"salesforce": salesforce_resource(sandbox, tmp_path / ".tokens")}
    state_keys = [state.key for state in states]

    def build(data_dir, instance, first, last):
        result = materialize_range(
            [*raw_assets, *states], resources, data_dir, first, last, instance=instance, selection=state_keys
        )
        assert result.success
        return result

    # The full rebuild: every change since the first day in one run.
    with dg.DagsterInstance.ephemeral() as instance:
        build(rebuilt, instance, FIRST, END)

    # Incremental: one run per day, each on the state of the day before.
    with dg.DagsterInstance.ephemeral() as instance:
        for offset in range(10):
            build(daily, instance, FIRST + timedelta(days=offset), FIRST + timedelta(days=offset))
        # A backfill in the middle replaces days whose old snapshots it also loads.
        build(daily, instance, FIRST + timedelta(days=4), FIRST + timedelta(days=6))
        # Every snapshot knows since when changes were applied: here, the first day of the chain.
        for key in state_keys:
            records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records
            assert len(records) == 13
            assert {record.asset_materialization.metadata[HISTORY_SINCE].value for record in records} == {
                FIRST.isoformat()
            }

    full, incremental = _states(rebuilt, source), _states(daily, source)
    assert set(full) == {key.path[-1] for key in state_keys}
    for table, frame in full.items():
        assert frame.equals(incremental[table]), table
        assert frame.select(PARTITION_COLUMN, "id").is_duplicated().sum() == 0, table
        assert frame[PARTITION_COLUMN].n_unique() == 10, table

    # The last day's state is the sandbox's live records, each exactly once, at its last version.
    for table, frame in full.items():
        latest = frame.filter(pl.col(PARTITION_COLUMN) == END)
        truth = _live_truth(sandbox, source, table)
        assert sorted(latest["id"].to_list()) == sorted(truth["id"].to_list()), table
        assert latest.height < frame.height  # ten snapshots, not one


def _live_truth(sandbox, source: str, table: str) -> pl.DataFrame:
    if source == "hubspot":
        return sandbox.hubspot.truth(table).filter(~pl.col("archived")).select("id")
    sobject = {"accounts": "Account", "opportunities": "Opportunity", "contacts": "Contact", "leads": "Lead"}
    truth = sandbox.salesforce.truth(sobject.get(table, "User"))
    if "IsDeleted" in truth.columns:
        truth = truth.filter(~pl.col("IsDeleted"))
    return truth.select(pl.col("Id").alias("id"))
