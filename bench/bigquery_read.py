"""Reading GA4's BigQuery export into Polars: the project's source against a plain `to_arrow()`.
Run by hand: `make bench` (or `uv run python -m bench.bigquery_read`).

Both run the same query (sql/ga4_events.sql over the benchmark's 30 days, rendered and bound by
the source) against the sandbox's BigQuery emulator, in a process of their own so that each one's
peak RSS is its own. The source dry-runs the query, then streams the result through the Storage Read
API batch by batch into Polars; the plain read is `client.query(...).to_arrow()` (on the same
Storage Read API) and `pl.from_arrow`. Reported: rows/s and peak RSS above the process's baseline.
"""

import json
import os
import resource
import subprocess
import sys
import time

import polars as pl

from bench.harness import DAYS, END, FIRST, WINDOW, arguments, sandbox_process
from revenue_pipelines.defs.bigquery.assets import EVENTS_KEY, GA4_EVENTS, ga4_days
from revenue_pipelines.environment import get_environment

SOURCE = "source: BigQuerySource.read (dry run, Storage Read batches -> Polars)"
PLAIN = "plain: client.query(...).to_arrow() -> pl.from_arrow"
CONTENDERS = {"source": SOURCE, "plain": PLAIN}
# GA4's sandbox makes about this many export events per fact row (sessions x events per session).
EVENTS_PER_FACT_ROW = 7.06


def measure(contender: str) -> dict[str, float]:
    """In a child process: read the window once the contender's way; rows, seconds and memory."""
    source = get_environment().bigquery_source
    parameters = ga4_days(*WINDOW)
    baseline = _rss()
    began = time.perf_counter()
    if contender == "source":
        frame, _ = source.read(GA4_EVENTS, source.ga4_export_dataset, parameters, EVENTS_KEY)
    else:
        warehouse = source.warehouse
        sql = GA4_EVENTS.render(project=warehouse.project, dataset=source.ga4_export_dataset)
        job = warehouse.client().query(sql, job_config=warehouse.job_config(GA4_EVENTS.bind(parameters)))
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


def main() -> None:
    args = arguments(__doc__, "events", 5_000_000)
    rows_per_day = max(1, round(args.events / DAYS / EVENTS_PER_FACT_ROW))
    rounds = []
    with sandbox_process("--companies", "50", "--ga4-rows-per-day", str(rows_per_day), bigquery=True) as env:
        for _ in range(args.repeat):
            measured = {}
            for contender in CONTENDERS:
                child = subprocess.run(
                    [sys.executable, "-m", "bench.bigquery_read", "--measure", contender],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured[contender] = json.loads(child.stdout.strip().splitlines()[-1])
            rounds.append(measured)

    print(f"\nGA4 export events {FIRST}..{END} ({DAYS} days) from the sandbox's BigQuery emulator\n")
    header = ("round", "measure", "rows", "seconds", "rows/s", "peak RSS MB", "frame MB")
    print(f"| {header[0]} | {header[1]:<70} | " + " | ".join(f"{name:>11}" for name in header[2:]) + " |")
    print(f"|-------|{'-' * 72}|" + "|".join("-" * 13 for _ in header[2:]) + "|")
    for number, measured in enumerate(rounds, start=1):
        for contender, result in measured.items():
            rate = result["rows"] / result["seconds"]
            cells = (f"{result['rows']:,}", f"{result['seconds']:.2f}", f"{rate:,.0f}")
            cells += (f"{result['peak_mb']:,.0f}", f"{result['frame_mb']:,.0f}")
            print(
                f"| {number:>5} | {CONTENDERS[contender]:<70} | " + " | ".join(f"{cell:>11}" for cell in cells) + " |"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        main()
