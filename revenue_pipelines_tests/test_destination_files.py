"""The files destination against a local folder and the sandbox's S3 (moto) and GCS emulators, through
the real clients: s3fs and gcsfs write, boto3 and google-cloud-storage read back."""

import base64
import datetime as dt
import hashlib
import io
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import dagster as dg
import polars as pl
import pytest
from google.cloud import storage as gcs
from pydantic import ValidationError

from revenue_pipelines.lib.destinations import sha256_checksum
from revenue_pipelines.lib.destinations.files import MIN_PART_SIZE_BYTES, FilesDestination, FilesWriter
from revenue_pipelines.sandbox.object_storage import ObjectStorage
from revenue_pipelines_tests.child_process import kill, spawn
from revenue_pipelines_tests.test_sandbox_processes import _gone_within, _kill

BUCKET = "revenue-exports"
ROUTE = "accounts_daily"
PARTITION = "2026-11-20"
FORMATS = ["csv", "jsonl", "parquet"]
STORES = ["file", "s3", "gs"]
LOG = logging.getLogger("test_destination_files")
CRASH_MEGABYTES = 64  # 13 parts of 5 MiB: the upload is caught between its first part and its completion
WAIT_SECONDS = 60.0
OWNER = """
import os, time
from revenue_pipelines.sandbox.object_storage import ObjectStorage
storage = ObjectStorage().start()
if os.fork() == 0:  # holds the emulators' standard input open, as multiprocessing's fork would
    time.sleep(300)
    os._exit(0)
print(storage._emulators.process.pid, flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def storage() -> Iterator[ObjectStorage]:
    with ObjectStorage(buckets=[BUCKET]) as storage, pytest.MonkeyPatch.context() as environment:
        # The variables the clients read themselves, as the sandbox gives them to the pipelines.
        for name, value in storage.env().items():
            environment.setenv(name, value)
        yield storage


@pytest.fixture
def base_url(request, storage, tmp_path) -> Callable[[str], str]:
    """A fresh folder or bucket prefix per store, so tests do not see each other's objects."""
    prefix = f"{request.node.name.split('[')[0][:40]}-{secrets.token_hex(4)}"
    return lambda store: str(tmp_path) if store == "file" else f"{store}://{BUCKET}/{prefix}"


def read(uri: str) -> bytes:
    """The object's bytes through a client other than the writer's."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme == "file":
        return Path(parts.path).read_bytes()
    if parts.scheme == "s3":
        return boto3.client("s3").get_object(Bucket=parts.netloc, Key=key)["Body"].read()
    return gcs.Client(project="revenue-sandbox").bucket(parts.netloc).blob(key).download_as_bytes()


def read_frame(payload: bytes, format: str, schema: pl.Schema) -> pl.DataFrame:
    if format == "parquet":
        return pl.read_parquet(io.BytesIO(payload))
    reader = pl.read_csv if format == "csv" else pl.read_ndjson
    return reader(io.BytesIO(payload), schema=schema)


def accounts(rows: int = 50) -> pl.DataFrame:
    """A mart's partition with what serialisers trip on: quotes, commas, newlines, nulls, time zones."""
    names = ["Acme", 'Quote "Co"', "Comma, Inc", "Line\nBreak", None]
    return pl.DataFrame(
        {
            "account_id": [f"acc-{i:05d}" for i in range(rows)],
            "name": [names[i % len(names)] for i in range(rows)],
            "arr": [None if i % 7 == 0 else i * 1000.25 for i in range(rows)],
            "seats": [None if i % 5 == 0 else i for i in range(rows)],
            "day": [dt.date(2026, 11, 20)] * rows,
            "updated_at": [dt.datetime(2026, 11, 20, 9, 30, i % 60, 123456, tzinfo=dt.UTC) for i in range(rows)],
            "active": [i % 3 == 0 for i in range(rows)],
        }
    )


def deliver(frame: pl.DataFrame, url: str, format: str = "csv", writer: FilesWriter | None = None, **fields):
    destination = FilesDestination(kind="files", url=url, format=format, **fields)
    return (writer or FilesWriter()).deliver(frame, destination, route=ROUTE, partition_key=PARTITION, log=LOG)


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("format", FORMATS)
def test_each_format_round_trips_through_each_store_and_a_rerun_writes_the_same_bytes(store, format, base_url):
    frame = accounts()
    url = base_url(store)

    first = deliver(frame, url, format)

    expected_uri = f"{Path(url).as_uri() if store == 'file' else url}/{ROUTE}/{PARTITION}.{format}"
    assert first.uri == expected_uri
    payload = read(first.uri)
    assert read_frame(payload, format, frame.schema).equals(frame)
    assert (first.rows, first.bytes, first.checksum) == (frame.height, len(payload), sha256_checksum(payload))
    assert first.answer["size"] == len(payload)
    if store == "s3":  # a single PUT's ETag is the MD5 of the bytes
        assert first.answer["etag"] == hashlib.md5(payload).hexdigest()
    if store == "gs":
        assert first.answer["etag"] == base64.b64encode(hashlib.md5(payload).digest()).decode()
        assert int(first.answer["generation"]) > 0

    # The same rows held in other chunks, delivered again: the same object, byte for byte.
    again = deliver(pl.concat([frame.slice(0, 7), frame.slice(7)], rechunk=False), url, format)

    assert read(again.uri) == payload
    assert (again.uri, again.bytes, again.checksum) == (first.uri, first.bytes, first.checksum)


@pytest.mark.parametrize("format", FORMATS)
def test_a_partition_that_lost_its_rows_replaces_the_object_with_an_empty_one(format, base_url):
    url = base_url("s3")
    deliver(accounts(), url, format)
    empty = accounts().clear()

    delivery = deliver(empty, url, format)

    assert delivery.rows == 0
    payload = read(delivery.uri)
    assert len(payload) == delivery.bytes
    if format == "jsonl":
        assert payload == b""  # no line, and no header to carry a schema
    else:
        assert read_frame(payload, format, empty.schema).equals(empty)


def test_a_versioned_bucket_keeps_each_delivery_as_a_version_of_the_same_bytes(storage):
    bucket = f"revenue-versioned-{secrets.token_hex(4)}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    first, again = (deliver(accounts(), f"s3://{bucket}/marts", "parquet") for _ in range(2))

    assert first.answer["version_id"] != again.answer["version_id"]
    key = urlsplit(first.uri).path.lstrip("/")
    versions = [
        s3.get_object(Bucket=bucket, Key=key, VersionId=delivery.answer["version_id"])["Body"].read()
        for delivery in (first, again)
    ]
    assert versions[0] == versions[1] == read(first.uri)


def test_parquet_bytes_do_not_depend_on_the_frames_chunks(tmp_path):
    """polars would cut row groups at chunk boundaries; past one row group the bytes would then differ."""
    frame = pl.DataFrame({"id": range(300_000), "segment": [f"s{i % 97}" for i in range(300_000)]})
    chunked = pl.concat([frame.slice(0, 1000), frame.slice(1000)], rechunk=False)
    assert chunked.n_chunks() == 2

    whole = deliver(frame, str(tmp_path), "parquet")
    payload = read(whole.uri)
    rerun = deliver(chunked, str(tmp_path), "parquet")

    assert read(rerun.uri) == payload
    assert rerun.checksum == whole.checksum


def test_a_path_template_names_the_object_under_the_url(base_url):
    url = base_url("s3")

    delivery = deliver(accounts(), url, "parquet", path_template="marts/{route}/dt={partition_key}/part-0.parquet")

    assert delivery.uri == f"{url}/marts/{ROUTE}/dt={PARTITION}/part-0.parquet"
    assert pl.read_parquet(io.BytesIO(read(delivery.uri))).equals(accounts())


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("{route}/{account_id}.csv", "unknown placeholder"),
        ("{route}/{partition_key.year}.csv", "unknown placeholder"),
        ("../{route}/{partition_key}.csv", "without '..'"),
        ("/{route}/{partition_key}.csv", "relative path"),
        ("{route}/{partition_key", "{route}/{partition_key"),
    ],
)
def test_a_path_template_with_other_placeholders_or_leaving_the_url_is_refused(template, complaint):
    with pytest.raises(ValidationError, match="path_template") as refused:
        FilesDestination(kind="files", url="s3://bucket/prefix", format="csv", path_template=template)
    assert complaint in str(refused.value)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://files.example.com/exports", "unsupported scheme 'ftp'"),
        ("s3:///no-bucket", "no bucket"),
        ("file://server/share", "not a host"),
        ("s3://bucket/prefix?versionId=3", "no query"),
    ],
)
def test_an_unsupported_url_is_refused_when_the_routes_load(url, complaint):
    with pytest.raises(ValidationError) as refused:
        FilesDestination(kind="files", url=url, format="csv")
    assert complaint in str(refused.value)
    assert url in str(refused.value)


def test_credentials_in_the_url_are_refused_without_repeating_them():
    with pytest.raises(ValidationError) as refused:
        FilesDestination(kind="files", url="s3://AKIAEXAMPLE:hunter2@bucket/prefix", format="csv")
    assert "no credentials in the URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_a_missing_bucket_fails_at_once_naming_the_route_and_the_url(store):
    url = f"{store}://no-such-bucket-{secrets.token_hex(4)}/exports"

    with pytest.raises(dg.Failure) as failed:
        deliver(accounts(), url)

    assert ROUTE in failed.value.description
    assert url in failed.value.description
    assert "does not exist" in failed.value.description
    assert failed.value.allow_retries is False


def test_a_missing_local_folder_fails_at_once_naming_the_route_and_the_folder(tmp_path):
    url = str(tmp_path / "not-mounted")

    with pytest.raises(dg.Failure) as failed:
        deliver(accounts(), url)

    assert ROUTE in failed.value.description and url in failed.value.description
    assert failed.value.allow_retries is False
    assert not (tmp_path / "not-mounted").exists()


def test_an_unreachable_store_fails_without_step_retries_naming_what_sets_its_endpoint(storage):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    writer = FilesWriter(s3_endpoint_url=endpoint)

    with pytest.raises(dg.Failure) as failed:  # once botocore and s3fs have retried
        deliver(accounts(), f"s3://{BUCKET}/exports", writer=writer)

    assert failed.value.allow_retries is False
    assert f"Route {ROUTE}'s store for s3://{BUCKET}/exports/" in failed.value.description
    assert f"unreachable at {endpoint}: the connection was refused" in failed.value.description
    assert "s3_endpoint_url" in failed.value.description


def test_endpoint_fields_override_the_environment(storage, base_url, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    writer = FilesWriter(s3_endpoint_url=storage.s3_endpoint, gcs_endpoint_url=storage.gcs_endpoint)

    for store in ("s3", "gs"):
        delivery = deliver(accounts(), base_url(store), writer=writer)
        monkeypatch.setenv("AWS_ENDPOINT_URL", storage.s3_endpoint)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage.gcs_endpoint)
        assert read(delivery.uri) == accounts().write_csv().encode()
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")


def start_large_delivery(url: str, tmp_path: Path):
    """A route writing CRASH_MEGABYTES as CSV in 5 MiB parts, in a process of its own."""
    command = [sys.executable, "-m", "revenue_pipelines_tests.file_delivery_process", url, "csv", ROUTE, PARTITION]
    command += [str(CRASH_MEGABYTES), str(MIN_PART_SIZE_BYTES)]
    return spawn(command, os.environ, tmp_path / "delivery.log")


def wait_for(condition: Callable[[], object], process, log: Path) -> object:
    """`condition()` once it is truthy; fails if the writer exits first (it finished: nothing was caught)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if found := condition():
            return found
        if process.poll() is not None:
            pytest.fail(f"the writer exited ({process.returncode}) before it was caught:\n{log.read_text()[-2000:]}")
        time.sleep(0.001)
    pytest.fail(f"not seen in {WAIT_SECONDS:.0f} s:\n{log.read_text()[-2000:]}")


def test_a_writer_killed_mid_multipart_upload_leaves_the_previous_s3_object(base_url, tmp_path):
    url = base_url("s3")
    previous = deliver(accounts(), url)
    key = urlsplit(previous.uri).path.lstrip("/")
    s3 = boto3.client("s3")

    def uploaded_part() -> str | None:
        """The upload id of the writer's multipart upload once it holds a part."""
        for upload in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
            if s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"]).get("Parts"):
                return upload["UploadId"]
        return None

    writer = start_large_delivery(url, tmp_path)
    try:
        upload_id = wait_for(uploaded_part, writer, tmp_path / "delivery.log")
    finally:
        kill(writer)

    assert read(previous.uri) == accounts().write_csv().encode()
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == previous.bytes
    # The writer died between parts: its upload is unfinished, and no part of it is the object.
    unfinished = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    assert [upload["UploadId"] for upload in unfinished] == [upload_id]
    assert "delivered" not in (tmp_path / "delivery.log").read_text()


def test_a_writer_killed_mid_write_leaves_the_previous_local_file(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    previous = deliver(accounts(), str(folder))
    target = Path(urlsplit(previous.uri).path)

    def temporary_file() -> Path | None:
        return next((path for path in target.parent.glob(f".{target.name}.*.tmp") if path.stat().st_size), None)

    writer = start_large_delivery(str(folder), tmp_path)
    try:
        temporary = wait_for(temporary_file, writer, tmp_path / "delivery.log")
    finally:
        kill(writer)

    assert target.read_bytes() == accounts().write_csv().encode()
    assert temporary.exists()  # the writer died before the rename
    assert "delivered" not in (tmp_path / "delivery.log").read_text()
    # The next delivery replaces the file as ever; the dead writer's temporary file is hidden and left alone.
    rerun = deliver(accounts(), str(folder))
    assert rerun.checksum == previous.checksum
    assert sorted(path.name for path in target.parent.iterdir() if not path.name.startswith(".")) == [target.name]


def test_the_emulators_die_with_their_owner_killed_by_sigkill(tmp_path):
    log = tmp_path / "owner.log"
    owner = spawn([sys.executable, "-W", "ignore::DeprecationWarning", "-c", OWNER], os.environ, log)
    emulators = None
    try:
        emulators = int(wait_for(lambda: log.read_text().strip(), owner, log))
        os.kill(owner.pid, signal.SIGKILL)  # the owner alone: its fork lives on
        owner.wait()
        assert _gone_within([emulators], 30) == []
    finally:
        kill(owner)  # the fork, in the owner's process group
        _kill([emulators] if emulators else [])
