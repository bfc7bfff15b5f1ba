"""The sandbox's object storage process: moto's S3 server and gcp-storage-emulator's GCS JSON API,
each on a free loopback port, until its standard input closes or the sandbox's process is gone
(`emulator_process`). Once both listen it prints one JSON line, {"s3": port, "gcs": port}.

GCS keeps its objects in memory, S3 (moto) always does: the data goes with the process.
"""

from __future__ import annotations

import argparse
import json
import sys

from gcp_storage_emulator.server import create_server
from moto.server import ThreadedMotoServer

from revenue_pipelines.sandbox.emulator_process import exit_when_orphaned

HOST = "127.0.0.1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parent-pid", type=int, required=True, help="the sandbox's process: exit when it is gone")
    args = parser.parse_args(argv)
    exit_when_orphaned(args.parent_pid)
    s3 = ThreadedMotoServer(HOST, 0, verbose=False)
    s3.start()
    gcs = create_server(HOST, 0, in_memory=True)
    gcs.start()
    gcs_port = gcs._api._httpd.server_address[1]  # the emulator binds port 0 but has no accessor for the result
    print(json.dumps({"s3": s3.get_host_and_port()[1], "gcs": gcs_port}), flush=True)
    sys.stdin.read()
    gcs.stop()
    s3.stop()


if __name__ == "__main__":
    main()
