"""Throughput of the HubSpot contacts asset against the floor, on the sandbox. Run by hand: `make bench`.

The floor is the least any client could do: the same search pages from the same server, fetched
with plain urllib3 and parsed with json.loads, nothing else. The asset does that through the
official client plus the archived pass, association reads, typing, validation and Parquet writes.
Target: the asset reaches at least 0.7 of the floor's rows/s.
"""

import argparse
import json
import tempfile
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import urllib3

from revenue_pipelines.defs.hubspot.assets import CONTACTS, hubspot_contacts
from revenue_pipelines.defs.hubspot.resources import SEARCH_PAGE_LIMIT, HubSpotResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.sandbox import Sandbox

END = date(2026, 11, 20)
DAYS = 30


def floor(sandbox: Sandbox, start: datetime, end: datetime) -> int:
    """Plain POSTs of the same keyset-paged search pages, parsed and counted."""
    http = urllib3.PoolManager(headers={"Authorization": f"Bearer {sandbox.token}", "Content-Type": "application/json"})
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
        page = json.loads(
            http.request("POST", f"{sandbox.url}/crm/v3/objects/contacts/search", body=json.dumps(body)).data
        )
        rows += len(page["results"])
        if not page.get("paging"):
            return rows
        last_id = int(page["results"][-1]["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=200_000)
    args = parser.parse_args()

    first = END - timedelta(days=DAYS - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    generated = time.perf_counter()
    with Sandbox(
        seed=1, companies=args.contacts // 5, contacts=args.contacts, days=DAYS, end_date=END, rate_limit_per_10s=None
    ) as sandbox:
        generated = time.perf_counter() - generated
        resource = HubSpotResource(access_token=sandbox.token, host=sandbox.url)

        results = []
        began = time.perf_counter()
        floor_rows = floor(sandbox, start, end)
        results.append(("floor: urllib3 + json.loads of the search pages", floor_rows, time.perf_counter() - began))

        with dg.build_resources({"hubspot": resource}) as resources:
            began = time.perf_counter()
            frame, _ = resources.hubspot.read_window(CONTACTS, start, end)
            results.append(
                ("connector: read_window (client, archived, associations)", frame.height, time.perf_counter() - began)
            )

        with tempfile.TemporaryDirectory() as data_dir:
            began = time.perf_counter()
            result = dg.materialize(
                [hubspot_contacts],
                resources={"hubspot": resource, "io_manager": PartitionedParquetIOManager(base_dir=data_dir)},
                tags={
                    "dagster/asset_partition_range_start": first.isoformat(),
                    "dagster/asset_partition_range_end": END.isoformat(),
                },
            )
            elapsed = time.perf_counter() - began
            [materialization, *_] = result.asset_materializations_for_node("hubspot_contacts")
            rows = materialization.metadata["rows"].value + materialization.metadata["quarantined_rows"].value
            results.append(("asset: hubspot/raw/contacts, materialized", rows, elapsed))

    print(f"\n{args.contacts:,} contacts generated in {generated:.1f} s; window {first}..{END} ({DAYS} days)\n")
    print(f"| {'measure':<58} | {'rows':>8} | {'seconds':>7} | {'rows/s':>8} | {'vs floor':>8} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 10}|")
    floor_rate = results[0][1] / results[0][2]
    for name, rows, seconds in results:
        rate = rows / seconds
        print(f"| {name:<58} | {rows:>8,} | {seconds:>7.2f} | {rate:>8,.0f} | {rate / floor_rate:>8.2f} |")
    print("\nTarget: the asset at >= 0.70 of the floor (the floor counts only non-archived search rows).")


if __name__ == "__main__":
    main()
