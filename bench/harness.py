"""What every ingestion benchmark shares: the sandbox in its own process, timing, and the result table.

A benchmark measures contenders (the floor, the connector, the asset) back to back in each round,
because this machine drifts between fast and slow periods; ratios are taken within a round and the
median round is the result.
"""

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager

Measured = dict[str, tuple[int, float]]  # contender -> (rows, seconds)

# Every benchmark reads the same 30 days of a sandbox seeded alike.
END = date(2026, 11, 20)
DAYS = 30
FIRST = END - timedelta(days=DAYS - 1)
WINDOW = (
    datetime.combine(FIRST, datetime.min.time(), tzinfo=UTC),
    datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=UTC),
)


def arguments(doc: str, size: str, default: int) -> argparse.Namespace:
    """The options every benchmark takes: its data size (`--<size>`) and the number of rounds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(f"--{size}", type=int, default=default)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median round's ratio is the result")
    return parser.parse_args()


@contextmanager
def sandbox_process(*options: str, bigquery: bool = False) -> Iterator[dict[str, str]]:
    """The sandbox in its own process, as a real API would be: its work does not share our GIL.

    Serves the benchmark days, unthrottled, with BigQuery's emulator only if asked; `options` size
    the data. Yields the environment it prints (`export NAME=value` lines, ended by a `# ready` line).
    """
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "serve", "--port", "0", "--salesforce-port", "0"]
    command += ["--seed", "1", "--days", str(DAYS), "--end-date", END.isoformat(), "--no-rate-limit"]
    command += [] if bigquery else ["--no-bigquery"]
    server = subprocess.Popen([*command, *options], stdout=subprocess.PIPE, text=True)
    try:
        env = {}
        for line in server.stdout:
            if not line.startswith("export "):
                break
            name, value = shlex.split(line.removeprefix("export "))[0].split("=", 1)
            env[name] = value
        yield env
    finally:
        server.terminate()
        server.wait()


def rounds_of(repeat: int, contenders: Mapping[str, Callable[[], tuple[int, float]]]) -> list[Measured]:
    """Every contender once per round, back to back, `repeat` rounds."""
    return [{name: measure() for name, measure in contenders.items()} for _ in range(repeat)]


def seconds_of(measure: Callable[[], int]) -> tuple[int, float]:
    began = time.perf_counter()
    rows = measure()
    return rows, time.perf_counter() - began


def materialized(
    asset: dg.AssetsDefinition, resources: dict[str, object], first: date, last: date
) -> tuple[int, float]:
    """Rows in (stored + quarantined) and the step's own seconds for one single-run materialization."""
    with tempfile.TemporaryDirectory() as data_dir, dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={**resources, "io_manager": PartitionedParquetIOManager(base_dir=data_dir)},
            tags={
                "dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": last.isoformat(),
            },
        )
        # Each day's materialization of the raw table counts that day's rows, stored and quarantined.
        rows = sum(
            event.metadata["rows"].value + event.metadata["quarantined_rows"].value
            for event in result.asset_materializations_for_node(asset.node_def.name)
            if "quarantined_rows" in event.metadata
        )
        return rows, _step_seconds(instance, result.run_id)


def _step_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    """From the step's start event to its success event: job setup is not the asset's cost."""
    times = {
        entry.dagster_event.event_type_value: entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.dagster_event.is_step_event
    }
    return times["STEP_SUCCESS"] - times["STEP_START"]


def print_rounds(rounds: list[Measured], floor: str, asset: str, target: float = 0.7) -> None:
    """One table row per contender and round, each rate also as a share of that round's floor."""
    width = max(len(name) for measured in rounds for name in measured)
    print(f"| round | {'measure':<{width}} | {'rows':>9} | {'seconds':>7} | {'rows/s':>9} | {'vs floor':>8} |")
    print(f"|-------|{'-' * (width + 2)}|{'-' * 11}|{'-' * 9}|{'-' * 11}|{'-' * 10}|")
    ratios = []
    for number, measured in enumerate(rounds, start=1):
        floor_rate = measured[floor][0] / measured[floor][1]
        for name, (rows, seconds) in measured.items():
            rate = rows / seconds
            print(
                f"| {number:>5} | {name:<{width}} | {rows:>9,} | {seconds:>7.2f} | {rate:>9,.0f} | "
                f"{rate / floor_rate:>8.2f} |"
            )
        ratios.append(measured[asset][0] / measured[asset][1] / floor_rate)
    print(f"\nasset vs floor per round: {', '.join(f'{ratio:.2f}' for ratio in ratios)}")
    print(f"median: {statistics.median(ratios):.2f} (target: at least {target:.2f})")
