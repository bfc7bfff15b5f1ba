"""Reading source tables out of BigQuery: checked SQL, a dry run against a byte budget, results
streamed into Polars."""

import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from revenue_pipelines.defs.bigquery.queries import SqlFile
from revenue_pipelines.lib.bigquery import BigQueryWarehouse


class BigQuerySource(dg.ConfigurableResource):
    """The warehouse tables the pipelines read: the billing system's and GA4's export.

    Each query is dry-run first: its estimate goes into the metadata, and one above `byte_budget`
    is refused before it costs anything. The budget also caps what the job itself may bill.
    """

    warehouse: BigQueryWarehouse
    source_project: str | None = Field(
        default=None, description="The project that holds the source datasets; unset, the warehouse's."
    )
    billing_dataset: str = Field(description="The billing system's dataset: accounts, invoices, payments.")
    ga4_export_dataset: str = Field(description="GA4's BigQuery export, analytics_<property id>.")
    byte_budget: int = Field(
        default=20 * 1024**3, description="The most bytes one source query may process (by its dry run)."
    )

    def read(
        self,
        sql: SqlFile,
        dataset: str,
        parameters: Mapping[str, object],
        asset_key: dg.AssetKey,
        log: logging.Logger | None = None,
    ) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The rows of `sql` over `dataset` with `parameters` for `asset_key`, and what the read cost."""
        try:
            query = sql.render(project=self.source_project or self.warehouse.project, dataset=dataset)
            bound = sql.bind(parameters)
        except (ValueError, TypeError) as error:  # configuration, not a transient fault: no retry
            raise dg.Failure(
                description=f"{asset_key.to_user_string()}: sql/{sql.name}.sql: {error}", allow_retries=False
            ) from error
        estimate = self.warehouse.estimate(query, bound)
        budget = {"estimated_bytes": estimate, "byte_budget": self.byte_budget}
        if estimate > self.byte_budget:
            raise dg.Failure(
                description=(
                    f"{asset_key.to_user_string()}: sql/{sql.name}.sql would process {estimate:,} bytes "
                    f"for {_window(parameters)}, over the byte budget of {self.byte_budget:,} "
                    "(BIGQUERY_SOURCE_BYTE_BUDGET). Nothing was run: backfill fewer days per run, or raise "
                    "the budget deliberately."
                ),
                metadata=budget,
                allow_retries=False,
            )
        job = self.warehouse.query(
            query, bound, maximum_bytes_billed=min(self.byte_budget, self.warehouse.maximum_bytes_billed)
        )
        read = self.warehouse.read(job, log)
        return read.frame, {
            **budget,
            "bytes_processed": job.total_bytes_processed or 0,
            "bytes_billed": job.total_bytes_billed or 0,
            "bigquery_job_id": job.job_id,
            "read_path": read.read_path,
            "result_batches": read.batches,
            "query": dg.MetadataValue.md(f"```sql\n{query}\n```"),
        }


def _window(parameters: Mapping[str, object]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(parameters.items()))
