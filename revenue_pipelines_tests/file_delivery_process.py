"""A route delivering a large partition through `FilesWriter` in a process of its own, for the tests
that kill a writer mid-upload. Its clients find the stores through the environment (`ObjectStorage.env()`).

    python -m revenue_pipelines_tests.file_delivery_process URL FORMAT ROUTE PARTITION_KEY MEGABYTES PART_SIZE
"""

import logging
import os
import sys

import polars as pl

from revenue_pipelines.lib.destinations.files import FilesDestination, FilesWriter

ROW_BYTES = 1000


def incompressible_frame(megabytes: int) -> pl.DataFrame:
    """About `megabytes` of random text, so the file is as large as the frame whatever the format."""
    rows = megabytes * 2**20 // ROW_BYTES
    noise = os.urandom(rows * ROW_BYTES // 2).hex()
    return pl.DataFrame({"noise": [noise[i * ROW_BYTES : (i + 1) * ROW_BYTES] for i in range(rows)]})


def main(url: str, format: str, route: str, partition_key: str, megabytes: str, part_size: str) -> None:
    logging.basicConfig(level=logging.INFO)
    destination = FilesDestination(kind="files", url=url, format=format)
    writer = FilesWriter(part_size_bytes=int(part_size))
    frame = incompressible_frame(int(megabytes))
    writer.deliver(frame, destination, route=route, partition_key=partition_key, log=logging.getLogger(route))
    print("delivered", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
