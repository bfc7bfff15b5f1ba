"""Reference tables the revenue team maintains by hand: the account mapping and currency rates.

LOCAL reads the reviewed CSV files in `reference/`; PROD reads tables of the same names and
columns in a BigQuery dataset, so the people who own them can edit them without a deploy. Either
way a table arrives with the declared columns and types, or the read fails naming what is wrong.
"""

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from revenue_pipelines.lib.bigquery import BigQueryWarehouse, checked_name

REFERENCE_DIRECTORY = Path(__file__).parent / "reference"


class CsvReferenceTables(dg.ConfigurableResource):
    """Reference tables as CSV files (`<table>.csv`, `#` starts a comment line)."""

    directory: str = Field(default=str(REFERENCE_DIRECTORY), description="The folder of the CSV files.")

    def read(self, table: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        path = Path(self.directory) / f"{checked_name('table', table)}.csv"
        try:
            frame = pl.read_csv(path, comment_prefix="#", schema_overrides=schema, try_parse_dates=False)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise dg.Failure(
                description=f"reference table {table} ({path.name}): {error}", allow_retries=False
            ) from error
        return _conformed(frame, table, schema)


class BigQueryReferenceTables(dg.ConfigurableResource):
    """Reference tables in a BigQuery dataset."""

    warehouse: BigQueryWarehouse
    dataset: str = Field(description="The dataset holding account_mapping and currency_rates.")

    def read(self, table: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        table_id = ".".join(
            (
                checked_name("project", self.warehouse.project),
                checked_name("dataset", self.dataset),
                checked_name("table", table),
            )
        )
        columns = ", ".join(f"`{checked_name('column', name)}`" for name in schema)
        job = self.warehouse.query(f"SELECT {columns} FROM `{table_id}`")  # noqa: S608 (checked names)
        return _conformed(self.warehouse.read(job).frame, table, schema)


# What the assets ask of the `reference` resource, whichever the environment picked.
ReferenceTables = CsvReferenceTables | BigQueryReferenceTables


def _conformed(frame: pl.DataFrame, table: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with exactly the declared columns and types, or a Failure naming the gaps."""
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise dg.Failure(
            description=f"reference table {table} lacks the columns {', '.join(missing)}", allow_retries=False
        )
    try:
        return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
    except pl.exceptions.PolarsError as error:
        raise dg.Failure(description=f"reference table {table}: {error}", allow_retries=False) from error
