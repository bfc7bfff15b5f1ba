"""The one place that reads the process environment and picks resources for it.

LOCAL (the default) runs everything on this machine: HubSpot, Salesforce and GA4 are the sandbox
unless `HUBSPOT_HOST`, `SALESFORCE_TOKEN_URL` and `GA4_API_ENDPOINT` point elsewhere, assets land as Parquet files under
`REVENUE_PIPELINES_DATA_DIR` (default `./data`), and tokens an API issues (Salesforce's rotated
refresh tokens) are kept in owner-only files under `REVENUE_PIPELINES_TOKEN_DIR` (default
`./.tokens`). Credentials are never defaulted: they are `EnvVar`s, resolved when a run starts, so
definitions load without them and the UI never shows their values.
"""

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from revenue_pipelines.defs.ga4.resources import GA4Resource
from revenue_pipelines.defs.hubspot.resources import HubSpotResource
from revenue_pipelines.defs.salesforce.resources import SalesforceResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.token_store import FileTokenStore

ENVIRONMENT_VARIABLE = "REVENUE_PIPELINES_ENV"
# Where `python -m revenue_pipelines.sandbox serve` listens.
SANDBOX_URL = "http://127.0.0.1:8765"
SANDBOX_SALESFORCE_URL = "https://127.0.0.1:8766"


@dataclass(frozen=True)
class Environment:
    """The resources of one environment; code paths never differ between environments."""

    name: str
    hubspot: HubSpotResource
    salesforce: SalesforceResource
    ga4: GA4Resource
    io_manager: dg.ConfigurableIOManager


@cache
def get_environment() -> Environment:
    name = os.environ.get(ENVIRONMENT_VARIABLE, "local").lower()
    if name != "local":
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={name!r} is not a known environment; the known one is 'local'.")
    data_dir = Path(os.environ.get("REVENUE_PIPELINES_DATA_DIR", "data")).resolve()
    token_dir = Path(os.environ.get("REVENUE_PIPELINES_TOKEN_DIR", ".tokens")).resolve()
    return Environment(
        name=name,
        hubspot=HubSpotResource(
            access_token=dg.EnvVar("HUBSPOT_ACCESS_TOKEN"),
            host=os.environ.get("HUBSPOT_HOST", SANDBOX_URL),
        ),
        salesforce=SalesforceResource(
            token_url=os.environ.get("SALESFORCE_TOKEN_URL", f"{SANDBOX_SALESFORCE_URL}/services/oauth2/token"),
            client_id=dg.EnvVar("SALESFORCE_CLIENT_ID"),
            client_secret=dg.EnvVar("SALESFORCE_CLIENT_SECRET"),
            refresh_token=dg.EnvVar("SALESFORCE_REFRESH_TOKEN"),
            token_store=FileTokenStore(directory=str(token_dir)),
            ca_bundle=os.environ.get("SALESFORCE_CA_BUNDLE") or None,
        ),
        ga4=GA4Resource(
            property_id=dg.EnvVar("GA4_PROPERTY_ID"),
            api_endpoint=os.environ.get("GA4_API_ENDPOINT", SANDBOX_URL),
            service_account_json=(
                dg.EnvVar("GA4_SERVICE_ACCOUNT_JSON") if os.environ.get("GA4_SERVICE_ACCOUNT_JSON") else None
            ),
        ),
        io_manager=PartitionedParquetIOManager(base_dir=str(data_dir)),
    )
