"""The receiver's settings: the one place that reads its process environment.

Secrets have no default. `read_settings()` collects every problem before it fails, so one attempt
names every variable to set or fix; it never shows a secret's value.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa

from revenue_pipelines.receiver.database import database_url
from revenue_pipelines.receiver.salesforce_ids import salesforce_id_18

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780
DEFAULT_DAGSTER_WEBSERVER_URL = "http://127.0.0.1:3000"  # `make dev`'s UI
RESERVED_SOURCES = ("hubspot", "salesforce")
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
STANDARD_WEBHOOKS_PREFIX = "whsec_"


class SettingsError(ValueError):
    """Variables missing or invalid; the message names them all (never their values)."""

    def __init__(self, missing: list[str], invalid: list[str]) -> None:
        self.missing = missing
        self.invalid = invalid
        parts = []
        if missing:
            parts.append(f"these variables are not set: {', '.join(missing)}")
        if invalid:
            parts.append(f"these are invalid: {'; '.join(invalid)}")
        super().__init__("the receiver cannot start: " + "; ".join(parts) + ". See README.md, 'The webhook receiver'.")


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    public_url: str
    """The base URL senders are given (scheme, host, port, prefix path), no trailing slash: HubSpot
    signs it, not the address this process listens on, since a proxy in front changes both."""
    database_url: sa.URL
    """Where the queue is (`database.database_url`): PostgreSQL from `DAGSTER_PG_*`, else a SQLite file.
    Its str() shows the password: log `render_as_string(hide_password=True)`."""
    public_url_given: bool
    """False when `public_url` is this process's own address (no RECEIVER_PUBLIC_URL)."""
    hubspot_client_secret: str = field(repr=False)
    salesforce_organization_id: str
    """In its 18-character form."""
    webhook_secrets: Mapping[str, str] = field(repr=False)
    """Standard Webhooks secrets (`whsec_...`) by source name."""
    dagster_webserver_url: str = DEFAULT_DAGSTER_WEBSERVER_URL
    """Where the launch API reaches Dagster's GraphQL (and the UI its answers link to), no trailing slash."""
    max_body_bytes: int = 1024 * 1024
    max_timestamp_age_seconds: int = 300


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    missing: list[str] = []
    invalid: list[str] = []

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    host = get("RECEIVER_HOST") or DEFAULT_HOST
    port = DEFAULT_PORT
    if get("RECEIVER_PORT"):
        try:
            port = int(get("RECEIVER_PORT"))
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            invalid.append("RECEIVER_PORT must be a port number (0 picks a free one)")

    public_url = get("RECEIVER_PUBLIC_URL").rstrip("/")
    if public_url:
        if not _http_url(public_url):
            invalid.append("RECEIVER_PUBLIC_URL must be an http(s) URL without query, e.g. https://hooks.example.com")
    else:
        public_url = f"http://{host}:{port}"

    try:
        url = database_url(env)
        if url is None:
            missing.append("RECEIVER_QUEUE_PATH (or DAGSTER_HOME, or DAGSTER_PG_HOST for PostgreSQL)")
    except ValueError as error:
        url = None
        invalid.append(str(error))

    hubspot_secret = get("HUBSPOT_APP_CLIENT_SECRET")
    if not hubspot_secret:
        missing.append("HUBSPOT_APP_CLIENT_SECRET")

    organization_id = get("SALESFORCE_ORGANIZATION_ID")
    if not organization_id:
        missing.append("SALESFORCE_ORGANIZATION_ID")
    elif (normalised := salesforce_id_18(organization_id)) is None or not normalised.startswith("00D"):
        invalid.append("SALESFORCE_ORGANIZATION_ID must be an organization id (00D..., 15 or 18 characters)")
        organization_id = ""
    else:
        organization_id = normalised

    webhook_secrets = _webhook_secrets(get("RECEIVER_WEBHOOK_SECRETS"), invalid)

    dagster_webserver_url = (get("DAGSTER_WEBSERVER_URL") or DEFAULT_DAGSTER_WEBSERVER_URL).rstrip("/")
    if not _http_url(dagster_webserver_url):
        invalid.append("DAGSTER_WEBSERVER_URL must be an http(s) URL without query, e.g. http://127.0.0.1:3000")

    if missing or invalid:
        raise SettingsError(missing, invalid)
    assert url is not None
    return Settings(
        host=host,
        port=port,
        public_url=public_url,
        database_url=url,
        public_url_given=bool(get("RECEIVER_PUBLIC_URL")),
        hubspot_client_secret=hubspot_secret,
        salesforce_organization_id=organization_id,
        webhook_secrets=webhook_secrets,
        dagster_webserver_url=dagster_webserver_url,
    )


def _http_url(value: str) -> bool:
    """An http(s) URL with a host, a valid port if any, and no query or fragment."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


def _webhook_secrets(value: str, invalid: list[str]) -> dict[str, str]:
    """`billing=whsec_...,erp=whsec_...`; problems are named by source and position, never by value."""
    secrets: dict[str, str] = {}
    for position, entry in enumerate(filter(None, (item.strip() for item in value.split(","))), start=1):
        name, equals, secret = entry.partition("=")
        name, secret = name.strip(), secret.strip()
        where = f"RECEIVER_WEBHOOK_SECRETS entry {position}"
        if not equals or not SOURCE_NAME.match(name):
            invalid.append(f"{where} must be source=whsec_... with a lowercase source name")
        elif name in RESERVED_SOURCES:
            invalid.append(f"{where}: {name} has an endpoint of its own and takes no Standard Webhooks secret")
        elif name in secrets:
            invalid.append(f"{where}: source {name} is given twice")
        elif not _valid_standard_secret(secret):
            invalid.append(f"{where}: the secret of {name} is not a whsec_ base64 secret")
        else:
            secrets[name] = secret
    return secrets


def _valid_standard_secret(secret: str) -> bool:
    if not secret.startswith(STANDARD_WEBHOOKS_PREFIX):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix(STANDARD_WEBHOOKS_PREFIX) + "==", validate=False)) >= 16
    except (binascii.Error, ValueError):
        return False
