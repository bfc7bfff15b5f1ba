"""Validation splits rows without losing any, and its check names asset, field and count."""

import dagster as dg
import pandera.polars as pa
import polars as pl

from revenue_pipelines.lib.validation import QUARANTINE_REASON, check_result, validate


class Row(pa.DataFrameModel):
    id: pl.Int64 = pa.Field(nullable=False, unique=True)
    email: pl.Utf8 = pa.Field(nullable=True, str_matches=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    amount: pl.Float64 = pa.Field(nullable=True, ge=0)
    created: pl.Datetime(time_unit="ms", time_zone="UTC") = pa.Field(nullable=False)

    class Config:
        strict = False


RAW = pl.DataFrame(
    {
        "id": ["1", None, "3", "4", "5", "5"],
        "email": ["a@b.com", "x", "c@d.com", None, "e@f.io", "g@h.io"],
        "amount": ["1.5", "2", "abc", "-3", None, "7"],
        "created": ["2026-11-20T13:45:12.345Z"] * 2 + ["n/a"] + ["2026-11-20T00:00:00Z"] * 3,
        "passthrough": [[1], [2], [3], [4], [5], [6]],
    }
)


def test_rows_in_equal_rows_out_plus_quarantined():
    result = validate(RAW, Row)

    assert result.valid["id"].to_list() == [1]
    assert result.valid.schema["amount"] == pl.Float64
    assert result.valid.schema["created"] == pl.Datetime("ms", "UTC")
    assert result.valid["passthrough"].to_list() == [[1]]
    assert result.valid.height + result.quarantined.height == RAW.height
    # Quarantined rows are kept exactly as received, each with its reasons.
    assert result.quarantined.drop(QUARANTINE_REASON).equals(RAW[1:])
    reasons = dict(
        zip(result.quarantined["passthrough"].list.first(), result.quarantined[QUARANTINE_REASON], strict=True)
    )
    assert "id: not_nullable" in reasons[2] and "email: str_matches" in reasons[2]
    assert "amount: dtype(Float64) (got abc)" in reasons[3] and "created: dtype(" in reasons[3]
    assert "amount: greater_than_or_equal_to(0) (got -3.0)" in reasons[4]
    assert "id: field_uniqueness" in reasons[5] and "id: field_uniqueness" in reasons[6]


def test_missing_column_arrives_as_nulls_and_meets_nullability():
    result = validate(RAW.drop("email").slice(0, 1), Row)
    assert result.valid["email"].to_list() == [None]
    assert result.quarantined.is_empty()


def test_check_names_asset_field_and_count():
    key = dg.AssetKey(["hubspot", "raw", "contacts"])
    failed = check_result(key, validate(RAW, Row), "rows_match_schema")
    assert not failed.passed
    assert failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.description.startswith("hubspot/raw/contacts: 5 of 6 rows quarantined:")
    assert "amount failed dtype(Float64) in 1 row" in failed.description
    assert "id failed field_uniqueness in 2 rows" in failed.description
    assert failed.metadata["quarantined_rows"].value == 5
    assert "| amount | dtype(Float64) | 1 | abc |" in failed.metadata["failure_cases"].value

    passed = check_result(key, validate(RAW.slice(0, 1), Row), "rows_match_schema")
    assert passed.passed and passed.metadata["rows_out"].value == 1
