"""Current state: the latest version of every record, built from the daily change partitions.

Partition D of `[source, "core", table]` is the state at the end of day D: the state of D-1 with
the changes of day D applied, each record at its latest version, deleted and archived records
removed. A run over several days applies each day's changes in turn to the state of the day before
the window, so the daily run reads one day of changes and a backfill reads its range once; neither
rescans history. Folding every change from the first partition on is the full rebuild, and gives
the same state.
"""

from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg
import polars as pl

from revenue_pipelines.lib.metadata import describe_each_day, markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.raw_assets import CHANGED_AT, OWNERS

# Each partition needs the one before it; Dagster orders backfills by this self-dependency.
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
HISTORY_SINCE = "history_since"
_FROM, _UNTIL, _REMOVED = "__valid_from", "__valid_until", "__removed"


def apply_changes(
    previous: pl.DataFrame | None, changes: pl.DataFrame, days: list[date], removed: pl.Expr, key: str = "id"
) -> pl.DataFrame:
    """The state at the end of each of `days` (consecutive), one snapshot per day in `PARTITION_COLUMN`.

    `previous` is the state at the end of the day before `days[0]` (None: nothing yet); `changes`
    holds each changed record's version on the day it changed (its `PARTITION_COLUMN`), and
    `removed` says which versions delete or archive their record. Within a day the version
    changed last wins.
    """
    flags = set(removed.meta.root_names())
    columns = [name for name in changes.columns if name not in flags and name != PARTITION_COLUMN]
    versions = changes.select(*columns, removed.alias(_REMOVED), pl.col(PARTITION_COLUMN).alias(_FROM))
    if previous is not None:
        carried = previous.select(
            pl.exclude(PARTITION_COLUMN),
            pl.lit(False).alias(_REMOVED),
            pl.lit(days[0] - timedelta(days=1)).alias(_FROM),
        )
        columns += [name for name in carried.columns if name not in columns and name not in (_REMOVED, _FROM)]
        versions = pl.concat([carried, versions], how="diagonal_relaxed")

    # Each version holds from its day until the day of the record's next version.
    last_day = days[-1]
    valid = (
        versions.lazy()
        .sort(key, _FROM, CHANGED_AT, nulls_last=False, maintain_order=True)
        .with_columns(pl.col(_FROM).shift(-1).over(key).fill_null(last_day + timedelta(days=1)).alias(_UNTIL))
        .filter(~pl.col(_REMOVED) & (pl.col(_FROM) < pl.col(_UNTIL)))
    )
    snapshot_days = pl.LazyFrame({PARTITION_COLUMN: days}, schema={PARTITION_COLUMN: pl.Date})
    return (
        valid.join_where(
            snapshot_days, pl.col(_FROM) <= pl.col(PARTITION_COLUMN), pl.col(_UNTIL) > pl.col(PARTITION_COLUMN)
        )
        .select(*columns, PARTITION_COLUMN)
        .sort(PARTITION_COLUMN, key)
        .collect()
    )


def current_state_asset(
    *, raw: dg.AssetKey, removed: pl.Expr | None = None, removed_as: str = "", key: str = "id"
) -> dg.AssetsDefinition:
    """`[source, "core", table]`: the current state of the raw change table `raw`, one snapshot per day.

    `removed` is true on the versions that remove a record (a Polars expression over the raw
    columns; None for sources that never remove one), `removed_as` says how in words ("deleted");
    `key` identifies a record.
    """
    source, _, table = raw.path
    state_key = dg.AssetKey([source, "core", table])
    removal = f", {removed_as} records removed" if removed is not None else ""
    description = (
        f"Every record of {raw.to_user_string()} at its latest version as of the end of each day{removal}. Each "
        "day is the day before with that day's changes applied, so history is read once; "
        f"`{HISTORY_SINCE}` says since when changes have been applied."
    )
    removed = pl.lit(False) if removed is None else removed

    @dg.asset(
        key=state_key,
        description=description,
        ins={
            "changes": dg.AssetIn(raw),
            "previous": previous_day_input(state_key),
        },
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=source,
        kinds={source, "polars"},
        owners=OWNERS,
        metadata={"partition_expr": PARTITION_COLUMN},
    )
    def _current_state(
        context: dg.AssetExecutionContext, changes: pl.DataFrame, previous: pl.DataFrame | None
    ) -> dg.MaterializeResult:
        window = StateWindow.of(context, state_key, previous)
        days = window.days
        snapshots = apply_changes(window.previous, changes, days, removed, key)
        describe_each_day(
            context,
            snapshots,
            lambda state, day: {
                "records": state.height,
                "as_of": day.isoformat(),
                "preview": dg.MetadataValue.md(markdown_table(state)),
            },
        )
        return dg.MaterializeResult(
            value=snapshots,
            metadata={
                "changes_applied": changes.height,
                "removals_applied": changes.filter(removed).height,
                HISTORY_SINCE: window.history_since.isoformat(),
            },
        )

    return _current_state


def previous_day_input(state_key: dg.AssetKey) -> dg.AssetIn:
    """The input through which a state reads its own day before (which may not exist)."""
    return dg.AssetIn(state_key, partition_mapping=PREVIOUS_DAY, metadata={"allow_missing_partitions": True})


@dataclass(frozen=True)
class StateWindow:
    """The days a run of a self-dependent state covers, and the state it starts from."""

    days: list[date]
    previous: pl.DataFrame | None
    """The state at the end of the day before `days`; None when the chain starts here."""
    history_since: date
    """The first day whose changes the state has seen."""

    @classmethod
    def of(
        cls, context: dg.AssetExecutionContext, state_key: dg.AssetKey, previous: pl.DataFrame | None
    ) -> "StateWindow":
        """The run's window, with `previous` (as loaded through `previous_day_input`) cut to the day before.

        Over a range [a, b] that input holds [a-1, b-1]: old snapshots of the days this run replaces
        too. Whether the day before was built at all comes from the instance, as an empty state and a
        missing one load alike.
        """
        start, end = context.partition_time_window
        days = [start.date() + timedelta(days=offset) for offset in range((end - start).days)]
        day_before = days[0] - timedelta(days=1)
        since = history_since(context.instance, state_key, day_before)
        if since is None:
            if days[0] > DAILY_INGESTION.start.date():
                context.log.warning(
                    f"{state_key.to_user_string()}: there is no state for {day_before} (never materialized), so "
                    f"this state holds only what changed since {days[0]}. Backfill from the first missing day "
                    "for the whole state."
                )
            return cls(days, None, days[0])
        if previous is not None:
            previous = previous.filter(pl.col(PARTITION_COLUMN) == day_before)
        return cls(days, previous, since)


def history_since(instance: dg.DagsterInstance, state_key: dg.AssetKey, day: date) -> date | None:
    """The first day the state of `day` has seen changes of, or None when there is no such state."""
    if day < DAILY_INGESTION.start.date():
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=state_key, asset_partitions=[day.isoformat()]), limit=1
    ).records
    if not records:
        return None
    recorded = records[0].asset_materialization.metadata.get(HISTORY_SINCE)  # type: ignore[union-attr]
    return date.fromisoformat(recorded.value) if recorded else day
