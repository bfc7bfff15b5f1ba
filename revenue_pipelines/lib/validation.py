"""Typed, checked rows out of raw source rows, with every rejected row kept in a quarantine.

Sources hand over what the API sent (strings, as received). One Pandera model per table declares
both the column types and the rules; `validate` casts, checks, and splits the rows so that
rows in = rows out + rows quarantined, and `check_result` turns the outcome into the blocking asset
check that stops bad data from flowing downstream.
"""

from dataclasses import dataclass

import dagster as dg
import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from revenue_pipelines.lib.metadata import markdown_table

QUARANTINE_REASON = "quarantine_reason"
# Column types and formats the sources' models share.
UTC_MS = pl.Datetime(time_unit="ms", time_zone="UTC")
UTC_US = pl.Datetime(time_unit="us", time_zone="UTC")  # BigQuery's TIMESTAMP
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
CURRENCY = r"^[A-Z]{3}$"
_ROW = "__row"
_FAILURE_SCHEMA = {_ROW: pl.Int64, "column": pl.Utf8, "check": pl.Utf8, "failure_case": pl.Utf8}


@dataclass(frozen=True)
class Validated:
    """The outcome of validating one batch of raw rows."""

    valid: pl.DataFrame
    """Rows that passed, typed as the schema declares."""
    quarantined: pl.DataFrame
    """Rows that failed, exactly as received, with the reasons in `quarantine_reason`."""
    failures: pl.DataFrame
    """One line per (column, check): how many rows failed it and a few example values."""

    @property
    def rows_in(self) -> int:
        return self.valid.height + self.quarantined.height


Schema = type[pa.DataFrameModel] | pa.DataFrameSchema
"""A table's rules: a model class where the table is fixed, a schema object where it is built from
configuration (GA4's reports)."""


def as_schema(schema: Schema) -> pa.DataFrameSchema:
    return schema if isinstance(schema, pa.DataFrameSchema) else schema.to_schema()


def schema_dtypes(schema: Schema) -> dict[str, pl.DataType]:
    """The Polars type of every column the schema declares."""
    return {name: column.dtype.type for name, column in as_schema(schema).columns.items()}


def _cast(column: str, dtype: pl.DataType, received: pl.DataType) -> pl.Expr:
    """Parse a text column into `dtype`; unparseable values become null (and are reported). A
    typed column (from a typed source such as BigQuery) is cast instead, or kept if it has `dtype`."""
    if received == dtype:
        return pl.col(column)
    if received not in (pl.Utf8, pl.Null):
        return pl.col(column).cast(dtype, strict=False)
    text = pl.col(column).cast(pl.Utf8)
    if dtype == pl.Utf8:
        return text
    if isinstance(dtype, pl.Datetime):
        return text.str.to_datetime(strict=False, time_unit=dtype.time_unit, time_zone=dtype.time_zone)
    if dtype == pl.Date:
        return pl.coalesce(
            text.str.to_date(format="%Y-%m-%d", strict=False),
            text.str.to_datetime(strict=False, time_zone="UTC").dt.date(),
        )
    if dtype == pl.Boolean:
        return text.str.to_lowercase().replace_strict({"true": True, "false": False}, default=None)
    return text.cast(dtype, strict=False)


def validate(raw: pl.DataFrame, schema: Schema) -> Validated:
    """Cast `raw` to `schema`, run its checks, and split passing from failing rows.

    Columns the schema does not declare pass through untouched; declared columns missing from
    `raw` (a property the source stopped sending) arrive as nulls and meet the schema's
    nullability rules like any other null.
    """
    dtypes = schema_dtypes(schema)
    raw = raw.with_columns(pl.lit(None, dtype=pl.Utf8).alias(name) for name in dtypes if name not in raw.columns)
    typed = raw.with_columns(_cast(name, dtype, raw.schema[name]).alias(name) for name, dtype in dtypes.items())

    failures = pl.concat([_cast_failures(raw, typed, dtypes), _check_failures(typed, schema)], how="vertical_relaxed")
    if failures.is_empty():
        return Validated(valid=typed, quarantined=_with_reason(raw.clear()), failures=_summarise(failures))

    reasons = (
        failures.unique(subset=[_ROW, "column", "check"], maintain_order=True)
        .group_by(_ROW, maintain_order=True)
        .agg(
            pl.format("{}: {} (got {})", "column", "check", pl.col("failure_case").fill_null("null"))
            .str.join("; ")
            .alias(QUARANTINE_REASON)
        )
    )
    indexed = raw.with_row_index(_ROW).with_columns(pl.col(_ROW).cast(pl.Int64))
    quarantined = indexed.join(reasons, on=_ROW, how="inner").sort(_ROW).drop(_ROW)
    valid = (
        typed.with_row_index(_ROW)
        .with_columns(pl.col(_ROW).cast(pl.Int64))
        .join(reasons.select(_ROW), on=_ROW, how="anti")
        .sort(_ROW)
        .drop(_ROW)
    )
    return Validated(valid=valid, quarantined=quarantined, failures=_summarise(failures))


def _cast_failures(raw: pl.DataFrame, typed: pl.DataFrame, dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows whose value was present but could not be parsed into the declared type."""
    frames = []
    for name, dtype in dtypes.items():
        if dtype == pl.Utf8:
            continue
        bad = raw[name].is_not_null() & typed[name].is_null()
        if bad.any():
            frames.append(
                pl.DataFrame(
                    {
                        _ROW: pl.int_range(raw.height, eager=True).filter(bad),
                        "column": name,
                        "check": f"dtype({dtype})",
                        "failure_case": raw[name].cast(pl.Utf8).filter(bad),
                    }
                )
            )
    return pl.concat(frames) if frames else pl.DataFrame(schema=_FAILURE_SCHEMA)


def _check_failures(typed: pl.DataFrame, schema: Schema) -> pl.DataFrame:
    """Rows that break one of the schema's rules; a frame-level failure counts against every row."""
    try:
        schema.validate(typed, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        row_level = cases.filter(pl.col("index").is_not_null())
        frame_level = cases.filter(pl.col("index").is_null())
        every_row = pl.DataFrame({_ROW: pl.int_range(typed.height, eager=True)})
        return pl.concat(
            [
                row_level.select(
                    pl.col("index").cast(pl.Int64).alias(_ROW),
                    pl.col("column").cast(pl.Utf8),
                    pl.col("check").cast(pl.Utf8),
                    pl.col("failure_case").cast(pl.Utf8),
                ),
                every_row.join(
                    frame_level.select(
                        pl.col("column").cast(pl.Utf8),
                        pl.col("check").cast(pl.Utf8),
                        pl.col("failure_case").cast(pl.Utf8),
                    ),
                    how="cross",
                ),
            ]
        )
    return pl.DataFrame(schema=_FAILURE_SCHEMA)


def _summarise(failures: pl.DataFrame) -> pl.DataFrame:
    return (
        failures.group_by("column", "check", maintain_order=True)
        .agg(
            pl.col(_ROW).n_unique().alias("rows"),
            pl.col("failure_case").fill_null("null").unique(maintain_order=True).head(5).alias("examples"),
        )
        .sort("rows", descending=True)
    )


def _with_reason(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias(QUARANTINE_REASON))


def check_result(asset_key: dg.AssetKey, validated: Validated, check_name: str) -> dg.AssetCheckResult:
    """The blocking check's verdict: passes only when no row was quarantined.

    The description names the asset, each failing field and its row count, so the error is
    readable in the UI and in a failed `dagster job execute` without opening any metadata.
    """
    failures = validated.failures
    quarantined = validated.quarantined.height
    metadata = {
        "rows_in": validated.rows_in,
        "rows_out": validated.valid.height,
        "quarantined_rows": quarantined,
    }
    if quarantined == 0:
        return dg.AssetCheckResult(check_name=check_name, asset_key=asset_key, passed=True, metadata=metadata)
    problems = ", ".join(
        f"{row['column']} failed {row['check']} in {row['rows']} row{'s' if row['rows'] != 1 else ''}"
        for row in failures.iter_rows(named=True)
    )
    table = failures.with_columns(pl.col("examples").list.join(" | "))
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{asset_key.to_user_string()}: {quarantined} of {validated.rows_in} rows quarantined: {problems}"
        ),
        metadata={**metadata, "failure_cases": dg.MetadataValue.md(markdown_table(table, limit=50))},
    )
