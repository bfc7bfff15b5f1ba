"""Reading GA4 event rows out of BigQuery into Polars: the project's source against a plain `to_arrow()`.
Run by hand: `make bench` (or `uv run python -m bench.bigquery_read`).

The sandbox's BigQuery emulator is seeded with `--events` GA4 export events over the benchmark's
30 days. Both contenders run the same query, rendered and bound by the project's `SqlFile`, each in a
process of its own so that its peak RSS is its own:

- source: `BigQuerySource.read`, as the assets use it: a dry run against the byte budget, the query,
  then the result streamed through the Storage Read API a few batches at a time into Polars;
- plain: `client.query(...).to_arrow()` on the same Storage Read API, then `pl.from_arrow`.

By default the query reads a table of the events' columns made once beforehand (`sql/`), because
the emulator cannot flatten `event_params` at this scale: its correlated UNNEST subqueries cost
about 14 us per row and parameter (sql/ga4_events.sql: about 30 s and 2 GB per 200,000 events).
`--export-query` reads through the project's sql/ga4_events.sql instead; keep `--events` small then.
Reported: rows/s, and peak RSS above the process's baseline next to the size of the frame by
Polars' `estimated_size` (which undercounts string columns: their 16-byte views and the buffers
they share with the responses).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from bench.harness import DAYS, END, FIRST, WINDOW, sandbox_process
from revenue_pipelines.defs.bigquery.assets import EVENTS_KEY, GA4_EVENTS, ga4_days
from revenue_pipelines.defs.bigquery.queries import SqlFile
from revenue_pipelines.environment import get_environment

SQL = Path(__file__).parent / "sql"
FLAT_TABLE = SqlFile.load("ga4_events_flat", {"first_day", "last_day"}, directory=SQL)
READ_FLAT = SqlFile.load("read_flat", set(), directory=SQL)
BENCH_DATASET = "bench"
CONTENDERS = {
    "source": "source: BigQuerySource.read (dry run, Storage Read batches -> Polars)",
    "plain": "plain: client.query(...).to_arrow() -> pl.from_arrow",
}
EVENTS_PER_FACT_ROW = 7.06  # GA4's sandbox: export events per Data API fact row (sessions x events)


def measure(contender: str, export_query: bool) -> dict[str, float]:
    """In a child process: read the rows once the contender's way; rows, seconds and memory."""
    source = get_environment().bigquery_source
    sql, dataset, parameters = (
        (GA4_EVENTS, source.ga4_export_dataset, ga4_days(*WINDOW)) if export_query else (READ_FLAT, BENCH_DATASET, {})
    )
    baseline = _rss()
    began = time.perf_counter()
    if contender == "source":
        frame, _ = source.read(sql, dataset, parameters, EVENTS_KEY)
    else:
        warehouse = source.warehouse
        query = sql.render(project=warehouse.project, dataset=dataset)
        job = warehouse.client().query(query, job_config=warehouse.job_config(sql.bind(parameters)))
        frame = pl.from_arrow(job.to_arrow(bqstorage_client=warehouse.read_client()))
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "rows": frame.height,
        "seconds": seconds,
        "peak_mb": (peak - baseline) / 1e6,
        "frame_mb": frame.estimated_size() / 1e6,
    }


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _make_flat_table(env: dict[str, str]) -> None:
    os.environ.update(env)
    source = get_environment().bigquery_source
    warehouse = source.warehouse
    warehouse.client().create_dataset(BENCH_DATASET, exists_ok=True)
    query = FLAT_TABLE.render(project=warehouse.project, dataset=source.ga4_export_dataset)
    warehouse.query(query, FLAT_TABLE.bind(ga4_days(*WINDOW)))


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--export-query", action="store_true", help="read through sql/ga4_events.sql (slow here)")
    args = parser.parse_args()
    rows_per_day = max(1, round(args.events / DAYS / EVENTS_PER_FACT_ROW))
    rounds = []
    with sandbox_process("--companies", "50", "--ga4-rows-per-day", str(rows_per_day), bigquery=True) as env:
        if not args.export_query:
            _make_flat_table(env)
        for _ in range(args.repeat):
            measured = {}
            for contender in CONTENDERS:
                command = [sys.executable, "-m", "bench.bigquery_read", "--measure", contender]
                command += ["--export-query"] if args.export_query else []
                child = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True)
                measured[contender] = json.loads(child.stdout.strip().splitlines()[-1])
            rounds.append(measured)

    query = "sql/ga4_events.sql" if args.export_query else "the events' columns (bench/sql/read_flat.sql)"
    print(f"\nGA4 export events {FIRST}..{END} ({DAYS} days) from the sandbox's BigQuery emulator; query: {query}\n")
    header = ("rows", "seconds", "rows/s", "peak RSS MB", "est. frame MB")
    print(f"| round | {'measure':<70} | " + " | ".join(f"{name:>13}" for name in header) + " |")
    print(f"|-------|{'-' * 72}|" + "|".join("-" * 15 for _ in header) + "|")
    for number, measured in enumerate(rounds, start=1):
        for contender, result in measured.items():
            rate = result["rows"] / result["seconds"]
            cells = (f"{result['rows']:,}", f"{result['seconds']:.2f}", f"{rate:,.0f}")
            cells += (f"{result['peak_mb']:,.0f}", f"{result['frame_mb']:,.0f}")
            print(
                f"| {number:>5} | {CONTENDERS[contender]:<70} | " + " | ".join(f"{cell:>13}" for cell in cells) + " |"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2], "--export-query" in sys.argv)))
    else:
        main()
