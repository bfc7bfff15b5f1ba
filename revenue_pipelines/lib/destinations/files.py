"""Files and object storage: a route's rows as CSV, JSON Lines or Parquet in a local folder, Google Cloud
Storage or S3, one object per partition, named `<url>/<route>/<partition_key>.<ext>` unless the route's
`path_template` says otherwise.

    destination:
      kind: files
      url: s3://revenue-exports/marts      # or gs://bucket/prefix, file:///srv/exports, /srv/exports
      format: parquet                      # csv, jsonl, parquet
      path_template: "{route}/dt={partition_key}/part.parquet"   # optional

Atomic: a reader sees the previous object or the new one, never part of one. Locally the rows go to a
hidden temporary file in the target's folder (`.<name>.<random>.tmp`), which is fsynced and renamed over
the target (a rename within a file system is atomic). S3 and GCS need no rename: an object exists only
once its upload completes (a single PUT, a completed multipart upload, a finalised resumable upload),
so a writer that dies mid-upload leaves the previous object as it was. It does leave an unfinished
multipart upload, which S3 bills until a lifecycle rule (AbortIncompleteMultipartUpload) removes it;
GCS expires unfinished resumable uploads after a week by itself.

Idempotent: a re-run of a partition rewrites its object with the same bytes, as the serialisation is a
function of the frame (its rows in their order, its schema, the polars version): Parquet carries no
timestamp, and its row groups have a fixed size rather than following the frame's chunks. An object
store still records a new version (S3's version id if the bucket is versioned, GCS's generation).

Credentials are the client libraries' own, never fields here: for S3 botocore's chain (AWS_ACCESS_KEY_ID
and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role), for GCS Google's application default
credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata server). The endpoints come from
AWS_ENDPOINT_URL and STORAGE_EMULATOR_HOST too (the sandbox's emulators set them), unless the
resource's `s3_endpoint_url` / `gcs_endpoint_url` override them. Transient errors (throttling, 5xx,
dropped connections) are retried by the clients (botocore's retry modes, gcsfs's backoff); a missing
bucket, folder or permission fails the step at once, without retries, naming the route and the URL, and
so does a store still unreachable once the clients have retried (refused, DNS, TLS: `lib/http.unreachable`),
naming what sets its endpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import string
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import dagster as dg
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from revenue_pipelines.lib.destinations import Delivery
from revenue_pipelines.lib.http import unreachable

if TYPE_CHECKING:  # the clients take a second to import, and most routes write elsewhere
    from fsspec import AbstractFileSystem

Format = Literal["csv", "jsonl", "parquet"]
TEMPLATE_FIELDS = frozenset({"route", "partition_key"})
PARQUET_ROW_GROUP_ROWS = 262_144  # polars' default, fixed: its own choice follows the frame's chunks
DEFAULT_PART_SIZE_BYTES = 50 * 2**20
MIN_PART_SIZE_BYTES = 5 * 2**20  # S3's smallest multipart part but the last; GCS's chunks are multiples of 256 KiB
HASH_BLOCK_BYTES = 2**20
# Where each client sends its requests unless told otherwise: (the variable it reads, else the default).
DEFAULT_ENDPOINTS = {
    "s3": ("AWS_ENDPOINT_URL", "AWS's S3 endpoint for the region"),
    "gs": ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
}

WRITERS: dict[Format, Callable[[pl.DataFrame, Path], None]] = {
    "csv": lambda frame, path: frame.write_csv(path),
    "jsonl": lambda frame, path: frame.write_ndjson(path),
    "parquet": lambda frame, path: frame.write_parquet(path, row_group_size=PARQUET_ROW_GROUP_ROWS),
}


@dataclass(frozen=True)
class Location:
    """Where a destination's URL points: `scheme` file, s3 or gs; `root` an absolute folder (file) or
    `bucket/prefix` without slashes at either end (s3, gs)."""

    scheme: Literal["file", "s3", "gs"]
    root: str

    @classmethod
    def parse(cls, url: str) -> Location:
        """The location of `url`, or ValueError saying what is wrong with it."""
        parts = urlsplit(url)
        if "@" in parts.netloc:  # not repeated: the message ends up in logs
            raise ValueError("no credentials in the URL: they come from the environment")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: no query or fragment")
        if parts.scheme in ("", "file"):
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"{url!r}: a file URL names a local folder (file:///path), not a host")
            if not parts.path:
                raise ValueError(f"{url!r}: no folder")
            return cls("file", str(Path(parts.path).expanduser().absolute()))
        if parts.scheme in ("s3", "gs"):
            if not parts.netloc:
                raise ValueError(f"{url!r}: no bucket ({parts.scheme}://bucket/prefix)")
            return cls(parts.scheme, f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/"))
        raise ValueError(f"{url!r}: unsupported scheme {parts.scheme!r}; use a folder, file://, s3:// or gs://")

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def uri(self, name: str) -> str:
        """The object's URL: a file:// one for a local file."""
        root = Path(self.root).as_uri() if self.scheme == "file" else f"{self.scheme}://{self.root}"
        return f"{root}/{name}"


class FilesDestination(BaseModel):
    """A route's `destination:` block for files and object storage."""

    # A URL given with credentials in it must not reach the logs through the error that refuses it.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["files"] = Field(description="Files in a local folder, Google Cloud Storage or S3.")
    url: str = Field(
        description="The folder or bucket prefix the route writes under: a local path or file:///path, "
        "gs://bucket/prefix or s3://bucket/prefix. No credentials: they come from the environment."
    )
    format: Format = Field(description="csv, jsonl (JSON Lines) or parquet.")
    path_template: str | None = Field(
        default=None,
        description="The object's name under `url`, with the placeholders {route} and {partition_key} "
        "(e.g. '{route}/dt={partition_key}/part.parquet'); default '{route}/{partition_key}.<format's extension>'.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_supported(cls, url: str) -> str:
        Location.parse(url)
        return url

    @field_validator("path_template")
    @classmethod
    def _template_names_known_fields(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as error:
            raise ValueError(f"{template!r}: {error}") from None
        if unknown := fields - TEMPLATE_FIELDS:
            raise ValueError(
                f"{template!r}: unknown placeholder(s) {sorted(unknown)}; only {{route}} and {{partition_key}}"
            )
        _relative_name(template)
        return template

    @property
    def location(self) -> Location:
        return Location.parse(self.url)

    def object_name(self, route: str, partition_key: str) -> str:
        """The object's name under the URL for one partition, checked to stay under it."""
        template = self.path_template or f"{{route}}/{{partition_key}}.{self.format}"
        return _relative_name(template.format(route=route, partition_key=partition_key))


def _relative_name(name: str) -> str:
    """`name` if it is a relative path that stays under its root, else ValueError."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name.endswith("/"):
        raise ValueError(f"{name!r}: an object name must be a relative path to a file, without '..'")
    return str(path)


class FilesWriter(dg.ConfigurableResource):
    """Writes a route's partition as one object (`FilesDestination`). No secrets: the clients find their
    credentials in the environment. In production leave the endpoints unset."""

    s3_endpoint_url: str | None = Field(
        default=None, description="S3's endpoint, e.g. the sandbox's moto; None: AWS_ENDPOINT_URL, else AWS's."
    )
    gcs_endpoint_url: str | None = Field(
        default=None, description="GCS's API, e.g. the sandbox's emulator; None: STORAGE_EMULATOR_HOST, else Google's."
    )
    part_size_bytes: int = Field(
        default=DEFAULT_PART_SIZE_BYTES,
        ge=MIN_PART_SIZE_BYTES,
        description="Objects larger than this go up in parts of this size (S3 multipart, GCS resumable upload).",
    )

    def deliver(
        self,
        frame: pl.DataFrame,
        destination: FilesDestination,
        *,
        route: str,
        partition_key: str,
        log: logging.Logger,
    ) -> Delivery:
        location = destination.location
        name = destination.object_name(route, partition_key)
        uri = location.uri(name)
        try:
            if location.scheme == "file":
                size, checksum, answer = _write_local(frame, destination.format, Path(location.root), name)
            else:
                size, checksum, answer = self._upload(frame, destination.format, location, name)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as error:
            missing = "folder" if location.scheme == "file" else f"bucket {location.bucket!r}"
            raise dg.Failure(
                description=f"Route {route}: cannot write {uri}: the {missing} of {destination.url} does not exist "
                f"or these credentials may not write to it ({type(error).__name__}: {error}).",
                allow_retries=False,
            ) from error
        except Exception as error:
            if location.scheme != "file":
                endpoint, variable = self._endpoint(location.scheme)
                if failure := unreachable(f"Route {route}'s store for {uri}", endpoint, variable, error):
                    raise failure from error
            error.add_note(f"route {route}, writing {uri}")
            raise
        log.info("Route %s: wrote %d rows (%d bytes, %s) to %s", route, frame.height, size, checksum, uri)
        return Delivery(uri=uri, rows=frame.height, bytes=size, checksum=checksum, answer=answer)

    def _upload(
        self, frame: pl.DataFrame, format: Format, location: Location, name: str
    ) -> tuple[int, str, dict[str, Any]]:
        """Serialise to a local spool file, then upload it (multipart or resumable above the part size)."""
        remote = f"{location.root}/{name}"
        filesystem = self._filesystem(location.scheme)
        with tempfile.TemporaryDirectory(prefix="revenue-pipelines-upload-") as spool:
            path = Path(spool) / PurePosixPath(name).name
            size, checksum = _serialise(frame, format, path, durable=False)
            filesystem.put_file(str(path), remote, chunksize=self.part_size_bytes)
        info = filesystem.info(remote)
        if int(info["size"]) != size:
            raise RuntimeError(f"the store holds {info['size']} bytes, {size} were uploaded")
        if location.scheme == "s3":
            answer = {"etag": info["ETag"].strip('"'), "size": size}
            if info.get("VersionId"):
                answer["version_id"] = info["VersionId"]
        else:
            answer = {"generation": info["generation"], "etag": info["etag"], "size": size}
        return size, checksum, answer

    def _endpoint(self, scheme: str) -> tuple[str, str]:
        """The store's endpoint as the client resolves it, and what sets it."""
        field = "s3_endpoint_url" if scheme == "s3" else "gcs_endpoint_url"
        if url := getattr(self, field):
            return url, f"the resource's {field}"
        variable, default = DEFAULT_ENDPOINTS[scheme]
        return os.environ.get(variable) or default, variable

    def _filesystem(self, scheme: str) -> AbstractFileSystem:
        if scheme == "s3":
            from s3fs import S3FileSystem

            return S3FileSystem(endpoint_url=self.s3_endpoint_url)
        # The JSON API's client: gcsfs's default one first asks a gRPC control plane for the bucket's layout
        # (hierarchical, zonal), which emulators do not serve; whole-object writes need neither.
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(endpoint_url=self.gcs_endpoint_url)


def _write_local(frame: pl.DataFrame, format: Format, root: Path, name: str) -> tuple[int, str, dict[str, Any]]:
    """A hidden temporary file beside the target, fsynced, renamed over it; the folder fsynced after."""
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(target) as temporary:
        size, checksum = _serialise(frame, format, temporary, durable=True)
        temporary.replace(target)
    _fsync_folder(target.parent)
    return size, checksum, {"size": size}


@contextmanager
def _temporary_beside(target: Path):
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _serialise(frame: pl.DataFrame, format: Format, path: Path, *, durable: bool) -> tuple[int, str]:
    """Write `frame` to `path` (flushed to disk if `durable`); its size and `sha256:<hex>`."""
    WRITERS[format](frame, path)
    digest = hashlib.sha256()
    with path.open("rb") as written:
        while block := written.read(HASH_BLOCK_BYTES):
            digest.update(block)
        if durable:
            os.fsync(written.fileno())
        size = written.tell()
    return size, f"sha256:{digest.hexdigest()}"


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
