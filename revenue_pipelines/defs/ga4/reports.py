"""The GA4 reports this project ingests, declared as data and checked when definitions load.

Each `Report` becomes an asset `ga4/raw/<name>`: one row per date and combination of its
dimensions, with its metrics. Names are GA4 API names (https://developers.google.com/analytics/
devguides/reporting/data/v1/api-schema); a misspelt one fails at load, naming report and field,
rather than on the first run.
"""

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# The GA4 Data API's limits per request.
MAX_DIMENSIONS = 9
MAX_METRICS = 10
REPORT_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Property-scoped custom definitions, e.g. customEvent:plan_tier.
CUSTOM_FIELD = re.compile(r"custom(Event|User|Item):[A-Za-z][A-Za-z0-9_]*")

DIMENSIONS = frozenset({
    "date", "dateHour", "dayOfWeek", "week", "month", "year",
    "sessionSource", "sessionMedium", "sessionSourceMedium", "sessionCampaignName", "sessionCampaignId",
    "sessionDefaultChannelGroup", "sessionManualTerm", "sessionManualAdContent",
    "firstUserSource", "firstUserMedium", "firstUserCampaignName", "firstUserDefaultChannelGroup",
    "landingPage", "landingPagePlusQueryString", "pagePath", "pageTitle", "hostName",
    "deviceCategory", "operatingSystem", "browser", "platform",
    "country", "countryId", "region", "city", "language",
    "eventName", "isKeyEvent", "newVsReturning",
})  # fmt: skip
# API name -> GA4 metric type. Integers are stored as Int64, every other type as Float64.
METRICS = {
    "sessions": "TYPE_INTEGER",
    "engagedSessions": "TYPE_INTEGER",
    "totalUsers": "TYPE_INTEGER",
    "activeUsers": "TYPE_INTEGER",
    "newUsers": "TYPE_INTEGER",
    "eventCount": "TYPE_INTEGER",
    "screenPageViews": "TYPE_INTEGER",
    "transactions": "TYPE_INTEGER",
    "keyEvents": "TYPE_FLOAT",
    "engagementRate": "TYPE_FLOAT",
    "bounceRate": "TYPE_FLOAT",
    "sessionsPerUser": "TYPE_FLOAT",
    "averageSessionDuration": "TYPE_SECONDS",
    "userEngagementDuration": "TYPE_SECONDS",
    "totalRevenue": "TYPE_CURRENCY",
    "purchaseRevenue": "TYPE_CURRENCY",
}
# Metrics that can be negative (revenue net of refunds); every other metric is a count, rate or duration.
SIGNED_METRICS = frozenset({"totalRevenue", "purchaseRevenue"})


@dataclass(frozen=True)
class Report:
    """One GA4 report, pulled per day: `date` is always its first dimension."""

    name: str
    """The asset's table name: ga4/raw/<name>."""
    description: str
    """What the report answers, shown in the UI."""
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]

    def __post_init__(self) -> None:
        problems = []
        if not REPORT_NAME.fullmatch(self.name):
            problems.append("the name must be lowercase letters, digits and underscores")
        problems += [_unknown("dimension", name, DIMENSIONS) for name in self.dimensions if not _known_dimension(name)]
        problems += [_unknown("metric", name, METRICS) for name in self.metrics if not _known_metric(name)]
        if not self.metrics:
            problems.append("it needs at least one metric")
        if len(self.all_dimensions) > MAX_DIMENSIONS:
            problems.append(f"GA4 allows {MAX_DIMENSIONS} dimensions per request, `date` included")
        if len(self.metrics) > MAX_METRICS:
            problems.append(f"GA4 allows {MAX_METRICS} metrics per request")
        fields = [*self.all_dimensions, *self.metrics]
        problems += [f"{field!r} is listed twice" for field in sorted({f for f in fields if fields.count(f) > 1})]
        if problems:
            raise ValueError(f"GA4 report {self.name!r}: " + "; ".join(problems))

    @property
    def all_dimensions(self) -> tuple[str, ...]:
        """The dimensions requested: `date` first (it places each row in its partition), then the report's."""
        return ("date", *(name for name in self.dimensions if name != "date"))


def metric_is_integer(name: str) -> bool:
    return METRICS.get(name) == "TYPE_INTEGER"


def _known_dimension(name: str) -> bool:
    return name in DIMENSIONS or bool(CUSTOM_FIELD.fullmatch(name))


def _known_metric(name: str) -> bool:
    return name in METRICS or (name.startswith("customEvent:") and bool(CUSTOM_FIELD.fullmatch(name)))


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name!r} is not a GA4 {kind}{hint}"


# The default set: where sessions come from, where they land, and which campaigns produce key events.
REPORTS = (
    Report(
        name="traffic_by_channel",
        description="Sessions, users and engaged sessions per day by source, medium, device and country.",
        dimensions=("sessionSource", "sessionMedium", "deviceCategory", "country"),
        metrics=("sessions", "totalUsers", "engagedSessions"),
    ),
    Report(
        name="landing_pages",
        description="Sessions, engagement and key events per day by landing page and device.",
        dimensions=("landingPage", "deviceCategory"),
        metrics=("sessions", "engagedSessions", "keyEvents"),
    ),
    Report(
        name="key_events_by_campaign",
        description="Key events and revenue per day by campaign, source and medium: the top of the funnel "
        "that leads and opportunities are attributed to.",
        dimensions=("sessionCampaignName", "sessionSource", "sessionMedium"),
        metrics=("sessions", "keyEvents", "totalRevenue"),
    ),
)
