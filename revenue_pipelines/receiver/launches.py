"""The launch API: start a job (one partition, as a run) or a backfill (a range of partitions) in
Dagster, and read its status, with an API key.

The receiver never imports the definitions: it asks Dagster's webserver, through GraphQL
(`dagster_graphql.DagsterGraphQLClient`), which jobs and partitions exist, and launches there, so
the code location decides what runs. Every request, answered or refused, is audited.

- `POST /api/v1/launches` (scope `launch`): `{"job": ..., "partition": ...}` starts one run,
  `{"job": ..., "partitions": {"start": ..., "end": ...}}` a backfill of the job's assets over the
  range (their single-run backfill policy makes it one run). 201 with the launch and a Location.
- `GET /api/v1/launches/{id}` (scope `read`): a run's or a backfill's status, or 404.
- `GET /api/v1/openapi.json`: the description of both (`openapi.py`), without a key.
"""

from __future__ import annotations

import json
import logging
import re
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from revenue_pipelines.receiver.audit import UNKNOWN_ACTOR, AuditLog, refused
from revenue_pipelines.receiver.keys import KeyStore
from revenue_pipelines.receiver.verifiers import Refused, read_body

if TYPE_CHECKING:
    from dagster_graphql import DagsterGraphQLClient

log = logging.getLogger("revenue_pipelines.receiver.launches")

MAX_BODY_BYTES = 64 * 1024
JOB_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # Dagster's own rule for definition names
LAUNCH_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # run ids are UUIDs, backfill ids 8 letters
LAUNCHED_BY_TAG = "revenue_pipelines/launched_by"
JOB_TAG = "revenue_pipelines/job"
PARTITION_TAG = "dagster/partition"
GRAPHQL_TIMEOUT_SECONDS = 30


# The API's documents: validated from requests, written to answers, and described in openapi.py.


class PartitionRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(min_length=1, description="The first partition key, e.g. 2026-11-01.")
    end: str = Field(min_length=1, description="The last partition key, included.")


class LaunchRequest(BaseModel):
    """A job and one partition (a run) or a range of them (a backfill); a partitioned job needs one of the two."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(pattern=JOB_NAME, max_length=255, examples=["daily_revenue_job"])
    partition: str | None = Field(default=None, min_length=1, description="One partition key: launches a run.")
    partitions: PartitionRange | None = Field(default=None, description="A range: launches a backfill.")
    run_config: dict[str, Any] | None = Field(default=None, description="Dagster run config, as in the launchpad.")
    tags: dict[str, str] | None = Field(default=None, description="Tags for the run (or the backfill's runs).")

    @field_validator("tags")
    @classmethod
    def _own_tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        """Dagster's tags (`dagster/...`) and ours say what was launched, and by whom: not the caller's to set."""
        for key in tags or {}:
            if key.startswith(("dagster/", "revenue_pipelines/")):
                raise ValueError(f"tag {key!r}: the dagster/ and revenue_pipelines/ prefixes are reserved")
        return tags

    @model_validator(mode="after")
    def _one_selection(self) -> LaunchRequest:
        if self.partition is not None and self.partitions is not None:
            raise ValueError("give partition (a run) or partitions (a backfill), not both")
        return self


class Launch(BaseModel):
    """A run or a backfill, as Dagster reports it now."""

    id: str = Field(description="The run id (a UUID) or the backfill id.")
    kind: Literal["run", "backfill"]
    status: str = Field(
        description="Dagster's: for a run QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELED...; "
        "for a backfill REQUESTED, COMPLETED_SUCCESS, COMPLETED_FAILED, FAILED, CANCELED..."
    )
    url: str = Field(description="Its page in the Dagster UI.")
    job: str | None
    partition: str | None = Field(default=None, description="A run's partition.")
    partitions: PartitionRange | None = Field(default=None, description="A backfill's first and last partition.")
    partition_count: int | None = Field(
        default=None,
        description="A backfill's number of partitions (for an asset backfill, the most any of its assets targets).",
    )


class Error(BaseModel):
    error: str = Field(description="Why, safe to show: it never quotes a key.")
    field: str | None = Field(default=None, description="The request field at fault (422), e.g. partitions.start.")


class Invalid(Refused):
    """A request Dagster cannot take as it is (422), naming the field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(422, f"{field}: {reason}")
        self.field = field


# Dagster, through its webserver's GraphQL ---------------------------------------------------------

JOB_QUERY = """
query LaunchJob($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { partitionKeysOrError { __typename ... on PartitionKeys { partitionKeys } } }
    ... on Error { message }
  }
  assetNodes(pipeline: $selector) { assetKey { path } }
}
"""

REPOSITORIES_QUERY = """
query LaunchRepositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } pipelines { name } } }
    ... on Error { message }
  }
}
"""

BACKFILL_MUTATION = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

STATUS_QUERY = """
query LaunchStatus($id: ID!, $backfillId: String!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { runId status jobName tags { key value } }
  }
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions partitionNames tags { key value }
      assetBackfillData {
        rootTargetedPartitions { ranges { start end } partitionKeys }
        assetBackfillStatuses { ... on AssetPartitionsStatusCounts { numPartitionsTargeted } }
      }
    }
  }
}
"""


class DagsterLauncher:
    """Launches and reads runs and backfills through the webserver at `webserver_url` (DAGSTER_WEBSERVER_URL).

    Every call blocks on HTTP: the routes run them in the thread pool.
    """

    def __init__(self, webserver_url: str) -> None:
        self.webserver_url = webserver_url.rstrip("/")

    def launch(self, request: LaunchRequest, launched_by: str) -> Launch:
        location, repository = self._repository_of(request.job)
        selector = {"repositoryLocationName": location, "repositoryName": repository, "pipelineName": request.job}
        found = self._execute(JOB_QUERY, {"selector": selector})
        job = found["pipelineOrError"]
        if job["__typename"] != "Pipeline":
            raise Invalid("job", job.get("message") or job["__typename"])
        keys = job["partitionKeysOrError"].get("partitionKeys") or []
        tags = {**(request.tags or {}), LAUNCHED_BY_TAG: launched_by}
        if request.partitions is not None:
            _check_range(request.job, keys, request.partitions)
            return self._backfill(request, found["assetNodes"], request.partitions, {**tags, JOB_TAG: request.job})
        if keys and request.partition is None:
            raise Invalid("partition", f"{request.job} is partitioned: give partition or partitions")
        if request.partition is not None:
            if request.partition not in keys:
                raise Invalid("partition", f"{request.partition!r} is not a partition of {request.job}")
            tags[PARTITION_TAG] = request.partition
        try:
            run_id = self._client().submit_job_execution(
                request.job,
                repository_location_name=location,
                repository_name=repository,
                run_config=request.run_config,
                tags=tags,
            )
        except _graphql().DagsterGraphQLClientError as failure:
            raise _refusal(failure, self.webserver_url) from None
        return self._read_back(run_id)

    def status(self, launch_id: str) -> Launch | None:
        """The run or the backfill `launch_id` names; None if Dagster knows neither."""
        found = self._execute(STATUS_QUERY, {"id": launch_id, "backfillId": launch_id})
        run, backfill = found["runOrError"], found["partitionBackfillOrError"]
        if run["__typename"] == "Run":
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            return Launch(
                id=run["runId"],
                kind="run",
                status=run["status"],
                url=self._url("run", run["runId"]),
                job=run["jobName"],
                partition=tags.get(PARTITION_TAG),
            )
        if backfill["__typename"] == "PartitionBackfill":
            tags = {tag["key"]: tag["value"] for tag in backfill["tags"]}
            # A job backfill lists its partitions and counts them; an asset backfill has time ranges (or
            # keys of other kinds), and counts the partitions it targets per asset.
            assets = backfill["assetBackfillData"] or {}
            targeted = assets.get("rootTargetedPartitions") or {}
            keys = backfill["partitionNames"] or targeted.get("partitionKeys") or []
            ranges = targeted.get("ranges") or [{"start": key, "end": key} for key in keys]
            counts = [status.get("numPartitionsTargeted") or 0 for status in assets.get("assetBackfillStatuses") or []]
            return Launch(
                id=backfill["id"],
                kind="backfill",
                status=backfill["status"],
                url=self._url("backfill", backfill["id"]),
                job=tags.get(JOB_TAG),
                partitions=PartitionRange(start=ranges[0]["start"], end=ranges[-1]["end"]) if ranges else None,
                partition_count=backfill["numPartitions"] or max(counts, default=None),
            )
        return None

    def _backfill(
        self, request: LaunchRequest, asset_nodes: list[dict], partitions: PartitionRange, tags: dict[str, str]
    ) -> Launch:
        """An asset backfill of exactly `partitions` of each of the job's assets (`partitionsByAssets`:
        an asset selection with partition names would also target what their partition mappings
        reach downstream). Dagster honours the assets' backfill policy: single run."""
        range_ = {"range": partitions.model_dump()}
        params: dict[str, Any] = {
            "partitionsByAssets": [{"assetKey": node["assetKey"], "partitions": range_} for node in asset_nodes],
            "tags": [{"key": key, "value": value} for key, value in tags.items()],
        }
        if request.run_config is not None:
            params["runConfigData"] = request.run_config
        answer = self._execute(BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]
        if answer["__typename"] != "LaunchBackfillSuccess":
            raise Invalid("partitions", _first_line(answer.get("message") or answer["__typename"]))
        return self._read_back(answer["backfillId"])

    def _read_back(self, launch_id: str) -> Launch:
        """The launch as Dagster now has it (its first status)."""
        launch = self.status(launch_id)
        if launch is None:
            raise Refused(502, f"Dagster launched {launch_id} but does not find it")
        return launch

    def _repository_of(self, job: str) -> tuple[str, str]:
        answer = self._execute(REPOSITORIES_QUERY)["repositoriesOrError"]
        if answer["__typename"] != "RepositoryConnection":
            raise Refused(503, f"Dagster cannot list its code locations: {_first_line(answer.get('message', ''))}")
        homes = [
            (node["location"]["name"], node["name"])
            for node in answer["nodes"]
            for pipeline in node["pipelines"]
            if pipeline["name"] == job
        ]
        if len(homes) != 1:
            known = sorted(
                {p["name"] for node in answer["nodes"] for p in node["pipelines"] if not p["name"].startswith("__")}
            )
            where = "no job of that name" if not homes else "that job in more than one code location"
            raise Invalid("job", f"Dagster has {where}; its jobs: {', '.join(known) or 'none'}")
        return homes[0]

    def _execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        try:
            # The client has public methods for runs only; backfills and lookups go through the query
            # runner they use, which wraps every transport failure in DagsterGraphQLClientError.
            return self._client()._execute(query, dict(variables or {}))
        except _graphql().DagsterGraphQLClientError as failure:
            raise _refusal(failure, self.webserver_url) from None

    def _client(self) -> DagsterGraphQLClient:
        """A client per call: one connects its transport for the call and refuses a second, concurrent one."""
        parts = urlsplit(self.webserver_url)
        return _graphql().DagsterGraphQLClient(
            parts.hostname or "",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            path_prefix=parts.path.rstrip("/"),
            timeout=GRAPHQL_TIMEOUT_SECONDS,
        )

    def _url(self, kind: str, launch_id: str) -> str:
        return f"{self.webserver_url}/runs/{'b/' if kind == 'backfill' else ''}{launch_id}"


def _graphql() -> types.ModuleType:
    """`dagster_graphql`, which imports all of Dagster (about 2 s): on first use, not when the receiver starts."""
    import dagster_graphql

    return dagster_graphql


def _check_range(job: str, keys: list[str], partitions: PartitionRange) -> None:
    """Both ends are partitions of the job (`keys`, in its order), the start not after the end."""
    if not keys:
        raise Invalid("partitions", f"{job} has no partitions: launch it without partitions")
    for field, key in (("partitions.start", partitions.start), ("partitions.end", partitions.end)):
        if key not in keys:
            raise Invalid(field, f"{key!r} is not a partition of {job} ({keys[0]} to {keys[-1]})")
    if keys.index(partitions.start) > keys.index(partitions.end):
        raise Invalid("partitions.end", f"{partitions.end} comes before {partitions.start}")


def _refusal(failure: Exception, webserver_url: str) -> Refused:
    """What a failed GraphQL call means to the caller: Dagster unreachable (503), an error of its
    GraphQL (502; the client's message quotes the query, so only the type is logged), or a launch it
    refused, with its message (422)."""
    import requests
    from gql.transport.exceptions import TransportConnectionFailed, TransportServerError

    cause = failure.__cause__
    if isinstance(cause, requests.RequestException | TransportConnectionFailed | TransportServerError):
        log.warning("Dagster's webserver does not answer at %s: %s", webserver_url, type(cause).__name__)
        return Refused(503, "Dagster's webserver does not answer at DAGSTER_WEBSERVER_URL; try again later")
    if cause is not None:
        log.warning("Dagster's GraphQL at %s failed: %s", webserver_url, type(cause).__name__)
        return Refused(502, f"Dagster's GraphQL answered with an error ({type(cause).__name__})")
    kind, detail = (*failure.args, "", "")[:2]
    if kind == "JobNotFoundError":
        return Invalid("job", str(detail))
    if kind in ("RunConfigValidationInvalid", "PipelineConfigValidationInvalid") and isinstance(detail, list):
        return Invalid("run_config", "; ".join(error.get("message", "") for error in detail))
    return Invalid("job", f"Dagster refused the launch: {kind}: {_first_line(str(detail))}")


def _first_line(message: str) -> str:
    """Dagster's message without its stack trace."""
    return message.strip().splitlines()[0] if message.strip() else message


# The routes -----------------------------------------------------------------------------------


def launch_routes(launcher: DagsterLauncher, keys: KeyStore, audit: AuditLog) -> list[Route]:
    """The API's routes: `keys` guard them, `audit` records every request, answered or refused."""
    from revenue_pipelines.receiver.openapi import openapi_document

    document = openapi_document()

    async def create(request: Request) -> Response:
        actor, detail = UNKNOWN_ACTOR, {}
        try:
            key = await run_in_threadpool(keys.authorize, request.headers.get("authorization"), "launch")
            actor = key.actor
            body = await _read_json(request)
            try:
                launch_request = LaunchRequest.model_validate(body)
            except ValidationError as invalid:
                problem = invalid.errors()[0]
                raise Invalid(".".join(str(part) for part in problem["loc"]) or "body", problem["msg"]) from None
            detail = launch_request.model_dump(include={"job", "partition", "partitions"}, exclude_none=True)
            launch = await run_in_threadpool(launcher.launch, launch_request, actor)
        except Refused as refusal:
            return await _refuse(request, audit, actor, "launch", detail, refusal)
        await _audit(request, audit, actor, "launch", 201, {**detail, "id": launch.id, "kind": launch.kind})
        return JSONResponse(
            launch.model_dump(mode="json"), status_code=201, headers={"Location": f"/api/v1/launches/{launch.id}"}
        )

    async def read(request: Request) -> Response:
        actor, launch_id = UNKNOWN_ACTOR, request.path_params["id"]
        # An id of another shape is no launch, and the caller's text is not echoed.
        detail = {"id": launch_id} if LAUNCH_ID.match(launch_id) else {}
        try:
            key = await run_in_threadpool(keys.authorize, request.headers.get("authorization"), "read")
            actor = key.actor
            launch = await run_in_threadpool(launcher.status, launch_id) if detail else None
            if launch is None:
                raise Refused(404, "no run or backfill with that id")
        except Refused as refusal:
            return await _refuse(request, audit, actor, "read", detail, refusal)
        detail.update(kind=launch.kind, launch_status=launch.status)
        await _audit(request, audit, actor, "read", 200, detail)
        return JSONResponse(launch.model_dump(mode="json"))

    async def describe(request: Request) -> Response:
        return JSONResponse(document)

    return [
        Route("/api/v1/launches", create, methods=["POST"]),
        Route("/api/v1/launches/{id}", read, methods=["GET"]),
        Route("/api/v1/openapi.json", describe, methods=["GET"]),
    ]


async def _read_json(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refused(415, "content type must be application/json")
    body = await read_body(request, MAX_BODY_BYTES)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Invalid("body", "not JSON") from None


async def _refuse(
    request: Request, audit: AuditLog, actor: str, action: str, detail: dict, refusal: Refused
) -> Response:
    """Audited as the key the refusal names (a 403 or 429 knows it; a bad key is `unknown`)."""
    actor = getattr(refusal, "actor", actor)
    await _audit(request, audit, actor, action, refusal.status, {**detail, "reason": refusal.reason}, refused(refusal))
    answer = Error(error=refusal.reason, field=getattr(refusal, "field", None))
    return JSONResponse(answer.model_dump(exclude_none=True), status_code=refusal.status, headers=refusal.headers)


async def _audit(
    request: Request, audit: AuditLog, actor: str, action: str, status: int, detail: dict, outcome: str = "ok"
) -> None:
    """One audit record and one log line per request: who, what, how it ended, from where."""
    client = request.client.host if request.client else None
    log.log(
        logging.INFO if status < 400 else logging.WARNING,
        "api=%s status=%d actor=%s client=%s",
        action,
        status,
        actor,
        client or "-",
    )
    await run_in_threadpool(
        audit.record, actor=actor, action=action, outcome=outcome, client=client, detail={"status": status, **detail}
    )
