"""Metadata people read in the Dagster UI."""

from collections.abc import Callable
from datetime import date

import dagster as dg
import polars as pl

from revenue_pipelines.lib.partitions import PARTITION_COLUMN


def markdown_table(frame: pl.DataFrame, limit: int = 10) -> str:
    """The first `limit` rows of `frame` as a Markdown table (long values shortened)."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 60 else text[:57] + "..."

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.head(limit).iter_rows()]
    return "\n".join([header, rule, *rows])


def describe_each_day(
    context: dg.AssetExecutionContext,
    frame: pl.DataFrame,
    describe: Callable[[pl.DataFrame, date], dict[str, object]],
    asset_key: dg.AssetKey | None = None,
) -> None:
    """Give each partition of the run the metadata of its own day: `describe(that day's rows, day)`
    and the day's window. A range run writes a partition per day, and a partition's page in the UI
    must describe that partition, not the run; what the run shares (what the read cost, since when
    history runs) stays on the MaterializeResult."""
    partitions_def = context.assets_def.partitions_def
    assert isinstance(partitions_def, dg.TimeWindowPartitionsDefinition)
    for partition_key in context.partition_keys:
        window = partitions_def.time_window_for_partition_key(partition_key)
        day = window.start.date()
        context.add_asset_metadata(
            {
                **describe(frame.filter(pl.col(PARTITION_COLUMN) == day), day),
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
            },
            asset_key=asset_key,
            partition_key=partition_key,
        )


def rows_and_preview(rows: pl.DataFrame, _day: date) -> dict[str, object]:
    """A day's row count and first rows: what `describe_each_day` says of a table with nothing more to count."""
    return {"rows": rows.height, "preview": dg.MetadataValue.md(markdown_table(rows))}
