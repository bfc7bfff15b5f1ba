"""Delivering a big mart through the route writers. Run by hand: `uv run python -m bench.routes`.

1,000,000 rows shaped like `revenue/marts/accounts` are delivered by each destination writer, each
case in a fresh interpreter so its peak RSS is its own, against writing the same frame to a local
Parquet file (the floor). Prints rows/s, the ratio to the floor, the process's peak RSS above what
the interpreter and libraries held before the frame was made, what delivering added to the RSS it
started with (`delivery MB`: polars keeps the memory it freed while building the frame, so the
first figure holds that too), and the frame plus that delivery memory as a multiple of the frame
(`x frame`, the target's measure). Linux only (/proc).
Targets (issue 17): object storage at least 0.5x the local write,
PostgreSQL at least 100,000 rows/s, webhooks at least 20,000 rows/s to a local receiver (batches of
1,000), peak RSS at most twice the frame.

- parquet: `polars.DataFrame.write_parquet` to a temporary folder.
- s3: `FilesWriter`, Parquet into the sandbox's S3 (moto, in a process of its own); the client is made
  before the clock starts, as in a long-lived worker.
- postgres: `PostgresDestinationWriter` into a throwaway PostgreSQL cluster (first delivery: all inserts).
- webhook: `WebhookResource` to the sandbox's signature-checking sink (in a process of its own),
  batches of 1,000.
"""

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import polars as pl

from revenue_pipelines.lib.processes import dying_with_this_process

ROWS = 1_000_000
LOG = logging.getLogger("bench.routes")


def mart(rows: int) -> pl.DataFrame:
    """Accounts-shaped rows: a day, ids, names, a segment, money and counts (built column-wise, so
    making it takes little more memory than it holds)."""
    n = pl.int_range(rows, eager=True).alias("n")
    return pl.DataFrame(n).select(
        ingestion_date=pl.lit(date(2026, 11, 20)),
        account_id=pl.concat_str(pl.lit("acct-"), pl.col("n").cast(pl.Utf8).str.zfill(8)),
        name=pl.concat_str(pl.lit("Company "), pl.col("n").cast(pl.Utf8), pl.lit(" GmbH")),
        owner=pl.concat_str(pl.lit("Owner "), (pl.col("n") % 40).cast(pl.Utf8)),
        segment=pl.col("n").mod(3).replace_strict({0: "SMB", 1: "Mid-Market", 2: "Enterprise"}, return_dtype=pl.Utf8),
        employees=(pl.col("n") * 7 % 5000).cast(pl.Int64),
        arr_usd=(pl.col("n") * 13 % 100_000).cast(pl.Float64) + 0.5,
        open_pipeline_usd=(pl.col("n") * 17 % 50_000).cast(pl.Float64),
        won_revenue_usd=(pl.col("n") * 19 % 70_000).cast(pl.Float64),
        open_deals=(pl.col("n") % 9).cast(pl.Int64),
    )


def run_case(case: str, rows: int) -> dict[str, float]:
    """One case, in this process: seconds to deliver (its server already up), and the peak RSS while
    delivering, above what the interpreter and its libraries held before the frame was made: the
    frame plus what delivering it took. The peak is reset once the frame is built (Linux's
    clear_refs), so building it does not count."""
    _import_writers()
    before_mb = _rss_mb()
    frame = mart(rows)
    with tempfile.TemporaryDirectory() as folder, DESTINATIONS[case](Path(folder)) as deliver:
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
        start_mb = _rss_mb()
        started = time.perf_counter()
        deliver(frame)
        seconds = time.perf_counter() - started
        peak_mb = _peak_rss_mb()
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_mb - before_mb,
        "delivery_mb": peak_mb - start_mb,
        "frame_mb": frame.estimated_size() / 2**20,
    }


@contextlib.contextmanager
def _parquet(folder: Path) -> Iterator[Callable[[pl.DataFrame], None]]:
    yield lambda frame: frame.write_parquet(folder / "accounts.parquet")


@contextlib.contextmanager
def _postgres(folder: Path) -> Iterator[Callable[[pl.DataFrame], None]]:
    from revenue_pipelines.lib.destinations.postgres import PostgresDestination, PostgresDestinationWriter
    from revenue_pipelines.sandbox.postgres import throwaway_cluster

    with throwaway_cluster() as settings:
        writer = PostgresDestinationWriter(
            host=settings["DAGSTER_PG_HOST"],
            port=int(settings["DAGSTER_PG_PORT"]),
            database=settings["DAGSTER_PG_DB"],
            username=settings["DAGSTER_PG_USERNAME"],
            password=settings["DAGSTER_PG_PASSWORD"],
        )
        destination = PostgresDestination(kind="postgres", table="accounts", key=["ingestion_date", "account_id"])
        yield lambda frame: _confirmed(frame, writer.deliver(frame, destination, **DELIVERY))


@contextlib.contextmanager
def _webhook(folder: Path) -> Iterator[Callable[[pl.DataFrame], None]]:
    """The sink in a process of its own: it keeps every row it accepts, which is not the sender's memory."""
    from revenue_pipelines.lib.destinations.webhook import WebhookDestination, WebhookResource

    sink = subprocess.Popen(
        dying_with_this_process([sys.executable, "-m", "bench.routes", "--serve-sink"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url, secret = sink.stdout.readline().split()
        sender = WebhookResource(signing_secrets=f"*={secret}", dead_letter_dir=str(folder / "dead"))
        destination = WebhookDestination(kind="webhook", url=f"{url}/accounts", batch_size=1_000)
        yield lambda frame: _confirmed(frame, sender.deliver(frame, destination, **DELIVERY))
    finally:
        sink.stdin.close()
        sink.wait(30)


def _serve_sink() -> None:
    """Serve a webhook sink until stdin closes; its URL and secret first, on one line."""
    from revenue_pipelines.sandbox.webhook_sink import WebhookSink

    with WebhookSink() as sink:
        print(sink.url, sink.secret, flush=True)
        sys.stdin.read()


@contextlib.contextmanager
def _s3(folder: Path) -> Iterator[Callable[[pl.DataFrame], None]]:
    """Parquet into the sandbox's S3 (moto, in a process of its own), the client made before the clock."""
    from revenue_pipelines.lib.destinations.files import FilesDestination, FilesWriter
    from revenue_pipelines.sandbox.object_storage import ObjectStorage

    with ObjectStorage(buckets=("revenue-exports",)) as storage:
        os.environ.update(storage.env())  # what the S3 client reads, as in a run
        writer = FilesWriter()
        destination = FilesDestination(kind="files", url="s3://revenue-exports/marts", format="parquet")
        _confirmed(mart(10), writer.deliver(mart(10), destination, **DELIVERY))  # the client, made once
        yield lambda frame: _confirmed(frame, writer.deliver(frame, destination, **DELIVERY))


def _confirmed(frame: pl.DataFrame, delivery) -> None:
    assert delivery.rows == frame.height and not delivery.dead_letters, delivery


DESTINATIONS = {"parquet": _parquet, "s3": _s3, "postgres": _postgres, "webhook": _webhook}
DELIVERY = {"route": "bench", "partition_key": "2026-11-20", "log": LOG}


def _import_writers() -> None:
    """The libraries every case loads, before the baseline is taken."""


def _peak_rss_mb() -> float:
    """VmHWM: the peak RSS since the last reset."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--case", choices=DESTINATIONS, help=argparse.SUPPRESS)  # one case, in a child process
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)  # the webhook case's receiver
    args = parser.parse_args()
    if args.serve_sink:
        _serve_sink()
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.rows)))
        return
    results = {}
    for case in DESTINATIONS:
        child = subprocess.run(
            [sys.executable, "-m", "bench.routes", "--case", case, "--rows", str(args.rows)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[case] = json.loads(child.stdout.strip().splitlines()[-1])
    floor = args.rows / results["parquet"]["seconds"]
    print(f"{args.rows:,} rows; the frame is {results['parquet']['frame_mb']:.0f} MB in memory")
    print(
        f"{'destination':<12} {'seconds':>8} {'rows/s':>10} {'x local':>8} {'peak RSS MB':>12} "
        f"{'delivery MB':>12} {'x frame':>8}"
    )
    for case, result in results.items():
        rate = args.rows / result["seconds"]
        print(
            f"{case:<12} {result['seconds']:>8.2f} {rate:>10,.0f} {rate / floor:>8.2f} "
            f"{result['peak_rss_mb']:>12.0f} {result['delivery_mb']:>12.0f} "
            f"{(result['frame_mb'] + result['delivery_mb']) / result['frame_mb']:>8.1f}"
        )


if __name__ == "__main__":
    main()
