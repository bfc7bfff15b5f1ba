"""Building the revenue marts from a large data set: the marts' Polars plans against a plain scan.
Run by hand: `make bench` (or `uv run python -m bench.transform_scale`; `--events-gb 10` for the large size).

The data set is made first (seeded, vectorized numpy/Polars, a bounded chunk at a time) as the
project's Parquet layers, zstd, row groups of 256 Ki rows, under `--data-dir` (a temp dir
by default; deleted at the end unless `--keep`; a `--data-dir` holding a kept data set of the same
options is reused):

- `bigquery/raw/ga4_events`: GA4 export events (the columns of sql/ga4_events.sql) over the
  benchmark's 30 days, `ingestion_date` = `event_date`, a few files per day, until the files total
  `--events-gb` GB on disk. Events come in sessions of 1 + Poisson(6) events, the first a
  `session_start` (so about 1 in 7); session and first-user medium/campaign are drawn from the GA4
  mediums of channel_mapping.csv (plus a few unmapped ones and none) and their campaigns.
- the CRM core states for ONE day, the last one, `--crm-rows` rows in all across HubSpot deals,
  contacts and companies and Salesforce opportunities, leads, accounts and users; plus
  `revenue/core/account_identity` over those accounts, companies and billing accounts, and
  `bigquery/core/billing_invoices` for the billing accounts, naming won deals.

So the marts are those of the last day, as a daily run builds them: `pipeline`, `accounts` and
`daily_revenue_metrics` from that day's states; `channel_attribution` gets the events of all 30
days (as a 30-day single-run backfill would), its CRM facts only on the last day. The default makes
about 90 M events (some 22 bytes each on disk, 250 in memory) and 5 M CRM rows (1.6 M contacts,
1.2 M leads, 0.8 M deals, 0.6 M opportunities, 0.45 M companies, 0.35 M accounts, 1,000 users), in
about two minutes; `--events-gb 10` some 450 M events.

The assets take their inputs as `pl.LazyFrame`s, which the files IO manager hands over as scans of
the partitions' files; this runs the same frame functions on `pl.scan_parquet` inputs.

Contenders, each part in a process of its own so that its peak RSS (`VmHWM` above the RSS just
before the query, the high-water mark reset there) is its own:

- marts: the project's frame functions on `pl.scan_parquet` inputs, one process per asset step as
  Dagster's executor runs them, each collected with `engine="streaming"`: `pipeline_frame` and
  `accounts_frame` sunk to Parquet (where the next steps scan them), `daily_revenue_metrics_frame`
  and `channel_attribution_frame` (small) collected;
- scan: the floor, a plain streaming scan of the same inputs reading the same columns the marts
  read, with a trivial aggregate per column so that every one of them is decoded: the events in
  one process, the CRM states in another.

A contender's seconds are its parts' sum, its peak their largest; the table shows the parts too.
Targets (issue): peak RSS at most 1.5 GB at 10 GB of input; wall time at most 2x the plain scan.
`--explain` prints each step's streaming plan instead (running `pipeline` and `accounts` once, as the
later steps read them).
"""

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from bench.harness import DAYS, END, FIRST
from revenue_pipelines.defs.revenue.marts import (
    CHANNEL_MAPPING,
    RATES_SCHEMA,
    STAGE_MAPPING,
    accounts_frame,
    pipeline_frame,
)
from revenue_pipelines.defs.revenue.metrics import channel_attribution_frame, daily_revenue_metrics_frame
from revenue_pipelines.defs.revenue.resources import CsvReferenceTables
from revenue_pipelines.lib.partitions import PARTITION_COLUMN

GB = 1e9
ROW_GROUP_ROWS = 256 * 1024
SESSIONS_PER_CHUNK = 140_000  # about 1 M events: a few hundred MB in the generator at most
CRM_CHUNK_ROWS = 1_000_000
RSS_TARGET_MB, RSS_TARGET_AT_GB, WALL_TARGET = 1500, 10, 2.0
MANIFEST = "manifest.json"

# The layers the marts read, and the columns they read of each (the `select`s of the frame functions).
USED_COLUMNS = {
    "hubspot/core/deals": [
        *("id", "dealname", "pipeline", "dealstage", "amount", "deal_currency_code", "createdate", "closedate"),
        *("hubspot_owner_id", "company_ids", "hs_salesforceopportunityid", "hs_analytics_source"),
        *("hs_analytics_source_data_1", "changed_at"),
    ],
    "hubspot/core/contacts": ["id", "hs_analytics_source", "hs_analytics_source_data_1", "createdate"],
    "hubspot/core/companies": [
        *("id", "name", "hubspot_owner_id", "industry", "numberofemployees", "lifecyclestage", "changed_at"),
    ],
    "salesforce/core/opportunities": [
        *("id", "Name", "StageName", "Amount", "CurrencyIsoCode", "CreatedDate", "CloseDate", "OwnerId"),
        *("LeadSource", "AccountId", "changed_at"),
    ],
    "salesforce/core/accounts": ["id", "Name", "OwnerId", "Industry", "NumberOfEmployees", "changed_at"],
    "salesforce/core/users": ["id", "Name"],
    "salesforce/core/leads": ["CreatedDate", "LeadSource"],
    "revenue/core/account_identity": ["system", "record_id", "account_id", "confidence"],
    "bigquery/core/billing_invoices": [
        *("billing_account_id", "billing_account_name", "issued_at", "currency", "status", "subtotal_cents"),
        "changed_at",
    ],
    "bigquery/raw/ga4_events": [
        *("event_name", "session_medium", "session_campaign", "first_user_medium", "first_user_campaign"),
    ],
}
EVENTS = "bigquery/raw/ga4_events"
SCAN_PARTS = {"scan-events": "GA4 events", "scan-crm": "CRM states"}
STEPS = ("pipeline", "accounts", "daily_revenue_metrics", "channel_attribution")

# --- what the generated rows are made of ---------------------------------------------------------
END_S = int(datetime.combine(END, datetime.min.time(), tzinfo=UTC).timestamp())
DAY_S = 86_400
# GA4 medium -> (source, its campaigns, share of sessions); the mapped mediums of channel_mapping.csv,
# two it lacks ("Other") and none ("Unattributed").
MEDIUMS = {
    "(none)": ("(direct)", ["(direct)"], 0.22),
    "organic": ("google", ["(organic)"], 0.30),
    "cpc": ("google", ["brand-search-q4", "generic-search", "competitor-search", "retargeting-search"], 0.14),
    "email": ("newsletter", ["newsletter-weekly", "product-launch", "webinar-invite"], 0.08),
    "social": ("linkedin.com", ["(not set)"], 0.06),
    "paid_social": ("linkedin", ["linkedin-abm", "retargeting-social", "event-promo"], 0.07),
    "referral": ("g2.com", ["(referral)", "g2-reviews", "partner-directory"], 0.08),
    "affiliate": ("partner-network", ["affiliate-q4"], 0.02),
    "display": ("dv360", ["display-awareness"], 0.02),
    None: (None, [None], 0.01),
}
EVENT_NAMES = {
    "page_view": 0.55,
    "user_engagement": 0.18,
    "scroll": 0.14,
    "click": 0.07,
    "view_item": 0.04,
    "form_submit": 0.015,
    "generate_lead": 0.004,
    "purchase": 0.001,
}
PAGES = [
    ("/", "Home"),
    ("/pricing", "Pricing"),
    ("/product", "Product"),
    ("/product/integrations", "Integrations"),
    ("/product/security", "Security"),
    ("/customers", "Customers"),
    ("/about", "About us"),
    ("/contact", "Contact sales"),
    ("/demo", "Book a demo"),
    ("/careers", "Careers"),
    *((f"/blog/post-{number}", f"Blog post {number}") for number in range(1, 1501)),
    *((f"/docs/section-{number}", f"Docs section {number}") for number in range(1, 501)),
]
DEVICES = [
    ("desktop", "Windows"),
    ("desktop", "Macintosh"),
    ("mobile", "iOS"),
    ("mobile", "Android"),
    ("tablet", "iOS"),
]
PLACES = [
    ("United States", "New York"),
    ("United States", "San Francisco"),
    ("United States", "Chicago"),
    ("United Kingdom", "London"),
    ("Germany", "Berlin"),
    ("Germany", "Munich"),
    ("France", "Paris"),
    ("Canada", "Toronto"),
    ("Japan", "Tokyo"),
    ("Netherlands", "Amsterdam"),
    ("India", "Bengaluru"),
    ("Australia", "Sydney"),
]
USERS = 20_000_000  # the pool user_pseudo_id draws from
HUBSPOT_SOURCES = {
    "DIRECT_TRAFFIC": None,
    "ORGANIC_SEARCH": None,
    "PAID_SEARCH": "cpc",
    "EMAIL_MARKETING": "email",
    "SOCIAL_MEDIA": None,
    "PAID_SOCIAL": "paid_social",
    "REFERRALS": "referral",
    "OFFLINE": None,
    "OTHER_CAMPAIGNS": "display",
}
LEAD_SOURCES = ["Web", "Organic Search", "Paid Search", "Email", "Social", "Partner Referral", "Trade Show", None]
CURRENCIES = ["USD", "USD", "USD", "EUR", "EUR", "GBP", "CAD", "JPY"]
INDUSTRIES = ["Technology", "Finance", "Healthcare", "Retail", "Manufacturing", "Education", "Media", None]
LIFECYCLE = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"]
HUBSPOT_OPEN = ["appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin"]
SALESFORCE_OPEN = ["Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Proposal/Price Quote"]
# Shares of --crm-rows; users take what is left (a sales team of about one per 5,000 rows).
CRM_SHARES = {
    "hubspot/core/contacts": 0.32,
    "salesforce/core/leads": 0.24,
    "hubspot/core/deals": 0.16,
    "salesforce/core/opportunities": 0.12,
    "hubspot/core/companies": 0.09,
    "salesforce/core/accounts": 0.07,
}


def _pick(values: list, index: np.ndarray) -> pl.Series:
    """`values[index]` as a Polars Series (strings, with None as null)."""
    return pl.Series(values, dtype=pl.Utf8).gather(index)


def _weighted(rng: np.random.Generator, weights: list[float], n: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _hash_unit(values: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per value: what a user always has (first source, place)."""
    mixed = (values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)) >> np.uint64(11)
    return (mixed % np.uint64(1 << 40)).astype(np.float64) / float(1 << 40)


def _salesforce_id(prefix: str, number: pl.Expr) -> pl.Expr:
    """An 18-character Salesforce id of a record number."""
    return pl.concat_str(pl.lit(prefix), number.cast(pl.Utf8).str.zfill(12), pl.lit("IAA"))


def _utc(seconds: pl.Expr, unit: str = "ms") -> pl.Expr:
    factor = 1000 if unit == "ms" else 1_000_000
    return pl.from_epoch(seconds * factor, time_unit=unit).dt.replace_time_zone("UTC")


# --- GA4 events ----------------------------------------------------------------------------------
MEDIUM_NAMES = list(MEDIUMS)
MEDIUM_CDF = np.cumsum([share for *_, share in MEDIUMS.values()]) / sum(share for *_, share in MEDIUMS.values())
CAMPAIGNS = [campaign for _, campaigns, _ in MEDIUMS.values() for campaign in campaigns]
CAMPAIGN_FIRST = np.cumsum([0] + [len(campaigns) for _, campaigns, _ in MEDIUMS.values()])[:-1]
CAMPAIGN_COUNT = np.array([len(campaigns) for _, campaigns, _ in MEDIUMS.values()])


def _campaign_of(medium: np.ndarray, unit: np.ndarray) -> np.ndarray:
    return CAMPAIGN_FIRST[medium] + (unit * CAMPAIGN_COUNT[medium]).astype(np.int64)


def events_chunk(seed: int, day: date, part: int, sessions: int) -> pl.DataFrame:
    """About `sessions` x 7 GA4 export events of `day`: a session's events share its user and sources."""
    rng = np.random.default_rng([seed, 1, day.toordinal(), part])
    user = rng.integers(0, USERS, sessions)
    counts = 1 + rng.poisson(6.0, sessions)
    started = (day - END).days * DAY_S + END_S + rng.integers(0, DAY_S, sessions)
    medium = np.searchsorted(MEDIUM_CDF, rng.random(sessions))
    first_medium = np.searchsorted(MEDIUM_CDF, _hash_unit(user, 1))
    place = (_hash_unit(user, 2) * len(PLACES)).astype(np.int64)
    device = (_hash_unit(user, 3) * len(DEVICES)).astype(np.int64)
    logged_in = _hash_unit(user, 4) < 0.05
    manual = rng.random(sessions) < 0.3  # collected_traffic_source: only where utm parameters were set
    session_frame = pl.DataFrame(
        {
            "user": user,
            "started": started,
            "session_number": 1 + (_hash_unit(user, 5) * 30).astype(np.int64),
            "engaged": rng.random(sessions) < 0.65,
        }
    ).with_columns(
        user_pseudo_id=pl.concat_str(
            ((pl.col("user") * 2_654_435_761) % 9_000_000_000 + 1_000_000_000).cast(pl.Utf8),
            pl.lit("."),
            (END_S - 400 * DAY_S + (pl.col("user") * 7919) % (400 * DAY_S)).cast(pl.Utf8),
        ),
        user_id=pl.when(pl.Series(logged_in)).then(pl.concat_str(pl.lit("CRM-"), pl.col("user").cast(pl.Utf8))),
        session_source=_pick([source for source, *_ in MEDIUMS.values()], medium),
        session_medium=_pick(MEDIUM_NAMES, medium),
        session_campaign=_pick(CAMPAIGNS, _campaign_of(medium, rng.random(sessions))),
        first_user_source=_pick([source for source, *_ in MEDIUMS.values()], first_medium),
        first_user_medium=_pick(MEDIUM_NAMES, first_medium),
        first_user_campaign=_pick(CAMPAIGNS, _campaign_of(first_medium, _hash_unit(user, 6))),
        device_category=_pick([category for category, _ in DEVICES], device),
        device_operating_system=_pick([system for _, system in DEVICES], device),
        country=_pick([country for country, _ in PLACES], place),
        city=_pick([city for _, city in PLACES], place),
        manual=pl.Series(manual),
    )
    session_frame = session_frame.with_columns(
        session_id=pl.concat_str("user_pseudo_id", pl.lit("."), pl.col("started").cast(pl.Utf8)),
        collected_source=pl.when("manual").then("session_source"),
        collected_medium=pl.when("manual").then("session_medium"),
        collected_campaign=pl.when("manual").then("session_campaign"),
    )

    events = int(counts.sum())
    session = np.repeat(np.arange(sessions), counts)
    position = np.arange(events) - np.repeat(np.cumsum(counts) - counts, counts)
    name = np.where(position == 0, -1, _weighted(rng, list(EVENT_NAMES.values()), events))
    page = (rng.zipf(1.3, events) - 1) % len(PAGES)  # a few pages get most views
    purchase = name == list(EVENT_NAMES).index("purchase")
    per_event = pl.DataFrame(
        {
            "event_timestamp": started[session] * 1_000_000
            + position * 25_000_000
            + rng.integers(0, 25_000_000, events),
            "event_name": _pick(["session_start", *EVENT_NAMES], name + 1),
            "engagement_time_msec": np.where(position == 0, -1, rng.integers(0, 60_000, events)),
            "page": page,
            "first": position == 0,
            "click_id": rng.integers(10**11, 10**12, events),
            "value": np.where(purchase, np.round(rng.gamma(2.0, 150.0, events), 2), np.nan),
            "transaction": rng.integers(10**8, 10**9, events),
        }
    )
    sessions_of_events = session_frame.drop("user", "manual")[session]
    path = _pick([path for path, _ in PAGES], page)
    query = (
        pl.when(pl.col("first") & (pl.col("session_medium") == "cpc"))
        .then(pl.concat_str(pl.lit("?gclid="), pl.col("click_id").cast(pl.Utf8)))
        .when(pl.col("first") & pl.col("collected_campaign").is_not_null())
        .then(
            pl.concat_str(
                pl.lit("?utm_source="),
                "session_source",
                pl.lit("&utm_medium="),
                "session_medium",
                pl.lit("&utm_campaign="),
                "collected_campaign",
            )
        )
        .otherwise(pl.lit(""))
    )
    is_purchase = pl.col("event_name") == "purchase"
    return (
        per_event.hstack(sessions_of_events)
        .sort("event_timestamp")  # as exported: the sessions of a day interleave
        .with_columns(path=path, page_title=_pick([title for _, title in PAGES], page))
        .select(
            event_date=pl.lit(day),
            event_timestamp="event_timestamp",
            event_name="event_name",
            user_pseudo_id="user_pseudo_id",
            user_id="user_id",
            session_id="session_id",
            ga_session_id="started",
            ga_session_number="session_number",
            session_engaged="engaged",
            engagement_time_msec=pl.when(pl.col("engagement_time_msec") >= 0).then("engagement_time_msec"),
            page_location=pl.concat_str(pl.lit("https://www.example.com"), "path", query),
            page_title="page_title",
            session_source="session_source",
            session_medium="session_medium",
            session_campaign="session_campaign",
            collected_source="collected_source",
            collected_medium="collected_medium",
            collected_campaign="collected_campaign",
            first_user_source="first_user_source",
            first_user_medium="first_user_medium",
            first_user_campaign="first_user_campaign",
            value=pl.col("value").fill_nan(None),
            currency=pl.when(is_purchase).then(pl.lit("USD")),
            transaction_id=pl.when(is_purchase).then(pl.concat_str(pl.lit("T"), pl.col("transaction").cast(pl.Utf8))),
            device_category="device_category",
            device_operating_system="device_operating_system",
            country="country",
            city="city",
            platform=pl.lit("WEB"),
            stream_id=pl.lit("4178290113"),
        )
        .with_columns(pl.col("event_date").alias(PARTITION_COLUMN))
    )


# --- the CRM states of the last day ------------------------------------------------------------
def _crm_sizes(crm_rows: int) -> dict[str, int]:
    users = max(20, crm_rows // 5000)
    sizes = {layer: max(10, round((crm_rows - users) * share)) for layer, share in CRM_SHARES.items()}
    return {**sizes, "salesforce/core/users": users}


def _days_before_end(rng: np.random.Generator, n: int, span: int) -> np.ndarray:
    """Seconds since the epoch of `n` moments in the `span` days up to the end of END."""
    return END_S + DAY_S - rng.integers(1, span * DAY_S, n)


def _stage_columns(rng: np.random.Generator, n: int, open_stages: list[str], won: str, lost: str):
    """Stage, created and close time of `n` deals: 60% close (40% of those won) within 180 days, if by END."""
    created = _days_before_end(rng, n, 730)
    close = created + rng.integers(DAY_S, 180 * DAY_S, n)
    closed = (rng.random(n) < 0.6) & (close < END_S + DAY_S)
    is_won = rng.random(n) < 0.4
    stage = pl.Series(np.where(closed, np.where(is_won, 1, 2), 0))
    open_stage = _pick(open_stages, rng.integers(0, len(open_stages), n))
    return (
        pl.when(stage == 1).then(pl.lit(won)).when(stage == 2).then(pl.lit(lost)).otherwise(open_stage),
        pl.Series(created),
        pl.when(pl.Series(closed)).then(pl.Series(close)),
    )


def _hubspot_source(rng: np.random.Generator, n: int) -> tuple[pl.Series, pl.Series]:
    """HubSpot's original source (some unknown) and its drill-down, the GA4 campaign of its medium."""
    source = rng.integers(0, len(HUBSPOT_SOURCES) + 1, n)  # the last: no source known
    medium = [MEDIUM_NAMES.index(medium) if medium else -1 for medium in HUBSPOT_SOURCES.values()] + [-1]
    medium_of = np.asarray(medium)[source]
    campaign = np.where(medium_of >= 0, _campaign_of(np.maximum(medium_of, 0), rng.random(n)), len(CAMPAIGNS))
    return _pick([*HUBSPOT_SOURCES, None], source), _pick([*CAMPAIGNS, None], campaign)


def crm_chunk(layer: str, seed: int, lo: int, hi: int, sizes: dict[str, int]) -> pl.DataFrame:
    """Rows `lo`..`hi` of one CRM state of the last day; ids point at rows of the other states."""
    rng = np.random.default_rng([seed, 2, list(sizes).index(layer), lo])
    n = hi - lo
    number = pl.Series("number", np.arange(lo, hi))
    changed = _utc(pl.Series(_days_before_end(rng, n, 90)))
    owner = _salesforce_id("005", pl.Series(rng.integers(0, sizes["salesforce/core/users"], n)))
    frame = pl.DataFrame(number)
    if layer == "hubspot/core/deals":
        stage, created, close = _stage_columns(rng, n, HUBSPOT_OPEN, "closedwon", "closedlost")
        contacts = pl.Series(rng.integers(1, sizes["hubspot/core/contacts"] + 1, (n, 3)))
        synced = rng.random(n) < 0.2  # a copy of a Salesforce opportunity (some no longer there)
        source, campaign = _hubspot_source(rng, n)  # as HubSpot sets it from the deal's contacts
        frame = frame.select(
            id=pl.col("number") + 1,
            dealname=pl.concat_str(pl.lit("Deal "), pl.col("number").cast(pl.Utf8)),
            pipeline=pl.lit("default"),
            dealstage=stage,
            amount=pl.Series(np.round(rng.lognormal(9.5, 1.0, n), 2)),
            deal_currency_code=_pick(CURRENCIES, rng.integers(0, len(CURRENCIES), n)),
            createdate=_utc(created),
            closedate=_utc(close),
            hubspot_owner_id=pl.Series(rng.integers(1000, 1000 + sizes["salesforce/core/users"], n)),
            contact_ids=contacts.arr.head(pl.Series(rng.integers(0, 4, n))).cast(pl.List(pl.Int64)),
            company_ids=pl.concat_list(pl.Series(rng.integers(1, sizes["hubspot/core/companies"] + 1, n))),
            hs_salesforceopportunityid=pl.when(pl.Series(synced)).then(
                _salesforce_id("006", pl.Series(rng.integers(0, int(sizes["salesforce/core/opportunities"] * 1.05), n)))
            ),
            hs_analytics_source=source,
            hs_analytics_source_data_1=campaign,
            archived=pl.lit(False),
            changed_at=changed,
        )
    elif layer == "salesforce/core/opportunities":
        stage, created, close = _stage_columns(rng, n, SALESFORCE_OPEN, "Closed Won", "Closed Lost")
        frame = frame.select(
            id=_salesforce_id("006", pl.col("number")),
            AccountId=_salesforce_id("001", pl.Series(rng.integers(0, sizes["salesforce/core/accounts"], n))),
            Name=pl.concat_str(pl.lit("Opportunity "), pl.col("number").cast(pl.Utf8)),
            StageName=stage,
            Amount=pl.Series(np.round(rng.lognormal(9.8, 1.0, n), 2)),
            CurrencyIsoCode=_pick(CURRENCIES, rng.integers(0, len(CURRENCIES), n)),
            CloseDate=pl.from_epoch(close, time_unit="s").dt.date(),
            CreatedDate=_utc(created),
            OwnerId=owner,
            LeadSource=_pick(LEAD_SOURCES, rng.integers(0, len(LEAD_SOURCES), n)),
            IsClosed=stage.str.starts_with("Closed"),
            IsWon=stage == "Closed Won",
            IsDeleted=pl.lit(False),
            changed_at=changed,
        )
    elif layer == "hubspot/core/contacts":
        source, campaign = _hubspot_source(rng, n)
        frame = frame.select(
            id=pl.col("number") + 1,
            email=pl.concat_str(pl.lit("contact"), pl.col("number").cast(pl.Utf8), pl.lit("@example.org")),
            firstname=pl.lit("Alex"),
            lastname=pl.concat_str(pl.lit("Contact "), pl.col("number").cast(pl.Utf8)),
            lifecyclestage=_pick(LIFECYCLE, rng.integers(0, len(LIFECYCLE), n)),
            hs_analytics_source=source,
            hs_analytics_source_data_1=campaign,
            createdate=_utc(pl.Series(_days_before_end(rng, n, 1095))),
            hubspot_owner_id=pl.Series(rng.integers(1000, 1000 + sizes["salesforce/core/users"], n)),
            changed_at=changed,
        )
    elif layer == "salesforce/core/leads":
        frame = frame.select(
            id=_salesforce_id("00Q", pl.col("number")),
            LastName=pl.concat_str(pl.lit("Lead "), pl.col("number").cast(pl.Utf8)),
            Company=pl.concat_str(pl.lit("Company "), (pl.col("number") // 3).cast(pl.Utf8)),
            Email=pl.concat_str(pl.lit("lead"), pl.col("number").cast(pl.Utf8), pl.lit("@example.net")),
            Status=_pick(["Open", "Working", "Qualified", "Unqualified"], rng.integers(0, 4, n)),
            LeadSource=_pick(LEAD_SOURCES, rng.integers(0, len(LEAD_SOURCES), n)),
            IsConverted=pl.Series(rng.random(n) < 0.2),
            CreatedDate=_utc(pl.Series(_days_before_end(rng, n, 1095))),
            OwnerId=owner,
            changed_at=changed,
        )
    elif layer == "hubspot/core/companies":
        frame = frame.select(
            id=pl.col("number") + 1,
            name=pl.concat_str(pl.lit("Company "), pl.col("number").cast(pl.Utf8)),
            domain=pl.concat_str(pl.lit("company"), pl.col("number").cast(pl.Utf8), pl.lit(".com")),
            industry=_pick(INDUSTRIES, rng.integers(0, len(INDUSTRIES), n)),
            numberofemployees=pl.Series(rng.lognormal(4.5, 1.6, n).astype(np.int64)),
            lifecyclestage=_pick(LIFECYCLE, rng.integers(0, len(LIFECYCLE), n)),
            hubspot_owner_id=pl.Series(rng.integers(1000, 1000 + sizes["salesforce/core/users"], n)),
            changed_at=changed,
        )
    elif layer == "salesforce/core/accounts":
        frame = frame.select(
            id=_salesforce_id("001", pl.col("number")),
            Name=pl.concat_str(pl.lit("Account "), pl.col("number").cast(pl.Utf8)),
            Website=pl.concat_str(pl.lit("https://account"), pl.col("number").cast(pl.Utf8), pl.lit(".com")),
            Industry=_pick(INDUSTRIES, rng.integers(0, len(INDUSTRIES), n)),
            NumberOfEmployees=pl.Series(rng.lognormal(4.5, 1.6, n).astype(np.int64)),
            OwnerId=owner,
            IsDeleted=pl.lit(False),
            changed_at=changed,
        )
    elif layer == "salesforce/core/users":
        frame = frame.select(
            id=_salesforce_id("005", pl.col("number")),
            Name=pl.concat_str(pl.lit("Rep "), pl.col("number").cast(pl.Utf8)),
            Email=pl.concat_str(pl.lit("rep"), pl.col("number").cast(pl.Utf8), pl.lit("@example.com")),
            IsActive=pl.lit(True),
            changed_at=changed,
        )
    return frame.with_columns(pl.lit(END).alias(PARTITION_COLUMN))


def _account_of(number: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit("acc_"), number.cast(pl.Utf8).str.zfill(8))


def identity_and_invoices(seed: int, sizes: dict[str, int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The account identity of the last day and the billing invoices, consistent with the CRM states.

    Salesforce account j is account j; 60% of HubSpot companies belong to a Salesforce account's
    account, the rest to accounts of their own; billing account b (30% of Salesforce accounts' count)
    bills account 7b mod A. Invoices: about four per billing account, half naming a deal.
    """
    rng = np.random.default_rng([seed, 3])
    accounts, companies = sizes["salesforce/core/accounts"], sizes["hubspot/core/companies"]
    billing = max(1, int(accounts * 0.3))
    company = np.arange(companies)
    matched = company < companies * 0.6
    company_account = np.where(matched, (company * 7919) % accounts, accounts + company)
    identity = pl.concat(
        [
            pl.DataFrame({"n": np.arange(accounts)}).select(
                account_id=_account_of(pl.col("n")),
                system=pl.lit("salesforce"),
                record_id=_salesforce_id("001", pl.col("n")),
                match_rule=pl.lit("salesforce_id"),
                confidence=pl.lit("high"),
            ),
            pl.DataFrame({"n": company, "account": company_account, "matched": matched}).select(
                account_id=_account_of(pl.col("account")),
                system=pl.lit("hubspot"),
                record_id=(pl.col("n") + 1).cast(pl.Utf8),
                match_rule=pl.when("matched").then(pl.lit("domain")).otherwise(pl.lit("new_account")),
                confidence=pl.when("matched").then(pl.lit("high")),
            ),
            pl.DataFrame({"n": np.arange(billing)}).select(
                account_id=_account_of((pl.col("n") * 7) % accounts),
                system=pl.lit("billing"),
                record_id=pl.concat_str(pl.lit("BA-"), pl.col("n").cast(pl.Utf8)),
                match_rule=pl.lit("external_id"),
                confidence=pl.when(pl.col("n") % 10 == 0).then(pl.lit("low")).otherwise(pl.lit("high")),
            ),
        ]
    ).with_columns(pl.lit(END).alias(PARTITION_COLUMN))

    n = billing * 4
    account = rng.integers(0, billing, n)
    issued = _days_before_end(rng, n, 730)
    subtotal = (rng.lognormal(9.5, 1.0, n) * 100).astype(np.int64)
    tax = subtotal // 5
    status = _pick(["paid", "paid", "paid", "open", "void", "draft", "uncollectible"], rng.integers(0, 7, n))
    deal = rng.integers(0, sizes["salesforce/core/opportunities"], n)
    names_deal = rng.random(n) < 0.5
    invoices = pl.DataFrame({"n": np.arange(n), "account": account, "issued": issued}).select(
        id=pl.concat_str(pl.lit("in_"), pl.col("n").cast(pl.Utf8).str.zfill(10)),
        billing_account_id=pl.concat_str(pl.lit("BA-"), pl.col("account").cast(pl.Utf8)),
        billing_account_name=pl.concat_str(pl.lit("Billing "), pl.col("account").cast(pl.Utf8)),
        crm_source=pl.lit("salesforce"),
        external_account_id=_salesforce_id("001", (pl.col("account") * 7) % accounts),
        crm_deal_id=pl.when(pl.Series(names_deal)).then(_salesforce_id("006", pl.Series(deal))),
        status=status,
        currency=_pick(CURRENCIES, rng.integers(0, len(CURRENCIES), n)),
        subtotal_cents=pl.Series(subtotal),
        tax_cents=pl.Series(tax),
        total_cents=pl.Series(subtotal + tax),
        issued_at=_utc(pl.col("issued"), "us"),
        changed_at=_utc(pl.col("issued") + 3 * DAY_S, "us").clip(upper_bound=_utc(pl.lit(END_S + DAY_S - 1), "us")),
        **{PARTITION_COLUMN: pl.lit(END)},
    )
    return identity, invoices


# --- writing the data set ---------------------------------------------------------------------------
def _write(frame: pl.DataFrame, data_dir: Path, layer: str, name: str) -> int:
    path = data_dir / layer / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return path.stat().st_size


def generate(data_dir: Path, events_gb: float, crm_rows: int, seed: int) -> dict:
    """Write the data set; its sizes (bytes, rows per layer) also go to `manifest.json`."""
    began = time.perf_counter()
    sizes = _crm_sizes(crm_rows)
    layers: dict[str, dict[str, int]] = {}
    for layer, rows in sizes.items():
        written = 0
        for part, lo in enumerate(range(0, rows, CRM_CHUNK_ROWS)):
            written += _write(
                crm_chunk(layer, seed, lo, min(rows, lo + CRM_CHUNK_ROWS), sizes), data_dir, layer, f"{END}_{part:03d}"
            )
        layers[layer] = {"rows": rows, "bytes": written}
    identity, invoices = identity_and_invoices(seed, sizes)
    for layer, frame in (("revenue/core/account_identity", identity), ("bigquery/core/billing_invoices", invoices)):
        layers[layer] = {"rows": frame.height, "bytes": _write(frame, data_dir, layer, f"{END}_000")}
    del identity, invoices

    # Events: the size of a chunk from a trial one, then rounds of one chunk per day until the target.
    target = events_gb * GB
    with tempfile.TemporaryDirectory(dir=data_dir) as trial:
        sample = events_chunk(seed, END, 999, 20_000)
        bytes_per_session = _write(sample, Path(trial), "t", "t") / 20_000
    sessions_per_day = target / DAYS / bytes_per_session
    chunks_per_day = max(1, math.ceil(sessions_per_day / SESSIONS_PER_CHUNK))
    chunk_sessions = max(100, round(sessions_per_day / chunks_per_day))
    written = rows = 0
    part = 0
    while written < target:
        for offset in range(DAYS):
            day = FIRST + timedelta(days=offset)
            chunk = events_chunk(seed, day, part, chunk_sessions)
            written += _write(chunk, data_dir, EVENTS, f"{day}_{part:03d}")
            rows += chunk.height
            if written >= target:
                break
        part += 1
        print(f"  events: {written / GB:.2f} of {events_gb:g} GB", file=sys.stderr)
    layers[EVENTS] = {"rows": rows, "bytes": written}
    manifest = {
        "options": {"events_gb": events_gb, "crm_rows": crm_rows, "seed": seed},
        "layers": layers,
        "generate_seconds": round(time.perf_counter() - began, 1),
    }
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# --- the contenders, in child processes -------------------------------------------------------------
def _scan(data_dir: Path, layer: str) -> pl.LazyFrame:
    return pl.scan_parquet(data_dir / layer / "*.parquet")


def step_frame(step: str, data_dir: Path, out_dir: Path) -> pl.LazyFrame:
    """The lazy query of one mart step, its inputs scanned as the layers' Parquet files."""
    rates = CsvReferenceTables().read("currency_rates", RATES_SCHEMA)
    if step == "pipeline":
        return pipeline_frame(
            _scan(data_dir, "hubspot/core/deals"),
            _scan(data_dir, "salesforce/core/opportunities"),
            _scan(data_dir, "revenue/core/account_identity"),
            STAGE_MAPPING,
            rates,
            CHANNEL_MAPPING,
        )
    deals = pl.scan_parquet(out_dir / "pipeline.parquet")
    if step == "accounts":
        return accounts_frame(
            _scan(data_dir, "revenue/core/account_identity"),
            _scan(data_dir, "salesforce/core/accounts"),
            _scan(data_dir, "salesforce/core/users"),
            _scan(data_dir, "hubspot/core/companies"),
            _scan(data_dir, "bigquery/core/billing_invoices"),
            deals,
            rates,
        )
    if step == "daily_revenue_metrics":
        return daily_revenue_metrics_frame(deals, pl.scan_parquet(out_dir / "accounts.parquet"))
    return channel_attribution_frame(
        _scan(data_dir, EVENTS),
        _scan(data_dir, "hubspot/core/contacts"),
        _scan(data_dir, "salesforce/core/leads"),
        deals,
        CHANNEL_MAPPING,
    )


def _decoded(name: str, dtype: pl.DataType) -> pl.Expr:
    """A trivial aggregate that needs every value of the column decoded."""
    column = pl.col(name)
    if dtype == pl.Utf8:
        return column.str.len_bytes().sum()
    if isinstance(dtype, pl.List):
        return column.list.sum().sum()
    return column.max()


def scan_frames(data_dir: Path) -> dict[str, pl.LazyFrame]:
    """Per layer: the columns the marts read of it, each through a trivial aggregate."""
    frames = {}
    for layer, columns in USED_COLUMNS.items():
        frame = _scan(data_dir, layer)
        schema = frame.collect_schema()
        frames[layer] = frame.select(_decoded(name, schema[name]) for name in [PARTITION_COLUMN, *columns])
    return frames


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def _reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS (Linux `clear_refs` 5); the RSS, bytes.

    Not `ru_maxrss`: a child's starts at its parent's RSS when it was spawned (Linux carries the
    high-water mark of the parent's address space over the exec), so it would count the parent's
    data set generation. `VmHWM` is the peak of this process's own address space.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # then the peak since start: the imports' transient peak counts too
    return _status_kb("VmRSS") * 1024


def measure(child: str, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """In a child process: one part of the plain scan or one step of the marts; rows, seconds, peak RSS."""
    if child in SCAN_PARTS:
        frames = scan_frames(data_dir)
        queries = [frames[EVENTS]] if child == "scan-events" else [q for layer, q in frames.items() if layer != EVENTS]
        return _measured(lambda: sum(query.collect(engine="streaming").height for query in queries))
    frame = step_frame(child, data_dir, out_dir)
    if child in ("pipeline", "accounts"):
        path = out_dir / f"{child}.parquet"
        # Written as the Parquet IO manager writes (dagster-polars' defaults: zstd, no statistics).
        return _measured(
            lambda: (
                frame.sink_parquet(path, engine="streaming", statistics=False)
                or pl.scan_parquet(path).select(pl.len()).collect().item()
            )
        )
    return _measured(lambda: frame.collect(engine="streaming").height)


def _measured(run: Callable[[], int]) -> dict[str, float]:
    """Rows `run` returns, its seconds, and its peak RSS above the RSS before it."""
    baseline = _reset_peak()
    began = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - began
    return {"rows": rows, "seconds": seconds, "peak_mb": (_status_kb("VmHWM") * 1024 - baseline) / 1e6}


def _child(name: str, data_dir: Path, out_dir: Path) -> dict:
    command = [sys.executable, "-m", "bench.transform_scale", "--child", name]
    command += ["--data-dir", str(data_dir), "--out-dir", str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"child {name} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summed(parts: dict[str, dict[str, float]]) -> dict[str, float]:
    """Processes run one after the other: their seconds add up, the largest peak is the peak."""
    return {
        "rows": sum(part["rows"] for part in parts.values()),
        "seconds": sum(part["seconds"] for part in parts.values()),
        "peak_mb": max(part["peak_mb"] for part in parts.values()),
    }


def one_round(data_dir: Path) -> dict[str, dict[str, float]]:
    """The scan's parts, then each mart step, each in its own process."""
    scan = {label: _child(name, data_dir, data_dir) for name, label in SCAN_PARTS.items()}
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="marts-") as out_dir:
        steps = {step: _child(step, data_dir, Path(out_dir)) for step in STEPS}
    return {
        "scan": _summed(scan),
        **{f"  {label}": result for label, result in scan.items()},
        "marts": _summed(steps),
        **{f"  {step}": result for step, result in steps.items()},
    }


def explain(data_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="marts-") as out_dir:
        for step in STEPS:
            frame = step_frame(step, data_dir, Path(out_dir))
            print(f"\n## {step}\n\n{frame.explain(engine='streaming')}")
            if step in ("pipeline", "accounts"):
                frame.sink_parquet(Path(out_dir) / f"{step}.parquet", engine="streaming")


def print_table(manifest: dict, rounds: list[dict[str, dict[str, float]]]) -> None:
    layers = manifest["layers"]
    events = layers[EVENTS]
    total_bytes = sum(layer["bytes"] for layer in layers.values())
    crm = sum(layers[name]["rows"] for name in [*CRM_SHARES, "salesforce/core/users"])
    other = sum(layer["rows"] for layer in layers.values()) - events["rows"] - crm
    size = f"{total_bytes / GB:.2f} GB: {events['rows']:,} events, {crm:,} CRM + {other:,} identity/invoice rows"

    def median(name: str, field: str) -> float:
        return statistics.median(measured[name][field] for measured in rounds)

    ratios = [r["marts"]["seconds"] / r["scan"]["seconds"] for r in rounds]
    print(
        f"\nGA4 events {FIRST}..{END} ({DAYS} days, {events['bytes'] / GB:.2f} GB on disk), CRM states of {END}; "
        f"median of {len(rounds)} round(s)\n"
    )
    width = max(len(size), 5)
    print(f"| {'input':<{width}} | contender               | seconds | peak RSS MB | vs scan |")
    print(f"|{'-' * (width + 2)}|-------------------------|---------|-------------|---------|")
    for name in rounds[0]:
        seconds = median(name, "seconds")
        ratio = f"{statistics.median(r[name]['seconds'] / r['scan']['seconds'] for r in rounds):.2f}"
        print(f"| {size:<{width}} | {name:<23} | {seconds:>7.2f} | {median(name, 'peak_mb'):>11,.0f} | {ratio:>7} |")
    peak = max(r["marts"]["peak_mb"] for r in rounds)
    ratio = statistics.median(ratios)
    at = total_bytes / GB
    scope = "" if at >= RSS_TARGET_AT_GB * 0.95 else f" (the target is set for {RSS_TARGET_AT_GB} GB of input)"
    print(
        f"\npeak RSS of the marts: {peak:,.0f} MB at {at:.1f} GB of input; target at most {RSS_TARGET_MB:,} MB at "
        f"{RSS_TARGET_AT_GB} GB: {'met' if peak <= RSS_TARGET_MB else 'not met'}{scope}"
    )
    print(
        f"wall time of the marts / the plain scan: {', '.join(f'{r:.2f}' for r in ratios)} per round, median "
        f"{ratio:.2f}; target at most {WALL_TARGET:.1f}: {'met' if ratio <= WALL_TARGET else 'not met'}"
    )


def _prepared(data_dir: Path, options: dict) -> dict:
    """The data set's manifest: the one already in `data_dir` if made with the same options, else a new one."""
    manifest_path = data_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["options"] == options:
            print(f"reusing the data set in {data_dir}", file=sys.stderr)
            return manifest
        _remove_data(data_dir)
    print(f"generating the data set in {data_dir}", file=sys.stderr)
    manifest = generate(data_dir, **options)
    print(f"generated in {manifest['generate_seconds']:.0f} s", file=sys.stderr)
    return manifest


def _remove_data(data_dir: Path) -> None:
    """Only what `generate` writes: the layers' top folders and the manifest."""
    for top in {layer.split("/")[0] for layer in USED_COLUMNS}:
        shutil.rmtree(data_dir / top, ignore_errors=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-gb", type=float, default=2.0, help="GA4 events on disk, GB (10 for the large size)")
    parser.add_argument("--crm-rows", type=int, default=5_000_000, help="CRM rows of the last day, all states")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is the result")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="where the data set goes (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data set (reused by a later run with --data-dir)")
    parser.add_argument("--explain", action="store_true", help="print each step's streaming plan, measure nothing")
    args = parser.parse_args()

    made_dir = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="transform_scale-")) if made_dir else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _prepared(data_dir, {"events_gb": args.events_gb, "crm_rows": args.crm_rows, "seed": args.seed})
        if args.explain:
            explain(data_dir)
            return
        rounds = [one_round(data_dir) for _ in range(args.repeat)]
        print_table(manifest, rounds)
    finally:
        if args.keep:
            print(f"kept the data set in {data_dir}", file=sys.stderr)
        elif made_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            _remove_data(data_dir)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child = argparse.ArgumentParser()
        child.add_argument("--child")
        child.add_argument("--data-dir", type=Path)
        child.add_argument("--out-dir", type=Path)
        options = child.parse_args()
        print(json.dumps(measure(options.child, options.data_dir, options.out_dir)))
    else:
        main()
