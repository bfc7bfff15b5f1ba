"""Throughput of the HubSpot contacts asset against the floor, on the sandbox. Run by hand: `make bench`
(or `uv run python -m bench.ingest_hubspot`).

The floor is the least any client could do: the same pages from the same server (the search
pages, the archived list, the association batches), fetched one after another with plain urllib3
and parsed with json.loads, nothing else. The asset fetches them through the official client and
then types, validates and writes the rows. Target: the asset reaches at least 0.7 of the floor's
rows/s. The search pages alone are printed too, for scale.
"""

import json
from datetime import datetime

import dagster as dg
import urllib3

from bench.harness import (
    DAYS,
    END,
    FIRST,
    WINDOW,
    arguments,
    materialized,
    print_rounds,
    rounds_of,
    sandbox_process,
    seconds_of,
)
from revenue_pipelines.defs.hubspot.assets import CONTACTS, hubspot_contacts
from revenue_pipelines.defs.hubspot.resources import (
    ASSOCIATION_BATCH_LIMIT,
    LIST_PAGE_LIMIT,
    SEARCH_PAGE_LIMIT,
    HubSpotResource,
)


def floor_search(http: urllib3.PoolManager, url: str, start: datetime, end: datetime) -> list[str]:
    """Plain POSTs of the keyset-paged search pages, parsed; the ids they returned."""
    ids: list[str] = []
    last_id = 0
    window = [
        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(int(start.timestamp() * 1000))},
        {"propertyName": "lastmodifieddate", "operator": "LT", "value": str(int(end.timestamp() * 1000))},
    ]
    while True:
        body = {
            "filterGroups": [
                {"filters": [*window, {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)}]}
            ],
            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
            "properties": list(CONTACTS.properties),
            "limit": SEARCH_PAGE_LIMIT,
        }
        page = json.loads(http.request("POST", f"{url}/crm/v3/objects/contacts/search", body=json.dumps(body)).data)
        ids += [record["id"] for record in page["results"]]
        if not page.get("paging"):
            return ids
        last_id = int(page["results"][-1]["id"])


def floor_all_pages(http: urllib3.PoolManager, url: str, start: datetime, end: datetime) -> int:
    """Plain requests for every page the asset reads: search, the archived list, association batches."""
    ids = floor_search(http, url, start, end)
    archived, after = 0, None
    while True:
        fields = {"limit": LIST_PAGE_LIMIT, "properties": ",".join(CONTACTS.properties), "archived": "true"}
        page = json.loads(
            http.request(
                "GET", f"{url}/crm/v3/objects/contacts", fields={**fields, **({"after": after} if after else {})}
            ).data
        )
        archived += sum(start <= _instant(r["archivedAt"]) < end for r in page["results"])
        after = page.get("paging", {}).get("next", {}).get("after")
        if after is None:
            break
    for offset in range(0, len(ids), ASSOCIATION_BATCH_LIMIT):
        body = {"inputs": [{"id": i} for i in ids[offset : offset + ASSOCIATION_BATCH_LIMIT]]}
        json.loads(
            http.request("POST", f"{url}/crm/v4/associations/contacts/companies/batch/read", body=json.dumps(body)).data
        )
    return len(ids) + archived


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


FLOOR = "floor: urllib3 + json.loads of the same pages"
SEARCH_ONLY = "  (for scale: the search pages alone)"
CONNECTOR = "connector: read_window (client, archived, associations)"
ASSET = "asset: hubspot/raw/contacts step (validate, write, events)"


def main() -> None:
    args = arguments(__doc__, "contacts", 200_000)

    first, (start, end) = FIRST, WINDOW
    with sandbox_process("--companies", str(args.contacts // 5)) as env:
        url, token = env["HUBSPOT_HOST"], env["HUBSPOT_ACCESS_TOKEN"]
        resource = HubSpotResource(access_token=token, host=url)
        http = urllib3.PoolManager(headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        # One untimed pass first: the sandbox builds its lookup caches on first use, and neither
        # side should be charged for that.
        floor_all_pages(http, url, start, end)
        with dg.build_resources({"hubspot": resource}) as resources:
            read = resources.hubspot.read_window
            read(CONTACTS, start, end)
            rounds = rounds_of(
                args.repeat,
                {
                    FLOOR: lambda: seconds_of(lambda: floor_all_pages(http, url, start, end)),
                    SEARCH_ONLY: lambda: seconds_of(lambda: len(floor_search(http, url, start, end))),
                    CONNECTOR: lambda: seconds_of(
                        lambda: resources.hubspot.read_window(CONTACTS, start, end)[0].height
                    ),
                    ASSET: lambda: materialized(hubspot_contacts, {"hubspot": resource}, first, END),
                },
            )

    print(f"\nabout {args.contacts:,} contacts; window {first}..{END} ({DAYS} days); sandbox in its own process\n")
    print_rounds(rounds, FLOOR, ASSET)


if __name__ == "__main__":
    main()
