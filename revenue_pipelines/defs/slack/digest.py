"""What the daily revenue digest says: the day's figures against the trailing 7 and 30 days, the
deals won, and the data-quality line, as Slack Block Kit; and its chart.

Pure functions of the marts' frames, so a test compares the digest's numbers with the marts'.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from revenue_pipelines.lib.partitions import PARTITION_COLUMN

TRAILING = (7, 30)
TOP_DEALS = 5
CHART_DAYS = 30
MAX_TEXT = 3000  # Slack's limit on a section's text
CHART_SIZE_INCHES = (10, 6)
CHART_DPI = 100  # 1000 x 600 pixels: readable at Slack's preview size


@dataclass(frozen=True)
class Figures:
    """One window's figures: the day itself, or daily averages over trailing days."""

    new_deals: float
    new_pipeline_usd: float
    won_deals: float
    won_revenue_usd: float
    lost_deals: float
    win_rate: float | None
    sales_cycle_days: float | None


@dataclass(frozen=True)
class Quality:
    """The data-quality line: what was held back, warned about, or not read on the day."""

    quarantined_rows: int
    warnings: list[str]
    stale_sources: list[str]


def figures(metrics: pl.DataFrame, first: date, last: date) -> Figures:
    """The figures of [first, last] from `daily_revenue_metrics`: counts and USD per day on
    average, the win rate over the window's closed deals, the cycle over its won deals. Days
    before the metrics' history begins are not counted: they are unknown, not quiet."""
    if metrics.height:
        first = max(first, metrics[PARTITION_COLUMN].min())
    days = max((last - first).days + 1, 1)
    window = metrics.filter(pl.col(PARTITION_COLUMN).is_between(first, last))
    won, lost = window["won_deals"].sum(), window["lost_deals"].sum()
    cycle = window.filter((pl.col("won_deals") > 0) & pl.col("sales_cycle_days").is_not_null())
    return Figures(
        new_deals=window["new_deals"].sum() / days,
        new_pipeline_usd=window["new_pipeline_usd"].sum() / days,
        won_deals=won / days,
        won_revenue_usd=window["won_revenue_usd"].sum() / days,
        lost_deals=lost / days,
        win_rate=won / (won + lost) if won + lost else None,
        sales_cycle_days=(
            (cycle["sales_cycle_days"] * cycle["won_deals"]).sum() / cycle["won_deals"].sum() if cycle.height else None
        ),
    )


def top_deals_won(pipeline: pl.DataFrame, day: date) -> pl.DataFrame:
    """The day's largest deals won (closed that day), from that day's pipeline snapshot."""
    return (
        pipeline.filter(
            (pl.col(PARTITION_COLUMN) == day) & pl.col("is_won").fill_null(False) & (pl.col("close_date") == day)
        )
        .sort("amount_usd", "deal_key", descending=[True, False], nulls_last=True)
        .head(TOP_DEALS)
        .select("name", "system", "channel", "amount_usd")
    )


def blocks(day: date, metrics: pl.DataFrame, pipeline: pl.DataFrame, quality: Quality) -> tuple[str, list[dict]]:
    """The digest of `day`: a notification text and its Block Kit blocks (the chart comes after)."""
    today = figures(metrics, day, day)
    trailing = {n: figures(metrics, day - timedelta(days=n), day - timedelta(days=1)) for n in TRAILING}
    compare = " · ".join(f"{n}d avg" for n in TRAILING)

    def line(label: str, value: str, averages: list[str]) -> str:
        return f"*{label}:* {value}  _({compare}: {' · '.join(averages)})_"

    rows = [
        line(
            "New pipeline",
            f"{_count(today.new_deals)}, {_usd(today.new_pipeline_usd)}",
            [f"{t.new_deals:.1f}, {_usd(t.new_pipeline_usd)}" for t in trailing.values()],
        ),
        line(
            "Won",
            f"{_count(today.won_deals)}, {_usd(today.won_revenue_usd)}",
            [f"{t.won_deals:.1f}, {_usd(t.won_revenue_usd)}" for t in trailing.values()],
        ),
        line("Lost", _count(today.lost_deals), [f"{t.lost_deals:.1f}" for t in trailing.values()]),
        line("Win rate", _share(today.win_rate), [_share(t.win_rate) for t in trailing.values()]),
        line(
            "Sales cycle",
            _days(today.sales_cycle_days),
            [_days(t.sales_cycle_days) for t in trailing.values()],
        ),
    ]
    won = top_deals_won(pipeline, day)
    deals = [
        f"{index}. {row['name'] or '(no name)'}: {_usd(row['amount_usd'])} "
        f"({row['system']}, {row['channel'] or 'no channel'})"
        for index, row in enumerate(won.iter_rows(named=True), start=1)
    ] or ["No deals won."]
    text = (
        f"Revenue on {day}: new pipeline {_usd(today.new_pipeline_usd)}, won {_usd(today.won_revenue_usd)} "
        f"in {_count(today.won_deals)}."
    )
    return text, [
        {"type": "header", "text": {"type": "plain_text", "text": f"Revenue digest for {day:%A, %d %B %Y}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit("\n".join(rows))}},
        {"type": "divider"},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit(f"*Top deals won*\n{chr(10).join(deals)}")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _fit(quality_line(quality))}]},
    ]


def quality_line(quality: Quality) -> str:
    parts = [f"{quality.quarantined_rows:,} rows quarantined"]
    parts.append(
        f"{len(quality.warnings)} warnings ({', '.join(quality.warnings)})" if quality.warnings else "no warnings"
    )
    parts.append(
        f"stale: {', '.join(quality.stale_sources)}" if quality.stale_sources else "every source read for the day"
    )
    return "Data quality: " + "; ".join(parts) + "."


def chart(metrics: pl.DataFrame, day: date) -> tuple[bytes, list[str]]:
    """New pipeline and won revenue per day over the CHART_DAYS days to `day`, one series per
    channel (stacked bars): the PNG, and the channels in the order drawn."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    from matplotlib.figure import Figure

    first = day - timedelta(days=CHART_DAYS - 1)
    days = pl.DataFrame({PARTITION_COLUMN: pl.date_range(first, day, eager=True)})
    by_channel = (
        metrics.filter(pl.col(PARTITION_COLUMN).is_between(first, day))
        .with_columns(pl.col("channel").fill_null("(none)"))
        .group_by(PARTITION_COLUMN, "channel")
        .agg(pl.col("new_pipeline_usd").sum(), pl.col("won_revenue_usd").sum())
    )
    channels = sorted(by_channel["channel"].unique().to_list())
    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI, layout="constrained")
    axes = figure.subplots(2, 1, sharex=True)
    for ax, column, title in zip(
        axes, ("new_pipeline_usd", "won_revenue_usd"), ("New pipeline", "Won revenue"), strict=True
    ):
        bottom = pl.Series([0.0] * days.height)
        for channel in channels:
            series = days.join(by_channel.filter(pl.col("channel") == channel), on=PARTITION_COLUMN, how="left")[
                column
            ].fill_null(0.0)
            ax.bar(days[PARTITION_COLUMN].to_list(), series.to_list(), bottom=bottom.to_list(), label=channel)
            bottom = bottom + series
        ax.set_title(f"{title} (USD) by channel, {first} to {day}", loc="left", fontsize=11)
        ax.yaxis.set_major_formatter(lambda value, _: _usd(value))
        ax.grid(axis="y", alpha=0.3)
    if channels:
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=min(len(channels), 6))
    figure.autofmt_xdate()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue(), channels


def _usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"${value / limit:,.1f}{suffix}"
    return f"${value:,.0f}"


def _count(deals: float) -> str:
    return f"{deals:.0f} deal" + ("" if round(deals) == 1 else "s")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _days(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} days"


def _fit(text: str) -> str:
    """Within Slack's 3,000 characters per text."""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
