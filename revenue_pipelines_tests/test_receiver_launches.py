"""The launch API over real HTTP, against a real Dagster webserver on this repository's code
location: a partition becomes a queued run and a range a backfill, both in the instance with who
launched them; bad keys, scopes, rate limits, bodies, jobs and partitions are refused with the status
that says why and launch nothing; every request is audited; Dagster down is a 503 naming
DAGSTER_WEBSERVER_URL; and the OpenAPI document served is the one checked into docs/.

One webserver serves the module (loading the code location takes ~15 s). No daemon runs, so runs
stay queued and backfills requested, which is what a launch is to check.
"""

import contextlib
import json
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pytest
import uvicorn
from jsonschema import Draft202012Validator

from revenue_pipelines.receiver.app import create_app
from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect
from revenue_pipelines.receiver.keys import UNAUTHORIZED, KeyStore
from revenue_pipelines.receiver.openapi import openapi_document, render
from revenue_pipelines.receiver.queue import SqlEventQueue
from revenue_pipelines.receiver.settings import DEFAULT_DAGSTER_WEBSERVER_URL, SettingsError, read_settings
from revenue_pipelines.sandbox import Sandbox
from revenue_pipelines_tests.child_process import spawn, stop
from revenue_pipelines_tests.conftest import END
from revenue_pipelines_tests.receiver_process import receiver_env

ROOT = Path(__file__).resolve().parents[1]
JOB = "daily_revenue_job"
WEBSERVER_START_SECONDS = 180
DOCS_OPENAPI = ROOT / "docs" / "openapi.json"


# Servers ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Webserver:
    url: str
    home: Path


@pytest.fixture(scope="module")
def webserver(tmp_path_factory) -> Iterator[Webserver]:
    """`dagster-webserver` on this repository's code location, with a fresh instance (the repo's
    dagster.yaml: its run queue) and a sandbox's settings, so run config resolves at launch."""
    folder = tmp_path_factory.mktemp("dagster")
    home = folder / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    with Sandbox(seed=5, companies=5, days=2, end_date=END) as sandbox:
        env = {**receiver_env(None), **sandbox.env(), "DAGSTER_HOME": str(home)}
        command = [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "revenue_pipelines.definitions"]
        command += ["-h", "127.0.0.1", "-p", str(port)]
        process = spawn(command, env, folder / "webserver.log", cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_code_location(url, process, folder / "webserver.log")
            yield Webserver(url, home)
        finally:
            stop(process)


def _wait_for_code_location(url: str, process, log_path: Path) -> None:
    query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"
    deadline = time.monotonic() + WEBSERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited:\n{log_path.read_text()[-3000:]}")
        try:
            answer = httpx.post(f"{url}/graphql", json={"query": query}, timeout=5).json()
            if answer["data"]["repositoriesOrError"].get("nodes"):
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"dagster-webserver did not load the code location:\n{log_path.read_text()[-3000:]}")


@dataclass
class LaunchApi:
    url: str
    audit: AuditLog
    headers: dict[str, dict[str, str]]
    """`Authorization` headers by role: `launcher` (launch, read), `reader` (read), `busy` (its rate spent)."""
    actors: dict[str, str]

    def audited(self) -> dict:
        """The latest audit entry, as a dict."""
        [entry] = self.audit.since(datetime(2000, 1, 1, tzinfo=UTC), limit=1)
        return {
            "actor": entry.actor,
            "action": entry.action,
            "outcome": entry.outcome,
            "client": entry.client,
            "detail": dict(entry.detail or {}),
        }


@contextlib.contextmanager
def serving(webserver_url: str, folder: Path) -> Iterator[LaunchApi]:
    """The receiver's app served by uvicorn on a thread of this process on a free port, with three
    API keys made in its database."""
    settings = read_settings(receiver_env(folder / "queue.db", DAGSTER_WEBSERVER_URL=webserver_url))
    engine = connect(settings.database_url)
    keys, audit = KeyStore(engine), AuditLog(engine)
    made = {
        "launcher": keys.create("ci", ["launch", "read"], None),
        "reader": keys.create("dashboard", ["read"], None),
        "busy": keys.create("busy", ["launch", "read"], None, rate_per_minute=1),
    }
    headers = {role: {"Authorization": f"Bearer {token}"} for role, (_, token) in made.items()}
    keys.authorize(headers["busy"]["Authorization"], "read")  # its one request a minute, spent
    with SqlEventQueue(engine) as queue:
        config = uvicorn.Config(create_app(settings, queue, keys, audit), log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        listener = socket.create_server(("127.0.0.1", 0))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.started, "uvicorn did not start"
            actors = {role: key.actor for role, (key, _) in made.items()}
            yield LaunchApi(f"http://127.0.0.1:{listener.getsockname()[1]}", audit, headers, actors)
        finally:
            server.should_exit = True
            thread.join(10)
            listener.close()


@pytest.fixture(scope="module")
def api(webserver, tmp_path_factory) -> Iterator[LaunchApi]:
    with serving(webserver.url, tmp_path_factory.mktemp("receiver")) as served:
        yield served


@pytest.fixture(scope="module")
def client(api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as opened:
        yield opened


@pytest.fixture(scope="module")
def instance(webserver) -> Iterator[dg.DagsterInstance]:
    """The webserver's instance, opened by this process as a second reader."""
    with dg.DagsterInstance.from_config(str(webserver.home)) as opened:
        yield opened


def conforms(body: dict, schema_name: str) -> bool:
    """`body` is what the served OpenAPI document says a `schema_name` is."""
    components = openapi_document()["components"]
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    errors = list(Draft202012Validator(schema).iter_errors(body))
    assert not errors, [error.message for error in errors]
    return True


# Launches ---------------------------------------------------------------------------------------


def test_a_partition_launches_a_run_dagster_queues_with_who_launched_it(client, api, instance):
    response = client.post(
        "/api/v1/launches", json={"job": JOB, "partition": "2026-11-20"}, headers=api.headers["launcher"]
    )

    assert response.status_code == 201, response.text
    launch = response.json()
    assert conforms(launch, "Launch")
    assert (launch["kind"], launch["job"], launch["partition"]) == ("run", JOB, "2026-11-20")
    assert launch["status"] in ("QUEUED", "NOT_STARTED", "STARTING")
    assert launch["url"].endswith(f"/runs/{launch['id']}")
    assert response.headers["location"] == f"/api/v1/launches/{launch['id']}"

    run = instance.get_run_by_id(launch["id"])
    assert run is not None and run.job_name == JOB
    assert run.tags["dagster/partition"] == "2026-11-20"
    assert run.tags["revenue_pipelines/launched_by"] == api.actors["launcher"]

    read = client.get(response.headers["location"], headers=api.headers["reader"])
    assert read.status_code == 200, read.text
    assert conforms(read.json(), "Launch")
    assert read.json()["id"] == launch["id"] and read.json()["status"] == run.status.value
    entries = api.audit.since(datetime(2000, 1, 1, tzinfo=UTC), limit=2)
    assert [(entry.actor, entry.action, entry.outcome, entry.client, entry.detail) for entry in entries] == [
        (
            api.actors["launcher"],
            "launch",
            "ok",
            "127.0.0.1",
            {"status": 201, "job": JOB, "partition": "2026-11-20", "id": launch["id"], "kind": "run"},
        ),
        (
            api.actors["reader"],
            "read",
            "ok",
            "127.0.0.1",
            {"status": 200, "id": launch["id"], "kind": "run", "launch_status": run.status.value},
        ),
    ]


def test_a_range_launches_one_backfill_of_the_jobs_assets(client, api, instance):
    before = {backfill.backfill_id for backfill in instance.get_backfills()}
    body = {"job": JOB, "partitions": {"start": "2026-11-18", "end": "2026-11-19"}, "tags": {"ticket": "REV-42"}}

    response = client.post("/api/v1/launches", json=body, headers=api.headers["launcher"])

    assert response.status_code == 201, response.text
    launch = response.json()
    assert conforms(launch, "Launch")
    assert (launch["kind"], launch["job"], launch["status"]) == ("backfill", JOB, "REQUESTED")
    assert launch["partitions"] == {"start": "2026-11-18", "end": "2026-11-19"} and launch["partition_count"] == 2
    assert launch["url"].endswith(f"/runs/b/{launch['id']}")

    assert {backfill.backfill_id for backfill in instance.get_backfills()} - before == {launch["id"]}
    backfill = instance.get_backfill(launch["id"])
    assert (
        backfill.tags["revenue_pipelines/launched_by"] == api.actors["launcher"] and backfill.tags["ticket"] == "REV-42"
    )
    assert dg.AssetKey(["hubspot", "raw", "contacts"]) in backfill.asset_selection
    assert dg.AssetKey(["revenue", "marts", "pipeline"]) in backfill.asset_selection

    read = client.get(f"/api/v1/launches/{launch['id']}", headers=api.headers["reader"]).json()
    assert (read["kind"], read["status"], read["partition_count"]) == ("backfill", "REQUESTED", 2)
    assert read["partitions"] == {"start": "2026-11-18", "end": "2026-11-19"}


def test_concurrent_requests_each_get_their_answer(client, api):
    """The routes run GraphQL calls on the thread pool, several at once."""
    launched = client.post(
        "/api/v1/launches", json={"job": JOB, "partition": "2026-11-19"}, headers=api.headers["launcher"]
    )
    assert launched.status_code == 201, launched.text
    path = launched.headers["location"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get(path, headers=api.headers["reader"]), range(16)))

    assert [answer.status_code for answer in answers] == [200] * 16
    assert {answer.json()["id"] for answer in answers} == {launched.json()["id"]}


# Refusals ---------------------------------------------------------------------------------------

RUN = {"job": JOB, "partition": "2026-11-20"}


@pytest.mark.parametrize(
    ("case", "status", "field", "reason"),
    [
        ("no key", 401, None, UNAUTHORIZED),
        ("unknown key", 401, None, UNAUTHORIZED),
        ("a read-only key", 403, None, "does not have the launch scope"),
        ("a key over its rate", 429, None, "rate limit"),
        ("unknown job", 422, "job", "daily_revenue_job"),
        ("no job", 422, "job", "Field required"),
        ("job name Dagster could not have", 422, "job", "pattern"),
        ("a partition the job does not have", 422, "partition", "is not a partition of daily_revenue_job"),
        ("a partitioned job without partition", 422, "partition", "is partitioned"),
        ("a range without end", 422, "partitions.end", "Field required"),
        ("a range that starts before the first partition", 422, "partitions.start", "is not a partition"),
        ("a range that runs backwards", 422, "partitions.end", "comes before"),
        ("partition and partitions", 422, "body", "not both"),
        ("a field the API does not have", 422, "priority", "Extra inputs"),
        ("a reserved tag", 422, "tags", "reserved"),
        ("run config Dagster refuses", 422, "run_config", ""),
        ("not JSON", 422, "body", "not JSON"),
        ("not application/json", 415, None, "content type"),
        ("oversized", 413, None, "body over"),
    ],
)
def test_launch_refusals_launch_nothing_and_are_audited(client, api, instance, case, status, field, reason):
    runs, backfills = len(instance.get_run_records()), len(instance.get_backfills())
    headers, body = dict(api.headers["launcher"]), dict(RUN)
    content = None
    match case:
        case "no key":
            headers = {}
        case "unknown key":
            headers = {"Authorization": "Bearer tok-forged"}
        case "a read-only key":
            headers = api.headers["reader"]
        case "a key over its rate":
            headers = api.headers["busy"]
        case "unknown job":
            body["job"] = "weekly_revenue_job"
        case "no job":
            del body["job"]
        case "job name Dagster could not have":
            body["job"] = "../graphql"
        case "a partition the job does not have":
            body["partition"] = "1999-01-01"
        case "a partitioned job without partition":
            del body["partition"]
        case "a range without end":
            body = {"job": JOB, "partitions": {"start": "2026-11-18"}}
        case "a range that starts before the first partition":
            body = {"job": JOB, "partitions": {"start": "1999-01-01", "end": "2026-11-19"}}
        case "a range that runs backwards":
            body = {"job": JOB, "partitions": {"start": "2026-11-19", "end": "2026-11-18"}}
        case "partition and partitions":
            body["partitions"] = {"start": "2026-11-18", "end": "2026-11-19"}
        case "a field the API does not have":
            body["priority"] = "high"
        case "a reserved tag":
            body["tags"] = {"dagster/partition": "2026-11-01"}
        case "run config Dagster refuses":
            body["run_config"] = {"ops": {"no_such_op": {"config": {}}}}
        case "not JSON":
            content = b"job=daily_revenue_job"
        case "not application/json":
            content, headers["Content-Type"] = json.dumps(body).encode(), "text/plain"
        case "oversized":
            body["tags"] = {"note": "x" * 70_000}
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
        response = client.post("/api/v1/launches", content=content, headers=headers)
    else:
        response = client.post("/api/v1/launches", json=body, headers=headers)

    assert response.status_code == status, response.text
    answer = response.json()
    assert conforms(answer, "Error")
    assert answer.get("field") == field and reason in answer["error"]
    if status == 429:
        assert 1 <= int(response.headers["retry-after"]) <= 60  # a request a minute
    if status == 401:
        assert "tok-forged" not in response.text
    assert (len(instance.get_run_records()), len(instance.get_backfills())) == (runs, backfills)
    record = api.audited()
    assert (record["action"], record["detail"]["status"]) == ("launch", status)
    assert record["outcome"].startswith(f"refused {status}: ")
    actor = {401: "unknown", 403: api.actors["reader"], 429: api.actors["busy"]}.get(status, api.actors["launcher"])
    assert record["actor"] == actor
    assert record["detail"]["reason"] == answer["error"]


@pytest.mark.parametrize(
    ("path", "role", "status"),
    [
        ("/api/v1/launches/3f1c2b7e-0000-4000-8000-000000000000", "reader", 404),
        ("/api/v1/launches/nosuchid", "reader", 404),
        ("/api/v1/launches/%7Bodd%7D%20id-marker", "reader", 404),
        ("/api/v1/launches/nosuchid", None, 401),
        ("/api/v1/launches/nosuchid", "busy", 429),
    ],
)
def test_read_refusals(client, api, path, role, status):
    response = client.get(path, headers=api.headers.get(role, {}))

    assert response.status_code == status, response.text
    assert conforms(response.json(), "Error")
    record = api.audited()
    assert (record["action"], record["detail"]["status"]) == ("read", status)
    assert record["outcome"].startswith(f"refused {status}: ")
    assert "odd" not in json.dumps(record) and "odd" not in response.text  # an odd id is neither recorded nor echoed


def test_dagster_down_is_a_503_naming_dagster_webserver_url(tmp_path):
    nobody = f"http://127.0.0.1:{_free_port()}"
    with serving(nobody, tmp_path) as down, httpx.Client(base_url=down.url, timeout=30) as client:
        launched = client.post("/api/v1/launches", json=RUN, headers=down.headers["launcher"])
        read = client.get("/api/v1/launches/nosuchid", headers=down.headers["reader"])

    for response in (launched, read):
        assert response.status_code == 503, response.text
        assert "DAGSTER_WEBSERVER_URL" in response.json()["error"]
        assert nobody not in response.text
    entries = down.audit.since(datetime(2000, 1, 1, tzinfo=UTC))
    assert [(entry.action, entry.outcome.split(":")[0]) for entry in entries] == [
        ("launch", "failed 503"),
        ("read", "failed 503"),
    ]


# The description --------------------------------------------------------------------------------


def test_the_openapi_document_is_served_valid_and_checked_in(client):
    served = client.get("/api/v1/openapi.json")

    assert served.status_code == 200
    document = served.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    post = document["paths"]["/api/v1/launches"]["post"]
    assert set(post["responses"]) >= {"201", "401", "403", "422", "429", "503"}
    assert "Retry-After" in post["responses"]["429"]["headers"]
    assert set(document["paths"]["/api/v1/launches/{id}"]["get"]["responses"]) >= {"200", "401", "403", "404", "503"}
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for example in post["requestBody"]["content"]["application/json"]["examples"].values():
        assert conforms(example["value"], "LaunchRequest")
    assert DOCS_OPENAPI.read_text() == render(), (
        "docs/openapi.json is stale: regenerate it with "
        "`uv run python -m revenue_pipelines.receiver.openapi > docs/openapi.json`"
    )


def test_dagster_webserver_url_defaults_to_make_devs_ui_and_must_be_http():
    base = receiver_env(Path("/tmp/queue.db"))
    base.pop("DAGSTER_WEBSERVER_URL", None)
    assert read_settings(base).dagster_webserver_url == DEFAULT_DAGSTER_WEBSERVER_URL == "http://127.0.0.1:3000"
    given = read_settings({**base, "DAGSTER_WEBSERVER_URL": "https://dagster.internal:3443/"})
    assert given.dagster_webserver_url == "https://dagster.internal:3443"
    for wrong in ("127.0.0.1:3000", "ftp://dagster", "http://dagster:port", "http://dagster/?x=1"):
        with pytest.raises(SettingsError, match="DAGSTER_WEBSERVER_URL must be an http"):
            read_settings({**base, "DAGSTER_WEBSERVER_URL": wrong})
