"""BigQuery in the sandbox: local-bigquery's emulator (the REST API and the Storage Read API, over
DuckDB) in a child process, and the OAuth token endpoint that its clients' throwaway key names.

    with Sandbox(bigquery=True) as sb:
        client = sb.bigquery.client()         # a real google.cloud.bigquery.Client, over real HTTP
        frame = client.list_rows("d.t").to_arrow(bqstorage_client=sb.bigquery.read_client())
        sb.env()                              # what unmodified clients in another process need

google-cloud-bigquery takes BIGQUERY_EMULATOR_HOST as its API endpoint, and google-auth signs a JWT
with the service-account key in GOOGLE_APPLICATION_CREDENTIALS and trades it at the key's token_uri,
here the sandbox's POST /token. The emulator takes any bearer token.

Where the emulator is not BigQuery:
- A partition decorator (`table$20261121`) names a new table rather than a partition.
- `Table.num_rows` is stale after TRUNCATE TABLE: count rows with a query.
- A WRITE_TRUNCATE load turns REQUIRED columns NULLABLE (partitioning and clustering stay).
- Dry runs check the query but estimate 0 bytes, and `maximum_bytes_billed` is not enforced.
- Jobs run in location US whatever they ask for.
- The Storage Read API speaks plaintext gRPC at `storage_endpoint`, which no client finds by itself:
  give `to_arrow`/`to_dataframe` of a query job or `list_rows` `bqstorage_client=read_client()` or
  `create_bqstorage_client=False`, or they call Google's Storage API (and fail offline).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

import google.auth.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from google.oauth2 import service_account

from revenue_pipelines.sandbox.server import Request, Response, Route, Service, json_response, oauth_error

if TYPE_CHECKING:  # the clients take seconds to import, and most sandboxes have no BigQuery
    from google.cloud import bigquery, bigquery_storage

PROJECT = "revenue-sandbox"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
START_TIMEOUT_SECONDS = 60.0  # a cold start after `make install` compiles local-bigquery's imports
STOP_TIMEOUT_SECONDS = 10.0


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


class _Emulator(NamedTuple):
    process: subprocess.Popen[str]
    endpoint: str
    storage_endpoint: str
    credentials_file: Path


class BigQuery:
    """The emulator and its service account. `Sandbox` starts it (in about 4 s: the child process
    imports local-bigquery and opens DuckDB) and stops it; it keeps its data in the sandbox's
    private directory, so each sandbox starts empty."""

    def __init__(self, project: str = PROJECT):
        self.project = project
        self.oauth = GoogleOAuth(project)
        self._emulator: _Emulator | None = None

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

        channel = grpc.insecure_channel(self.storage_endpoint)
        return bigquery_storage.BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))

    def env(self) -> dict[str, str]:
        return {
            "BIGQUERY_EMULATOR_HOST": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,
            "BIGQUERY_PROJECT": self.project,
            # For this project's code to build a read client: Google's Storage client reads no such variable.
            "BIGQUERY_STORAGE_EMULATOR_HOST": self.storage_endpoint,
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
        command = [sys.executable, "-m", "revenue_pipelines.sandbox.bigquery_emulator"]
        with log_path.open("w") as log:
            process = subprocess.Popen(  # noqa: S603 - our own module, run by this interpreter
                [*command, "--data-dir", str(directory / "data"), "--project", self.project],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                # DuckDB's ~/.duckdb: the extensions linked from the wheels, and no writes to the real home.
                env={**os.environ, "HOME": str(directory / "home")},
                start_new_session=True,  # Ctrl-C in a terminal reaches the sandbox's owner, which stops this
            )
        try:
            ports = json.loads(_first_line(process.stdout, START_TIMEOUT_SECONDS))
        except (TimeoutError, ValueError) as error:
            _end(process)
            raise RuntimeError(
                f"the BigQuery emulator did not start: {error}\n{log_path.read_text()[-3000:]}"
            ) from None
        self._emulator = _Emulator(
            process, f"http://127.0.0.1:{ports['rest']}", f"127.0.0.1:{ports['grpc']}", credentials_file
        )

    def stop(self) -> None:
        if self._emulator is not None:
            _end(self._emulator.process)
            self._emulator = None

    def _running(self) -> _Emulator:
        if self._emulator is None:
            raise RuntimeError("BigQuery is not running: use Sandbox(bigquery=True), started")
        return self._emulator


def _first_line(stream: IO[str], timeout: float) -> str:
    readable, _, _ = select.select([stream], [], [], timeout)
    if not readable:
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    line = stream.readline()
    if not line:
        raise ValueError("it exited")
    return line


def _end(process: subprocess.Popen[str]) -> None:
    """Close its stdin, which it takes as the order to stop; kill it if it does not."""
    process.stdin.close()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
