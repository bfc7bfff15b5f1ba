"""HubSpot write-back (reverse ETL): mart columns into HubSpot record properties, only where they differ.

A delivery reads the records' current values (`batch/read`, 100 ids a call), compares them with the
mart's in HubSpot's own formats, and sends only the rows and properties that differ (`batch/update`,
100 records a call), so a re-run sends nothing. Rows whose id is empty or unknown to HubSpot are
counted, not fatal, unless no row could be delivered at all.

The writer talks through the `HubSpotResource` the sources read with (nested resource): one client,
connection pool, retry policy and refusal handling. No new secret: the token in HUBSPOT_ACCESS_TOKEN
needs `crm.objects.<object>.write` besides `.read`; a 403 says which scope to grant.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import dagster as dg
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from revenue_pipelines.defs.hubspot.resources import HubSpotResource, WindowStats
from revenue_pipelines.lib.destinations import Delivery, sha256_checksum

BATCH_LIMIT = 100  # HubSpot's maximum inputs per object batch read and update
# Properties HubSpot computes itself: a batch update naming one is refused.
READ_ONLY_PROPERTIES = ("hs_object_id", "createdate", "hs_lastmodifieddate", "lastmodifieddate")
RECORD_ID = re.compile(r"[1-9][0-9]*")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class HubSpotDestination(BaseModel):
    """A route's `destination:` block for HubSpot write-back."""

    model_config = ConfigDict(extra="forbid")
    current_values_only: ClassVar[bool] = True
    """A property holds one value, not a history: a route's range run writes only its last day."""

    kind: Literal["hubspot"] = Field(description="HubSpot write-back: mart columns into CRM record properties.")
    object: Literal["companies", "contacts", "deals"] = Field(
        default="companies", description="The CRM object type whose records are updated."
    )
    id_column: str = Field(
        min_length=1,
        description="The mart column holding each row's HubSpot record id (hs_object_id), e.g. hubspot_company_id.",
    )
    properties: dict[str, str] = Field(
        min_length=1,
        description=(
            "HubSpot property name -> mart column it takes its value from, e.g. {arr_usd: arr_usd}. "
            "The properties must exist in HubSpot (custom ones are created there first)."
        ),
    )

    @field_validator("properties")
    @classmethod
    def _writable(cls, properties: dict[str, str]) -> dict[str, str]:
        if read_only := sorted(set(properties) & set(READ_ONLY_PROPERTIES)):
            raise ValueError(f"HubSpot computes {', '.join(read_only)}; they cannot be written")
        return properties


class HubSpotWriteBack(dg.ConfigurableResource):
    """Writes a mart's rows into HubSpot record properties through the batch API, only what changed."""

    hubspot: HubSpotResource = Field(
        description="The HubSpot connection the sources read through (token, host, retries); its token "
        "(HUBSPOT_ACCESS_TOKEN) needs crm.objects.<object>.write."
    )

    def deliver(
        self,
        frame: pl.DataFrame,
        destination: HubSpotDestination,
        *,
        route: str,
        partition_key: str,
        log: logging.Logger,
    ) -> Delivery:
        _require_columns(frame, destination, route)
        ids = _id_texts(frame.get_column(destination.id_column))
        wanted, missing_ids = _wanted_values(frame, ids, destination, route)
        stats = WindowStats()
        bodies: list[bytes] = []
        current = self._read_current(destination, list(wanted), stats, bodies, route)
        changes = {
            record_id: changed
            for record_id, values in wanted.items()
            if record_id in current and (changed := _differing(values, current[record_id], frame.schema, destination))
        }
        updated = self._update(destination.object, changes, stats, bodies)
        in_sync = (set(current) - set(changes)) | updated
        unknown = [record_id for record_id in wanted if record_id not in in_sync]
        rows = sum(1 for record_id in ids if record_id in in_sync)
        if unknown:
            log.warning(
                "Route %s (%s): %d ids are not live HubSpot %s, e.g. %s",
                route,
                partition_key,
                len(unknown),
                destination.object,
                ", ".join(unknown[:10]),
            )
        if frame.height and not rows:
            raise dg.Failure(
                description=f"Route {route} ({partition_key}) delivered none of its {frame.height} rows: no value "
                f"of {destination.id_column!r} is the id of a live HubSpot {destination.object} record "
                f"({missing_ids} empty, {len(unknown)} unknown, e.g. {', '.join(unknown[:5]) or 'none'}).",
                allow_retries=False,
            )
        answer = {
            "read": len(current),
            "changed": len(changes),
            "updated": len(updated),
            "unknown_ids": len(unknown),
            "missing_ids": missing_ids,
            "batches": math.ceil(len(changes) / BATCH_LIMIT),
            "attempts": stats.requests + stats.retries,
        }
        log.info("Route %s (%s) to HubSpot %s: %s", route, partition_key, destination.object, answer)
        return Delivery(
            uri=f"hubspot://{urlsplit(self.hubspot.host).netloc}/{destination.object}",
            rows=rows,
            bytes=sum(len(body) for body in bodies),
            checksum=sha256_checksum(*bodies),
            answer=answer,
        )

    def _read_current(
        self,
        destination: HubSpotDestination,
        ids: list[str],
        stats: WindowStats,
        bodies: list[bytes],
        route: str,
    ) -> dict[str, dict[str, str | None]]:
        """id -> the mapped properties' current values, for the live records among `ids`."""
        properties = list(destination.properties)
        current: dict[str, dict[str, str | None]] = {}
        for chunk in _chunks(ids, BATCH_LIMIT):
            body = {"inputs": [{"id": record_id} for record_id in chunk], "properties": properties}
            bodies.append(_wire(body))
            for record in json.loads(self.hubspot.batch_read(destination.object, body, stats)).get("results") or []:
                if not record.get("id"):  # served without an id: it cannot be matched to a row
                    continue
                sent = record.get("properties") or {}
                if absent := [name for name in properties if name not in sent]:
                    raise dg.Failure(
                        description=f"HubSpot {destination.object} have no property {', '.join(absent)} (route "
                        f"{route} writes it): create it in HubSpot or correct the route's properties.",
                        allow_retries=False,
                    )
                current[str(record["id"])] = {name: sent[name] for name in properties}
        return current

    def _update(
        self, object_type: str, changes: dict[str, dict[str, str]], stats: WindowStats, bodies: list[bytes]
    ) -> set[str]:
        """Send `changes` in full batches; the ids HubSpot confirmed updating."""
        updated: set[str] = set()
        for chunk in _chunks(list(changes), BATCH_LIMIT):
            body = {"inputs": [{"id": record_id, "properties": changes[record_id]} for record_id in chunk]}
            bodies.append(_wire(body))
            answer = json.loads(self.hubspot.batch_update(object_type, body, stats))
            updated |= {str(record["id"]) for record in answer.get("results") or []}
        return updated


def _require_columns(frame: pl.DataFrame, destination: HubSpotDestination, route: str) -> None:
    needed = [destination.id_column, *destination.properties.values()]
    if absent := [column for column in dict.fromkeys(needed) if column not in frame.columns]:
        raise dg.Failure(
            description=f"Route {route} maps columns its rows do not have: {', '.join(absent)}.", allow_retries=False
        )


def _wanted_values(
    frame: pl.DataFrame, ids: list[str | None], destination: HubSpotDestination, route: str
) -> tuple[dict[str, dict[str, str | None]], int]:
    """id -> property -> the mart's value as HubSpot text (None: empty), and how many rows have no id.

    Rows repeating an id with the same values are one record; with different values they are an error,
    since HubSpot can hold only one.
    """
    texts = {name: _hubspot_texts(frame.get_column(column)) for name, column in destination.properties.items()}
    wanted: dict[str, dict[str, str | None]] = {}
    conflicts: list[str] = []
    missing = 0
    for index, record_id in enumerate(ids):
        if record_id is None:
            missing += 1
            continue
        values = {name: column[index] for name, column in texts.items()}
        if wanted.setdefault(record_id, values) != values:
            conflicts.append(record_id)
    if conflicts:
        raise dg.Failure(
            description=f"Route {route} gives HubSpot {destination.object} records different values in one "
            f"delivery (ids {', '.join(sorted(set(conflicts))[:10])}): select one row per {destination.id_column}.",
            allow_retries=False,
        )
    return wanted, missing


def _id_texts(ids: pl.Series) -> list[str | None]:
    """Record ids as HubSpot writes them; None where the value cannot be one (empty, not a positive integer)."""
    texts = ids.cast(pl.String).str.strip_chars().to_list()
    return [text if text is not None and RECORD_ID.fullmatch(text) else None for text in texts]


def _hubspot_texts(column: pl.Series) -> list[str | None]:
    """A mart column as HubSpot property values: numbers without float noise, datetimes as ISO-8601
    UTC with milliseconds, dates as YYYY-MM-DD, booleans as true/false; None for null."""
    dtype = column.dtype
    values = column.to_list()
    if dtype.is_numeric():
        return [None if value is None else _mart_number_text(value, column.name) for value in values]
    if dtype == pl.Datetime:
        return [None if value is None else _instant_text(value) for value in values]
    if dtype == pl.Date:
        return [None if value is None else value.isoformat() for value in values]
    if dtype == pl.Boolean:
        return [None if value is None else str(value).lower() for value in values]
    if dtype == pl.Null:
        return values
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return [None if value in (None, "") else str(value) for value in values]
    raise dg.Failure(
        description=f"Column {column.name!r} is {dtype}: HubSpot properties take text, numbers, dates and booleans.",
        allow_retries=False,
    )


def _differing(
    wanted: Mapping[str, str | None],
    current: Mapping[str, str | None],
    schema: pl.Schema,
    destination: HubSpotDestination,
) -> dict[str, str]:
    """The properties whose HubSpot value differs from the mart's, with the text to send ("" clears)."""
    return {
        name: value or ""
        for name, value in wanted.items()
        if _as_hubspot_would(current[name], schema[destination.properties[name]]) != value
    }


def _as_hubspot_would(text: str | None, dtype: pl.DataType) -> str | None:
    """HubSpot's stored text in the form `_hubspot_texts` gives a value of `dtype`, so that equal values
    compare equal however they were written (`1200.50`, epoch milliseconds, ...); text that does not
    parse is returned as is, and so differs."""
    if text is None or text == "":
        return None
    try:
        if dtype.is_numeric():
            number = Decimal(text)
            return _number_text(number) if number.is_finite() else text
        if dtype == pl.Datetime:
            return _instant_text(_parse_instant(text))
        if dtype == pl.Date:
            return _parse_instant(text).date().isoformat()
        if dtype == pl.Boolean:
            return text.lower()
    except (ValueError, ArithmeticError):
        return text
    return text


def _mart_number_text(value: Any, column: str) -> str:
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise dg.Failure(
            description=f"Column {column!r} holds {value}, which HubSpot cannot store.", allow_retries=False
        )
    return _number_text(number)


def _number_text(number: Decimal) -> str:
    """The shortest exact decimal text: 1200.5 not 1200.50, 1000 not 1000.0 or 1E+3."""
    return "0" if number.is_zero() else format(number.normalize(), "f")


def _instant_text(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_instant(text: str) -> datetime:
    """HubSpot's dates and datetimes: epoch milliseconds or ISO-8601 (a date alone is midnight UTC)."""
    if text.isdigit():
        return EPOCH + timedelta(milliseconds=int(text))
    return datetime.fromisoformat(text)


def _wire(body: Mapping[str, Any]) -> bytes:
    """The request body exactly as the client sends it (`json.dumps` with its defaults)."""
    return json.dumps(body).encode()


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
