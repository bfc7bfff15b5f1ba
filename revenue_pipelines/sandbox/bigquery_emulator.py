"""The sandbox's BigQuery process: local-bigquery's REST API and Storage gRPC API over DuckDB, on free
loopback ports, until its standard input closes (the sandbox stopping it, or dying).

Once both listen it prints one JSON line, {"rest": port, "grpc": port}. DuckDB loads extensions from
~/.duckdb and downloads the ones it lacks; the sandbox must work offline, so `BigQuery.start` points
HOME at a private directory and this links the duckdb-extension-* wheels' binaries into it.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import threading
from pathlib import Path

import duckdb
import uvicorn
from local_bigquery import app
from local_bigquery.engine import database
from local_bigquery.grpc import server
from local_bigquery.settings import settings

HOST = "127.0.0.1"
# local-bigquery sets DuckDB's TimeZone (icu), keeps tables in DuckLake and defines GEOGRAPHY functions (spatial).
EXTENSIONS = ("icu", "ducklake", "spatial")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--project", required=True)
    args = parser.parse_args(argv)
    link_extensions(Path.home() / ".duckdb" / "extensions")
    settings.data_dir = args.data_dir
    settings.default_project_id = args.project
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
