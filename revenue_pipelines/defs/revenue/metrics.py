"""The day's figures: `revenue/marts/daily_revenue_metrics` (new pipeline, won revenue, win rate,
sales cycle by segment and channel) and `revenue/marts/channel_attribution` (GA4 sessions to leads to
opportunities to won revenue, by channel and campaign, first touch and last touch)."""

from datetime import date

import dagster as dg
import polars as pl

from revenue_pipelines.defs.bigquery.assets import EVENTS_KEY
from revenue_pipelines.defs.revenue.marts import (
    ACCOUNTS_KEY,
    CHANNEL_MAPPING,
    MART_DEFAULTS,
    PIPELINE_KEY,
    UNKNOWN_SEGMENT,
    with_channel,
)
from revenue_pipelines.lib.metadata import describe_each_day, markdown_table
from revenue_pipelines.lib.partitions import PARTITION_COLUMN

METRICS_KEY = dg.AssetKey(["revenue", "marts", "daily_revenue_metrics"])
ATTRIBUTION_KEY = dg.AssetKey(["revenue", "marts", "channel_attribution"])
HUBSPOT_CONTACTS = dg.AssetKey(["hubspot", "core", "contacts"])
SALESFORCE_LEADS = dg.AssetKey(["salesforce", "core", "leads"])
FIRST_TOUCH, LAST_TOUCH = "first_touch", "last_touch"
FUNNEL = ("sessions", "leads", "opportunities", "won_deals")


def daily_revenue_metrics_frame(deals: pl.LazyFrame, accounts: pl.LazyFrame) -> pl.LazyFrame:
    """Per day, segment and channel with any activity: what was created, won and lost that day.

    Each day is read from that day's pipeline snapshot: deals created on it (new pipeline, at
    its amount in USD), and deals closed on it (their close date) as won or lost. The win rate is
    won / (won + lost) by count; the sales cycle is the mean days from creation to close of the
    won ones.
    """
    day = pl.col(PARTITION_COLUMN)
    created = pl.col("created_at").dt.date() == day
    closed = pl.col("is_closed").fill_null(False) & (pl.col("close_date") == day)
    won = closed & pl.col("is_won").fill_null(False)
    lost = closed & ~pl.col("is_won").fill_null(False)
    cycle_days = (pl.col("close_date") - pl.col("created_at").dt.date()).dt.total_days()
    segments = accounts.select(PARTITION_COLUMN, "account_id", "segment")
    return (
        deals.join(segments, on=[PARTITION_COLUMN, "account_id"], how="left")
        .with_columns(pl.col("segment").fill_null(UNKNOWN_SEGMENT))
        .group_by(PARTITION_COLUMN, "segment", "channel")
        .agg(
            new_deals=created.sum().cast(pl.Int64),
            new_pipeline_usd=pl.col("amount_usd").filter(created).sum().round(2),
            won_deals=won.sum().cast(pl.Int64),
            won_revenue_usd=pl.col("amount_usd").filter(won).sum().round(2),
            lost_deals=lost.sum().cast(pl.Int64),
            sales_cycle_days=cycle_days.filter(won).mean(),
        )
        .filter((pl.col("new_deals") + pl.col("won_deals") + pl.col("lost_deals")) > 0)
        .with_columns(
            win_rate=pl.when((pl.col("won_deals") + pl.col("lost_deals")) > 0).then(
                pl.col("won_deals") / (pl.col("won_deals") + pl.col("lost_deals"))
            )
        )
        .sort(PARTITION_COLUMN, "segment", "channel")
    )


@dg.asset(
    key=METRICS_KEY,
    description=(
        "Per day, segment and channel: new pipeline (deals created that day, count and USD), won revenue and "
        "deals, lost deals, win rate (won / closed by count) and the average sales cycle in days of the deals won "
        "that day. Read from each day's pipeline, so a day's figures are as known at its end."
    ),
    ins={"deals": dg.AssetIn(PIPELINE_KEY), "accounts": dg.AssetIn(ACCOUNTS_KEY)},
    **MART_DEFAULTS,
)
def daily_revenue_metrics(
    context: dg.AssetExecutionContext, deals: pl.LazyFrame, accounts: pl.LazyFrame
) -> dg.MaterializeResult:
    metrics = daily_revenue_metrics_frame(deals, accounts).collect(engine="streaming")
    describe_each_day(
        context,
        metrics,
        lambda day_metrics, _: {
            "rows": day_metrics.height,
            "won_revenue_usd": round(day_metrics["won_revenue_usd"].sum(), 2),
            "new_pipeline_usd": round(day_metrics["new_pipeline_usd"].sum(), 2),
            "preview": dg.MetadataValue.md(markdown_table(day_metrics.sort("won_revenue_usd", descending=True))),
        },
    )
    return dg.MaterializeResult(value=metrics)


def channel_attribution_frame(
    events: pl.LazyFrame,
    hubspot_contacts: pl.LazyFrame,
    salesforce_leads: pl.LazyFrame,
    deals: pl.LazyFrame,
    channels: pl.DataFrame,
) -> pl.LazyFrame:
    """Per day, attribution model, channel and campaign: sessions, leads, opportunities, won deals and
    won revenue.

    Sessions (one `session_start` event each) are credited to the session's own source under last
    touch, and to the user's first source under first touch. The CRMs keep a lead's original
    source only (a HubSpot contact's `hs_analytics_source` and drill-down, which is the GA4 campaign;
    a Salesforce lead's `LeadSource`), and a deal's channel is its lead's, so leads, opportunities
    and won revenue are credited alike under both models.
    """
    day = pl.col(PARTITION_COLUMN)
    # Counted once by both models' keys first: the events are the one large input.
    touches = ["session_medium", "session_campaign", "first_user_medium", "first_user_campaign"]
    starts = (
        events.filter(pl.col("event_name") == "session_start")
        .group_by(PARTITION_COLUMN, *touches)
        .agg(sessions=pl.len().cast(pl.Int64))
    )
    sessions = pl.concat(
        [
            starts.select(
                PARTITION_COLUMN,
                "sessions",
                model=pl.lit(model),
                system=pl.lit("ga4"),
                source=pl.col(f"{prefix}_medium"),
                campaign=pl.col(f"{prefix}_campaign"),
            )
            for model, prefix in ((LAST_TOUCH, "session"), (FIRST_TOUCH, "first_user"))
        ]
    )
    hubspot_leads = hubspot_contacts.filter(pl.col("createdate").dt.date() == day).select(
        PARTITION_COLUMN,
        system=pl.lit("hubspot"),
        source=pl.col("hs_analytics_source"),
        campaign=pl.col("hs_analytics_source_data_1"),
        leads=pl.lit(1),
    )
    salesforce_new_leads = salesforce_leads.filter(pl.col("CreatedDate").dt.date() == day).select(
        PARTITION_COLUMN,
        system=pl.lit("salesforce"),
        source=pl.col("LeadSource"),
        campaign=pl.lit(None, pl.Utf8),
        leads=pl.lit(1),
    )
    won = pl.col("is_won").fill_null(False) & (pl.col("close_date") == day)
    deal_facts = deals.filter((pl.col("created_at").dt.date() == day) | won).select(
        PARTITION_COLUMN,
        "channel",
        "campaign",
        opportunities=(pl.col("created_at").dt.date() == day).cast(pl.Int64),
        won_deals=won.cast(pl.Int64),
        won_revenue_usd=pl.when(won).then(pl.col("amount_usd")).otherwise(0.0),
    )
    crm = pl.concat(
        [with_channel(hubspot_leads, channels), with_channel(salesforce_new_leads, channels), deal_facts],
        how="diagonal_relaxed",
    ).drop("system", "source")
    crm_both_models = pl.concat([crm.with_columns(model=pl.lit(model)) for model in (FIRST_TOUCH, LAST_TOUCH)])
    facts = pl.concat(
        [with_channel(sessions, channels).drop("system", "source"), crm_both_models], how="diagonal_relaxed"
    )
    keys = [PARTITION_COLUMN, "model", "channel", "campaign"]
    return (
        facts.group_by(keys)
        .agg(*(pl.col(name).sum().cast(pl.Int64) for name in FUNNEL), pl.col("won_revenue_usd").sum().round(2))
        .with_columns(
            lead_rate=pl.when(pl.col("sessions") > 0).then(pl.col("leads") / pl.col("sessions")),
            win_rate=pl.when(pl.col("opportunities") > 0).then(pl.col("won_deals") / pl.col("opportunities")),
        )
        .sort(keys, nulls_last=True)
    )


@dg.asset(
    key=ATTRIBUTION_KEY,
    description=(
        "Per day, attribution model (first_touch, last_touch), channel and campaign: GA4 sessions, new leads "
        "(HubSpot contacts and Salesforce leads), new opportunities, and deals won with their revenue in USD. "
        "Channels come from channel_mapping.csv, so a GA4 medium, a HubSpot source and a Salesforce lead source "
        "meet on one name; a HubSpot lead's campaign is its source drill-down, which is the GA4 campaign."
    ),
    ins={
        "events": dg.AssetIn(EVENTS_KEY),
        "hubspot_contacts": dg.AssetIn(HUBSPOT_CONTACTS),
        "salesforce_leads": dg.AssetIn(SALESFORCE_LEADS),
        "deals": dg.AssetIn(PIPELINE_KEY),
    },
    **MART_DEFAULTS,
)
def channel_attribution(
    context: dg.AssetExecutionContext,
    events: pl.LazyFrame,
    hubspot_contacts: pl.LazyFrame,
    salesforce_leads: pl.LazyFrame,
    deals: pl.LazyFrame,
) -> dg.MaterializeResult:
    attribution = channel_attribution_frame(
        events,
        hubspot_contacts,
        salesforce_leads,
        deals,
        CHANNEL_MAPPING,
    ).collect(engine="streaming")
    describe_each_day(context, attribution, _attribution_of_day)
    return dg.MaterializeResult(value=attribution)


def _attribution_of_day(attribution: pl.DataFrame, _day: date) -> dict[str, object]:
    last_touch = attribution.filter(pl.col("model") == LAST_TOUCH)
    return {
        "rows": attribution.height,
        "sessions": int(last_touch["sessions"].sum()),
        "leads": int(last_touch["leads"].sum()),
        "won_revenue_usd": round(last_touch["won_revenue_usd"].sum(), 2),
        "preview": dg.MetadataValue.md(markdown_table(last_touch.sort("sessions", descending=True))),
    }
