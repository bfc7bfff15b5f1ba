"""Object storage in the sandbox: S3 (moto's server) and Google Cloud Storage (gcp-storage-emulator)
in a child process, on free loopback ports, with the buckets the routes write to.

    with ObjectStorage(buckets=["revenue-exports"]) as storage:
        storage.env()        # AWS_ENDPOINT_URL, AWS_* keys and region, STORAGE_EMULATOR_HOST
        s3fs.S3FileSystem()  # an unmodified client in a process with that environment reaches moto
        gcsfs.core.GCSFileSystem()  # and GCS's emulator

The clients find the emulators through the variables their libraries read themselves: botocore (so
boto3 and s3fs) takes AWS_ENDPOINT_URL as S3's endpoint, and google-cloud-storage and gcsfs take
STORAGE_EMULATOR_HOST. moto accepts any access key; the sandbox makes one per instance. The GCS
emulator takes any token, or none.

Where the emulators are not the real stores: moto keeps everything in memory and does not expire
unfinished multipart uploads (S3 lifecycle rules do, in production); gcp-storage-emulator serves one
request at a time and its generations are timestamps, as GCS's are, but not guaranteed to grow within
a microsecond.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from revenue_pipelines.sandbox.emulator_process import end, first_line

START_TIMEOUT_SECONDS = 30.0  # moto's import takes a second or two
REGION = "us-east-1"  # S3's default region: a bucket there needs no location constraint


class _Emulators(NamedTuple):
    process: subprocess.Popen[str]
    s3_endpoint: str
    gcs_endpoint: str
    directory: Path
    owns_directory: bool


class ObjectStorage:
    """S3 and GCS for one sandbox, each with the same `buckets` (empty at start). `start(directory)`
    runs the emulators (in about 2 s) with their log in `directory`; `stop()` ends them, and their data
    goes with them. The child process also exits if this process dies."""

    def __init__(self, buckets: Sequence[str] = ("revenue-exports",)):
        self.buckets = tuple(buckets)
        self.access_key_id = f"sandbox-{secrets.token_hex(8)}"
        self.secret_access_key = secrets.token_urlsafe(24)
        self._emulators: _Emulators | None = None

    @property
    def s3_endpoint(self) -> str:
        """S3's endpoint URL, as AWS_ENDPOINT_URL takes it."""
        return self._running().s3_endpoint

    @property
    def gcs_endpoint(self) -> str:
        """GCS's JSON API base URL, as STORAGE_EMULATOR_HOST takes it."""
        return self._running().gcs_endpoint

    def env(self) -> dict[str, str]:
        """What unmodified S3 and GCS clients in another process need to use the emulators."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
        }

    def start(self, directory: Path | None = None) -> ObjectStorage:
        """Start the emulators, their log in `directory` (a new folder; a temporary one if None), and
        create the buckets."""
        if self._emulators is not None:
            return self
        owns_directory = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="revenue-pipelines-object-storage-"))
        else:
            directory.mkdir()
        log_path = directory / "object-storage.log"
        command = [sys.executable, "-m", "revenue_pipelines.sandbox.object_storage_emulator"]
        command += ["--parent-pid", str(os.getpid())]
        with log_path.open("w") as log:
            process = subprocess.Popen(  # noqa: S603 - our own module, run by this interpreter
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=directory,
                start_new_session=True,  # Ctrl-C in a terminal reaches the sandbox's owner, which stops this
            )
        try:
            ports = json.loads(first_line(process.stdout, START_TIMEOUT_SECONDS))
        except (TimeoutError, ValueError) as error:
            end(process)
            raise RuntimeError(
                f"the object storage emulators did not start: {error}\n{log_path.read_text()[-3000:]}"
            ) from None
        self._emulators = _Emulators(
            process, f"http://127.0.0.1:{ports['s3']}", f"http://127.0.0.1:{ports['gcs']}", directory, owns_directory
        )
        try:
            self._create_buckets()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._emulators is not None:
            end(self._emulators.process)
            if self._emulators.owns_directory:
                shutil.rmtree(self._emulators.directory, ignore_errors=True)
            self._emulators = None

    def _create_buckets(self) -> None:
        """Through the real clients, as an operator would."""
        import boto3
        from gcsfs.core import GCSFileSystem

        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=REGION,
        )
        gcs = GCSFileSystem(endpoint_url=self.gcs_endpoint, token="anon", project="revenue-sandbox")  # noqa: S106
        with contextlib.closing(s3):
            for bucket in self.buckets:
                s3.create_bucket(Bucket=bucket)
                gcs.mkdir(bucket)

    def _running(self) -> _Emulators:
        if self._emulators is None:
            raise RuntimeError("the object storage emulators are not running: call start()")
        return self._emulators

    def __enter__(self) -> ObjectStorage:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
