"""The revenue team's reference data set, which production keeps by hand in BigQuery: how CRM records
map to accounts, and what each currency was worth in US dollars.

- `account_mapping` (account_key, system, record_id): the manual matches of CRM records to accounts.
  Seeded empty, with its schema: the sandbox's CRM data matches without them.
- `currency_rates` (valid_from, currency, usd_per_unit): how many US dollars one unit of `currency`
  (ISO 4217) was worth from `valid_from` on, until that currency's next row. A row on the first
  day of every month from FIRST_MONTH to LAST_MONTH for each of RATE_BANDS' currencies (the CRMs'
  deal currencies, USD, EUR and GBP, and CAD and JPY): USD is 1.0; the others wander within their
  band, a seeded random walk rounded to 6 decimals (`currency_rates()`).

Unlike the other seeds, it depends on no parameter of the sandbox: every sandbox has the same rates,
and the pipelines' local copy (`defs/revenue/reference/currency_rates.csv`) is this table as CSV.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from functools import cached_property

import polars as pl

from revenue_pipelines.sandbox.bigquery import Column

DATASET = "reference"
TABLES = ("account_mapping", "currency_rates")
FIRST_MONTH = date(2024, 1, 1)
LAST_MONTH = date(2027, 12, 1)
# The US dollars a unit is worth, low and high: each month's rate stays within its currency's band.
RATE_BANDS: dict[str, tuple[float, float]] = {
    "USD": (1.0, 1.0),
    "EUR": (1.05, 1.12),
    "GBP": (1.22, 1.30),
    "CAD": (0.72, 0.76),
    "JPY": (0.0064, 0.0072),
}
PERSISTENCE = 0.8  # of a month's distance from the band's middle, the share that carries to the next
STEP = 0.2  # a month's move, at most this share of the band's width either way (before clipping)
DECIMALS = 6
DTYPES = {"STRING": pl.String(), "DATE": pl.Date(), "FLOAT": pl.Float64()}

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "account_mapping": (
        Column("account_key", "STRING", "REQUIRED"),
        Column("system", "STRING", "REQUIRED"),
        Column("record_id", "STRING", "REQUIRED"),
    ),
    "currency_rates": (
        Column("valid_from", "DATE", "REQUIRED"),
        Column("currency", "STRING", "REQUIRED"),
        Column("usd_per_unit", "FLOAT", "REQUIRED"),  # FLOAT64
    ),
}


class ReferenceSeed:
    """The reference data set as BigQuery's seed (`bigquery.SeedSource`): the same for every sandbox."""

    dataset = DATASET

    @property
    def table_names(self) -> list[str]:
        return list(TABLES)

    @cached_property
    def _tables(self) -> dict[str, pl.DataFrame]:
        return {"account_mapping": account_mapping(), "currency_rates": currency_rates()}

    def schema(self, table: str) -> tuple[Column, ...]:
        return SCHEMAS[_known(table)]

    def truth(self, table: str) -> pl.DataFrame:
        return self._tables[_known(table)]

    def frames(self) -> Iterator[tuple[str, pl.DataFrame]]:
        for table in TABLES:
            yield table, self._tables[table]


def _known(table: str) -> str:
    if table not in TABLES:
        raise KeyError(f"reference has no table {table!r}; it has {', '.join(TABLES)}")
    return table


def account_mapping() -> pl.DataFrame:
    """No manual matches: the table's columns, and no rows."""
    return pl.DataFrame(schema=_schema("account_mapping"))


def currency_rates() -> pl.DataFrame:
    """Every currency's rate on the first of every month from FIRST_MONTH to LAST_MONTH, sorted by
    valid_from and currency: a walk within its band (RATE_BANDS) that starts at the band's middle and
    each month keeps PERSISTENCE of its distance from it, plus a move of up to STEP of the band's
    width, drawn from a `random.Random` of the currency's own (so one currency's rates do not depend
    on which others there are), clipped to the band and rounded to DECIMALS."""
    months = pl.date_range(FIRST_MONTH, LAST_MONTH, "1mo", eager=True).to_list()
    rows: list[tuple[date, str, float]] = []
    for currency, (low, high) in RATE_BANDS.items():
        draw = random.Random(f"reference:currency_rates:{currency}").random
        middle, width = (low + high) / 2, high - low
        rate = middle
        for month in months:
            rows.append((month, currency, round(rate, DECIMALS)))
            moved = middle + PERSISTENCE * (rate - middle) + STEP * width * (2 * draw() - 1)
            rate = min(max(moved, low), high)
    return pl.DataFrame(rows, schema=_schema("currency_rates"), orient="row").sort("valid_from", "currency")


def _schema(table: str) -> dict[str, pl.DataType]:
    return {column.name: DTYPES[column.type] for column in SCHEMAS[table]}
