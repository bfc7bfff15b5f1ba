"""The synthetic GA4 property: web sessions per day and combination of traffic dimensions.

A pure function of the seed, the window and the size, drawn with `Draws` as the CRM data is.
Sessions arrive through the channels the CRM sandboxes record as lead sources (`CHANNELS`): the
HubSpot drill-downs (`SOURCE_DETAILS`) are GA4 campaign names or search engines, and each channel
names its Salesforce `LeadSource`, so traffic, leads and opportunities join on campaign. Landing
pages have a long tail of blog posts, so a report by landing page can reach 250,000 rows and more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from revenue_pipelines.sandbox.hubspot_data import (
    CITIES,
    SECTORS,
    SOURCE_DETAILS,
    SOURCE_WEIGHTS,
    Draws,
    modification_window,
)

# The catalog: API name -> the name GA4's UI gives the dimension.
DIMENSIONS = {
    "date": "Date",
    "sessionSource": "Session source",
    "sessionMedium": "Session medium",
    "sessionSourceMedium": "Session source / medium",
    "sessionCampaignName": "Session campaign",
    "sessionDefaultChannelGroup": "Session default channel group",
    "landingPage": "Landing page",
    "deviceCategory": "Device category",
    "country": "Country",
}
# API name -> GA4's MetricType. keyEvents is TYPE_FLOAT in GA4, though its values are whole here.
METRICS = {
    "sessions": "TYPE_INTEGER",
    "totalUsers": "TYPE_INTEGER",
    "engagedSessions": "TYPE_INTEGER",
    "keyEvents": "TYPE_FLOAT",
    "totalRevenue": "TYPE_CURRENCY",
}
# The dimensions a fact row is unique on; the others derive from its channel.
FACT_KEYS = (
    "date",
    "sessionSource",
    "sessionMedium",
    "sessionCampaignName",
    "landingPage",
    "deviceCategory",
    "country",
)
ADDITIVE_METRICS = ("sessions", "engagedSessions", "keyEvents", "totalRevenue")

DEVICES = ("desktop", "mobile", "tablet")
DEVICE_WEIGHTS = (55, 40, 5)
COUNTRIES = tuple(country for _, country in CITIES)  # weighted by how many of the CRM's cities each has
TOP_PAGES = ("/", "/pricing", "/demo", "/features", "/customers", "/integrations", "/contact", "/security")
PAGE_SKEW = 3  # page rank = pool * u**PAGE_SKEW: the home page draws about one session in pool**(1/3)
MEAN_EXTRA_SESSIONS = 1.5  # a fact row has 1 + exponential(this) sessions, rounded down
KEY_EVENT_RATE = 0.12  # key events per engaged session
PURCHASE_SHARE = 0.3  # of key events, those that carry revenue (a trial upgrade, a paid plan)


@dataclass(frozen=True)
class Channel:
    """A GA4 traffic source and the CRM lead source of the people it brings."""

    session_source: str
    session_medium: str
    session_campaign: str
    channel_group: str  # GA4's sessionDefaultChannelGroup
    hubspot_source: str  # hs_analytics_source
    hubspot_detail: str | None  # hs_analytics_source_data_1
    salesforce_lead_source: str
    weight: float


# HubSpot original source -> medium, GA4 channel group, Salesforce LeadSource, session source and
# campaign; {detail} is the HubSpot drill-down, {network} its first word (linkedin-thought-leadership).
_CHANNEL_RULES = {
    "ORGANIC_SEARCH": ("organic", "Organic Search", "Organic Search", "{detail}", "(organic)"),
    "PAID_SEARCH": ("cpc", "Paid Search", "Paid Search", "google", "{detail}"),
    "EMAIL_MARKETING": ("email", "Email", "Email", "newsletter", "{detail}"),
    "SOCIAL_MEDIA": ("social", "Organic Social", "Social", "{network}", "{detail}"),
    "REFERRALS": ("referral", "Referral", "Partner Referral", "{network}", "{detail}"),
    "DIRECT_TRAFFIC": ("(none)", "Direct", "Web", "(direct)", "(direct)"),
}


def _channels() -> tuple[Channel, ...]:
    channels = []
    for (hubspot_source, details), weight in zip(SOURCE_DETAILS.items(), SOURCE_WEIGHTS, strict=True):
        medium, group, lead_source, source, campaign = _CHANNEL_RULES[hubspot_source]
        distinct = list(dict.fromkeys(details))  # direct traffic has one (empty) drill-down, not three
        for detail in distinct:
            names = {"detail": detail, "network": (detail or "").split("-")[0]}
            channels.append(
                Channel(
                    source.format(**names),
                    medium,
                    campaign.format(**names),
                    group,
                    hubspot_source,
                    detail,
                    lead_source,
                    weight / len(distinct),
                )
            )
    return tuple(channels)


CHANNELS = _channels()


def generate_property(seed: int, days: int, end_date: date | None, rows_per_day: int) -> pl.DataFrame:
    """The fact table: about `rows_per_day` rows for each day of the window, one per distinct
    combination of `FACT_KEYS`, with its metrics complete (as GA4 has them once processing settles).

    Internal columns: `day` (the date), `arrival` (when in the processing of its day the row's
    hits arrive, 0-1: late data) and `sample` (0-1: the row is in a sample of rate r if below r).
    """
    if rows_per_day < 1:
        raise ValueError("rows_per_day must be >= 1")
    start, end = modification_window(days, end_date)
    dates = pl.date_range(start.date(), end.date(), closed="left", eager=True)
    draws = Draws(f"{seed}:ga4")
    n = days * rows_per_day
    pool = max(len(TOP_PAGES) * 4, rows_per_day)  # distinct landing pages grow with the traffic
    page_rank = (draws.uniform(n).pow(PAGE_SKEW) * pool).floor().cast(pl.Int64)
    candidates = pl.DataFrame(
        {
            "day": dates.gather(pl.int_range(0, n, eager=True) // rows_per_day),
            "channel": draws.index([channel.weight for channel in CHANNELS], n),
            "landingPage": _landing_pages(page_rank),
            "deviceCategory": draws.pick(DEVICES, n, DEVICE_WEIGHTS),
            "country": draws.pick(COUNTRIES, n),
        }
    )
    keys = candidates.unique(maintain_order=True)
    channels = pl.DataFrame(
        {
            "sessionSource": [channel.session_source for channel in CHANNELS],
            "sessionMedium": [channel.session_medium for channel in CHANNELS],
            "sessionCampaignName": [channel.session_campaign for channel in CHANNELS],
            "sessionDefaultChannelGroup": [channel.channel_group for channel in CHANNELS],
        }
    ).select(pl.all().gather(keys["channel"]))
    facts = (
        keys.drop("channel")
        .hstack(channels)
        .with_columns(
            date=pl.col("day").dt.strftime("%Y%m%d"),
            sessionSourceMedium=pl.format("{} / {}", "sessionSource", "sessionMedium"),
            **_metrics(draws, keys.height),
            arrival=draws.uniform(keys.height),
            sample=draws.uniform(keys.height),
        )
    )
    return facts.select("day", *DIMENSIONS, *METRICS, "arrival", "sample").sort("day", *FACT_KEYS[1:])


def _landing_pages(rank: pl.Series) -> pl.Series:
    """The top pages first, then a long tail of blog posts (/blog/logistics-1234)."""
    topic = pl.Series([sector.lower() for sector in SECTORS]).gather(rank % len(SECTORS))
    top = pl.Series(TOP_PAGES).gather(rank.clip(upper_bound=len(TOP_PAGES) - 1))
    post = pl.format("/blog/{}-{}", topic, rank)
    return pl.select(pl.when(rank < len(TOP_PAGES)).then(top).otherwise(post)).to_series().rename("landingPage")


def _metrics(draws: Draws, n: int) -> dict[str, pl.Series]:
    """Per-row metrics: users <= sessions, engaged sessions <= sessions, key events from engaged
    sessions, revenue in whole cents on a share of key events (log-normal, median about $120)."""
    sessions = 1 + (-(1 - draws.uniform(n)).log() * MEAN_EXTRA_SESSIONS).floor().cast(pl.Int64)
    users = (sessions * (0.55 + 0.45 * draws.uniform(n))).ceil().cast(pl.Int64)
    engaged = (sessions * (0.35 + 0.55 * draws.uniform(n))).round().cast(pl.Int64)
    key_events = (engaged * KEY_EVENT_RATE + draws.uniform(n)).floor()  # whole, with the right mean
    paid = (key_events * PURCHASE_SHARE + draws.uniform(n)).floor()
    revenue = (paid * (4.8 + 0.6 * draws.normal(n)).exp() * 100).round() / 100
    return {
        "sessions": sessions,
        "totalUsers": users,
        "engagedSessions": engaged,
        "keyEvents": key_events,
        "totalRevenue": revenue,
    }
