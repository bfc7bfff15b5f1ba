"""Daily revenue metrics on a small fixed pipeline, against values worked out by hand."""

from datetime import UTC, date, datetime, timedelta

import polars as pl

from revenue_pipelines.defs.revenue.marts import CHANNEL_MAPPING
from revenue_pipelines.defs.revenue.metrics import channel_attribution_frame, daily_revenue_metrics_frame
from revenue_pipelines.lib.partitions import PARTITION_COLUMN

DAY_1, DAY_2 = date(2026, 3, 1), date(2026, 3, 2)


def _deal(key, account, channel, created: date, closed: date | None, won: bool, usd: float | None) -> dict:
    return {
        "deal_key": key,
        "account_id": account,
        "channel": channel,
        "created_at": datetime.combine(created, datetime.min.time(), tzinfo=UTC) + timedelta(hours=10),
        "close_date": closed,
        "is_closed": closed is not None,
        "is_won": won,
        "amount_usd": usd,
    }


DEALS = [
    _deal("d1", "A", "Email", DAY_1, None, False, 1000.0),  # new and open
    _deal("d2", "A", "Email", date(2026, 2, 1), DAY_1, True, 500.0),  # won after 28 days
    _deal("d3", "A", "Email", date(2026, 2, 21), DAY_1, False, 300.0),  # lost
    _deal("d4", "B", "Direct", date(2026, 1, 1), DAY_1, True, 2000.0),  # won after 59 days
    _deal("d5", "B", "Direct", date(2026, 1, 31), DAY_1, True, 1000.0),  # won after 29 days
    _deal("d6", None, "Referral", DAY_1, None, False, None),  # no account, no USD amount
    _deal("d7", "A", "Email", date(2025, 12, 1), date(2026, 2, 10), True, 700.0),  # won before: not today
]


def test_metrics_equal_hand_computed_values():
    day_2_deals = [*DEALS, _deal("d8", "B", "Direct", DAY_2, None, False, 50.0)]
    deals = pl.DataFrame(
        [{**deal, PARTITION_COLUMN: DAY_1} for deal in DEALS]
        + [{**deal, PARTITION_COLUMN: DAY_2} for deal in day_2_deals]
    )
    accounts = pl.DataFrame(
        {
            PARTITION_COLUMN: [DAY_1, DAY_1, DAY_2, DAY_2],
            "account_id": ["A", "B", "A", "B"],
            "segment": ["SMB", "Enterprise", "SMB", "Enterprise"],
        }
    )

    metrics = daily_revenue_metrics_frame(deals.lazy(), accounts.lazy()).collect()

    rows = {(row[PARTITION_COLUMN], row["segment"], row["channel"]): row for row in metrics.to_dicts()}
    assert set(rows) == {
        (DAY_1, "Enterprise", "Direct"),
        (DAY_1, "SMB", "Email"),
        (DAY_1, "Unknown", "Referral"),
        (DAY_2, "Enterprise", "Direct"),
    }
    email = rows[DAY_1, "SMB", "Email"]
    assert (email["new_deals"], email["new_pipeline_usd"]) == (1, 1000.0)
    assert (email["won_deals"], email["won_revenue_usd"], email["lost_deals"]) == (1, 500.0, 1)
    assert (email["win_rate"], email["sales_cycle_days"]) == (0.5, 28.0)
    direct = rows[DAY_1, "Enterprise", "Direct"]
    assert (direct["new_deals"], direct["won_deals"], direct["won_revenue_usd"]) == (0, 2, 3000.0)
    assert (direct["win_rate"], direct["sales_cycle_days"]) == (1.0, 44.0)
    referral = rows[DAY_1, "Unknown", "Referral"]
    assert (referral["new_deals"], referral["new_pipeline_usd"], referral["win_rate"]) == (1, 0.0, None)
    day_2 = rows[DAY_2, "Enterprise", "Direct"]
    assert (day_2["new_deals"], day_2["new_pipeline_usd"], day_2["won_deals"]) == (1, 50.0, 0)


def test_attribution_credits_sessions_by_model_and_crm_facts_by_their_lead_source():
    day = DAY_1
    session = {"session_medium": "cpc", "session_campaign": "brand-search-q4"}
    first_user = {"first_user_medium": "email", "first_user_campaign": "newsletter-weekly"}
    organic = {
        "session_medium": "organic",
        "session_campaign": "(organic)",
        "first_user_medium": "organic",
        "first_user_campaign": "(organic)",
    }
    events = pl.DataFrame(
        [{"event_name": "session_start", **session, **first_user}] * 3
        + [{"event_name": "page_view", **session, **first_user}, {"event_name": "session_start", **organic}]
    ).with_columns(**{PARTITION_COLUMN: pl.lit(day)})
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    contacts = pl.DataFrame(
        {
            "createdate": [at, at - timedelta(days=3), at],
            "hs_analytics_source": ["PAID_SEARCH", "PAID_SEARCH", None],
            "hs_analytics_source_data_1": ["brand-search-q4", "brand-search-q4", None],
        }
    ).with_columns(**{PARTITION_COLUMN: pl.lit(day)})
    leads = pl.DataFrame({"CreatedDate": [at], "LeadSource": ["Email"], PARTITION_COLUMN: [day]})
    deals = pl.DataFrame(
        [
            {**_deal("n1", "A", "Paid Search", day, None, False, 900.0), "campaign": "brand-search-q4"},
            {**_deal("w1", "A", "Email", date(2026, 2, 1), day, True, 500.0), "campaign": None},
        ]
    ).with_columns(**{PARTITION_COLUMN: pl.lit(day)})

    frame = channel_attribution_frame(
        events.lazy(), contacts.lazy(), leads.lazy(), deals.lazy(), CHANNEL_MAPPING
    ).collect()

    funnel = {
        (row["model"], row["channel"], row["campaign"]): (
            row["sessions"],
            row["leads"],
            row["opportunities"],
            row["won_deals"],
            row["won_revenue_usd"],
        )
        for row in frame.to_dicts()
    }
    crm = {
        ("Paid Search", "brand-search-q4"): (1, 1, 0, 0.0),
        ("Email", None): (1, 0, 1, 500.0),
        ("Unattributed", None): (1, 0, 0, 0.0),
    }
    assert funnel == {
        ("last_touch", "Paid Search", "brand-search-q4"): (3, *crm["Paid Search", "brand-search-q4"]),
        ("last_touch", "Organic Search", "(organic)"): (1, 0, 0, 0, 0.0),
        ("last_touch", "Email", None): (0, *crm["Email", None]),
        ("last_touch", "Unattributed", None): (0, *crm["Unattributed", None]),
        ("first_touch", "Email", "newsletter-weekly"): (3, 0, 0, 0, 0.0),
        ("first_touch", "Organic Search", "(organic)"): (1, 0, 0, 0, 0.0),
        ("first_touch", "Paid Search", "brand-search-q4"): (0, *crm["Paid Search", "brand-search-q4"]),
        ("first_touch", "Email", None): (0, *crm["Email", None]),
        ("first_touch", "Unattributed", None): (0, *crm["Unattributed", None]),
    }
    paid = frame.filter((pl.col("model") == "last_touch") & (pl.col("channel") == "Paid Search")).row(0, named=True)
    assert paid["lead_rate"] == 1 / 3
