"""The sandbox's BigQuery process: local-bigquery's REST API and Storage gRPC API over DuckDB, on free
loopback ports, until its standard input closes (the sandbox stopping it) or the sandbox's process is
gone. The latter is watched apart: a process the sandbox forked keeps the standard input open after
the sandbox is killed (SIGKILL included), and a stop waits for the requests in flight.

Once both listen it prints one JSON line, {"rest": port, "grpc": port}. DuckDB loads extensions from
~/.duckdb and downloads the ones it lacks; the sandbox must work offline, so `BigQuery.start` points
HOME at a private directory and this links the duckdb-extension-* wheels' binaries into it.

Two changes bring local-bigquery closer to BigQuery:
- It reports 0 bytes processed for every query, so nothing that budgets bytes could be tested
  against it. Here a query reports, as an upper bound of what BigQuery bills, the logical size of
  every table it names (local-bigquery's estimate: rows x columns x 8), dry runs included.
- Its Storage Read API answers in DuckDB's batches of up to a million rows, one message each;
  BigQuery's messages are a few MB. Here each holds at most RESPONSE_ROWS rows, so a reader's
  memory can be measured against a realistic batch.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import sys
import threading
from pathlib import Path

import duckdb
import pyarrow
import uvicorn
from google.cloud.bigquery_storage_v1.types import ReadRowsRequest, ReadRowsResponse
from local_bigquery import app
from local_bigquery.catalog import tables
from local_bigquery.engine import database
from local_bigquery.grpc import read, server
from local_bigquery.jobs import query
from local_bigquery.settings import settings

from revenue_pipelines.sandbox.emulator_process import exit_when_orphaned

HOST = "127.0.0.1"
RESPONSE_ROWS = 20_000
# local-bigquery sets DuckDB's TimeZone (icu), keeps tables in DuckLake and defines GEOGRAPHY functions (spatial).
EXTENSIONS = ("icu", "ducklake", "spatial")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--parent-pid", type=int, required=True, help="the sandbox's process: exit when it is gone")
    args = parser.parse_args(argv)
    exit_when_orphaned(args.parent_pid)
    link_extensions(Path.home() / ".duckdb" / "extensions")
    settings.data_dir = args.data_dir
    settings.default_project_id = args.project
    query.execute = _reporting_bytes_read(query.execute)
    reads = server.SERVICES["google.cloud.bigquery.storage.v1.BigQueryRead"]
    reads["ReadRows"] = server._streaming(_in_slices(read.read_rows), ReadRowsRequest, ReadRowsResponse)
    database.connection()  # open DuckDB now, so that a missing extension fails the start, not the first query
    storage, grpc_port = server.start(HOST, 0)
    rest = uvicorn.Server(uvicorn.Config(app, host=HOST, port=0, log_level="warning"))
    thread = threading.Thread(target=rest.run, name="bigquery-rest")
    thread.start()
    while not rest.started and thread.is_alive():
        thread.join(0.01)
    if rest.started:
        rest_port = rest.servers[0].sockets[0].getsockname()[1]
        print(json.dumps({"rest": rest_port, "grpc": grpc_port}), flush=True)
        sys.stdin.read()
    rest.should_exit = True
    thread.join()
    storage.stop(grace=None)


def _reporting_bytes_read(execute):
    """`execute` (local-bigquery's query runner), whose statistics count the bytes of the tables read."""

    @functools.wraps(execute)
    def execute_reporting_bytes(*args, **kwargs):
        statistics, children, destination = execute(*args, **kwargs)
        read = sum(
            int(tables.load(table.projectId, table.datasetId, table.tableId).numBytes)
            for table in statistics.referencedTables or []
        )
        counted = statistics.replace(totalBytesProcessed=str(read), totalBytesBilled=str(read))
        return counted, children, destination

    return execute_reporting_bytes


def _in_slices(read_rows):
    """`read_rows` (local-bigquery's ReadRows), each Arrow response cut into RESPONSE_ROWS-row ones."""

    @functools.wraps(read_rows)
    def read_rows_in_slices(request):
        for response in read_rows(request):
            if response.row_count <= RESPONSE_ROWS or not response.arrow_schema.serialized_schema:
                yield response
                continue
            schema = pyarrow.ipc.read_schema(pyarrow.py_buffer(response.arrow_schema.serialized_schema))
            batch = pyarrow.ipc.read_record_batch(
                pyarrow.py_buffer(response.arrow_record_batch.serialized_record_batch), schema
            )
            progress = response.stats.progress
            share = (progress.at_response_end - progress.at_response_start) / batch.num_rows
            for offset in range(0, batch.num_rows, RESPONSE_ROWS):
                part = batch.slice(offset, RESPONSE_ROWS)
                start = progress.at_response_start + share * offset
                yield ReadRowsResponse(
                    row_count=part.num_rows,
                    stats={"progress": {"at_response_start": start, "at_response_end": start + share * part.num_rows}},
                    arrow_record_batch={"serialized_record_batch": part.serialize().to_pybytes()},
                    arrow_schema=response.arrow_schema,
                )

    return read_rows_in_slices


def link_extensions(directory: Path) -> None:
    """Link the wheels' extension binaries where DuckDB looks for them: <directory>/v<version>/<platform>/."""
    with duckdb.connect() as connection:
        (platform,) = connection.execute("SELECT platform FROM pragma_platform()").fetchone()
    version = f"v{duckdb.__version__}"
    target = directory / version / platform
    target.mkdir(parents=True, exist_ok=True)
    for name in EXTENSIONS:
        binary = importlib.resources.files(f"duckdb_extension_{name}") / "extensions" / version
        (target / f"{name}.duckdb_extension").symlink_to(Path(str(binary / f"{name}.duckdb_extension")))


if __name__ == "__main__":
    main()
