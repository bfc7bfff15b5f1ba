"""Validation splits rows without losing any, keeps odd descriptive values, and its checks name asset,
field and count."""

from datetime import date

import dagster as dg
import pandera.polars as pa
import polars as pl
import pytest
from pandera.api.polars.types import PolarsData

from revenue_pipelines.defs.hubspot.checks import Company, Contact
from revenue_pipelines.lib.identity import SALESFORCE_ID
from revenue_pipelines.lib.partitions import PARTITION_COLUMN
from revenue_pipelines.lib.validation import (
    DOMAIN,
    EMAIL,
    MALFORMED_FIELDS,
    PHONE,
    QUARANTINE_REASON,
    SOFT,
    fields_check,
    quarantine_check,
    validate,
)

KEY = dg.AssetKey(["hubspot", "raw", "contacts"])


class Row(pa.DataFrameModel):
    id: pl.Int64 = pa.Field(nullable=False, unique=True)
    email: pl.Utf8 = pa.Field(nullable=True, str_matches=EMAIL, metadata=SOFT)
    amount: pl.Float64 = pa.Field(nullable=True, ge=0)
    created: pl.Datetime(time_unit="ms", time_zone="UTC") = pa.Field(nullable=False)
    closed: pl.Boolean = pa.Field(nullable=True)
    close_date: pl.Date = pa.Field(nullable=True)

    class Config:
        strict = False

    @pa.dataframe_check(raise_warning=True)
    def close_date_present_when_closed(cls, data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(~pl.col("closed").fill_null(False) | pl.col("close_date").is_not_null())


RAW = pl.DataFrame(
    {
        "id": ["1", None, "3", "4", "5", "5", "7"],
        "email": ["a@b.com", "x", "c@d.com", None, "e@f.io", "g@h.io", "name.proton.me"],
        "amount": ["1.5", "2", "abc", "-3", None, "7", "1"],
        "created": ["2026-11-20T13:45:12.345Z"] * 2 + ["n/a"] + ["2026-11-20T00:00:00Z"] * 4,
        "closed": ["false"] * 6 + ["true"],
        "close_date": [None] * 7,
        "passthrough": [[1], [2], [3], [4], [5], [6], [7]],
    }
)


def test_rows_in_equal_rows_out_plus_quarantined_and_soft_rules_keep_the_row():
    result = validate(RAW, Row)

    assert result.valid["id"].to_list() == [1, 7]
    assert result.valid.schema["amount"] == pl.Float64
    assert result.valid.schema["created"] == pl.Datetime("ms", "UTC")
    assert result.valid["passthrough"].to_list() == [[1], [7]]
    assert result.valid.height + result.quarantined.height == RAW.height
    # The odd e-mail and the missing close date are kept as received, and the row says which fields.
    assert result.valid["email"].to_list() == ["a@b.com", "name.proton.me"]
    assert result.valid[MALFORMED_FIELDS].to_list() == [None, "close_date_present_when_closed, email"]
    # Quarantined rows are kept exactly as received, each with its hard reasons only.
    assert result.quarantined.drop(QUARANTINE_REASON).equals(RAW[1:6])
    reasons = dict(
        zip(result.quarantined["passthrough"].list.first(), result.quarantined[QUARANTINE_REASON], strict=True)
    )
    assert reasons[2] == "id: not_nullable (got null)"
    assert "amount: dtype(Float64) (got abc)" in reasons[3] and "created: dtype(" in reasons[3]
    assert "amount: greater_than_or_equal_to(0) (got -3.0)" in reasons[4]
    assert "id: field_uniqueness" in reasons[5] and "id: field_uniqueness" in reasons[6]
    assert result.malformed["rows"].to_list() == [1, 1]


def test_missing_column_arrives_as_nulls_and_meets_nullability():
    result = validate(RAW.drop("email").slice(0, 1), Row)
    assert result.valid["email"].to_list() == [None]
    assert result.quarantined.is_empty()


def _days(frame: pl.DataFrame, days: list[date]) -> pl.DataFrame:
    return frame.with_columns(pl.Series(PARTITION_COLUMN, days))


def test_the_blocking_check_fails_above_the_tolerated_share_per_day_and_warns_below():
    day_1, day_2 = date(2026, 11, 19), date(2026, 11, 20)
    # 1 bad row of 200 on each day: 0.5%, within the 1% default.
    good = pl.DataFrame({"id": [str(i) for i in range(398)], "created": ["2026-11-20T00:00:00Z"] * 398, "email": None})
    bad = pl.DataFrame({"id": [None], "created": ["2026-11-20T00:00:00Z"], "email": None})
    raw = pl.concat([good.head(199), bad, good.tail(199), bad], how="vertical_relaxed")
    raw = _days(raw, [day_1] * 200 + [day_2] * 200)
    validated = validate(raw, Row)
    assert validated.valid.height == 398 and validated.quarantined.height == 2

    within = quarantine_check(KEY, validated, "rows_match_schema", max_quarantined_share=0.01)
    assert not within.passed and within.severity == dg.AssetCheckSeverity.WARN
    assert within.description.startswith("hubspot/raw/contacts: 2 of 400 rows quarantined, within")
    assert "id failed not_nullable in 2 rows" in within.description

    over = quarantine_check(KEY, validated, "rows_match_schema", max_quarantined_share=0.004)
    assert not over.passed and over.severity == dg.AssetCheckSeverity.ERROR
    assert "more than max_quarantined_share 0.4% on 2026-11-19 (0.5%), 2026-11-20 (0.5%)" in over.description
    assert over.metadata["quarantined_rows"].value == 2
    assert "| id | not_nullable | 2 | null |" in over.metadata["failure_cases"].value


def test_every_row_failing_fails_whatever_the_tolerance():
    raw = _days(RAW.drop("id").slice(0, 2), [date(2026, 11, 20)] * 2)  # the key column is gone
    check = quarantine_check(KEY, validate(raw, Row), "rows_match_schema", max_quarantined_share=1.0)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "2 of 2 rows quarantined, every row failed: id failed not_nullable in 2 rows" in check.description


def test_clean_rows_pass_both_checks():
    validated = validate(RAW.slice(0, 1), Row)
    assert quarantine_check(KEY, validated, "rows_match_schema", 0.01).passed
    assert fields_check(KEY, validated, "fields_well_formed").passed


def test_the_warn_check_names_asset_field_count_and_examples():
    check = fields_check(KEY, validate(RAW, Row), "fields_well_formed")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description.startswith("hubspot/raw/contacts: 1 of 2 rows kept with odd values, as received")
    assert "email failed str_matches" in check.description and "(e.g. name.proton.me)" in check.description
    assert check.metadata["rows_with_malformed_fields"].value == 1


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (
            EMAIL,
            ["Jane.Doe+news@Acme.COM", "jörg@müller.de", "a@xn--80a1acny.xn--p1ai", "o'brien@acme.co.uk"],
            ["name.proton.me", "a@x.com, b@y.com", "a@x.com;b@y.com", "jane@", "jane doe@acme.com"],
        ),
        (
            DOMAIN,
            [
                "acme.com",
                "Acme.COM",
                "почта.рф",
                "ПОЧТА.РФ",
                "xn--80a1acny.xn--p1ai",
                "XN--80A1ACNY.XN--P1AI",
                "a-b.co.uk",
            ],
            ["acme", "acme..com", "-acme.com", "acme.com/about", "jane@acme.com", "acme .com"],
        ),
        (
            PHONE,
            ["+1 555-1234567", "(234) 555-1234", "+49 30 1234567", "555.123.4567 ext. 204", "+44 (0)20 7946 0958"],
            ["n/a", "call reception", "12", "+1 555-123 or 555-456"],
        ),
        (
            SALESFORCE_ID,
            ["0015e00000AbCdEAAV", "0015e00000AbCdE", "006000000000001AAA"],
            ["0015e00000AbCd", "0015e00000AbCdEaav", "0015e00000AbCdE-AV"],
        ),
    ],
)
def test_rules_accept_legitimate_values_and_flag_odd_ones(pattern, good, bad):
    values = pl.Series(good + bad)
    assert values.str.contains(pattern).to_list() == [True] * len(good) + [False] * len(bad)


def test_hubspot_models_keep_odd_descriptive_values():
    companies = pl.DataFrame(
        {
            "id": ["1", "2"],
            "archived": ["false", "false"],
            "updated_at": ["2026-11-20T00:00:00Z"] * 2,
            "changed_at": ["2026-11-20T00:00:00Z"] * 2,
            "createdate": ["2026-11-01T00:00:00Z"] * 2,
            "hs_lastmodifieddate": ["2026-11-20T00:00:00Z"] * 2,
            "domain": ["почта.рф", "not a domain"],
        }
    )
    result = validate(companies, Company)
    assert result.quarantined.is_empty()
    assert result.valid[MALFORMED_FIELDS].to_list() == [None, "domain"]
    contacts = companies.drop("domain", "hs_lastmodifieddate").with_columns(
        lastmodifieddate=pl.col("updated_at"), email=pl.Series(["Jane+x@Acme.com", "two@a.com, b@c.com"])
    )
    assert validate(contacts, Contact).valid[MALFORMED_FIELDS].to_list() == [None, "email"]
