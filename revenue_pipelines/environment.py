"""The one place that reads the process environment and picks resources for it.

LOCAL (the default) runs everything on this machine: HubSpot is the sandbox unless `HUBSPOT_HOST`
points elsewhere, and assets land as Parquet files under `REVENUE_PIPELINES_DATA_DIR` (default
`./data`). Credentials are never defaulted: they are `EnvVar`s, resolved when a run starts, so
definitions load without them and the UI never shows their values.
"""

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from revenue_pipelines.defs.hubspot.resources import HubSpotResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager

ENVIRONMENT_VARIABLE = "REVENUE_PIPELINES_ENV"
SANDBOX_URL = "http://127.0.0.1:8765"  # where `python -m revenue_pipelines.sandbox serve` listens


@dataclass(frozen=True)
class Environment:
    """The resources of one environment; code paths never differ between environments."""

    name: str
    hubspot: HubSpotResource
    io_manager: dg.ConfigurableIOManager


@cache
def get_environment() -> Environment:
    name = os.environ.get(ENVIRONMENT_VARIABLE, "local").lower()
    if name != "local":
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={name!r} is not a known environment; the known one is 'local'.")
    data_dir = Path(os.environ.get("REVENUE_PIPELINES_DATA_DIR", "data")).resolve()
    return Environment(
        name=name,
        hubspot=HubSpotResource(
            access_token=dg.EnvVar("HUBSPOT_ACCESS_TOKEN"),
            host=os.environ.get("HUBSPOT_HOST", SANDBOX_URL),
        ),
        io_manager=PartitionedParquetIOManager(base_dir=str(data_dir)),
    )
