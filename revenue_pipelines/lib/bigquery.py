"""Where assets land in production: BigQuery, one dataset per layer, partitions replaced atomically.

dagster-gcp's BigQuery IO manager (and dagster-polars' handler on it) falls short on three counts
this project cannot accept, so this one replaces its write path:

- It deletes the partition window, then appends: a run killed in between leaves the window
  empty. Here the frame is loaded into a staging table first, then one transaction deletes the
  window and inserts the staging rows, so a crash at any point leaves the old rows or the new.
- It names tables by the last two parts of the asset key (`raw.contacts`), so HubSpot's and
  Salesforce's contacts would share a table. Here `[source, layer, table]` becomes dataset
  `<prefix><layer>`, table `<source>_<table>`.
- It creates tables from what pandas makes of the frame, so a `pl.Date` becomes TIMESTAMP. Here
  the schema is explicit and kept: new columns are added, an incompatible type is an error naming
  table, column, old and new type.
"""

import io
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import dagster as dg
import grpc
import polars as pl
import pyarrow as pa
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as google_auth_exceptions
from google.cloud import bigquery, bigquery_storage
from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport
from pydantic import Field, PrivateAttr

# BigQuery's naming rules (https://cloud.google.com/bigquery/docs/datasets#dataset-naming and
# .../tables#table_naming), narrowed to ASCII: names are checked before they reach any SQL text.
PROJECT_ID = re.compile(r"(?:[a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
DATASET_ID = re.compile(r"[A-Za-z0-9_]{1,1024}")
TABLE_ID = re.compile(r"[A-Za-z0-9_]{1,1024}")
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")
LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# Polars type -> BigQuery type. Anything else is refused rather than guessed.
BIGQUERY_TYPES: Mapping[type[pl.DataType], str] = {
    pl.String: "STRING",
    pl.Int64: "INT64",
    pl.Int32: "INT64",
    pl.Float64: "FLOAT64",
    pl.Boolean: "BOOL",
    pl.Date: "DATE",
}
UNLIMITED_MESSAGES = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
STAGING_LIFETIME = timedelta(days=1)  # a staging table left by a killed run removes itself
# Result reads: Storage Read streams read in parallel, and batches that may wait for the consumer;
# together they bound the memory a read holds besides what the consumer keeps. REST pages are smaller.
READ_STREAMS = 2
READ_QUEUE_BATCHES = 2
REST_PAGE_ROWS = 50_000
STORAGE_READ_API = "storage_read_api"
REST_API = "rest_api"
# What an existing column's type may be read as: BigQuery reports the legacy names.
SAME_TYPE = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def checked_name(kind: str, name: str) -> str:
    """`name` if it is a valid BigQuery `kind` (project, dataset, table) name; else a clear error."""
    pattern = {"project": PROJECT_ID, "dataset": DATASET_ID, "table": TABLE_ID, "column": COLUMN}[kind]
    if not pattern.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid BigQuery {kind} name; nothing was sent to BigQuery.")
    return name


def bigquery_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP" if dtype.time_zone else "DATETIME"
    if isinstance(dtype, pl.List):
        return bigquery_type(dtype.inner)
    try:
        return BIGQUERY_TYPES[type(dtype)]
    except KeyError:
        raise TypeError(f"no BigQuery type for Polars {dtype}") from None


def table_schema(frame_schema: Mapping[str, pl.DataType]) -> list[bigquery.SchemaField]:
    return [
        bigquery.SchemaField(
            checked_name("column", name),
            bigquery_type(dtype),
            mode="REPEATED" if isinstance(dtype, pl.List) else "NULLABLE",
        )
        for name, dtype in frame_schema.items()
    ]


class ResultBatch(NamedTuple):
    batch: pa.RecordBatch
    read_path: str
    """STORAGE_READ_API or REST_API: how the batch arrived."""


class ResultRead(NamedTuple):
    frame: pl.DataFrame
    read_path: str
    batches: int


class BigQueryWarehouse(dg.ConfigurableResource):
    """Where BigQuery jobs run and who pays for them: every job of the project, the IO manager's and
    the BigQuery sources', goes through here, so each carries the same location, labels and byte cap."""

    project: str = Field(description="The Google Cloud project that runs the jobs and pays for them.")
    location: str = Field(default="US", description="Where datasets are created and jobs run (e.g. US, EU).")
    maximum_bytes_billed: int = Field(
        default=10 * 1024**3, description="A job that would bill more bytes fails instead of running."
    )
    labels: dict[str, str] = Field(default={"app": "revenue_pipelines"}, description="Labels on every job.")
    api_endpoint: str | None = Field(
        default=None, description="The REST API's base URL; unset, Google's (the sandbox sets its emulator's)."
    )
    storage_read_endpoint: str | None = Field(
        default=None,
        description="host:port of a plaintext Storage Read API on this machine (the sandbox's emulator); "
        "unset, results stream from Google's Storage Read API.",
    )
    use_storage_read_api: bool = Field(
        default=True,
        description="Stream results through the Storage Read API; off (or where it is refused), page them "
        "through the REST API.",
    )

    _client: bigquery.Client | None = PrivateAttr(default=None)
    _read_client: bigquery_storage.BigQueryReadClient | None = PrivateAttr(default=None)

    def client(self) -> bigquery.Client:
        if self._client is None:
            checked_name("project", self.project)
            for key, value in self.labels.items():
                if not (LABEL.fullmatch(key) and LABEL.fullmatch(value)):
                    raise ValueError(f"BigQuery label {key}={value} must be lowercase letters, digits, - and _.")
            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            try:
                self._client = bigquery.Client(project=self.project, location=self.location, client_options=options)
            except google_auth_exceptions.DefaultCredentialsError as error:  # configuration: retrying cannot help
                raise dg.Failure(
                    description=(
                        f"No Google credentials for BigQuery project {self.project}: set "
                        "GOOGLE_APPLICATION_CREDENTIALS, or run where Application Default Credentials exist."
                    ),
                    allow_retries=False,
                ) from error
        return self._client

    def read_client(self) -> bigquery_storage.BigQueryReadClient | None:
        """The Storage Read client: the configured endpoint's, else Google's; None when turned off."""
        if self.use_storage_read_api and self._read_client is None:
            if self.storage_read_endpoint:
                host = self.storage_read_endpoint.rsplit(":", 1)[0]
                if host not in LOOPBACK_HOSTS:
                    raise ValueError(
                        f"storage_read_endpoint {self.storage_read_endpoint!r}: plaintext only on loopback"
                    )
                # As Google's transport: a response may be larger than gRPC's default 4 MB.
                channel = grpc.insecure_channel(self.storage_read_endpoint, options=UNLIMITED_MESSAGES)
                transport = BigQueryReadGrpcTransport(channel=channel)
                self._read_client = bigquery_storage.BigQueryReadClient(transport=transport)
            else:
                self._read_client = bigquery_storage.BigQueryReadClient()  # application default credentials
        return self._read_client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()

    def job_config(
        self, parameters: Sequence[bigquery.ScalarQueryParameter] = (), **options: Any
    ) -> bigquery.QueryJobConfig:
        options.setdefault("maximum_bytes_billed", self.maximum_bytes_billed)
        return bigquery.QueryJobConfig(query_parameters=list(parameters), labels=dict(self.labels), **options)

    def query(
        self, sql: str, parameters: Sequence[bigquery.ScalarQueryParameter] = (), **options: Any
    ) -> bigquery.QueryJob:
        """Run `sql` to completion; `options` go to its QueryJobConfig."""
        job = self.client().query(sql, job_config=self.job_config(parameters, **options), location=self.location)
        job.result()
        return job

    def estimate(self, sql: str, parameters: Sequence[bigquery.ScalarQueryParameter] = ()) -> int:
        """The bytes `sql` would process, from a dry run (free, and it checks the query)."""
        config = self.job_config(parameters, dry_run=True, use_query_cache=False)
        job = self.client().query(sql, job_config=config, location=self.location)
        return job.total_bytes_processed or 0

    def batches(self, job: bigquery.QueryJob, log: logging.Logger | None = None) -> Iterator[ResultBatch]:
        """`job`'s result as Arrow record batches, never more than a few in memory.

        Through the Storage Read API while it is on and not refused (the API not enabled in the
        project, or no permission for read sessions), else paged through the REST API.
        """
        read_client = self.read_client()
        if read_client is not None:
            streamed = job.result().to_arrow_iterable(
                bqstorage_client=read_client, max_queue_size=READ_QUEUE_BATCHES, max_stream_count=READ_STREAMS
            )
            try:
                first = next(streamed, None)
            except (api_exceptions.PermissionDenied, api_exceptions.Forbidden) as refused:
                (log or logging.getLogger(__name__)).warning(
                    f"The Storage Read API refused to read {job.job_id}'s result ({refused.message}); "
                    "paging it through the REST API instead, which is slower."
                )
            else:
                if first is not None:
                    yield ResultBatch(first, STORAGE_READ_API)
                    yield from (ResultBatch(batch, STORAGE_READ_API) for batch in streamed)
                return
        for batch in job.result(page_size=REST_PAGE_ROWS).to_arrow_iterable():
            yield ResultBatch(batch, REST_API)

    def read(self, job: bigquery.QueryJob, log: logging.Logger | None = None) -> ResultRead:
        """`job`'s result as one Polars frame, built batch by batch (see `batches`)."""
        frames, read_path = [], REST_API
        for result in self.batches(job, log):
            frames.append(pl.from_arrow(result.batch))
            read_path = result.read_path
        if not frames:  # no batch to take the columns from: an empty page has them
            frames = [pl.from_arrow(job.result(max_results=0).to_arrow(create_bqstorage_client=False))]
        return ResultRead(pl.concat(frames, how="vertical"), read_path, len(frames))


class BigQueryWindowIOManager(dg.ConfigurableIOManager):
    """Partitioned assets into DAY-partitioned BigQuery tables, each run's window replaced in one transaction."""

    warehouse: BigQueryWarehouse
    dataset_prefix: str = Field(default="", description="Prepended to each layer's dataset, e.g. 'revenue_'.")

    @property
    def _client(self) -> bigquery.Client:
        return self.warehouse.client()

    # --- writing ------------------------------------------------------------------------------

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        table_id = self._table_id(context.asset_key)
        partition_column = (context.definition_metadata or {}).get("partition_expr")
        schema = table_schema(obj.schema)
        table = self._ensure_table(table_id, schema, partition_column, context.asset_key)
        staging_id = self._load_staging(table_id, obj, schema, context)
        try:
            job = self._replace(context, table, staging_id, partition_column)
        finally:
            self._client.delete_table(staging_id, not_found_ok=True)
        context.add_output_metadata(
            {
                "table": table_id,
                "rows_written": obj.height,
                "bytes_processed": job.total_bytes_processed or 0,
                "bytes_billed": job.total_bytes_billed or 0,
                "dagster/relation_identifier": table_id,
            }
        )

    def _table_id(self, asset_key: dg.AssetKey) -> str:
        source, layer, table = asset_key.path
        dataset = checked_name("dataset", f"{self.dataset_prefix}{layer}")
        return f"{self.warehouse.project}.{dataset}.{checked_name('table', f'{source}_{table}')}"

    def _ensure_table(
        self, table_id: str, schema: list[bigquery.SchemaField], partition_column: str | None, asset_key: dg.AssetKey
    ) -> bigquery.Table:
        """The target table, created with `schema` or evolved to it: new columns added, types kept."""
        dataset = bigquery.Dataset(table_id.rsplit(".", 1)[0])
        dataset.location = self.warehouse.location
        dataset.labels = dict(self.warehouse.labels)
        self._client.create_dataset(dataset, exists_ok=True)
        wanted = bigquery.Table(table_id, schema=schema)
        if partition_column:
            wanted.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=partition_column
            )
            key = [name for name in ("id",) if name in {field.name for field in schema}]
            wanted.clustering_fields = key or None
        wanted.labels = dict(self.warehouse.labels)
        table = self._client.create_table(wanted, exists_ok=True)
        existing = {field.name: field for field in table.schema}
        conflicts = [
            f"{field.name} is {existing[field.name].field_type} in the table but {field.field_type} in the output"
            for field in schema
            if field.name in existing
            and SAME_TYPE.get(existing[field.name].field_type, existing[field.name].field_type) != field.field_type
        ]
        if conflicts:
            raise dg.Failure(
                description=f"{asset_key.to_user_string()}: the output does not fit {table_id}: "
                + "; ".join(conflicts)
                + ". Migrate the column (or drop the table) deliberately; nothing was written.",
                allow_retries=False,
            )
        added = [field for field in schema if field.name not in existing]
        if added:
            table.schema = [*table.schema, *added]
            table = self._client.update_table(table, ["schema"])
        return table

    def _load_staging(
        self, table_id: str, frame: pl.DataFrame, schema: list[bigquery.SchemaField], context: dg.OutputContext
    ) -> str:
        """The output in a staging table beside the target, expiring on its own if this process dies."""
        staging_id = f"{table_id}__staging_{uuid.uuid4().hex[:12]}"
        staging = bigquery.Table(staging_id, schema=schema)
        staging.expires = datetime.now(UTC) + STAGING_LIFETIME
        self._client.create_table(staging)
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        buffer.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=schema,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            labels=dict(self.warehouse.labels),
        )
        self._client.load_table_from_file(buffer, staging_id, job_config=config).result()
        return staging_id

    def _replace(
        self, context: dg.OutputContext, table: bigquery.Table, staging_id: str, partition_column: str | None
    ) -> bigquery.QueryJob:
        """One transaction: the run's window out, the staging rows in."""
        target = f"`{table.project}.{table.dataset_id}.{table.table_id}`"
        columns = ", ".join(f"`{field.name}`" for field in table.schema)
        window, parameters = _window_filter(context, partition_column)
        # Identifiers are checked names and the schema's own columns; values are query parameters.
        script = "\n".join(
            [
                "BEGIN TRANSACTION;",
                f"DELETE FROM {target} WHERE {window};",  # noqa: S608
                f"INSERT INTO {target} ({columns}) SELECT {columns} FROM `{staging_id}`;",  # noqa: S608
                "COMMIT TRANSACTION;",
            ]
        )
        return self.warehouse.query(script, parameters)

    # --- reading ------------------------------------------------------------------------------

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | pl.LazyFrame | None:
        """The input's partition window (lazy if the input asks for a LazyFrame); None for a table not written
        yet, if the input allows missing partitions."""
        upstream = context.upstream_output
        partition_column = (upstream.definition_metadata or {}).get("partition_expr") if upstream else None
        window, parameters = _window_filter(context, partition_column)
        table_id = self._table_id(context.asset_key)
        try:
            job = self.warehouse.query(f"SELECT * FROM `{table_id}` WHERE {window}", parameters)  # noqa: S608 (checked names)
        except api_exceptions.NotFound:
            if (context.definition_metadata or {}).get("allow_missing_partitions"):
                context.log.warning(f"{table_id} does not exist yet: no partitions of it to load.")
                return None
            raise
        frame = self.warehouse.read(job, context.log).frame
        return frame.lazy() if context.dagster_type.typing_type is pl.LazyFrame else frame


def _window_filter(
    context: dg.InputContext | dg.OutputContext, partition_column: str | None
) -> tuple[str, list[bigquery.ScalarQueryParameter]]:
    """The WHERE condition selecting the run's partition window (all rows when unpartitioned)."""
    if not (partition_column and context.has_asset_partitions):
        return "TRUE", []
    window = context.asset_partitions_time_window
    checked_name("column", partition_column)
    condition = f"`{partition_column}` >= @window_start AND `{partition_column}` < @window_end"
    return condition, [
        bigquery.ScalarQueryParameter("window_start", "DATE", window.start.date()),
        bigquery.ScalarQueryParameter("window_end", "DATE", window.end.date()),
    ]
