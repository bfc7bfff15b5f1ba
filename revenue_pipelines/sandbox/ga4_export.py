"""The GA4 property's BigQuery export: dataset `analytics_<property id>`, one sharded table
`events_YYYYMMDD` a day, with a faithful subset of Google's export schema (`SCHEMA`).

Built from the property's settled fact rows (`GA4.facts`), so the export agrees with the Data API:
each fact row's `sessions` sessions, on its date, from its source / medium / campaign, device and
country, each with a `session_start` event (carrying `source`, `medium` and `campaign`) and a
`page_view` of the landing page, both with that page's `page_location`. Engaged sessions
(`engagedSessions` of them) have `session_engaged` '1', more page views of the top pages, and one
`user_engagement` event; the row's `keyEvents` are `generate_lead` events spread over its engaged
sessions, and its `totalRevenue` is paid by `purchase` events (about one per $120, at most one per
key event) whose `value` params sum to it. So counting session_start events by date, source, medium,
campaign, landing page (page_location's path), device and country gives the fact rows' sessions, and
summing purchase values gives their revenue (to float rounding). Each fact row has its own
`totalUsers` users (`user_pseudo_id`), new that day, who share its sessions round-robin: distinct
users per fact row are `totalUsers`, though over several rows they add up, where GA4 dedupes.

Generation is vectorised polars: no Python per event. Random draws are counter-based (SplitMix64 over
the session's, user's or event's global number and a stream per purpose), so a day's events do not
depend on which other days are generated with it, and `events()` can build the window in chunks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import date, timedelta

import polars as pl

from revenue_pipelines.sandbox.bigquery import Column
from revenue_pipelines.sandbox.ga4_data import TOP_PAGES
from revenue_pipelines.sandbox.hubspot_data import CITIES

SITE = "https://www.revenue-sandbox.example"
SITE_NAME = "Revenue Sandbox"
STREAM_ID = "3141592653"
PLATFORM = "WEB"
CURRENCY = "USD"  # the property's currency, which totalRevenue is in
US_PER_SECOND = 1_000_000
DAY_US = 86_400 * US_PER_SECOND
MAX_SESSION_US = 1_800 * US_PER_SECOND  # a session's events fall within 30 minutes of its start
MEAN_EXTRA_PAGE_VIEWS = 1.5  # per engaged session, beyond the landing page (exponential, rounded down)
MAX_EXTRA_PAGE_VIEWS = 15
REVENUE_PER_PURCHASE = 120.0  # a row's revenue is paid in about one purchase per this many dollars
USER_ID_SHARE = 0.05  # of users, those signed in (user_id set)
MANUAL_MEDIUMS = ("cpc", "email", "social", "referral")  # tagged links: collected_traffic_source is set
CHUNK_SESSIONS = 50_000  # `frames` generates whole days, about this many sessions at a time (memory)
# Operating systems by device category, with weights.
OPERATING_SYSTEMS = {
    "desktop": (("Windows", 55), ("Macintosh", 35), ("Linux", 5), ("Chrome OS", 5)),
    "mobile": (("Android", 55), ("iOS", 45)),
    "tablet": (("iOS", 60), ("Android", 40)),
}
TOP_PAGE_TITLES = {
    "/": SITE_NAME,
    "/pricing": f"Pricing | {SITE_NAME}",
    "/demo": f"Book a demo | {SITE_NAME}",
    "/features": f"Features | {SITE_NAME}",
    "/customers": f"Customer stories | {SITE_NAME}",
    "/integrations": f"Integrations | {SITE_NAME}",
    "/contact": f"Contact us | {SITE_NAME}",
    "/security": f"Security | {SITE_NAME}",
}
EVENT_NAMES = ("session_start", "page_view", "generate_lead", "purchase", "user_engagement")


SCHEMA = (
    Column("event_date", "STRING"),
    Column("event_timestamp", "INTEGER"),
    Column("event_name", "STRING"),
    Column(
        "event_params",
        "RECORD",
        "REPEATED",
        (
            Column("key", "STRING"),
            Column(
                "value",
                "RECORD",
                fields=(
                    Column("string_value", "STRING"),
                    Column("int_value", "INTEGER"),
                    Column("float_value", "FLOAT"),
                    Column("double_value", "FLOAT"),
                ),
            ),
        ),
    ),
    Column("user_id", "STRING"),
    Column("user_pseudo_id", "STRING"),
    Column("user_first_touch_timestamp", "INTEGER"),
    Column("device", "RECORD", fields=(Column("category", "STRING"), Column("operating_system", "STRING"))),
    Column("geo", "RECORD", fields=(Column("country", "STRING"), Column("city", "STRING"))),
    Column(
        "traffic_source",
        "RECORD",
        fields=(Column("name", "STRING"), Column("medium", "STRING"), Column("source", "STRING")),
    ),
    Column("stream_id", "STRING"),
    Column("platform", "STRING"),
    Column(
        "collected_traffic_source",
        "RECORD",
        fields=(
            Column("manual_campaign_name", "STRING"),
            Column("manual_source", "STRING"),
            Column("manual_medium", "STRING"),
        ),
    ),
)

PARAMS_TYPE = pl.List(
    pl.Struct(
        {
            "key": pl.String,
            "value": pl.Struct(
                {
                    "string_value": pl.String,
                    "int_value": pl.Int64,
                    "float_value": pl.Float64,
                    "double_value": pl.Float64,
                }
            ),
        }
    )
)
# Streams of the counter-based generator: one per kind of draw.
(
    S_ENGAGED, S_EXTRA, S_START, S_GAP, S_PAGE, S_ENGAGEMENT, S_OS, S_CITY, S_USER_ID, S_PSEUDO,
) = range(1, 11)  # fmt: skip
GOLDEN = 0x9E3779B97F4A7C15
EVENTS_PER_SESSION_KEY = 256  # event keys: session * this + ordinal (sessions have fewer events)
VISITS_PER_USER_KEY = 64  # (user, visit) keys: user * this + visit (a user has at most a few visits)


def _u64(value: int) -> pl.Expr:
    return pl.lit(value % 2**64, dtype=pl.UInt64)


def _mixed(x: pl.Expr) -> pl.Expr:
    """SplitMix64's finaliser: UInt64 arithmetic wraps in polars, as the algorithm needs."""
    x = (x ^ (x // _u64(2**30))) * _u64(0xBF58476D1CE4E5B9)
    x = (x ^ (x // _u64(2**27))) * _u64(0x94D049BB133111EB)
    return x ^ (x // _u64(2**31))


def _seed_key(seed: int) -> int:
    x = (seed * GOLDEN + 0x632BE59BD9B4E019) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return x ^ (x >> 31)


class GA4Export:
    """The export of one property's fact rows (see the module docstring); `frames()` yields its
    tables, `events(day)` one day's events exactly as loaded."""

    def __init__(self, facts: pl.DataFrame, *, seed: int, property_id: str):
        self.dataset = f"analytics_{property_id}"
        self._seed = _seed_key(seed)
        totals = facts.select(pl.col("sessions").cast(pl.Int64), pl.col("totalUsers").cast(pl.Int64))
        self._facts = facts.select(
            "day",
            "date",
            source="sessionSource",
            medium="sessionMedium",
            campaign="sessionCampaignName",
            landing="landingPage",
            device="deviceCategory",
            country="country",
            sessions=pl.col("sessions").cast(pl.Int64),
            users=pl.col("totalUsers").cast(pl.Int64),
            engaged=pl.col("engagedSessions").cast(pl.Int64),
            leads=pl.col("keyEvents").cast(pl.Int64),
            revenue_cents=(pl.col("totalRevenue") * 100).round().cast(pl.Int64),
            # Global numbers of the row's first session and first user: the generator's counters.
            first_session=(totals["sessions"].cum_sum() - totals["sessions"]),
            first_user=(totals["totalUsers"].cum_sum() - totals["totalUsers"]),
        )
        first, last = facts["day"].min(), facts["day"].max()
        self.days: tuple[date, ...] = tuple(first + timedelta(days=i) for i in range((last - first).days + 1))

    @staticmethod
    def table_name(day: date) -> str:
        return f"events_{day:%Y%m%d}"

    @property
    def table_names(self) -> list[str]:
        return [self.table_name(day) for day in self.days]

    def schema(self, table: str) -> tuple[Column, ...]:
        self._day(table)
        return SCHEMA

    def truth(self, table: str) -> pl.DataFrame:
        """One day's table as loaded (built again on each call)."""
        return self.events(self._day(table))

    def frames(self) -> Iterator[tuple[str, pl.DataFrame]]:
        """Every day's table, generated a few days at a time (about CHUNK_SESSIONS sessions)."""
        per_day = self._facts.group_by("day").agg(pl.col("sessions").sum())
        sessions = dict(per_day.iter_rows())
        chunk: list[date] = []
        for day in self.days:
            if chunk and sum(sessions.get(d, 0) for d in chunk) + sessions.get(day, 0) > CHUNK_SESSIONS:
                yield from self._split(chunk)
                chunk = []
            chunk.append(day)
        if chunk:
            yield from self._split(chunk)

    def _split(self, days: list[date]) -> Iterator[tuple[str, pl.DataFrame]]:
        events = self.events(*days)
        by_date = events.partition_by("event_date", as_dict=True, maintain_order=True)
        for day in days:
            frame = by_date.get((f"{day:%Y%m%d}",))
            yield self.table_name(day), events.clear() if frame is None else frame

    def _day(self, table: str) -> date:
        for day in self.days:
            if self.table_name(day) == table:
                return day
        raise KeyError(f"{self.dataset} has no table {table!r}: it has events_YYYYMMDD for {self.days[0]}..")

    def _uniform(self, key: pl.Expr, stream: int) -> pl.Expr:
        """Uniform [0, 1) from the key (a counter: a session's, user's or event's number) and stream."""
        x = key.cast(pl.UInt64) * _u64(GOLDEN) + _u64(self._seed + stream * 0xD1B54A32D192ED03)
        return (_mixed(x) // _u64(2**11)).cast(pl.Float64) / 2.0**53

    def events(self, *days: date) -> pl.DataFrame:
        """The events of `days` (default: the whole window), in SCHEMA's columns."""
        chosen = self._facts if not days else self._facts.filter(pl.col("day").is_in(days))
        return self._events(self._sessions(chosen))

    def _sessions(self, facts: pl.DataFrame) -> pl.DataFrame:
        """One row per session, with its counts of events of each kind and its user."""
        u = self._uniform
        sessions = (
            facts.with_columns(k=pl.int_ranges(0, "sessions"))
            .explode("k", empty_as_null=False)
            .with_columns(
                session=pl.col("first_session") + pl.col("k"),
                slot=pl.col("k") % pl.col("users"),
                visit=pl.col("k") // pl.col("users"),
            )
            .with_columns(
                user=pl.col("first_user") + pl.col("slot"),
                visits=(pl.col("sessions") - pl.col("slot") + pl.col("users") - 1) // pl.col("users"),
                # Engaged sessions are a random `engaged` of the row's; `rank` numbers them 0.. first.
                rank=u(pl.col("session"), S_ENGAGED).rank("ordinal").over("first_session") - 1,
            )
        )
        purchases = (
            pl.when(pl.col("revenue_cents") > 0)
            .then((pl.col("revenue_cents") / (REVENUE_PER_PURCHASE * 100)).round().clip(1, pl.col("leads")))
            .otherwise(0)
            .cast(pl.Int64)
        )
        is_engaged = pl.col("rank") < pl.col("engaged")
        engaged = pl.col("engaged").clip(lower_bound=1)

        def spread(total: str | pl.Expr) -> pl.Expr:
            """This engaged session's share of `total` events spread over the row's engaged sessions."""
            total = pl.col(total) if isinstance(total, str) else total
            return pl.when(is_engaged).then(total // engaged + (pl.col("rank") < total % engaged)).otherwise(0)

        span = DAY_US - MAX_SESSION_US

        def start(visit: pl.Expr) -> pl.Expr:
            """A user's `visit`th session starts in the visit'th slice of the day: in order, apart."""
            draw = u(pl.col("user") * VISITS_PER_USER_KEY + visit, S_START)
            return pl.col("day_us") + ((visit + draw) * span / pl.col("visits")).floor().cast(pl.Int64)

        extra = (-(1 - u(pl.col("session"), S_EXTRA)).log() * MEAN_EXTRA_PAGE_VIEWS).floor()
        return sessions.with_columns(
            day_us=pl.col("day").cast(pl.Datetime("us")).dt.epoch("us"),
            is_engaged=is_engaged,
            n_leads=spread("leads"),
            n_purchases=spread(purchases),
            purchases=purchases,
            n_extra=pl.when(is_engaged).then(extra.clip(upper_bound=MAX_EXTRA_PAGE_VIEWS)).otherwise(0).cast(pl.Int64),
        ).with_columns(
            start_us=start(pl.col("visit")),
            first_touch_us=start(pl.lit(0, pl.Int64)),
            n_events=2
            + pl.col("n_extra")
            + pl.col("n_leads")
            + pl.col("n_purchases")
            + pl.col("is_engaged").cast(pl.Int64),
        )

    def _events(self, sessions: pl.DataFrame) -> pl.DataFrame:
        u = self._uniform
        per_user = self._user_columns()
        gap = (u(pl.col("session"), S_GAP) * MAX_SESSION_US / pl.col("n_events")).floor().cast(pl.Int64)
        sessions = sessions.with_columns(
            gap_us=gap,
            landing_title=_titles(pl.col("landing")),
            ga_session_id=pl.col("start_us") // US_PER_SECOND,
            **per_user,
        ).select(
            "date", "source", "medium", "campaign", "landing", "landing_title", "device", "country",
            "session", "visit", "is_engaged", "n_extra", "n_leads", "n_purchases", "purchases", "revenue_cents",
            "rank", "engaged", "start_us", "gap_us", "ga_session_id", "first_touch_us", "user_id", "user_pseudo_id",
            "operating_system", "city", "n_events",
        )  # fmt: skip
        i = pl.col("i")
        leads_from = 2 + pl.col("n_extra")
        purchases_from = leads_from + pl.col("n_leads")
        events = (
            sessions.with_columns(i=pl.int_ranges(0, "n_events"))
            .explode("i", empty_as_null=False)
            .with_columns(
                event_name=pl.when(i == 0)
                .then(pl.lit("session_start"))
                .when(i < leads_from)
                .then(pl.lit("page_view"))
                .when(i < purchases_from)
                .then(pl.lit("generate_lead"))
                .when(i < purchases_from + pl.col("n_purchases"))
                .then(pl.lit("purchase"))
                .otherwise(pl.lit("user_engagement")),
                event_timestamp=pl.col("start_us") + (i - 1).clip(lower_bound=0) * pl.col("gap_us"),
                event_key=pl.col("session") * EVENTS_PER_SESSION_KEY + i,
            )
        )
        is_view = (pl.col("event_name") == "page_view") & (i > 1)
        page_index = (u(pl.col("event_key"), S_PAGE) * len(TOP_PAGES)).floor().cast(pl.Int64)
        top_pages = pl.Series(TOP_PAGES)
        # Purchase q of the session is the row's purchase j = rank + q * engaged; cents split evenly.
        j = pl.col("rank") + (i - purchases_from) * pl.col("engaged")
        purchases = pl.col("purchases").clip(lower_bound=1)
        cents = pl.col("revenue_cents") // purchases + (j < pl.col("revenue_cents") % purchases).cast(pl.Int64)
        events = events.with_columns(
            page=pl.when(is_view).then(pl.lit(top_pages).gather(page_index)).otherwise("landing"),
            title=pl.when(is_view)
            .then(pl.lit(pl.Series(TOP_PAGE_TITLES[page] for page in TOP_PAGES)).gather(page_index))
            .otherwise("landing_title"),
            value_cents=pl.when(pl.col("event_name") == "purchase").then(cents),
            purchase=i - purchases_from,
        )
        common = [
            _param("ga_session_id", integer=pl.col("ga_session_id")),
            _param("ga_session_number", integer=pl.col("visit") + 1),
            _param("page_location", string=pl.lit(SITE) + pl.col("page")),
            _param("page_title", string=pl.col("title")),
            _param("session_engaged", string=pl.when("is_engaged").then(pl.lit("1")).otherwise(pl.lit("0"))),
        ]
        own = {
            "session_start": [_param(key, string=pl.col(key)) for key in ("source", "medium", "campaign")],
            "user_engagement": [
                _param(
                    "engagement_time_msec",
                    integer=10_000 + (u(pl.col("event_key"), S_ENGAGEMENT) * 290_000).floor().cast(pl.Int64),
                )
            ],
            "purchase": [
                _param("value", double=pl.col("value_cents") / 100),
                _param("currency", string=pl.lit(CURRENCY)),
                _param("transaction_id", string=pl.format("T{}-{}", "session", "purchase")),
            ],
        }
        manual = pl.col("medium").is_in(MANUAL_MEDIUMS)
        columns = {
            "event_date": pl.col("date"),
            "event_timestamp": pl.col("event_timestamp"),
            "event_name": pl.col("event_name").cast(pl.String),
            "user_id": pl.col("user_id"),
            "user_pseudo_id": pl.col("user_pseudo_id"),
            "user_first_touch_timestamp": pl.col("first_touch_us"),
            "device": pl.struct(category="device", operating_system="operating_system"),
            "geo": pl.struct(country="country", city="city"),
            "traffic_source": pl.struct(name="campaign", medium="medium", source="source"),
            "stream_id": pl.lit(STREAM_ID),
            "platform": pl.lit(PLATFORM),
            "collected_traffic_source": pl.when(manual).then(
                pl.struct(manual_campaign_name="campaign", manual_source="source", manual_medium="medium")
            ),
        }
        # Each event name has its own fixed list of params: one fixed-size array per name, made a list.
        # (concat_list over nullable structs, to drop the params an event lacks, is far slower.)
        named = events.with_columns(pl.col("event_name").cast(pl.Categorical)).partition_by("event_name", as_dict=True)
        parts = [
            frame.select(
                "event_key",
                **columns,
                event_params=pl.concat_arr([*common, *own.get(event_name, [])]).cast(PARAMS_TYPE),
            )
            for (event_name,), frame in sorted(named.items())
        ]
        return pl.concat(parts).select(column.name for column in SCHEMA)

    def _user_columns(self) -> dict[str, pl.Expr]:
        """A user's ids, operating system and city: drawn from the user's number, so every session
        of a user agrees."""
        u = self._uniform
        user = pl.col("user")
        os_draw = u(user, S_OS)
        operating_system = pl.lit(None, pl.String)
        for device, choices in OPERATING_SYSTEMS.items():
            total = sum(weight for _, weight in choices)
            bounds = list(itertools.accumulate(weight / total for _, weight in choices))
            chosen = pl.lit(choices[-1][0])
            for (os_name, _), bound in reversed(list(zip(choices[:-1], bounds, strict=False))):
                chosen = pl.when(os_draw < bound).then(pl.lit(os_name)).otherwise(chosen)
            operating_system = pl.when(pl.col("device") == device).then(chosen).otherwise(operating_system)
        cities: dict[str, list[str]] = {}
        for city, country in CITIES:
            cities.setdefault(country, []).append(city)
        city_lists = pl.col("country").replace_strict(
            {country: names for country, names in cities.items()}, default=None, return_dtype=pl.List(pl.String)
        )
        # A bijection of the user's number onto 31 bits, so pseudo ids never repeat.
        scrambled = (user.cast(pl.UInt64) * _u64(2654435761) + _u64(self._seed)) % _u64(2**31)
        return {
            "user_id": pl.when(u(user, S_USER_ID) < USER_ID_SHARE).then(pl.format("U{}", user)),
            "user_pseudo_id": pl.format("{}.{}", scrambled, pl.col("first_touch_us") // US_PER_SECOND),
            "operating_system": operating_system,
            "city": city_lists.list.get((u(user, S_CITY) * city_lists.list.len()).floor().cast(pl.Int64)),
        }


def _titles(path: pl.Expr) -> pl.Expr:
    """A page's title: the top pages' own, a blog post's from its slug (/blog/logistics-12)."""
    post = path.str.strip_prefix("/blog/").str.replace_all("-", " ").str.to_titlecase()
    return path.replace_strict(TOP_PAGE_TITLES, default=pl.format("{} | {} Blog", post, pl.lit(SITE_NAME)))


def _param(
    key: str,
    *,
    string: pl.Expr | None = None,
    integer: pl.Expr | None = None,
    double: pl.Expr | None = None,
) -> pl.Expr:
    """One event_params entry, {key, value: {string_value, int_value, float_value, double_value}}."""
    entry = pl.struct(
        key=pl.lit(key),
        value=pl.struct(
            string_value=pl.lit(None, pl.String) if string is None else string.cast(pl.String),
            int_value=pl.lit(None, pl.Int64) if integer is None else integer.cast(pl.Int64),
            float_value=pl.lit(None, pl.Float64),
            double_value=pl.lit(None, pl.Float64) if double is None else double.cast(pl.Float64),
        ),
    )
    return entry
