"""BigQuery in the sandbox: local-bigquery's emulator (the REST API and the Storage Read API, over
DuckDB) in a child process, and the OAuth token endpoint that its clients' throwaway key names.

    with Sandbox(bigquery=True) as sb:
        client = sb.bigquery.client()         # a real google.cloud.bigquery.Client, over real HTTP
        frame = client.list_rows("d.t").to_arrow(bqstorage_client=sb.bigquery.read_client())
        sb.env()                              # what unmodified clients in another process need

google-cloud-bigquery takes BIGQUERY_EMULATOR_HOST as its API endpoint, and google-auth signs a JWT
with the service-account key in GOOGLE_APPLICATION_CREDENTIALS and trades it at the key's token_uri,
here the sandbox's POST /token. The emulator takes any bearer token.

It starts seeded with its `sources` (`SeedSource`): `Sandbox` gives it the billing system
(`billing_dataset`), the GA4 property's export (`ga4_export_dataset`) and the revenue team's
reference data (`reference_dataset`: account mapping, currency rates), each table created by a
Parquet load with its declared schema through the real client, and kept as `truth(dataset, table)`.

Where the emulator is not BigQuery:
- A partition decorator (`table$20261121`) names a new table rather than a partition.
- `Table.num_rows` is stale after TRUNCATE TABLE: count rows with a query.
- A WRITE_TRUNCATE or WRITE_EMPTY load turns REQUIRED columns NULLABLE (partitioning and clustering
  stay); a WRITE_APPEND load keeps them, and their NOT NULL holds. Seeding creates a table with
  REQUIRED columns first, then appends to it.
- Queries (dry runs too) report the logical bytes of the tables they name (rows x columns x 8; the
  sandbox adds this), not those of the columns and partitions read; wildcard tables report 0, and
  `maximum_bytes_billed` is not enforced.
- Jobs run in location US whatever they ask for.
- A load or a CREATE TABLE costs about 0.1 s however small (seeding the 35 tables adds about 2 s to
  the start); big nested loads run at about 200,000 GA4 events a second.
- A scalar subquery over UNNEST needs the alias: `(SELECT p.value.int_value FROM UNNEST(event_params)
  AS p WHERE p.key = 'x')` works, the unaliased `... FROM UNNEST(event_params) WHERE key = 'x'` does not.
- The Storage Read API speaks plaintext gRPC at `storage_endpoint`, which no client finds by itself:
  give `to_arrow`/`to_dataframe` of a query job or `list_rows` `bqstorage_client=read_client()` or
  `create_bqstorage_client=False`, or they call Google's Storage API (and fail offline).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

import google.auth.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from google.oauth2 import service_account

from revenue_pipelines.sandbox.emulator_process import end, first_line
from revenue_pipelines.sandbox.server import Request, Response, Route, Service, json_response, oauth_error

if TYPE_CHECKING:  # the clients take seconds to import, and most sandboxes have no BigQuery
    import polars as pl
    from google.cloud import bigquery, bigquery_storage

PROJECT = "revenue-sandbox"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
START_TIMEOUT_SECONDS = 60.0  # a cold start after `make install` compiles local-bigquery's imports
LOAD_THREADS = 3  # concurrent load jobs while seeding
PENDING_LOADS = 4  # tables generated ahead of their loads (each a Parquet file in memory)


class GoogleOAuth(Service):
    """Google's token endpoint for one throwaway service account: a JWT bearer grant signed by its key
    gets an access token, so credentials refresh as they do against Google."""

    def __init__(self, project: str):
        super().__init__(limiter=None, send_retry_after=False)
        self.client_email = f"pipelines@{project}.iam.gserviceaccount.com"
        self.project = project
        self.key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_file(self, token_uri: str) -> dict[str, str]:
        """The service-account key file that google-auth reads, as JSON."""
        private_key = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": self.key_id,
            "private_key": private_key.decode(),
            "client_email": self.client_email,
            "token_uri": token_uri,
        }

    def routes(self) -> list[Route]:
        return [Route("POST", re.compile(r"/token"), self._grant, authenticated=False)]

    def error(self, status: int, message: str, category: str) -> Response:
        return oauth_error("internal_failure" if status >= 500 else "invalid_request", message, status)

    def rate_limited(self, retry_after: float | None) -> Response:
        return oauth_error("rate_limit_exceeded", "Too many token requests.", 429)

    def refusal(self, request: Request) -> Response | None:
        return None  # the token endpoint is where credentials come from

    def _grant(self, request: Request) -> Response:
        form = request.form()
        if form.get("grant_type") != JWT_BEARER:
            return oauth_error("unsupported_grant_type", "Invalid grant_type.")
        try:
            claims = jwt.decode(form.get("assertion", ""), certs={self.key_id: self._public_key})
        except (google.auth.exceptions.GoogleAuthError, ValueError) as error:
            return oauth_error("invalid_grant", f"Invalid JWT: {error}")
        if claims.get("iss") != self.client_email:
            return oauth_error("invalid_grant", "Invalid JWT: unknown issuer.")
        token = f"ya29.sandbox-{secrets.token_urlsafe(32)}"
        return json_response(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


@dataclass(frozen=True)
class Column:
    """A column of a table the sandbox seeds, as BigQuery's TableFieldSchema has it (without the
    client, whose import takes seconds): `type` as tables report it (INTEGER, FLOAT, RECORD...), `fields`
    a RECORD's columns."""

    name: str
    type: str
    mode: str = "NULLABLE"  # or REQUIRED, REPEATED
    fields: tuple[Column, ...] = ()

    def api_repr(self) -> dict[str, Any]:
        """The JSON the REST API takes, as `bigquery.SchemaField.from_api_repr` reads it."""
        field: dict[str, Any] = {"name": self.name, "type": self.type, "mode": self.mode}
        if self.fields:
            field["fields"] = [column.api_repr() for column in self.fields]
        return field


class SeedSource(Protocol):
    """A data set the emulator is seeded with at start (`billing_data.BillingSeed`, `ga4_export.GA4Export`,
    `reference_data.ReferenceSeed`)."""

    @property
    def dataset(self) -> str: ...

    @property
    def table_names(self) -> list[str]: ...

    def schema(self, table: str) -> tuple[Column, ...]: ...

    def truth(self, table: str) -> pl.DataFrame: ...

    def frames(self) -> Iterator[tuple[str, pl.DataFrame]]:
        """(table, frame) for every table, in its schema's columns; generated as iterated."""
        ...


class _Emulator(NamedTuple):
    process: subprocess.Popen[str]
    endpoint: str
    storage_endpoint: str
    credentials_file: Path


class BigQuery:
    """The emulator and its service account. `Sandbox` starts it (in about 4 s: the child process
    imports local-bigquery and opens DuckDB; seeding adds about 2 s at the default sizes) and stops
    it; it keeps its data in the sandbox's private directory, so each sandbox starts with only the
    data sets it is seeded with.

    `sources` are those data sets (`SeedSource`): once the emulator listens, each becomes a dataset
    of tables created with their declared schemas and loaded as Parquet through the real client.
    Their frames are generated while the emulator starts and loaded a few at a time; `truth` gives
    a table as loaded. `Sandbox` seeds the billing system (`billing_dataset`), the GA4 property's
    export (`ga4_export_dataset`) and the revenue team's reference data (`reference_dataset`).
    """

    def __init__(self, project: str = PROJECT, sources: Sequence[SeedSource] = ()):
        self.project = project
        self.oauth = GoogleOAuth(project)
        self._sources = {source.dataset: source for source in sources}
        if len(self._sources) != len(sources):
            raise ValueError("two seed sources name the same dataset")
        self._emulator: _Emulator | None = None

    @property
    def billing_dataset(self) -> str | None:
        """The billing system's dataset ("billing"), if seeded."""
        return _dataset_of(self._sources.values(), "billing")

    @property
    def ga4_export_dataset(self) -> str | None:
        """The GA4 property's export (analytics_<property id>), if seeded."""
        return _dataset_of(self._sources.values(), "analytics_")

    @property
    def reference_dataset(self) -> str | None:
        """The revenue team's hand-kept reference data ("reference": account_mapping, currency_rates), if seeded."""
        return _dataset_of(self._sources.values(), "reference")

    @property
    def seeded_tables(self) -> list[str]:
        """ "dataset.table" of every table seeded at start."""
        return [f"{name}.{table}" for name, source in self._sources.items() for table in source.table_names]

    def truth(self, dataset: str, table: str) -> pl.DataFrame:
        """A seeded table as loaded (generated anew for the GA4 export's days, which can be large)."""
        if dataset not in self._sources:
            raise KeyError(f"no seeded dataset {dataset!r}; seeded: {', '.join(self._sources) or 'none'}")
        return self._sources[dataset].truth(table)

    def schema(self, dataset: str, table: str) -> list[bigquery.SchemaField]:
        """A seeded table's declared schema, as the client's SchemaFields."""
        from google.cloud import bigquery

        return [
            bigquery.SchemaField.from_api_repr(column.api_repr()) for column in self._sources[dataset].schema(table)
        ]

    @property
    def endpoint(self) -> str:
        """The REST API's base URL, as BIGQUERY_EMULATOR_HOST takes it."""
        return self._running().endpoint

    @property
    def storage_endpoint(self) -> str:
        """host:port of the Storage Read API, plaintext gRPC."""
        return self._running().storage_endpoint

    @property
    def credentials_file(self) -> str:
        """The throwaway service-account key, whose token_uri is the sandbox's."""
        return str(self._running().credentials_file)

    def credentials(self) -> service_account.Credentials:
        return service_account.Credentials.from_service_account_file(
            self.credentials_file, scopes=[CLOUD_PLATFORM_SCOPE]
        )

    def client(self) -> bigquery.Client:
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project, credentials=self.credentials(), client_options={"api_endpoint": self.endpoint}
        )

    def read_client(self) -> bigquery_storage.BigQueryReadClient:
        """A Storage Read API client on the emulator's plaintext channel (the default one speaks TLS)."""
        import grpc
        from google.cloud import bigquery_storage
        from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

        channel = grpc.insecure_channel(self.storage_endpoint, options=[("grpc.max_receive_message_length", -1)])
        return bigquery_storage.BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))

    def env(self) -> dict[str, str]:
        return {
            "BIGQUERY_EMULATOR_HOST": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,
            "BIGQUERY_PROJECT": self.project,
            # For this project's code to build a read client: Google's Storage client reads no such variable.
            "BIGQUERY_STORAGE_EMULATOR_HOST": self.storage_endpoint,
            # The seeded source datasets, for the pipelines' BigQuery sources.
            **({"BIGQUERY_BILLING_DATASET": self.billing_dataset} if self.billing_dataset else {}),
            **({"BIGQUERY_GA4_EXPORT_DATASET": self.ga4_export_dataset} if self.ga4_export_dataset else {}),
            **({"BIGQUERY_REFERENCE_DATASET": self.reference_dataset} if self.reference_dataset else {}),
        }

    def start(self, directory: Path, token_uri: str) -> None:
        """Start the emulator with its data, DuckDB's extensions and the key in `directory`, a new one."""
        if self._emulator is not None:
            return
        directory.mkdir()
        credentials_file = directory / "service-account.json"
        credentials_file.write_text(json.dumps(self.oauth.key_file(token_uri)))
        credentials_file.chmod(0o600)
        log_path = directory / "emulator.log"
        command = [sys.executable, "-m", "revenue_pipelines.sandbox.bigquery_emulator", "--project", self.project]
        command += ["--data-dir", str(directory / "data"), "--parent-pid", str(os.getpid())]
        with log_path.open("w") as log:
            process = subprocess.Popen(  # noqa: S603 - our own module, run by this interpreter
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                # DuckDB's ~/.duckdb: the extensions linked from the wheels, and no writes to the real home.
                env={**os.environ, "HOME": str(directory / "home")},
                cwd=directory,  # DuckDB spills big queries to ./.tmp: into the sandbox's folder, removed with it
                start_new_session=True,  # Ctrl-C in a terminal reaches the sandbox's owner, which stops this
            )
        # Generate the seed data (and import the client) while the child starts: it takes seconds.
        seeding = _Seeding(list(self._sources.values()))
        try:
            ports = json.loads(first_line(process.stdout, START_TIMEOUT_SECONDS))
        except (TimeoutError, ValueError) as error:
            seeding.cancel()
            end(process)
            raise RuntimeError(
                f"the BigQuery emulator did not start: {error}\n{log_path.read_text()[-3000:]}"
            ) from None
        self._emulator = _Emulator(
            process, f"http://127.0.0.1:{ports['rest']}", f"127.0.0.1:{ports['grpc']}", credentials_file
        )
        try:
            with self.client() as client:
                seeding.load(client)
        except BaseException:
            seeding.cancel()
            self.stop()
            raise

    def stop(self) -> None:
        if self._emulator is not None:
            end(self._emulator.process)
            self._emulator = None

    def _running(self) -> _Emulator:
        if self._emulator is None:
            raise RuntimeError("BigQuery is not running: use Sandbox(bigquery=True), started")
        return self._emulator


def _dataset_of(sources: Iterable[SeedSource], prefix: str) -> str | None:
    return next((source.dataset for source in sources if source.dataset.startswith(prefix)), None)


class _Seeding:
    """Seed sources' tables as Parquet files, made in a thread from construction (a few ahead of
    their loads), then loaded through the client, LOAD_THREADS at a time."""

    _DONE = object()

    def __init__(self, sources: list[SeedSource]):
        self._sources = sources
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=PENDING_LOADS)
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="bigquery-seed", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()
        while self._thread.is_alive():  # unblock a producer waiting for room
            with contextlib.suppress(queue.Empty):
                self._ready.get(timeout=0.05)

    def _put(self, item: Any) -> bool:
        while not self._cancelled.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            import pyarrow.parquet as pq
            from google.cloud import bigquery  # noqa: F401 - imported here, while the emulator starts

            for source in self._sources:
                for table, frame in source.frames():
                    parquet = io.BytesIO()
                    # Dictionaries and statistics would take twice the time, for a file read once.
                    pq.write_table(frame.to_arrow(), parquet, use_dictionary=False, write_statistics=False)
                    parquet.seek(0)
                    if not self._put((source, table, parquet, frame.height)):
                        return
            self._put(self._DONE)
        except BaseException as error:  # handed to the loading thread, which raises it
            self._put(error)

    def load(self, client: bigquery.Client) -> None:
        from google.cloud import bigquery

        for source in self._sources:
            client.create_dataset(bigquery.Dataset(f"{client.project}.{source.dataset}"))
        pending: list[Future[None]] = []
        slots = threading.BoundedSemaphore(PENDING_LOADS)
        with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="bigquery-load") as pool:
            while (item := self._ready.get()) is not self._DONE:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"generating BigQuery's seed data failed: {item!r}") from item
                source, table, parquet, rows = item
                slots.acquire()
                future = pool.submit(_load_table, client, source, table, parquet, rows)
                future.add_done_callback(lambda _: slots.release())
                pending.append(future)
                if failed := next((f for f in pending if f.done() and f.exception()), None):
                    failed.result()
            for future in pending:
                future.result()


def _load_table(client: bigquery.Client, source: SeedSource, table: str, parquet: IO[bytes], rows: int) -> None:
    from google.cloud import bigquery

    name = f"{client.project}.{source.dataset}.{table}"
    columns = source.schema(table)
    schema = [bigquery.SchemaField.from_api_repr(column.api_repr()) for column in columns]
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        schema=schema,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        write_disposition=bigquery.WriteDisposition.WRITE_EMPTY,
    )
    if any(column.mode == "REQUIRED" for column in columns):
        # The emulator's WRITE_EMPTY load would make them NULLABLE; an append to a new table keeps them.
        client.create_table(bigquery.Table(name, schema=schema))
        config.create_disposition = bigquery.CreateDisposition.CREATE_NEVER
        config.write_disposition = bigquery.WriteDisposition.WRITE_APPEND
    job = client.load_table_from_file(parquet, name, job_config=config)
    loaded = job.result().output_rows
    if loaded != rows:
        raise RuntimeError(f"{source.dataset}.{table}: loaded {loaded} rows of {rows}")
