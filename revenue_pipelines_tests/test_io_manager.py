"""The files IO manager: one file per partition from a single-run backfill, replaced atomically."""

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN

RANGE = {"dagster/asset_partition_range_start": "2026-11-01", "dagster/asset_partition_range_end": "2026-11-03"}


class Rows(dg.Config):
    per_day: int = 2
    skip_day: str = "2026-11-02"
    value: int = 1


@dg.asset(
    key=["test", "raw", "events"],
    partitions_def=DAILY_INGESTION,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"partition_expr": PARTITION_COLUMN},
)
def events(context: dg.AssetExecutionContext, config: Rows) -> pl.DataFrame:
    start, end = context.partition_time_window
    days = [start.date() + timedelta(days=i) for i in range((end - start).days)]
    days = [day for day in days if day.isoformat() != config.skip_day]
    return pl.concat(
        [
            pl.DataFrame(schema={PARTITION_COLUMN: pl.Date, "value": pl.Int64}),
            *(
                pl.select(
                    pl.repeat(day, config.per_day, dtype=pl.Date).alias(PARTITION_COLUMN),
                    pl.repeat(config.value, config.per_day, dtype=pl.Int64).alias("value"),
                )
                for day in days
            ),
        ]
    )


@dg.asset(partitions_def=DAILY_INGESTION, backfill_policy=dg.BackfillPolicy.single_run())
def downstream(context: dg.AssetExecutionContext, events: pl.DataFrame) -> None:
    context.add_output_metadata({"rows": events.height})


def _materialize(base_dir: Path, config: Rows | None = None, tags=RANGE, **kwargs):
    return dg.materialize(
        [events, downstream],
        resources={"io_manager": PartitionedParquetIOManager(base_dir=str(base_dir))},
        tags=tags,
        run_config=dg.RunConfig({"test__raw__events": config or Rows()}),
        **kwargs,
    )


def _partition(base_dir: Path, key: str) -> pl.DataFrame:
    return pl.read_parquet(base_dir / "test" / "raw" / "events" / f"{key}.parquet")


def test_single_run_backfill_writes_every_partition_and_downstream_reads_them(tmp_path):
    result = _materialize(tmp_path)
    assert result.success
    assert _partition(tmp_path, "2026-11-01")[PARTITION_COLUMN].to_list() == [date(2026, 11, 1)] * 2
    assert _partition(tmp_path, "2026-11-02").height == 0  # written empty: a re-run clears it too
    assert _partition(tmp_path, "2026-11-03").height == 2
    materializations = result.asset_materializations_for_node("downstream")
    assert [m.partition for m in materializations] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert materializations[0].metadata["rows"].value == 4
    leftovers = [p.name for p in (tmp_path / "test" / "raw" / "events").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_rerun_replaces_partitions_instead_of_appending(tmp_path):
    _materialize(tmp_path)
    _materialize(tmp_path, Rows(per_day=3, skip_day="2026-11-01", value=2))
    assert _partition(tmp_path, "2026-11-01").height == 0
    assert _partition(tmp_path, "2026-11-02")["value"].to_list() == [2, 2, 2]
    _materialize(tmp_path, Rows(per_day=3, skip_day="2026-11-01", value=2))
    assert _partition(tmp_path, "2026-11-02")["value"].to_list() == [2, 2, 2]


def test_rows_outside_the_run_partitions_fail_before_writing(tmp_path):
    assert _materialize(tmp_path, tags={}, partition_key="2026-11-05", selection=[events]).success

    @dg.asset(
        key=["test", "raw", "events"], partitions_def=DAILY_INGESTION, metadata={"partition_expr": PARTITION_COLUMN}
    )
    def leaky(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({PARTITION_COLUMN: [date(2026, 11, 5), date(2026, 11, 6)]})

    result = dg.materialize(
        [leaky],
        resources={"io_manager": PartitionedParquetIOManager(base_dir=str(tmp_path))},
        partition_key="2026-11-05",
        raise_on_error=False,
    )
    assert not result.success
    assert "test/raw/events: 1 rows have a ingestion_date outside the partitions of this run" in str(
        result.get_step_failure_events()[0].event_specific_data.error.message
    )
    assert _partition(tmp_path, "2026-11-05").height == 2  # the earlier good write is untouched


def test_a_run_killed_mid_write_leaves_the_old_partition_intact(tmp_path):
    _materialize(tmp_path, tags={}, partition_key="2026-11-01", selection=[events])
    before = _partition(tmp_path, "2026-11-01")

    writer = subprocess.Popen([sys.executable, "-m", __name__, str(tmp_path)], env={**os.environ})
    folder = tmp_path / "test" / "raw" / "events"
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in folder.iterdir()):
        assert writer.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    assert _partition(tmp_path, "2026-11-01").equals(before)


if __name__ == "__main__":
    # The victim of the kill test: a partition big enough that writing it takes a while.
    _materialize(
        Path(sys.argv[1]),
        Rows(per_day=30_000_000, skip_day=""),
        tags={},
        partition_key="2026-11-01",
        selection=[events],
    )
