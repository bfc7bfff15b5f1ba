"""Throughput and latency of the webhook receiver. Run by hand: `uv run python -m bench.receiver`.

Starts `python -m revenue_pipelines.receiver` on a throwaway queue (a SQLite file; with `--postgres`,
a fresh database, dropped after, in the PostgreSQL that this shell's DAGSTER_PG_* name), and 32
concurrent senders post HubSpot deliveries signed with signature v3 (one event each, distinct ids)
for `--seconds`. Prints
accepted deliveries per second and p50/p99 latency, then counts the queue: every acknowledged event
must be there (lost = acknowledged - queued). Target: at least 1,000 accepted/s, p99 under 50 ms.

The senders run on the same machine and take CPU from the receiver, and the machine's other load
moves both figures; the CPU the receiver and the senders spent per accepted delivery (from /proc,
so Linux only) does not depend on that, and is printed beside them.
"""

import argparse
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from revenue_pipelines.receiver.database import database_url
from revenue_pipelines.receiver.queue import open_queue
from revenue_pipelines_tests.postgres_server import fresh_database
from revenue_pipelines_tests.receiver_process import receiver_env, start
from revenue_pipelines_tests.test_receiver import hubspot_events, hubspot_headers

SENDERS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=SENDERS)
    parser.add_argument("--postgres", action="store_true", help="queue in the PostgreSQL of DAGSTER_PG_*")
    args = parser.parse_args()
    if args.postgres and not os.environ.get("DAGSTER_PG_HOST"):
        parser.error("--postgres needs DAGSTER_PG_HOST (and DAGSTER_PG_PORT, _USERNAME, _PASSWORD) set")
    with tempfile.TemporaryDirectory() as folder, _queue_location(args.postgres, Path(folder)) as location:
        receiver = start(receiver_env(None, **location), Path(folder) / "receiver.log")
        try:
            receiver_before, senders_before = _cpu_seconds(receiver.process.pid), _own_cpu_seconds()
            latencies, refused, elapsed = _load(receiver.url, args.senders, args.seconds)
            receiver_cpu = _cpu_seconds(receiver.process.pid) - receiver_before
            senders_cpu = _own_cpu_seconds() - senders_before
        finally:
            receiver.stop()
        with open_queue(database_url(location)) as queue:
            queued = queue.depth()
    accepted = len(latencies)
    ordered = sorted(latencies)
    rows = [
        ("queue", "PostgreSQL" if args.postgres else "SQLite"),
        ("senders", f"{args.senders}"),
        ("seconds", f"{elapsed:.1f}"),
        ("accepted", f"{accepted:,}"),
        ("refused or failed", f"{refused:,}"),
        ("accepted/s", f"{accepted / elapsed:,.0f} (target >= 1,000)"),
        ("p50 latency", f"{statistics.median(ordered) * 1000:.1f} ms"),
        ("p99 latency", f"{ordered[int(len(ordered) * 0.99) - 1] * 1000:.1f} ms (target < 50 ms)"),
        ("lost (acknowledged, not queued)", f"{accepted - queued:,}"),
        ("receiver CPU per accepted", f"{receiver_cpu / accepted * 1e6:.0f} µs"),
        ("senders' CPU per accepted", f"{senders_cpu / accepted * 1e6:.0f} µs"),
    ]
    width = max(len(name) for name, _ in rows)
    print("| " + "measure".ljust(width) + " | value |")
    print("| " + "-" * width + " | --- |")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def _load(url: str, senders: int, seconds: float) -> tuple[list[float], int, float]:
    """`senders` threads posting signed deliveries until `seconds` pass; latencies of the 2xx, refusals."""
    ids = itertools.count(1)
    lock = threading.Lock()
    latencies: list[float] = []
    refused = [0]
    deadline = time.monotonic() + seconds

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while time.monotonic() < deadline:
                with lock:
                    event_id = next(ids)
                body = json.dumps(hubspot_events(event_id))
                started = time.monotonic()
                try:
                    ok = client.post("/webhooks/hubspot", content=body, headers=hubspot_headers(body)).is_success
                except httpx.HTTPError:
                    ok = False
                took = time.monotonic() - started
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        refused[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, refused[0], time.monotonic() - started


@contextlib.contextmanager
def _queue_location(postgres: bool, folder: Path) -> Iterator[dict[str, str]]:
    """The variables that put the receiver's queue in a fresh SQLite file or a fresh PostgreSQL database."""
    if not postgres:
        yield {"RECEIVER_QUEUE_PATH": str(folder / "queue.db")}
        return
    settings = {name: value for name, value in os.environ.items() if name.startswith("DAGSTER_PG_")}
    with fresh_database({"DAGSTER_PG_DB": "postgres", **settings}) as location:
        yield location


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    main()
