"""Shared fixtures: a sandbox per test, and helpers to run each source's assets against it."""

import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from revenue_pipelines.definitions import defs
from revenue_pipelines.defs.ga4.assets import ga4_report_assets
from revenue_pipelines.defs.ga4.resources import GA4Resource
from revenue_pipelines.defs.hubspot.assets import hubspot_companies, hubspot_contacts, hubspot_deals
from revenue_pipelines.defs.hubspot.resources import HubSpotResource
from revenue_pipelines.defs.salesforce.assets import (
    salesforce_accounts,
    salesforce_contacts,
    salesforce_leads,
    salesforce_opportunities,
    salesforce_users,
)
from revenue_pipelines.defs.salesforce.resources import SalesforceResource
from revenue_pipelines.environment import Environment, get_environment
from revenue_pipelines.lib.bigquery import BigQueryWarehouse
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.token_store import FileTokenStore
from revenue_pipelines.sandbox import Sandbox

warnings.filterwarnings("ignore", category=dg.BetaWarning)

# `postgres`: a throwaway PostgreSQL cluster per module, for the tests that need one.
pytest_plugins = ["revenue_pipelines_tests.postgres_server"]

END = date(2026, 11, 20)
HUBSPOT_ASSETS = [hubspot_contacts, hubspot_companies, hubspot_deals]
SALESFORCE_ASSETS = [
    salesforce_accounts,
    salesforce_opportunities,
    salesforce_contacts,
    salesforce_leads,
    salesforce_users,
]


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(**options) -> Sandbox:
        options.setdefault("end_date", END)
        options.setdefault("rate_limit_per_10s", None)
        sandbox = Sandbox(**options)
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(sandbox_factory) -> Sandbox:
    return sandbox_factory(seed=11, companies=60, days=10)


@pytest.fixture(scope="module")
def bigquery_sandbox() -> Iterator[Sandbox]:
    """One seeded BigQuery emulator per module (it takes seconds to start); tests keep to their own datasets."""
    with Sandbox(seed=3, companies=40, days=10, end_date=END, bigquery=True) as sandbox:
        yield sandbox


@pytest.fixture
def emulator_env(bigquery_sandbox, monkeypatch) -> Sandbox:
    """The module's BigQuery sandbox, its credentials in the environment as the sandbox's `run` sets them."""
    for name, value in bigquery_sandbox.bigquery.env().items():
        monkeypatch.setenv(name, value)
    return bigquery_sandbox


def bigquery_warehouse(sandbox: Sandbox, **overrides) -> BigQueryWarehouse:
    """The production resource, aimed at the sandbox's emulator."""
    bigquery = sandbox.bigquery
    config = {
        "project": bigquery.project,
        "api_endpoint": bigquery.endpoint,
        "storage_read_endpoint": bigquery.storage_endpoint,
    }
    return BigQueryWarehouse(**{**config, **overrides})


def hubspot_resource(sandbox: Sandbox, **overrides) -> HubSpotResource:
    """The production resource, aimed at the sandbox, with test-sized backoffs."""
    config = {
        "access_token": sandbox.token,
        "host": sandbox.url,
        "backoff_factor_seconds": 0.05,
        "backoff_max_seconds": 1.0,
        "timeout_seconds": 5.0,
        **overrides,
    }
    return HubSpotResource(**config)


def day_range(first: date, last: date) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }


def salesforce_resource(sandbox: Sandbox, token_dir: Path, **overrides) -> SalesforceResource:
    """The production resource, aimed at the sandbox's TLS endpoint, with test-sized backoffs."""
    env = sandbox.env()
    config = {
        "token_url": env["SALESFORCE_TOKEN_URL"],
        "client_id": env["SALESFORCE_CLIENT_ID"],
        "client_secret": env["SALESFORCE_CLIENT_SECRET"],
        "refresh_token": env["SALESFORCE_REFRESH_TOKEN"],
        "ca_bundle": sandbox.ca_bundle,
        "token_store": FileTokenStore(directory=str(token_dir)),
        "backoff_factor_seconds": 0.05,
        "backoff_max_seconds": 1.0,
        "timeout_seconds": 5.0,
        **overrides,
    }
    return SalesforceResource(**config)


def materialize_range(
    assets: list,
    resources: dict[str, object],
    data_dir: Path,
    first: date,
    last: date,
    **options,
) -> dg.ExecuteInProcessResult:
    """One single-run backfill of [first, last], written as Parquet under `data_dir`.

    `options` go to `dg.materialize` (an `instance` that outlives the run, a `selection`).
    """
    return dg.materialize(
        assets,
        resources={**resources, "io_manager": PartitionedParquetIOManager(base_dir=str(data_dir))},
        tags=day_range(first, last),
        raise_on_error=False,
        **options,
    )


def materialize_hubspot(
    sandbox: Sandbox,
    data_dir: Path,
    first: date,
    last: date,
    assets: list | None = None,
    resource: HubSpotResource | None = None,
) -> dg.ExecuteInProcessResult:
    """The HubSpot assets through the real client against the sandbox."""
    resources = {"hubspot": resource or hubspot_resource(sandbox)}
    return materialize_range(assets or HUBSPOT_ASSETS, resources, data_dir, first, last)


def materialize_salesforce(
    sandbox: Sandbox,
    data_dir: Path,
    first: date,
    last: date,
    assets: list | None = None,
    resource: SalesforceResource | None = None,
) -> dg.ExecuteInProcessResult:
    """The Salesforce assets through simple-salesforce against the sandbox; tokens kept beside the data."""
    resources = {"salesforce": resource or salesforce_resource(sandbox, data_dir / ".tokens")}
    return materialize_range(assets or SALESFORCE_ASSETS, resources, data_dir, first, last)


def ga4_resource(sandbox: Sandbox, **overrides) -> GA4Resource:
    """The production resource, aimed at the sandbox (anonymous: it is on this machine), test-sized waits."""
    config = {
        "property_id": sandbox.ga4.property_id,
        "api_endpoint": sandbox.url,
        "backoff_factor_seconds": 0.05,
        "backoff_max_seconds": 0.5,
        "retry_deadline_seconds": 20.0,
        "quota_poll_seconds": 0.2,
        "max_quota_wait_seconds": 20.0,
        "timeout_seconds": 30.0,
        **overrides,
    }
    return GA4Resource(**config)


def materialize_ga4(
    sandbox: Sandbox,
    data_dir: Path,
    first: date,
    last: date,
    assets: list | None = None,
    resource: GA4Resource | None = None,
) -> dg.ExecuteInProcessResult:
    """The GA4 report assets through google-analytics-data's REST transport against the sandbox."""
    resources = {"ga4": resource or ga4_resource(sandbox)}
    return materialize_range(assets or ga4_report_assets, resources, data_dir, first, last)


def read_layer(data_dir: Path, source: str, layer: str, table: str) -> pl.DataFrame:
    files = sorted((data_dir / source / layer / table).glob("*.parquet"))
    return pl.concat([pl.read_parquet(path) for path in files], how="vertical_relaxed")


def expected_ids(sandbox: Sandbox, table: str, first: date, last: date) -> list[int]:
    """Ground truth: records whose last change (archive time if archived) falls in [first, last]."""
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    truth = sandbox.hubspot.truth(table).with_columns(
        changed=pl.when(pl.col("archived")).then(pl.col("archived_at")).otherwise(pl.col("updated_at"))
    )
    return sorted(truth.filter((pl.col("changed") >= start) & (pl.col("changed") < end))["id"].to_list())


def run_main_job(
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
    first: date,
    last: date,
    env: dict[str, str] | None = None,
    selection: list[dg.AssetKey] | None = None,
) -> tuple[Environment, dg.ExecuteInProcessResult]:
    """`daily_revenue_job` over [first, last] in this process, with the resources `get_environment()`
    builds from `sandbox.env()` and `env`, as `dagster job execute` would read them; only the assets
    of `selection` if given (their inputs are read from what earlier runs stored).

    The defs modules bound the resources of the environment first imported in this process, so the
    run is given these: `Environment.resources()` names them by their keys.
    """
    for name, value in {**sandbox.env(), **(env or {})}.items():
        monkeypatch.setenv(name, value)
    get_environment.cache_clear()
    try:
        environment = get_environment()
        options = {"instance": instance, "tags": day_range(first, last), "raise_on_error": False}
        if selection:
            result = dg.materialize(defs().assets, selection=selection, resources=environment.resources(), **options)
        else:
            job = defs().resolve_job_def("daily_revenue_job")
            result = job.execute_in_process(resources=environment.resources(), **options)
    finally:
        get_environment.cache_clear()  # the next test's environment is its own
    return environment, result
