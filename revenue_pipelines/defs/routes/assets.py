"""Route assets: `routes/<destination kind>/<name>`, one per route, downstream of what it delivers.

Each has its source's daily partitions, so a route is launched, retried and backfilled like any
asset, alone or with the job. Thin: it selects the rows (`select_rows`) and hands each day's to the
writer resource of its kind (`lib/destinations/`), which knows the destination; the materialization
records what the destination confirmed, and the blocking check `rows_delivered` compares it with what
was selected.
"""

from datetime import date, timedelta

import dagster as dg
import polars as pl

from revenue_pipelines.defs.routes.rules import ROUTABLE, Route, condition
from revenue_pipelines.lib.destinations import Delivery
from revenue_pipelines.lib.metadata import markdown_table
from revenue_pipelines.lib.partitions import DAILY_INGESTION, PARTITION_COLUMN
from revenue_pipelines.lib.raw_assets import OWNERS

ROWS_DELIVERED = "rows_delivered"
DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, allow_nonexistent_upstream_partitions=True)
RETRIES = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def writer_key(kind: str) -> str:
    """The resource key of a destination kind's writer: the Environment's field of that name."""
    return f"route_{kind}"


def route_key(route: Route) -> dg.AssetKey:
    return dg.AssetKey(["routes", route.kind, route.name])


def route_asset(route: Route) -> dg.AssetsDefinition:
    key = route_key(route)
    source = ROUTABLE[route.source]
    mapping = DAY_BEFORE if route.send == "changed_rows" else None

    @dg.asset(
        key=key,
        description=route.description
        or f"{route.source} to {route.kind} ({route.send.replace('_', ' ')}), as declared in the routes file.",
        ins={
            "rows": dg.AssetIn(
                source,
                partition_mapping=mapping,
                # The first day of a history has no day before: all its rows are new.
                metadata={"allow_missing_partitions": True} if mapping else None,
            )
        },
        partitions_def=DAILY_INGESTION,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="routes",
        kinds={route.kind},
        owners=OWNERS,
        pool=f"route_{route.kind}",
        retry_policy=RETRIES,
        required_resource_keys={writer_key(route.kind)},
        check_specs=[
            dg.AssetCheckSpec(
                ROWS_DELIVERED,
                asset=key,
                blocking=True,
                description="Every row selected was confirmed by the destination, none left in a dead-letter store.",
            )
        ],
        metadata={"route": dg.MetadataValue.json(route.model_dump(mode="json", exclude_none=True))},
    )
    def _route(context: dg.AssetExecutionContext, rows: pl.LazyFrame) -> dg.MaterializeResult:
        writer = getattr(context.resources, writer_key(route.kind))
        selected_rows: dict[str, int] = {}
        deliveries: dict[str, Delivery] = {}
        keys = context.partition_keys
        # A destination that keeps one current value per record (`current_values_only`) gets a range's
        # last day: writing each day in turn would end there anyway, after needless writes.
        if getattr(route.destination, "current_values_only", False):
            keys = keys[-1:]
        read_once = rows.collect().lazy()  # each day's selection filters this, not the files again
        for partition_key in keys:
            frame = select_rows(read_once, route, date.fromisoformat(partition_key))
            selected_rows[partition_key] = frame.height
            deliveries[partition_key] = writer.deliver(
                frame, route.destination, route=route.name, partition_key=partition_key, log=context.log
            )
        return dg.MaterializeResult(
            metadata=delivery_metadata(deliveries),
            check_results=[delivered_check(selected_rows, deliveries)],
        )

    return _route


def select_rows(rows: pl.LazyFrame, route: Route, day: date) -> pl.DataFrame:
    """The day's rows the route sends: those matching `where`, with `columns`; under `changed_rows`,
    only those not identical (in the columns sent) the day before."""
    available = rows.collect_schema().names()
    named = set(route.columns or []) | (set(condition(route.where).meta.root_names()) if route.where else set())
    if unknown := sorted(named - set(available)):
        raise dg.Failure(
            f"Route {route.name}: {route.source} has no column {', '.join(unknown)}. "
            f"Its columns: {', '.join(available)}.",
            allow_retries=False,
        )
    columns = route.columns or available

    def on(day: date) -> pl.LazyFrame:
        frame = rows.filter(pl.col(PARTITION_COLUMN) == day)
        return frame.filter(condition(route.where)) if route.where else frame

    chosen = on(day).select(columns)
    if route.send == "changed_rows":
        compared = [name for name in columns if name != PARTITION_COLUMN]
        before = on(day - timedelta(days=1)).select(compared)
        chosen = chosen.join(before, on=compared, how="anti", nulls_equal=True)
    return chosen.collect()


def delivery_metadata(deliveries: dict[str, Delivery]) -> dict[str, dg.MetadataValue]:
    """One partition: the destination's own confirmation; a range: a table, a row per day (and the
    last day's destination)."""
    if len(deliveries) == 1:
        return next(iter(deliveries.values())).metadata()
    table = pl.DataFrame(
        [
            {"partition": day, "destination": d.uri, "rows": d.rows, "bytes": d.bytes, "checksum": d.checksum}
            for day, d in deliveries.items()
        ]
    )
    return {
        "destination": dg.MetadataValue.text(list(deliveries.values())[-1].uri),
        "rows_delivered": dg.MetadataValue.int(sum(d.rows for d in deliveries.values())),
        "bytes": dg.MetadataValue.int(sum(d.bytes for d in deliveries.values())),
        "deliveries": dg.MetadataValue.md(markdown_table(table, limit=len(table))),
        "answers": dg.MetadataValue.json({day: dict(d.answer) for day, d in deliveries.items()}),
        "dead_letters": dg.MetadataValue.json([path for d in deliveries.values() for path in d.dead_letters]),
    }


def delivered_check(selected: dict[str, int], deliveries: dict[str, Delivery]) -> dg.AssetCheckResult:
    short = {day: (selected[day], d.rows) for day, d in deliveries.items() if d.rows != selected[day]}
    dead = [path for d in deliveries.values() for path in d.dead_letters]
    problems = [f"{day}: {sent:,} selected, {got:,} confirmed" for day, (sent, got) in short.items()]
    if dead:
        problems.append(f"{len(dead)} batch(es) in the dead-letter store: {', '.join(dead[:5])}")
    return dg.AssetCheckResult(
        check_name=ROWS_DELIVERED,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or None,
        metadata={
            "rows_selected": sum(selected.values()),
            "rows_confirmed": sum(d.rows for d in deliveries.values()),
            "dead_letters": len(dead),
        },
    )
