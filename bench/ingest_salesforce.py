"""Throughput of the Salesforce opportunities asset against the floor, on the sandbox. Run by hand:
`make bench` (or `uv run python -m bench.ingest_salesforce`).

The floor is the least any client could do: the same queryAll batches from the same TLS server,
fetched one after another with plain urllib3 and parsed with json.loads, nothing else. The asset
reads them through simple-salesforce's session (parsing each batch straight into Polars while the
next one is fetched) and then types, validates and writes the rows. Target: the asset reaches at
least 0.7 of the floor's rows/s.
"""

import json
from datetime import datetime
from urllib.parse import urlencode

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
from revenue_pipelines.defs.salesforce.assets import OPPORTUNITIES, salesforce_opportunities
from revenue_pipelines.defs.salesforce.resources import SalesforceResource, window_soql
from revenue_pipelines.lib.token_store import FileTokenStore

FLOOR = "floor: urllib3 + json.loads of the same batches"
CONNECTOR = "connector: read_window (to text columns)"
ASSET = "asset: salesforce/raw/opportunities step (validate, write, events)"


def floor_batches(http: urllib3.PoolManager, session: dict[str, str], start: datetime, end: datetime) -> int:
    """Plain GETs of the queryAll batches the asset reads, parsed; the rows they held."""
    headers = {"Authorization": f"Bearer {session['access_token']}", "Sforce-Query-Options": "batchSize=2000"}
    soql = window_soql("Opportunity", OPPORTUNITIES.columns(list(OPPORTUNITIES.fields)), start, end)
    url = f"{session['instance_url']}/services/data/v62.0/queryAll?{urlencode({'q': soql})}"
    rows = 0
    while True:
        page = json.loads(http.request("GET", url, headers=headers).data)
        rows += len(page["records"])
        if page["done"]:
            return rows
        url = session["instance_url"] + page["nextRecordsUrl"]


def main() -> None:
    args = arguments(__doc__, "opportunities", 500_000)

    first, (start, end) = FIRST, WINDOW
    with sandbox_process("--companies", "2000", "--opportunities", str(args.opportunities)) as env:
        http = urllib3.PoolManager(ca_certs=env["SALESFORCE_CA_BUNDLE"])
        grant = {
            "grant_type": "refresh_token",
            "client_id": env["SALESFORCE_CLIENT_ID"],
            "client_secret": env["SALESFORCE_CLIENT_SECRET"],
            "refresh_token": env["SALESFORCE_REFRESH_TOKEN"],
        }
        session = json.loads(
            http.request("POST", env["SALESFORCE_TOKEN_URL"], fields=grant, encode_multipart=False).data
        )
        resource = SalesforceResource(
            token_url=env["SALESFORCE_TOKEN_URL"],
            client_id=env["SALESFORCE_CLIENT_ID"],
            client_secret=env["SALESFORCE_CLIENT_SECRET"],
            refresh_token=env["SALESFORCE_REFRESH_TOKEN"],
            ca_bundle=env["SALESFORCE_CA_BUNDLE"],
            token_store=FileTokenStore(directory=env["REVENUE_PIPELINES_TOKEN_DIR"]),
        )
        # One untimed pass first, so neither side is charged for the sandbox's first-use work.
        floor_batches(http, session, start, end)
        with dg.build_resources({"salesforce": resource}) as resources:
            read = resources.salesforce.read_window
            rounds = rounds_of(
                args.repeat,
                {
                    FLOOR: lambda: seconds_of(lambda: floor_batches(http, session, start, end)),
                    CONNECTOR: lambda: seconds_of(lambda: read(OPPORTUNITIES, start, end)[0].height),
                    ASSET: lambda: materialized(salesforce_opportunities, {"salesforce": resource}, first, END),
                },
            )

    print(f"\n{args.opportunities:,} opportunities; window {first}..{END} ({DAYS} days); sandbox in its own process\n")
    print_rounds(rounds, FLOOR, ASSET)


if __name__ == "__main__":
    main()
