"""get_environment(): one variable picks the resource set; PROD names every missing setting at once."""

import dagster as dg
import pytest

from revenue_pipelines.environment import ENVIRONMENT_VARIABLE, SLACK_SWITCH, get_environment
from revenue_pipelines.lib.bigquery import BigQueryWindowIOManager
from revenue_pipelines.lib.io_managers import PartitionedParquetIOManager
from revenue_pipelines.receiver.database import sqlite_url

SLACK_REQUIRED = ["SLACK_BOT_TOKEN", "SLACK_CHANNEL", "DAGSTER_WEBSERVER_URL"]
PROD_REQUIRED = [
    "REVENUE_PIPELINES_TOKEN_DIR",
    "HUBSPOT_ACCESS_TOKEN",
    "SALESFORCE_CLIENT_ID",
    "SALESFORCE_CLIENT_SECRET",
    "SALESFORCE_REFRESH_TOKEN",
    "GA4_PROPERTY_ID",
    "BIGQUERY_PROJECT",
    "BIGQUERY_BILLING_DATASET",
    "BIGQUERY_GA4_EXPORT_DATASET",
    "BIGQUERY_REFERENCE_DATASET",
    *SLACK_REQUIRED,
]
OPTIONAL = [
    "HUBSPOT_HOST",
    "SALESFORCE_TOKEN_URL",
    "SALESFORCE_CA_BUNDLE",
    "GA4_API_ENDPOINT",
    "GA4_SERVICE_ACCOUNT_JSON",
    "BIGQUERY_LOCATION",
    "BIGQUERY_DATASET_PREFIX",
    "BIGQUERY_EMULATOR_HOST",
    "BIGQUERY_STORAGE_EMULATOR_HOST",
    "BIGQUERY_SOURCE_PROJECT",
    "BIGQUERY_SOURCE_BYTE_BUDGET",
    "REVENUE_PIPELINES_DATA_DIR",
    "SLACK_API_URL",
    SLACK_SWITCH,
    "RECEIVER_QUEUE_PATH",
    "DAGSTER_HOME",
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
    "CRM_CHANGE_SENSOR_INTERVAL_SECONDS",
    "RECEIVER_RETENTION_DAYS",
]


@pytest.fixture
def environment(monkeypatch):
    """A process environment with none of the project's settings; get_environment() read afresh."""
    for name in [ENVIRONMENT_VARIABLE, *PROD_REQUIRED, *OPTIONAL]:
        monkeypatch.delenv(name, raising=False)
    get_environment.cache_clear()
    yield monkeypatch
    get_environment.cache_clear()


def test_local_is_the_default_and_needs_nothing_set(environment):
    local = get_environment()
    assert local.name == "local"
    assert local.hubspot.host.startswith("http://127.0.0.1")
    assert isinstance(local.io_manager, PartitionedParquetIOManager)
    assert local.bigquery_source.warehouse.project == "revenue-sandbox"


def test_prod_names_every_missing_setting_at_once(environment):
    environment.setenv(ENVIRONMENT_VARIABLE, "prod")
    environment.setenv("SALESFORCE_CLIENT_ID", "set")
    with pytest.raises(ValueError) as raised:
        get_environment()
    message = str(raised.value)
    for name in PROD_REQUIRED:
        if name != "SALESFORCE_CLIENT_ID":
            assert name in message
    assert "SALESFORCE_CLIENT_ID" not in message


def test_prod_talks_to_the_real_services_and_lands_in_bigquery(environment):
    environment.setenv(ENVIRONMENT_VARIABLE, "PROD")
    for name in PROD_REQUIRED:
        environment.setenv(name, "value-of-" + name.lower())
    environment.setenv("BIGQUERY_PROJECT", "revenue-prod")
    prod = get_environment()

    assert prod.hubspot.host == "https://api.hubapi.com"
    assert prod.salesforce.token_url == "https://login.salesforce.com/services/oauth2/token"
    assert prod.ga4.api_endpoint is None  # Google's own
    assert isinstance(prod.io_manager, BigQueryWindowIOManager)
    warehouse = prod.io_manager.warehouse
    assert (warehouse.project, warehouse.location) == ("revenue-prod", "US")
    assert (warehouse.api_endpoint, warehouse.storage_read_endpoint) == (None, None)  # Google's own
    assert prod.bigquery_source.warehouse == warehouse  # sources' jobs carry the same location, labels, cap
    # Credentials stay references to the environment, resolved when a run starts.
    assert isinstance(prod.hubspot.access_token, dg.EnvVar)
    assert "value-of-hubspot_access_token" not in repr(prod.hubspot)


def test_an_unknown_environment_is_refused(environment):
    environment.setenv(ENVIRONMENT_VARIABLE, "staging")
    with pytest.raises(ValueError, match="'staging' is not a known environment; known: local, prod"):
        get_environment()


def test_prod_posts_to_real_slack_unless_slack_is_switched_off(environment):
    environment.setenv(ENVIRONMENT_VARIABLE, "prod")
    for name in PROD_REQUIRED:
        environment.setenv(name, "value-of-" + name.lower())
    prod = get_environment()
    assert prod.slack.api_url == "https://slack.com/api/" and prod.slack.channel == "value-of-slack_channel"
    assert isinstance(prod.slack.bot_token, dg.EnvVar)  # read when a run starts, never shown

    get_environment.cache_clear()
    environment.setenv(SLACK_SWITCH, "off")
    for name in SLACK_REQUIRED:
        environment.delenv(name)
    off = get_environment()
    assert off.slack is None and off.slack_digest_io_manager is None
    assert "slack" not in off.resources() and "io_manager" in off.resources()

    get_environment.cache_clear()
    environment.setenv(SLACK_SWITCH, "maybe")
    with pytest.raises(ValueError, match="REVENUE_PIPELINES_SLACK='maybe': say on or off"):
        get_environment()


def test_the_crm_change_sensor_finds_the_receivers_queue_by_the_receivers_rule(environment, tmp_path):
    local = get_environment()
    assert local.receiver_database_url is None  # then the sensor looks under the instance's folder
    assert local.crm_change_sensor_interval_seconds == 30
    assert local.receiver_retention_days == 7

    get_environment.cache_clear()
    environment.setenv("DAGSTER_HOME", str(tmp_path))
    environment.setenv("CRM_CHANGE_SENSOR_INTERVAL_SECONDS", "5")
    environment.setenv("RECEIVER_RETENTION_DAYS", "30")
    home = get_environment()
    assert home.receiver_database_url == sqlite_url(tmp_path / "receiver" / "queue.db")
    assert home.crm_change_sensor_interval_seconds == 5
    assert home.receiver_retention_days == 30

    get_environment.cache_clear()
    environment.setenv("RECEIVER_QUEUE_PATH", str(tmp_path / "elsewhere.db"))
    assert get_environment().receiver_database_url == sqlite_url(tmp_path / "elsewhere.db")

    # PROD's instance is in PostgreSQL: so is the queue.
    get_environment.cache_clear()
    environment.setenv("DAGSTER_PG_HOST", "db.internal")
    environment.setenv("DAGSTER_PG_PASSWORD", "pg-password")
    url = get_environment().receiver_database_url
    assert (url.get_backend_name(), url.host, url.password) == ("postgresql", "db.internal", "pg-password")
    assert "pg-password" not in repr(get_environment())

    for variable, value, message in (
        ("CRM_CHANGE_SENSOR_INTERVAL_SECONDS", "0", "INTERVAL_SECONDS='0': say a whole number of seconds"),
        ("RECEIVER_RETENTION_DAYS", "a week", "RECEIVER_RETENTION_DAYS='a week': say a whole number of days"),
        ("DAGSTER_PG_PORT", "fivefour", "DAGSTER_PG_PORT must be a port number"),
    ):
        get_environment.cache_clear()
        with environment.context() as bad:
            bad.setenv(variable, value)
            with pytest.raises(ValueError, match=message):
                get_environment()
