"""The digest's content from the marts' frames: its numbers, Slack's limits, and its chart."""

import io
from datetime import date, timedelta

import polars as pl
from PIL import Image

from revenue_pipelines.defs.slack import digest
from revenue_pipelines.lib.partitions import PARTITION_COLUMN

DAY = date(2026, 11, 20)
CHANNELS = ["Direct", "Organic Search", "Paid Search"]


def _metrics() -> pl.DataFrame:
    """45 days of metrics, one row per channel a day, with figures that differ day by day."""
    rows = []
    for offset in range(45):
        day = DAY - timedelta(days=offset)
        for index, channel in enumerate(CHANNELS):
            rows.append(
                {
                    PARTITION_COLUMN: day,
                    "segment": "mid_market",
                    "channel": channel,
                    "new_deals": 1 + (offset + index) % 3,
                    "new_pipeline_usd": 1000.0 * (1 + (offset + index) % 5),
                    "won_deals": (offset + index) % 2,
                    "won_revenue_usd": 500.0 * ((offset + index) % 2),
                    "lost_deals": (offset * index) % 2,
                    "sales_cycle_days": 30.0 + index if (offset + index) % 2 else None,
                }
            )
    return pl.DataFrame(rows).with_columns(
        win_rate=pl.when((pl.col("won_deals") + pl.col("lost_deals")) > 0).then(
            pl.col("won_deals") / (pl.col("won_deals") + pl.col("lost_deals"))
        )
    )


def _pipeline() -> pl.DataFrame:
    won = [(f"Deal {n}", 1000.0 * n) for n in range(1, 8)]
    return pl.DataFrame(
        [
            {
                PARTITION_COLUMN: DAY,
                "deal_key": f"hubspot:{n}",
                "name": name,
                "system": "hubspot",
                "channel": "Direct",
                "amount_usd": amount,
                "is_won": True,
                "close_date": DAY,
            }
            for n, (name, amount) in enumerate(won)
        ]
        + [
            {
                PARTITION_COLUMN: DAY,
                "deal_key": "salesforce:x",
                "name": "Won last week",
                "system": "salesforce",
                "channel": "Direct",
                "amount_usd": 1e9,
                "is_won": True,
                "close_date": DAY - timedelta(days=7),
            }
        ]
    )


def test_the_days_figures_and_the_trailing_averages_equal_the_marts():
    metrics = _metrics()
    day = metrics.filter(pl.col(PARTITION_COLUMN) == DAY)
    today = digest.figures(metrics, DAY, DAY)
    assert today.new_pipeline_usd == day["new_pipeline_usd"].sum()
    assert today.won_revenue_usd == day["won_revenue_usd"].sum()
    assert today.lost_deals == day["lost_deals"].sum()
    week = metrics.filter(pl.col(PARTITION_COLUMN).is_between(DAY - timedelta(days=7), DAY - timedelta(days=1)))
    trailing = digest.figures(metrics, DAY - timedelta(days=7), DAY - timedelta(days=1))
    assert trailing.won_revenue_usd == week["won_revenue_usd"].sum() / 7
    assert trailing.win_rate == week["won_deals"].sum() / (week["won_deals"].sum() + week["lost_deals"].sum())
    won = week.filter(pl.col("won_deals") > 0)
    assert trailing.sales_cycle_days == (won["sales_cycle_days"] * won["won_deals"]).sum() / won["won_deals"].sum()


def test_the_blocks_keep_within_slacks_limits_and_name_the_top_deals_won_that_day():
    quality = digest.Quality(quarantined_rows=3, warnings=["hubspot/raw/contacts fields_well_formed"], stale_sources=[])
    text, blocks = digest.blocks(DAY, _metrics(), _pipeline(), quality)
    assert len(blocks) <= 50
    texts = [block["text"]["text"] for block in blocks if "text" in block] + [
        element["text"] for block in blocks for element in block.get("elements", [])
    ]
    assert all(len(t) <= 3000 for t in texts)
    top = next(t for t in texts if t.startswith("*Top deals won*"))
    assert [line.split(":")[0] for line in top.splitlines()[1:]] == [f"{n}. Deal {8 - n}" for n in range(1, 6)]
    assert "Won last week" not in top
    assert "3 rows quarantined; 1 warnings (hubspot/raw/contacts fields_well_formed)" in texts[-1]
    day = _metrics().filter(pl.col(PARTITION_COLUMN) == DAY)
    assert f"${day['new_pipeline_usd'].sum() / 1000:,.1f}k" in text


def test_the_chart_is_a_png_readable_in_slack_with_a_series_per_channel():
    png, channels = digest.chart(_metrics(), DAY)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 450
    assert channels == CHANNELS


def test_days_before_the_history_begins_do_not_dilute_the_averages():
    recent = _metrics().filter(pl.col(PARTITION_COLUMN) >= DAY - timedelta(days=3))
    before = recent.filter(pl.col(PARTITION_COLUMN) < DAY)
    month = digest.figures(recent, DAY - timedelta(days=30), DAY - timedelta(days=1))
    assert month.won_revenue_usd == before["won_revenue_usd"].sum() / 3
