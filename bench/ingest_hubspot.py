"""Throughput of the HubSpot contacts asset against the floor, on the sandbox. Run by hand: `make bench`.

The floor is the least any client could do: the same search pages from the same server, fetched
with plain urllib3 and parsed with json.loads, nothing else. The asset does that through the
official client plus the archived pass, association reads, typing, validation and Parquet writes.
Target: the asset reaches at least 0.7 of the floor's rows/s.
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import urllib3

from revenue_pipelines.defs.hubspot.assets import CONTACTS, hubspot_contacts
from revenue_pipelines.defs.hubspot.resources import SEARCH_PAGE_LIMIT, HubSpotResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager

END = date(2026, 11, 20)
DAYS = 30


def floor(url: str, token: str, start: datetime, end: datetime) -> int:
    """Plain POSTs of the same keyset-paged search pages, parsed and counted."""
    http = urllib3.PoolManager(headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    last_id, rows = 0, 0
    while True:
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {
                            "propertyName": "lastmodifieddate",
                            "operator": "GTE",
                            "value": str(int(start.timestamp() * 1000)),
                        },
                        {
                            "propertyName": "lastmodifieddate",
                            "operator": "LT",
                            "value": str(int(end.timestamp() * 1000)),
                        },
                        {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)},
                    ]
                }
            ],
            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
            "properties": list(CONTACTS.properties),
            "limit": SEARCH_PAGE_LIMIT,
        }
        page = json.loads(http.request("POST", f"{url}/crm/v3/objects/contacts/search", body=json.dumps(body)).data)
        rows += len(page["results"])
        if not page.get("paging"):
            return rows
        last_id = int(page["results"][-1]["id"])


@contextmanager
def sandbox_process(contacts: int) -> Iterator[dict[str, str]]:
    """The sandbox in its own process, as a real API would be: its work does not share our GIL."""
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "serve", "--port", "0", "--seed", "1"]
    command += [
        "--companies",
        str(contacts // 5),
        "--days",
        str(DAYS),
        "--end-date",
        END.isoformat(),
        "--no-rate-limit",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        env = dict(shlex.split(server.stdout.readline().removeprefix("export "))[0].split("=", 1) for _ in range(2))
        yield env
    finally:
        server.terminate()
        server.wait()


def timed_runs(measure: Callable[[], int], repeat: int) -> tuple[int, float]:
    """Rows and the best wall time over `repeat` runs: the least disturbed by the shared machine."""
    best = float("inf")
    rows = 0
    for _ in range(repeat):
        began = time.perf_counter()
        rows = measure()
        best = min(best, time.perf_counter() - began)
    return rows, best


def asset_step_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    """The asset step's own duration, from its start event to its success event (job setup excluded)."""
    times = {
        entry.dagster_event.event_type_value: entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.dagster_event.is_step_event
    }
    return times["STEP_SUCCESS"] - times["STEP_START"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure; the best is reported")
    args = parser.parse_args()

    first = END - timedelta(days=DAYS - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    results = []
    with sandbox_process(args.contacts) as env:
        url, token = env["HUBSPOT_HOST"], env["HUBSPOT_ACCESS_TOKEN"]
        resource = HubSpotResource(access_token=token, host=url)
        # One untimed pass first: the sandbox builds its lookup caches on first use, and neither
        # side should be charged for that.
        floor(url, token, start, end)
        with dg.build_resources({"hubspot": resource}) as resources:
            resources.hubspot.read_window(CONTACTS, start, end)

            rows, seconds = timed_runs(lambda: floor(url, token, start, end), args.repeat)
            results.append(("floor: urllib3 + json.loads of the search pages", rows, seconds))
            rows, seconds = timed_runs(
                lambda: resources.hubspot.read_window(CONTACTS, start, end)[0].height, args.repeat
            )
            results.append(("connector: read_window (client, archived, associations)", rows, seconds))

        step_seconds = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as data_dir, dg.DagsterInstance.ephemeral() as instance:
                result = dg.materialize(
                    [hubspot_contacts],
                    instance=instance,
                    resources={"hubspot": resource, "io_manager": PartitionedParquetIOManager(base_dir=data_dir)},
                    tags={
                        "dagster/asset_partition_range_start": first.isoformat(),
                        "dagster/asset_partition_range_end": END.isoformat(),
                    },
                )
                step_seconds.append(asset_step_seconds(instance, result.run_id))
        [materialization, *_] = result.asset_materializations_for_node("hubspot_contacts")
        rows = materialization.metadata["rows"].value + materialization.metadata["quarantined_rows"].value
        results.append(("asset: hubspot/raw/contacts step (validate, write, events)", rows, min(step_seconds)))

    print(f"\nabout {args.contacts:,} contacts; window {first}..{END} ({DAYS} days); sandbox in its own process;")
    print(f"best of {args.repeat} runs each\n")
    print(f"| {'measure':<58} | {'rows':>8} | {'seconds':>7} | {'rows/s':>8} | {'vs floor':>8} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 10}|")
    floor_rate = results[0][1] / results[0][2]
    for name, rows, seconds in results:
        rate = rows / seconds
        print(f"| {name:<58} | {rows:>8,} | {seconds:>7.2f} | {rate:>8,.0f} | {rate / floor_rate:>8.2f} |")
    print("\nTarget: the asset at >= 0.70 of the floor (the floor reads only non-archived search rows).")


if __name__ == "__main__":
    main()
