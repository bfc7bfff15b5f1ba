"""A local stand-in for the SaaS APIs the pipelines read, speaking their real wire protocols.

    with Sandbox(seed=7, companies=300) as sb:
        client = hubspot.HubSpot(access_token=sb.token, host=sb.url)
        sb.hubspot.truth("contacts")          # what a correct extraction must produce
        sb.salesforce.truth("Opportunity")    # Salesforce, over TLS at sb.salesforce_url (CA: sb.ca_bundle)
        sb.truth_mirrored_deals()             # opportunities that are HubSpot deals too
        sb.ga4.truth(["date", "sessionSource"], ["sessions"], "2026-11-01", "2026-11-07")  # GA4, at sb.url
        sb.faults.add("status", status=503)   # the next request fails
        sb.bigquery.client()                  # BigQuery's emulator, given Sandbox(bigquery=True)
        sb.bigquery.truth("billing", "invoices")  # its seeded billing system (and GA4's export)
        WebClient(token=sb.slack.token, base_url=f"{sb.url}/api/")  # Slack's Web API, at sb.url too
        sb.slack.messages(sb.slack.channel_id("revenue"))  # what the channel holds (also posts, uploads)
        sb.requests.count(status=200)         # what the server really saw

The data set is a pure function of the parameters, so a test can compare a pipeline's output
with the ground truth exactly, and script transport and data faults around it. About 60% of the
Salesforce accounts are HubSpot companies (`salesforce.truth_overlap()`), and about 30% of their
live opportunities are HubSpot deals too, as HubSpot's Salesforce integration mirrors them (the
deal's `hs_salesforceopportunityid` holds the opportunity's Id): one business in both CRMs. GA4's
Data API shares HubSpot's listener (its client needs no TLS); its traffic comes from the campaigns
and sources the CRM records name, so the three can be joined. BigQuery (`bigquery.py`) is the
local-bigquery emulator in a child process; it takes seconds to start, so it is off by default. It
starts seeded with two source data sets made from the others: the billing system
(`billing_data.py`: an invoice per won business, for its amount; a mirrored deal is its
opportunity's) and GA4's BigQuery export of the property (`ga4_export.py`: events that add up to
the Data API's reports); and with the revenue team's hand-kept reference data (`reference_data.py`:
an empty account mapping and monthly currency rates), the same in every sandbox. Slack's Web API
(`slack.py`) shares HubSpot's listener under `/api/`: a workspace whose bot (its own `xoxb-` token)
is in the public channel `#revenue`, not in `#general`, and not in the private `#private-revops`.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import tempfile
from datetime import date
from pathlib import Path
from typing import NamedTuple

import polars as pl
import trustme

from revenue_pipelines.sandbox.bigquery import BigQuery
from revenue_pipelines.sandbox.billing_data import BillingSeed, CrmTruth
from revenue_pipelines.sandbox.faults import Fault, FaultPlan
from revenue_pipelines.sandbox.ga4 import GA4
from revenue_pipelines.sandbox.ga4_export import GA4Export
from revenue_pipelines.sandbox.hubspot import PORTAL_ID, HubSpot
from revenue_pipelines.sandbox.mess import apply as apply_mess
from revenue_pipelines.sandbox.object_storage import ObjectStorage
from revenue_pipelines.sandbox.reference_data import ReferenceSeed
from revenue_pipelines.sandbox.salesforce import Salesforce
from revenue_pipelines.sandbox.server import ApiServer, LoggedRequest, RequestLog
from revenue_pipelines.sandbox.slack import Slack
from revenue_pipelines.sandbox.webhook_sink import WebhookSink
from revenue_pipelines.sandbox.webhooks import LiveChanges, Webhooks

__all__ = [
    "GA4",
    "BigQuery",
    "Fault",
    "FaultPlan",
    "HubSpot",
    "LoggedRequest",
    "RequestLog",
    "Salesforce",
    "Sandbox",
    "Slack",
]


EXPORT_BUCKET = "revenue-exports"


class _Listeners(NamedTuple):
    hubspot: ApiServer  # GA4, Slack and BigQuery's token endpoint too
    salesforce: ApiServer
    webhook_sink: WebhookSink
    files: Path
    """A private directory for the CA bundle, the token store and BigQuery's data, removed when the sandbox stops."""


class Sandbox:
    """HubSpot and GA4 on a plain HTTP listener and Salesforce on a TLS one (simple-salesforce
    insists on https), signed by a CA made for this sandbox; data is generated at construction.

    `deals` counts HubSpot's own deals (default 2 per company); the deals mirrored from Salesforce
    come on top (`truth_mirrored_deals()`: about 0.5 per company at the default sizes), and deal ids
    are drawn over both, in creation order.

    `ga4_rows_per_day` sizes GA4's traffic: about that many fact rows a day (default 300); with
    110,000, a three-day report by date, landing page and campaign runs past 250,000 rows.

    `bigquery=True` adds BigQuery (`self.bigquery`, else None), which starts in seconds, seeded with
    the dataset `billing` (accounts, invoices and payments for the CRMs' won business), GA4's
    export `analytics_<property id>` (a table events_YYYYMMDD a day of the window) and `reference`
    (account_mapping, empty, and currency_rates, the same in every sandbox); their ground truth is
    `self.bigquery.truth(dataset, table)`. Billing and the export are made from the data as generated
    here, before any test changes it. Seeding adds about 2 s at the default sizes, and about 25 s for
    5 million GA4 events (`ga4_rows_per_day` about 25,000).

    `webhooks` sends the webhooks HubSpot and Salesforce would send for the sandbox's edits
    (`touch`), signed and shaped as theirs, once `webhooks.send_to(url)` names a receiver; the
    receiver's secrets are in `env()`. `live_changes.start(seconds)` edits a random record now and
    then, as people do during the day.

    `mess` is the share of records given the odd values real portals hold (`mess.py`: broken and
    plus-addressed e-mails, internationalised domains, 15-character Salesforce ids on synced deals,
    closed deals without a close date); `self.mess` lists them. Off (0) by default.

    `self.slack` is a Slack workspace served on HubSpot's listener under `/api/` (`env()` gives
    `SLACK_API_URL`, `SLACK_BOT_TOKEN`, a token made for this sandbox, and `SLACK_CHANNEL`, the id of
    `#revenue`, which the bot is in); it records every post, update and upload. `slack_rate_limit_per_minute`
    limits each method per token (Slack's tier 3 is about 50); off by default.

    `object_storage=True` adds S3 and GCS emulators (`self.object_storage`, in about 2 s), each with the
    bucket `revenue-exports`; `env()` then gives what the S3 and GCS clients read (AWS_ENDPOINT_URL,
    STORAGE_EMULATOR_HOST, keys) and `ROUTES_EXPORT_URL` (`s3://revenue-exports/marts`).

    `self.webhook_sink` receives what routes of kind `webhook` send (`env()` gives `ROUTES_WEBHOOK_URL`
    and, as the secret of every route, `ROUTE_WEBHOOK_SECRETS`); it checks each batch's signature.
    """

    def __init__(
        self,
        seed: int = 7,
        companies: int = 300,
        days: int = 30,
        end_date: date | None = None,
        token: str | None = None,
        rate_limit_per_10s: int | None = 190,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        contacts: int | None = None,
        deals: int | None = None,
        opportunities: int | None = None,
        rate_limit_retry_after: bool = True,
        salesforce_port: int = 0,
        ga4_rows_per_day: int | None = None,
        bigquery: bool = False,
        object_storage: bool = False,
        mess: float = 0.0,
        slack_rate_limit_per_minute: int | None = None,
    ):
        self.token = token or secrets.token_urlsafe(24)
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.hubspot = HubSpot(
            seed=seed,
            companies=companies,
            contacts=contacts,
            deals=deals,
            days=days,
            end_date=end_date,
            token=self.token,
            rate_limit_per_10s=rate_limit_per_10s,
            rate_limit_retry_after=rate_limit_retry_after,
        )
        self.salesforce = Salesforce(
            seed=seed,
            companies=self.hubspot.truth("companies").select("id", "name", "domain"),
            opportunities=opportunities,
            days=days,
            end_date=end_date,
        )
        self.hubspot.mirror_salesforce(self.salesforce.truth("Opportunity"), self.salesforce.truth_overlap())
        self.mess = apply_mess(self.hubspot, self.salesforce, seed, mess)
        self.webhooks = Webhooks(portal_id=PORTAL_ID)
        self.live_changes = LiveChanges(self.hubspot, self.salesforce, seed)
        self.hubspot.on_change = self.webhooks.hubspot_changed
        self.salesforce.on_change = self.webhooks.salesforce_changed
        self.ga4 = GA4(seed=seed, days=days, end_date=end_date, rows_per_day=ga4_rows_per_day)
        self.slack = Slack(seed=seed, rate_limit_per_minute=slack_rate_limit_per_minute)
        self.bigquery = BigQuery(sources=self._bigquery_sources(seed)) if bigquery else None
        self.object_storage = ObjectStorage(buckets=(EXPORT_BUCKET,)) if object_storage else None
        self._ca = trustme.CA()
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._tls)
        self._host = host
        self._ports = (port, salesforce_port)
        self._listeners: _Listeners | None = None

    def truth_mirrored_deals(self) -> pl.DataFrame:
        """The opportunities that are HubSpot deals too, made by HubSpot's Salesforce integration:
        `hubspot_deal_id`, `opportunity_id` (the deal's hs_salesforceopportunityid), `account_id` and
        `hubspot_company_id` (the overlapping company the deal is associated with), archived deals too."""
        return self.hubspot.truth_mirrored_deals()

    def _bigquery_sources(self, seed: int) -> list[BillingSeed | GA4Export | ReferenceSeed]:
        """BigQuery's seed data sets, from the CRM and GA4 data as generated (generated themselves
        while the emulator starts), and the reference data, which depends on none of it."""
        crm = CrmTruth(
            hubspot_deals=self.hubspot.truth("deals"),
            hubspot_companies=self.hubspot.truth("companies"),
            deal_companies=self.hubspot.truth_associations("deals", "companies"),
            opportunities=self.salesforce.truth("Opportunity"),
            accounts=self.salesforce.truth("Account"),
            overlap=self.salesforce.truth_overlap(),
            window=self.hubspot.window,
        )
        billing = BillingSeed(seed, crm)
        return [billing, GA4Export(self.ga4.facts, seed=seed, property_id=self.ga4.property_id), ReferenceSeed()]

    @property
    def url(self) -> str:
        """HubSpot's base URL."""
        return self._running().hubspot.url

    @property
    def salesforce_url(self) -> str:
        """Salesforce's instance URL (https)."""
        return self._running().salesforce.url

    @property
    def ca_bundle(self) -> str:
        """The PEM file of the CA that signed the Salesforce listener's certificate, for clients to trust."""
        return str(self._running().files / "ca.pem")

    def env(self) -> dict[str, str]:
        """The environment a pipeline needs to talk to this sandbox instead of the real APIs."""
        return {
            "HUBSPOT_HOST": self.url,
            "HUBSPOT_ACCESS_TOKEN": self.token,
            "SALESFORCE_TOKEN_URL": f"{self.salesforce_url}/services/oauth2/token",
            "SALESFORCE_CLIENT_ID": self.salesforce.client_id,
            "SALESFORCE_CLIENT_SECRET": self.salesforce.client_secret,
            "SALESFORCE_REFRESH_TOKEN": self.salesforce.refresh_token,
            "SALESFORCE_CA_BUNDLE": self.ca_bundle,
            "GA4_API_ENDPOINT": self.url,
            "GA4_PROPERTY_ID": self.ga4.property_id,
            "SLACK_API_URL": f"{self.url}/api/",
            "SLACK_BOT_TOKEN": self.slack.token,
            "SLACK_CHANNEL": self.slack.channel_id("revenue"),
            # Tokens granted by this sandbox's org mean nothing to the next one: they go with it.
            "REVENUE_PIPELINES_TOKEN_DIR": str(self._running().files / "tokens"),
            **self.webhooks.env(),  # what a receiver needs to accept the CRMs' webhooks
            "ROUTES_WEBHOOK_URL": self.webhook_sink.url,
            "ROUTE_WEBHOOK_SECRETS": f"*={self.webhook_sink.secret}",  # `*`: every route's secret
            **(self.bigquery.env() if self.bigquery else {}),
            **(
                {**self.object_storage.env(), "ROUTES_EXPORT_URL": f"s3://{EXPORT_BUCKET}/marts"}
                if self.object_storage
                else {}
            ),
        }

    def start(self) -> Sandbox:
        if self._listeners is None:
            services = [self.hubspot, self.ga4, self.slack, *([self.bigquery.oauth] if self.bigquery else [])]
            hubspot = ApiServer(self._host, self._ports[0], services, self.faults, self.requests)
            try:
                salesforce = ApiServer(
                    self._host, self._ports[1], [self.salesforce], self.faults, self.requests, ssl_context=self._tls
                )
            except OSError:
                hubspot.server_close()
                raise
            sink = WebhookSink(host=self._host)
            files = Path(tempfile.mkdtemp(prefix="revenue-pipelines-sandbox-"))
            self._ca.cert_pem.write_to_path(str(files / "ca.pem"))
            self._listeners = _Listeners(hubspot, salesforce, sink, files)
            hubspot.start()
            salesforce.start()
            sink.__enter__()
            try:
                if self.bigquery:
                    self.bigquery.start(files / "bigquery", token_uri=f"{hubspot.url}/token")
                if self.object_storage:
                    self.object_storage.start(files / "object-storage")
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        self.live_changes.stop()
        self.webhooks.stop()
        if self._listeners is not None:
            if self.bigquery:
                self.bigquery.stop()
            if self.object_storage:
                self.object_storage.stop()
            self._listeners.hubspot.stop()
            self._listeners.salesforce.stop()
            self._listeners.webhook_sink.__exit__(None, None, None)
            shutil.rmtree(self._listeners.files, ignore_errors=True)
            self._listeners = None

    @property
    def webhook_sink(self) -> WebhookSink:
        return self._running().webhook_sink

    def _running(self) -> _Listeners:
        if self._listeners is None:
            raise RuntimeError("the sandbox is not running; call start() or use it as a context manager")
        return self._listeners

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
