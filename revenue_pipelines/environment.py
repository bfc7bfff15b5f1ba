"""The one place that reads the process environment and picks resources for it.

`REVENUE_PIPELINES_ENV` names the environment; each is a resource set, built by the same code from
different settings:

- LOCAL (the default) runs everything on this machine: HubSpot, Salesforce and GA4 are the
  sandbox unless `HUBSPOT_HOST`, `SALESFORCE_TOKEN_URL` and `GA4_API_ENDPOINT` point elsewhere,
  assets land as Parquet files under `REVENUE_PIPELINES_DATA_DIR` (default `./data`), and rotated
  Salesforce refresh tokens are kept under `REVENUE_PIPELINES_TOKEN_DIR` (default `./.tokens`).
  The BigQuery sources read the sandbox's emulator, which the sandbox's environment names
  (`BIGQUERY_EMULATOR_HOST`, `BIGQUERY_STORAGE_EMULATOR_HOST`, `GOOGLE_APPLICATION_CREDENTIALS`).
  Reference tables (the account mapping, currency rates) are the reviewed CSV files in
  `defs/revenue/reference/`.
- PROD talks to the real services, reads the reference tables from `BIGQUERY_REFERENCE_DATASET`
  and lands assets in BigQuery. A setting it cannot do without
  fails definition load, with every missing variable named at once.

Slack (the daily digest and the alerts) is on in both, posting to `SLACK_CHANNEL` through
`SLACK_API_URL` (locally the sandbox's) as the bot of `SLACK_BOT_TOKEN`; `REVENUE_PIPELINES_SLACK=off`
leaves it out, and PROD then needs neither.

`crm_change_sensor` reads the receiver's queue where the receiver writes it (the receiver's own rule,
`receiver.database.database_url`): the instance's PostgreSQL when `DAGSTER_PG_HOST` is set, else the
SQLite file `RECEIVER_QUEUE_PATH`, else `$DAGSTER_HOME/receiver/queue.db`; every
`CRM_CHANGE_SENSOR_INTERVAL_SECONDS` (default 30). It deletes events launched more than
`RECEIVER_RETENTION_DAYS` ago (default 7).

Credentials are never defaulted: they are `EnvVar`s, resolved when a run starts, so the UI never
shows their values (PROD checks only that they are set).
"""

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from revenue_pipelines.defs.bigquery.resources import BigQuerySource
from revenue_pipelines.defs.ga4.resources import GA4Resource
from revenue_pipelines.defs.hubspot.resources import HubSpotResource
from revenue_pipelines.defs.revenue.resources import BigQueryReferenceTables, CsvReferenceTables, ReferenceTables
from revenue_pipelines.defs.salesforce.resources import SalesforceResource
from revenue_pipelines.lib.bigquery import BigQueryWarehouse, BigQueryWindowIOManager
from revenue_pipelines.lib.destinations.files import FilesWriter
from revenue_pipelines.lib.destinations.hubspot import HubSpotWriteBack
from revenue_pipelines.lib.destinations.postgres import PostgresDestinationWriter
from revenue_pipelines.lib.destinations.slack import SlackRouteWriter
from revenue_pipelines.lib.destinations.webhook import SECRETS_VARIABLE, WebhookResource
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.lib.slack import SLACK_API, SlackDigestIOManager, SlackResource
from revenue_pipelines.lib.token_store import FileTokenStore
from revenue_pipelines.receiver.database import database_url

ENVIRONMENT_VARIABLE = "REVENUE_PIPELINES_ENV"
ENVIRONMENTS = ("local", "prod")
# Where `python -m revenue_pipelines.sandbox serve` listens.
SANDBOX_URL = "http://127.0.0.1:8765"
SANDBOX_SALESFORCE_URL = "https://127.0.0.1:8766"
# The sandbox's BigQuery project and source datasets (its emulator's endpoints come from its environment).
SANDBOX_BIGQUERY_PROJECT = "revenue-sandbox"
SANDBOX_BILLING_DATASET = "billing"
SANDBOX_GA4_EXPORT_DATASET = "analytics_123456789"
DEFAULT_SOURCE_BYTE_BUDGET = str(20 * 1024**3)
SLACK_SWITCH = "REVENUE_PIPELINES_SLACK"
LOCAL_WEBSERVER_URL = "http://127.0.0.1:3000"  # `make dev`
DEFAULT_CRM_CHANGE_SENSOR_INTERVAL_SECONDS = 30
DEFAULT_RECEIVER_RETENTION_DAYS = 7
"""HubSpot and Salesforce redeliver for at most 24 hours: no duplicate comes after a week."""
DEFAULT_ROUTES_PATH = Path(__file__).parent / "routes.yaml"
ROUTE_SETTINGS = {
    "slack": "Slack is on: SLACK_BOT_TOKEN and SLACK_CHANNEL set, REVENUE_PIPELINES_SLACK not off",
    "postgres": "ROUTES_PG_HOST set, with ROUTES_PG_DB, ROUTES_PG_USERNAME, ROUTES_PG_PASSWORD (ROUTES_PG_PORT)",
    "files": "nothing: local folders always; S3 and GCS with their clients' own credentials",
    "hubspot": "HUBSPOT_ACCESS_TOKEN (always available; the token needs crm.objects.<object>.write)",
    "webhook": f"{SECRETS_VARIABLE} set: route=whsec_... for each webhook route (and, in PROD, ROUTES_DEAD_LETTER_DIR)",
}
"""What makes each destination kind of the routes available, for the warning when it is not."""
REQUIRED = "required"
"""A PROD default that is no default: the variable must be set."""


@dataclass(frozen=True)
class Environment:
    """The resources of one environment; code paths never differ between environments."""

    name: str
    hubspot: HubSpotResource
    salesforce: SalesforceResource
    ga4: GA4Resource
    bigquery_source: BigQuerySource
    reference: ReferenceTables
    io_manager: dg.ConfigurableIOManager
    slack: SlackResource | None
    """None when Slack is switched off (`REVENUE_PIPELINES_SLACK=off`): no digest, no alerts."""
    slack_digest_io_manager: SlackDigestIOManager | None
    webserver_url: str
    """The Dagster UI's address, for links in alerts."""
    receiver_database_url: sa.URL | None = None
    """The webhook receiver's queue; None: a SQLite file under the Dagster instance's folder, if it has one."""
    crm_change_sensor_interval_seconds: int = DEFAULT_CRM_CHANGE_SENSOR_INTERVAL_SECONDS
    routes_path: Path = DEFAULT_ROUTES_PATH
    """The routes file, or a folder of them (`REVENUE_PIPELINES_ROUTES`)."""
    config_variables: Mapping[str, str] = field(default_factory=dict, repr=False)
    """What `${NAME}` in a configuration file (routes) stands for: the process environment."""
    route_slack: SlackRouteWriter | None = None
    route_postgres: PostgresDestinationWriter | None = None
    route_webhook: WebhookResource | None = None
    route_hubspot: HubSpotWriteBack | None = None
    route_files: FilesWriter | None = None
    """The writer of each destination kind (`route_<kind>`), None where the kind is not available."""

    def route_writer(self, kind: str) -> dg.ConfigurableResource | None:
        return getattr(self, f"route_{kind}", None)

    receiver_retention_days: int = DEFAULT_RECEIVER_RETENTION_DAYS
    """Launched events are kept this long (a redelivery within it is still a duplicate), then purged."""

    def resources(self) -> dict[str, Any]:
        """Every resource of this environment by its key, as the definitions bind them."""
        return {
            item.name: value
            for item in fields(self)
            if isinstance(value := getattr(self, item.name), dg.ConfigurableResource | dg.ConfigurableIOManager)
        }


@dataclass
class _Settings:
    """The process environment as one environment reads it, noting what PROD lacks."""

    name: str
    missing: list[str] = field(default_factory=list)

    @property
    def prod(self) -> bool:
        return self.name == "prod"

    def value(self, variable: str, local: str | None, prod: str | None) -> str | None:
        """The variable's value, else this environment's default (`REQUIRED`: none, it must be set)."""
        if os.environ.get(variable):
            return os.environ[variable]
        default = prod if self.prod else local
        if default == REQUIRED:
            self.missing.append(variable)
            return None
        return default

    def secret(self, variable: str, optional: bool = False) -> dg.EnvVar | None:
        """A credential, read when a run starts. PROD requires it now unless `optional`."""
        if os.environ.get(variable):
            return dg.EnvVar(variable)
        if optional:
            return None
        if self.prod:
            self.missing.append(variable)
        return dg.EnvVar(variable)


@cache
def get_environment() -> Environment:
    name = os.environ.get(ENVIRONMENT_VARIABLE, "local").lower()
    if name not in ENVIRONMENTS:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={name!r} is not a known environment; known: {', '.join(ENVIRONMENTS)}."
        )
    settings = _Settings(name)
    environment = _resources(settings)
    if settings.missing:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={name} needs these variables, which are not set: {', '.join(settings.missing)}. "
            "See deploy/README.md."
        )
    return environment


def _resources(settings: _Settings) -> Environment:
    token_dir = settings.value("REVENUE_PIPELINES_TOKEN_DIR", local=".tokens", prod=REQUIRED) or ""
    warehouse = BigQueryWarehouse(
        project=settings.value("BIGQUERY_PROJECT", local=SANDBOX_BIGQUERY_PROJECT, prod=REQUIRED) or "",
        location=settings.value("BIGQUERY_LOCATION", local="US", prod="US") or "US",
        # Set only against the sandbox's emulator (its REST API, and its Storage Read API, plaintext on loopback).
        api_endpoint=settings.value("BIGQUERY_EMULATOR_HOST", local=None, prod=None),
        storage_read_endpoint=settings.value("BIGQUERY_STORAGE_EMULATOR_HOST", local=None, prod=None),
    )
    data_dir = settings.value("REVENUE_PIPELINES_DATA_DIR", local="data", prod=None)
    slack = _slack(settings)
    hubspot = HubSpotResource(
        access_token=settings.secret("HUBSPOT_ACCESS_TOKEN"),
        host=settings.value("HUBSPOT_HOST", local=SANDBOX_URL, prod="https://api.hubapi.com"),
    )
    return Environment(
        name=settings.name,
        hubspot=hubspot,
        salesforce=SalesforceResource(
            token_url=settings.value(
                "SALESFORCE_TOKEN_URL",
                local=f"{SANDBOX_SALESFORCE_URL}/services/oauth2/token",
                prod="https://login.salesforce.com/services/oauth2/token",
            ),
            client_id=settings.secret("SALESFORCE_CLIENT_ID"),
            client_secret=settings.secret("SALESFORCE_CLIENT_SECRET"),
            refresh_token=settings.secret("SALESFORCE_REFRESH_TOKEN"),
            token_store=FileTokenStore(directory=str(Path(token_dir).resolve())),
            ca_bundle=settings.value("SALESFORCE_CA_BUNDLE", local=None, prod=None),
        ),
        ga4=GA4Resource(
            property_id=settings.secret("GA4_PROPERTY_ID"),
            api_endpoint=settings.value("GA4_API_ENDPOINT", local=SANDBOX_URL, prod=None),
            service_account_json=settings.secret("GA4_SERVICE_ACCOUNT_JSON", optional=True),
        ),
        bigquery_source=BigQuerySource(
            warehouse=warehouse,
            source_project=settings.value("BIGQUERY_SOURCE_PROJECT", local=None, prod=None),
            billing_dataset=settings.value("BIGQUERY_BILLING_DATASET", local=SANDBOX_BILLING_DATASET, prod=REQUIRED)
            or "",
            ga4_export_dataset=settings.value(
                "BIGQUERY_GA4_EXPORT_DATASET", local=SANDBOX_GA4_EXPORT_DATASET, prod=REQUIRED
            )
            or "",
            byte_budget=int(
                settings.value(
                    "BIGQUERY_SOURCE_BYTE_BUDGET", local=DEFAULT_SOURCE_BYTE_BUDGET, prod=DEFAULT_SOURCE_BYTE_BUDGET
                )
            ),
        ),
        reference=(
            BigQueryReferenceTables(
                warehouse=warehouse,
                dataset=settings.value("BIGQUERY_REFERENCE_DATASET", local=None, prod=REQUIRED) or "",
            )
            if settings.prod
            else CsvReferenceTables()
        ),
        io_manager=(
            BigQueryWindowIOManager(
                warehouse=warehouse,
                dataset_prefix=settings.value("BIGQUERY_DATASET_PREFIX", local=None, prod="") or "",
            )
            if settings.prod
            else PartitionedParquetIOManager(base_dir=str(Path(data_dir or "data").resolve()))
        ),
        slack=slack,
        slack_digest_io_manager=(
            SlackDigestIOManager(
                slack=slack, chart_dir=str(Path(data_dir).resolve()) if data_dir else tempfile.gettempdir()
            )
            if slack
            else None
        ),
        webserver_url=settings.value(
            "DAGSTER_WEBSERVER_URL", local=LOCAL_WEBSERVER_URL, prod=REQUIRED if slack else LOCAL_WEBSERVER_URL
        )
        or LOCAL_WEBSERVER_URL,
        receiver_database_url=database_url(os.environ),
        crm_change_sensor_interval_seconds=_positive_int(
            "CRM_CHANGE_SENSOR_INTERVAL_SECONDS",
            settings.value("CRM_CHANGE_SENSOR_INTERVAL_SECONDS", local=None, prod=None),
            DEFAULT_CRM_CHANGE_SENSOR_INTERVAL_SECONDS,
            "seconds",
        ),
        receiver_retention_days=_positive_int(
            "RECEIVER_RETENTION_DAYS",
            settings.value("RECEIVER_RETENTION_DAYS", local=None, prod=None),
            DEFAULT_RECEIVER_RETENTION_DAYS,
            "days",
        ),
        routes_path=Path(settings.value("REVENUE_PIPELINES_ROUTES", local=None, prod=None) or DEFAULT_ROUTES_PATH),
        config_variables=dict(os.environ),
        route_slack=SlackRouteWriter(slack=slack) if slack else None,
        route_postgres=_route_postgres(settings),
        route_webhook=_route_webhook(settings, data_dir),
        route_hubspot=HubSpotWriteBack(hubspot=hubspot),
        route_files=FilesWriter(),  # endpoints and credentials: the S3 and GCS clients' own variables
    )


def _route_postgres(settings: _Settings) -> PostgresDestinationWriter | None:
    """The PostgreSQL that routes of kind `postgres` write to, when ROUTES_PG_HOST names one; then the
    database, the role and its password must be set too."""
    host = settings.value("ROUTES_PG_HOST", local=None, prod=None)
    if not host:
        return None
    if not os.environ.get("ROUTES_PG_PASSWORD"):
        settings.missing.append("ROUTES_PG_PASSWORD")
    return PostgresDestinationWriter(
        host=host,
        port=_positive_int("ROUTES_PG_PORT", settings.value("ROUTES_PG_PORT", local=None, prod=None), 5432, "port"),
        database=settings.value("ROUTES_PG_DB", local=REQUIRED, prod=REQUIRED) or "",
        username=settings.value("ROUTES_PG_USERNAME", local=REQUIRED, prod=REQUIRED) or "",
        password=dg.EnvVar("ROUTES_PG_PASSWORD"),
        sslmode=settings.value("ROUTES_PG_SSLMODE", local=None, prod=None),
    )


def _route_webhook(settings: _Settings, data_dir: str | None) -> WebhookResource | None:
    """The sender of routes of kind `webhook`, when their signing secrets are set; batches it cannot
    deliver are kept under ROUTES_DEAD_LETTER_DIR (locally, beside the data)."""
    if not os.environ.get(SECRETS_VARIABLE):
        return None
    local = str(Path(data_dir or "data") / "routes" / "dead_letters")
    folder = settings.value("ROUTES_DEAD_LETTER_DIR", local=local, prod=REQUIRED) or local
    return WebhookResource(signing_secrets=dg.EnvVar(SECRETS_VARIABLE), dead_letter_dir=str(Path(folder).resolve()))


def _positive_int(variable: str, value: str | None, default: int, unit: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{variable}={value!r}: say a whole number of {unit}, at least 1.")
    return number


def _slack(settings: _Settings) -> SlackResource | None:
    switch = (settings.value(SLACK_SWITCH, local="on", prod="on") or "on").lower()
    if switch not in ("on", "off"):
        raise ValueError(f"{SLACK_SWITCH}={switch!r}: say on or off.")
    if switch == "off":
        return None
    return SlackResource(
        bot_token=settings.secret("SLACK_BOT_TOKEN"),
        channel=settings.value("SLACK_CHANNEL", local="", prod=REQUIRED) or "",
        api_url=settings.value("SLACK_API_URL", local=f"{SANDBOX_URL}/api/", prod=SLACK_API) or SLACK_API,
    )
