"""How long a configuration mistake takes to fail, per connector, with production retries and
backoffs. Run by hand: `uv run python -m bench.fail_fast`.

Each case points a connector at an address that refuses the connection or does not resolve and
runs one day of one asset (Slack: one post); it must fail without step retries, naming the
variable. Target: under 60 s each (the tests check the failure and its message, not the time).
"""

import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date

import dagster as dg

from revenue_pipelines.defs.ga4.assets import ga4_report_assets
from revenue_pipelines.defs.ga4.resources import GA4Resource
from revenue_pipelines.defs.hubspot.assets import hubspot_contacts
from revenue_pipelines.defs.hubspot.resources import HubSpotResource
from revenue_pipelines.defs.salesforce.assets import salesforce_opportunities
from revenue_pipelines.defs.salesforce.resources import SalesforceResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.slack import SlackResource
from revenue_pipelines.lib.token_store import FileTokenStore

DAY = date(2026, 11, 20)
TARGET_SECONDS = 60
ROUNDS = 3


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _materialized(asset: dg.AssetsDefinition, key: str, resource: dg.ConfigurableResource) -> Callable[[], str]:
    def run() -> str:
        with tempfile.TemporaryDirectory() as folder:
            result = dg.materialize(
                [asset],
                resources={key: resource, "io_manager": PartitionedParquetIOManager(base_dir=folder)},
                partition_key=DAY.isoformat(),
                raise_on_error=False,
            )
        retried = any(event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for event in result.all_events)
        [failure] = result.get_step_failure_events()
        message = str(failure.event_specific_data.error.message).splitlines()[-1].split(": ", 1)[-1]
        return ("RETRIED " if retried else "") + message

    return run


def _slack_post(api_url: str) -> Callable[[], str]:
    def run() -> str:
        try:
            SlackResource(bot_token="xoxb-bench", channel="C0000000000", api_url=api_url).post("bench", [])
        except dg.Failure as failure:
            return failure.description or ""
        return "did not fail"

    return run


def cases() -> dict[str, Callable[[], str]]:
    refused = f"127.0.0.1:{_closed_port()}"
    tokens = FileTokenStore(directory=tempfile.mkdtemp(prefix="bench-tokens-"))
    salesforce = {"client_id": "bench", "client_secret": "bench", "refresh_token": "bench", "token_store": tokens}
    traffic = next(asset for asset in ga4_report_assets if "traffic_by_channel" in asset.node_def.name)
    return {
        "HubSpot, connection refused": _materialized(
            hubspot_contacts, "hubspot", HubSpotResource(access_token="pat-bench", host=f"http://{refused}")
        ),
        "HubSpot, host does not resolve": _materialized(
            hubspot_contacts, "hubspot", HubSpotResource(access_token="pat-bench", host="https://api.hubspot.invalid")
        ),
        "Salesforce, connection refused": _materialized(
            salesforce_opportunities,
            "salesforce",
            SalesforceResource(token_url=f"https://{refused}/services/oauth2/token", **salesforce),
        ),
        "Salesforce, host does not resolve": _materialized(
            salesforce_opportunities,
            "salesforce",
            SalesforceResource(token_url="https://login.salesforce.invalid/services/oauth2/token", **salesforce),
        ),
        "GA4, connection refused": _materialized(
            traffic, "ga4", GA4Resource(property_id="123456789", api_endpoint=f"http://{refused}")
        ),
        "Slack, connection refused": _slack_post(f"http://{refused}/api/"),
    }


def main() -> None:
    print(f"| case | median s of {ROUNDS} | failure (last line) |")
    print("| --- | --- | --- |")
    for name, run in cases().items():
        seconds = []
        for _ in range(ROUNDS):
            started = time.monotonic()
            message = run()
            seconds.append(time.monotonic() - started)
        median = statistics.median(seconds)
        verdict = "" if median < TARGET_SECONDS else f" (over {TARGET_SECONDS} s)"
        print(f"| {name} | {median:.1f}{verdict} | {message[:110]} |")


if __name__ == "__main__":
    main()
