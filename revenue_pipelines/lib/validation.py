"""Typed, checked rows out of raw source rows, with every unusable row kept in a quarantine.

Sources hand over what the API sent (strings, as received). One Pandera model per table declares
the column types and two kinds of rules:

- **hard** rules say a row cannot be used: no id, an id or timestamp that does not parse, a key of
  the wrong type, a required value missing. Such rows go to the quarantine, with the reasons.
- **soft** rules say a descriptive value looks odd: an e-mail, a domain, a phone number, a currency
  code, an id in a sister system. Real portals always hold some, and nobody can fix them all before
  tomorrow's run, so the row is kept with the value as received, and its column
  `malformed_fields` names the fields, for RevOps to clean at the source. A column's rules are soft
  when its field carries `metadata=SOFT`; a frame-wide rule is soft when declared with Pandera's
  own `raise_warning=True`.

`validate` casts, checks and splits the rows so that rows in = rows out + rows quarantined;
`quarantine_check` turns the split into the blocking check (it fails when a partition lost more
than its tolerated share, or every row failed) and `fields_check` into the WARN check on the odd
values.
"""

import copy
from dataclasses import dataclass

import dagster as dg
import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from revenue_pipelines.lib.metadata import markdown_table
from revenue_pipelines.lib.partitions import PARTITION_COLUMN

QUARANTINE_REASON = "quarantine_reason"
MALFORMED_FIELDS = "malformed_fields"
SOFT = {"rule": "soft"}
"""Field metadata: the column's rules only warn; an odd value is kept as received."""
DEFAULT_MAX_QUARANTINED_SHARE = 0.01
# Column types and formats the sources' models share.
UTC_MS = pl.Datetime(time_unit="ms", time_zone="UTC")
UTC_US = pl.Datetime(time_unit="us", time_zone="UTC")  # BigQuery's TIMESTAMP
# One mailbox: any case, plus-addressing and internationalised domains are fine; two in one field are not.
EMAIL = r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$"
# A host name in Unicode or punycode, any case (`[^\W_]`: a letter or digit, to Python's and Polars' regex alike).
DOMAIN = r"^(?:[^\W_](?:(?:[^\W_]|-)*[^\W_])?\.)+(?:[^\W\d_]{2,}|[xX][nN]--[a-zA-Z0-9-]+)$"
# Digits with the usual separators, an optional leading + and an extension.
PHONE = r"^\+?[0-9(][0-9 ().\-/]{5,}[0-9](?:\s*(?:x|ext\.?|#)\s*[0-9]+)?$"
CURRENCY = r"^[A-Z]{3}$"
_ROW = "__row"
_FAILURE_SCHEMA = {_ROW: pl.Int64, "column": pl.Utf8, "check": pl.Utf8, "failure_case": pl.Utf8}


@dataclass(frozen=True)
class Validated:
    """The outcome of validating one batch of raw rows."""

    valid: pl.DataFrame
    """Rows that passed the hard rules, typed as the schema declares; with `malformed_fields` where
    the schema has soft rules."""
    quarantined: pl.DataFrame
    """Rows that failed a hard rule, exactly as received, with the reasons in `quarantine_reason`."""
    failures: pl.DataFrame
    """Hard rules: one line per (column, check), how many rows failed it and a few example values."""
    malformed: pl.DataFrame
    """Soft rules, the same way, over the rows kept."""

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
    """Cast `raw` to `schema`, run its rules, and split usable rows from unusable ones.

    Columns the schema does not declare pass through untouched; declared columns missing from
    `raw` (a property the source stopped sending) arrive as nulls and meet the schema's
    nullability rules like any other null.
    """
    dtypes = schema_dtypes(schema)
    hard, soft = split_rules(as_schema(schema))
    raw = raw.with_columns(pl.lit(None, dtype=pl.Utf8).alias(name) for name in dtypes if name not in raw.columns)
    typed = raw.with_columns(_cast(name, dtype, raw.schema[name]).alias(name) for name, dtype in dtypes.items())

    failures = pl.concat([_cast_failures(raw, typed, dtypes), _check_failures(typed, hard)], how="vertical_relaxed")
    odd = _check_failures(typed, soft) if soft is not None else pl.DataFrame(schema=_FAILURE_SCHEMA)
    odd = odd.join(failures.select(_ROW), on=_ROW, how="anti")
    if soft is not None:
        typed = typed.with_columns(_malformed_fields(odd, typed.height))
    if failures.is_empty():
        quarantined = raw.clear().with_columns(pl.lit(None, dtype=pl.Utf8).alias(QUARANTINE_REASON))
        return Validated(typed, quarantined, failures=_summarise(failures), malformed=_summarise(odd))

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
    return Validated(valid=valid, quarantined=quarantined, failures=_summarise(failures), malformed=_summarise(odd))


def split_rules(schema: pa.DataFrameSchema) -> tuple[pa.DataFrameSchema, pa.DataFrameSchema | None]:
    """The schema without its soft rules, and a schema of the soft rules alone (None if it has none)."""
    soft_columns = {name: column for name, column in schema.columns.items() if column.metadata == SOFT}
    soft_checks = [check for check in schema.checks if check.raise_warning]
    hard = schema.update_columns({name: {"checks": []} for name in soft_columns})
    hard.checks = [check for check in schema.checks if not check.raise_warning]
    if not soft_columns and not soft_checks:
        return hard, None
    soft = pa.DataFrameSchema(
        {name: pa.Column(None, checks=column.checks, nullable=True) for name, column in soft_columns.items()},
        checks=[_failing(check) for check in soft_checks],
        strict=False,
        name=schema.name,
    )
    return hard, soft


def _failing(check: pa.Check) -> pa.Check:
    """A warning check made to report its failure cases, as the soft pass collects them."""
    reporting = copy.copy(check)
    reporting.raise_warning = False
    return reporting


def _malformed_fields(odd: pl.DataFrame, height: int) -> pl.Series:
    """Per row, the fields a soft rule found odd (a frame-wide rule by its name), or null."""
    fields = (
        odd.select(_ROW, field=pl.coalesce("column", "check"))
        .unique(maintain_order=True)
        .group_by(_ROW)
        .agg(pl.col("field").sort().str.join(", "))
    )
    rows = pl.DataFrame({_ROW: pl.int_range(height, eager=True, dtype=pl.Int64)})
    return rows.join(fields, on=_ROW, how="left", maintain_order="left")["field"].alias(MALFORMED_FIELDS)


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
                    # A frame-wide rule names the schema as its column: it has none.
                    pl.when(pl.col("schema_context") != "DataFrameSchema").then(pl.col("column").cast(pl.Utf8)),
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


def _problems(summary: pl.DataFrame) -> str:
    return ", ".join(_problem(row) for row in summary.iter_rows(named=True))


def _problem(row: dict) -> str:
    """`email failed str_matches in 3 rows`; a frame-wide rule: `CloseDate_present_when_IsClosed failed in 1 row`."""
    rows = f"in {row['rows']} row{'s' if row['rows'] != 1 else ''}"
    # A pattern reads badly in one line; the failure_cases table keeps it.
    check = "str_matches" if row["check"].startswith("str_matches(") else row["check"]
    return f"{row['column']} failed {check} {rows}" if row["column"] else f"{check} failed {rows}"


def _cases_table(summary: pl.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(summary.with_columns(pl.col("examples").list.join(" | ")), limit=50))


def quarantine_check(
    asset_key: dg.AssetKey, validated: Validated, check_name: str, max_quarantined_share: float
) -> dg.AssetCheckResult:
    """The blocking check's verdict on what was quarantined.

    It fails (ERROR, blocking downstream) when any partition lost more than `max_quarantined_share`
    of its rows, or when every row failed (a required column gone, a type changed at the source).
    Fewer quarantined rows do not stop the day: the result is a WARN naming them. The description
    names the asset, each failing field and its row count, readable in the UI and in a failed
    `dagster job execute` without opening any metadata.
    """
    quarantined = validated.quarantined.height
    metadata = {
        "rows_in": validated.rows_in,
        "rows_out": validated.valid.height,
        "quarantined_rows": quarantined,
        "max_quarantined_share": max_quarantined_share,
    }
    if quarantined == 0:
        return dg.AssetCheckResult(check_name=check_name, asset_key=asset_key, passed=True, metadata=metadata)

    shares = _quarantined_shares(validated)
    worst = shares.row(0, named=True)
    over = shares.filter(pl.col("share") > max_quarantined_share)
    every_row = quarantined == validated.rows_in
    summary = f"{asset_key.to_user_string()}: {quarantined} of {validated.rows_in} rows quarantined"
    if every_row:
        verdict = "every row failed"
    elif over.height:
        days = ", ".join(f"{row['day']} ({row['share']:.1%})" for row in over.head(5).iter_rows(named=True))
        verdict = f"more than max_quarantined_share {max_quarantined_share:.1%} on {days}"
    else:
        verdict = f"within max_quarantined_share {max_quarantined_share:.1%} (at most {worst['share']:.1%} of a day)"
    failed = every_row or over.height > 0
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR if failed else dg.AssetCheckSeverity.WARN,
        description=f"{summary}, {verdict}: {_problems(validated.failures)}",
        metadata={
            **metadata,
            "highest_quarantined_share": float(worst["share"]),
            "failure_cases": _cases_table(validated.failures),
        },
    )


def _quarantined_shares(validated: Validated) -> pl.DataFrame:
    """Quarantined share per partition day, highest first. Rows whose day cannot be told (their
    timestamp did not parse) count against the whole batch."""
    if PARTITION_COLUMN not in validated.quarantined.columns:
        return pl.DataFrame({"day": ["all"], "share": [validated.quarantined.height / validated.rows_in]})
    days = validated.quarantined[PARTITION_COLUMN].cast(pl.Utf8).value_counts(name="quarantined")
    kept = validated.valid[PARTITION_COLUMN].cast(pl.Utf8).value_counts(name="kept")
    return (
        days.join(kept, on=PARTITION_COLUMN, how="left", nulls_equal=True)
        .select(
            day=pl.col(PARTITION_COLUMN).fill_null("unknown day"),
            share=pl.when(pl.col(PARTITION_COLUMN).is_null())
            .then(pl.col("quarantined") / validated.rows_in)
            .otherwise(pl.col("quarantined") / (pl.col("quarantined") + pl.col("kept").fill_null(0))),
        )
        .sort("share", "day", descending=[True, False])
    )


def fields_check(asset_key: dg.AssetKey, validated: Validated, check_name: str) -> dg.AssetCheckResult:
    """The WARN verdict on odd descriptive values: kept as received, counted and listed per field."""
    rows = validated.valid.filter(pl.col(MALFORMED_FIELDS).is_not_null()).height
    metadata = {"rows_with_malformed_fields": rows}
    if rows == 0:
        return dg.AssetCheckResult(check_name=check_name, asset_key=asset_key, passed=True, metadata=metadata)
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{asset_key.to_user_string()}: {rows} of {validated.valid.height} rows kept with odd values, as "
            f"received (column {MALFORMED_FIELDS} names them): {_examples(validated.malformed)}"
        ),
        metadata={**metadata, "failure_cases": _cases_table(validated.malformed)},
    )


def _examples(summary: pl.DataFrame) -> str:
    """Each problem with a few of its values; a frame-wide rule's failure is a whole row, so none."""
    return "; ".join(
        f"{_problem(row)} (e.g. {' | '.join(row['examples'][:3])})" if row["column"] else _problem(row)
        for row in summary.iter_rows(named=True)
    )
