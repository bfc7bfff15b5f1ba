"""The webhook destination against a real receiver (`sandbox/webhook_sink.py`) that verifies every
signature with `standardwebhooks`, de-duplicates by webhook-id and fails as scripted."""

import json
import logging
import socket
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import urllib3

from revenue_pipelines.lib.destinations.webhook import SECRETS_VARIABLE, WebhookDestination, WebhookResource
from revenue_pipelines.lib.http import send_with_retries, transport_retry
from revenue_pipelines.sandbox.webhook_sink import WebhookSink

ROUTE = "arr_to_billing"
PARTITION = "2026-11-01"
BATCH_SIZE = 10
LOG = logging.getLogger("test_destination_webhook")


def mart(rows: int = 25, arr_offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "account_id": [f"acct-{n:03d}" for n in range(rows)],
            "arr": [1_000.5 * n + arr_offset for n in range(rows)],
            "segment": ["enterprise" if n % 3 == 0 else "smb" for n in range(rows)],
        }
    )


@pytest.fixture
def sink():
    with WebhookSink() as receiver:
        yield receiver


@pytest.fixture
def resource(sink, tmp_path):
    return WebhookResource(
        signing_secrets=f"other=whsec_c2VjcmV0LW9mLWFub3RoZXItcm91dGU=,{ROUTE}={sink.secret}",
        dead_letter_dir=str(tmp_path / "dead_letters"),
        max_attempts=4,
        backoff_factor_seconds=0.01,
        backoff_max_seconds=0.05,
        timeout_seconds=10.0,
    )


def destination(sink: WebhookSink, url_suffix: str = "/hooks/arr") -> WebhookDestination:
    return WebhookDestination(kind="webhook", url=f"{sink.url}{url_suffix}", batch_size=BATCH_SIZE)


def deliver(resource: WebhookResource, frame: pl.DataFrame, sink: WebhookSink, url_suffix: str = "/hooks/arr"):
    return resource.deliver(frame, destination(sink, url_suffix), route=ROUTE, partition_key=PARTITION, log=LOG)


def batch_indices(sink: WebhookSink) -> list[int]:
    return [delivery.payload["data"]["batch"] for delivery in sink.accepted()]


def test_every_row_arrives_once_in_order_signed_and_the_delivery_says_so(sink, resource):
    frame = mart()
    delivery = deliver(resource, frame, sink)

    assert sink.rows("/hooks/arr") == frame.to_dicts()  # each accepted only after its signature verified
    assert batch_indices(sink) == [0, 1, 2]
    assert [len(delivery.rows) for delivery in sink.accepted()] == [10, 10, 5]
    assert delivery.rows == 25 and delivery.dead_letters == ()
    assert delivery.uri == f"{sink.url}/hooks/arr"
    assert delivery.answer == {"batches": 3, "attempts": [1] * 3, "statuses": [[200]] * 3, "redelivered": []}
    assert delivery.bytes == sum(int(accepted.headers["content-length"]) for accepted in sink.accepted())
    assert set(delivery.metadata()) >= {"destination", "rows_delivered", "bytes", "checksum", "answer"}

    again = deliver(resource, frame, sink)
    assert again.checksum == delivery.checksum
    assert sink.duplicates == 3  # the same ids again: the receiver keeps each row once
    assert sink.rows() == frame.to_dicts()


@pytest.mark.parametrize(
    ("faults", "first_statuses"),
    [
        ([("status", {"status": 503, "retry_after": 1})] * 2, [503, 503, 200]),
        ([("rate_limit", {"retry_after": None})], [429, 200]),
        ([("status", {"status": 502}), ("status", {"status": 408})], [502, 408, 200]),
        ([("drop", {})], ["ProtocolError", 200]),
    ],
    ids=["503-retry-after", "429", "502-then-408", "dropped"],
)
def test_a_receiver_failing_the_first_attempts_gets_the_batch_again(sink, resource, faults, first_statuses):
    for kind, params in faults:
        sink.faults.add(kind, **params)
    frame = mart()
    delivery = deliver(resource, frame, sink)

    assert delivery.answer["statuses"] == [first_statuses, [200], [200]]
    assert delivery.answer["attempts"] == [len(first_statuses), 1, 1]
    assert delivery.rows == 25 and delivery.dead_letters == ()
    assert sink.rows() == frame.to_dicts()
    assert batch_indices(sink) == [0, 1, 2]


def test_retry_after_as_an_http_date_is_understood(resource, tmp_path):
    with WebhookSink(retry_after_as_http_date=True) as dated:
        resource = resource.model_copy(update={"signing_secrets": f"{ROUTE}={dated.secret}"})
        dated.faults.add("rate_limit", retry_after=1)
        delivery = deliver(resource, mart(), dated)
        assert delivery.answer["statuses"][0] == [429, 200]
        assert len(dated.rows()) == 25


def test_a_timed_out_attempt_is_retried_with_the_same_webhook_id(sink, resource):
    """The receiver stored the slow attempt after the sender gave up: the retry carries the same id, so it is
    recognised as a duplicate and its rows are kept once."""
    sink.faults.add("slow", seconds=1.5)
    frame = mart()
    delivery = deliver(resource.model_copy(update={"timeout_seconds": 0.5}), frame, sink)

    assert delivery.answer["statuses"][0] == ["ReadTimeoutError", 200]
    deadline = time.monotonic() + 10
    while sink.duplicates < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.duplicates == 1
    assert sink.rows() == frame.to_dicts()


def test_a_receiver_that_never_recovers_gets_dead_letters_then_the_same_ids_on_the_next_run(
    sink, resource, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    sink.faults.add("status", times=10**6, status=503, skip=1)  # batch 0 goes through, then nothing does
    frame = mart()
    url = "/hooks/arr?token=query-secret"
    failed = deliver(resource, frame, sink, url)

    assert failed.rows == 10 and batch_indices(sink) == [0]
    assert failed.answer["statuses"] == [[200], [503] * 4]  # batch 2 never left: order is kept
    assert sink.requests.count(method="POST") == 5
    letters = [json.loads(Path(path).read_text()) for path in failed.dead_letters]
    assert [Path(path).stem for path in failed.dead_letters] == [letter["webhook_id"] for letter in letters]
    assert [letter["batch"] for letter in letters] == [1, 2]
    assert [letter["last_status"] for letter in letters] == [503, None]
    assert letters[0]["attempts"] == [503] * 4 and letters[1]["attempts"] == []
    assert letters[0]["url"] == f"{sink.url}/hooks/arr"
    assert set(letters[0]["headers"]) == {"content-type", "webhook-id"}
    assert json.loads(letters[1]["body"])["data"]["rows"] == frame.slice(20).to_dicts()

    sink.faults.clear()
    recovered = deliver(resource, frame, sink, url)

    assert recovered.rows == 25 and recovered.dead_letters == ()
    assert recovered.answer["redelivered"] == [letter["webhook_id"] for letter in letters]
    assert [delivery.webhook_id for delivery in sink.accepted()][1:] == recovered.answer["redelivered"]
    assert not any(Path(path).exists() for path in failed.dead_letters)
    assert sink.rows() == frame.to_dicts()  # each row once: batch 0 came twice, with one id
    assert sink.duplicates == 1

    ours = "\n".join(record.getMessage() for record in caplog.records if record.name == LOG.name)
    for secret in (sink.secret, sink.secret.removeprefix("whsec_")):
        assert secret not in caplog.text  # nor in urllib3's debug lines
    for secret in (sink.secret, sink.secret.removeprefix("whsec_"), "query-secret"):
        assert secret not in ours
        assert secret not in json.dumps(letters)


def test_dead_letters_of_rows_since_changed_still_go_first_in_their_order(sink, resource):
    sink.faults.add("status", times=10**6, status=503)
    old = mart()
    assert len(deliver(resource, old, sink).dead_letters) == 3
    sink.faults.clear()

    new = mart(rows=12, arr_offset=7)
    delivery = deliver(resource, new, sink)

    assert sink.rows() == old.to_dicts() + new.to_dicts()
    assert batch_indices(sink) == [0, 1, 2, 0, 1]
    assert len(delivery.answer["redelivered"]) == 3 and delivery.rows == 12
    assert not list(Path(resource.dead_letter_dir).rglob("*.json"))


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_a_refusal_is_not_retried_and_is_dead_lettered_with_what_the_receiver_said(sink, resource, status):
    sink.faults.add("status", status=status)
    delivery = deliver(resource, mart(), sink)

    assert delivery.answer["statuses"] == [[status]]
    assert sink.requests.count(method="POST") == 1
    assert len(delivery.dead_letters) == 3
    letter = json.loads(Path(delivery.dead_letters[0]).read_text())
    assert letter["last_status"] == status
    assert letter["answer"].startswith(f"HTTP {status}: ") and '"error"' in letter["answer"]


def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(sink, resource):
    wrong = resource.model_copy(update={"signing_secrets": f"{ROUTE}=whsec_c2VjcmV0LW9mLWFub3RoZXItcm91dGU="})
    delivery = deliver(wrong, mart(), sink)

    assert delivery.answer["statuses"] == [[401]]
    assert sink.accepted() == [] and len(delivery.dead_letters) == 3


def test_user_info_is_sent_as_basic_auth_and_kept_out_of_the_uri(sink, resource):
    delivery = deliver(resource, mart(), sink, "/hooks/arr")
    with_user = WebhookDestination(
        kind="webhook", url=sink.url.replace("://", "://hook:p%40ss@") + "/hooks/user?x=1", batch_size=BATCH_SIZE
    )
    authenticated = resource.deliver(mart(), with_user, route=ROUTE, partition_key="2026-11-02", log=LOG)

    assert authenticated.uri == f"{sink.url}/hooks/user"
    assert {d.headers.get("authorization") for d in sink.accepted("/hooks/user")} == {"Basic aG9vazpwQHNz"}
    assert all("authorization" not in d.headers for d in sink.accepted("/hooks/arr"))
    assert delivery.rows == authenticated.rows == 25


@pytest.mark.parametrize("secrets", ["other=whsec_c2VjcmV0", f"{ROUTE}=whsec_", f"{ROUTE}=whsec_a"])
def test_a_route_without_a_usable_secret_fails_naming_the_variable_and_sends_nothing(sink, resource, secrets):
    unusable = resource.model_copy(update={"signing_secrets": secrets})
    with pytest.raises(dg.Failure, match=SECRETS_VARIABLE) as failure:
        deliver(unusable, mart(), sink)
    assert ROUTE in str(failure.value.description) and "whsec_a" not in str(failure.value.description)
    assert sink.requests.count() == 0


def test_a_route_not_named_signs_with_the_secret_every_route_shares(sink, resource):
    shared = resource.model_copy(update={"signing_secrets": f"other=whsec_c2VjcmV0c2VjcmV0c2VjcmV0,*={sink.secret}"})
    delivery = deliver(shared, mart(), sink)
    assert delivery.rows == 25 and len(sink.rows()) == 25  # the sink accepts only what its secret signed


def test_the_destination_block_is_strict():
    with pytest.raises(ValueError, match="batch_size"):
        WebhookDestination(kind="webhook", url="http://127.0.0.1/hook", batch_size=10_001)
    with pytest.raises(ValueError, match="extra"):
        WebhookDestination(kind="webhook", url="http://127.0.0.1/hook", headers={})
    assert WebhookDestination(kind="webhook", url="https://example.com/hook").batch_size == 1_000


def test_in_a_run_with_the_secrets_from_the_environment_and_none_in_the_event_log(sink, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRETS_VARIABLE, f"{ROUTE}={sink.secret}")
    sink.faults.add("status", status=503)

    @dg.asset(name=ROUTE)
    def route(context: dg.AssetExecutionContext, webhook: WebhookResource) -> dg.MaterializeResult:
        delivery = webhook.deliver(mart(), destination(sink), route=ROUTE, partition_key=PARTITION, log=context.log)
        return dg.MaterializeResult(metadata=delivery.metadata())

    webhook = WebhookResource(
        signing_secrets=dg.EnvVar(SECRETS_VARIABLE), dead_letter_dir=str(tmp_path), backoff_max_seconds=0.05
    )
    result = dg.materialize([route], resources={"webhook": webhook})

    assert result.success
    metadata = result.asset_materializations_for_node(ROUTE)[0].metadata
    assert metadata["rows_delivered"].value == 25
    assert metadata["answer"].value["statuses"][0] == [503, 200]
    event_log = repr(result.all_events)
    assert "503" in event_log and sink.secret.removeprefix("whsec_") not in event_log


def test_a_receiver_that_is_not_listening_gets_dead_letters_after_the_last_attempt(resource):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = WebhookDestination(kind="webhook", url=f"http://127.0.0.1:{port}/hooks/arr", batch_size=BATCH_SIZE)
    delivery = resource.deliver(mart(), gone, route=ROUTE, partition_key=PARTITION, log=LOG)

    assert delivery.answer["statuses"] == [["NewConnectionError"] * 4]
    assert delivery.rows == 0 and len(delivery.dead_letters) == 3
    assert json.loads(Path(delivery.dead_letters[0]).read_text())["answer"] == "no answer (NewConnectionError)"


def test_each_attempt_gets_fresh_headers_so_a_late_retry_carries_a_fresh_signature(sink):
    """`send_with_retries` asks for the headers on every attempt: the webhook signs each with its own time."""
    sink.faults.add("status", times=2, status=503)
    calls: list[int] = []

    def headers() -> dict[str, str]:
        calls.append(len(calls) + 1)
        return {"x-attempt": str(calls[-1])}

    with urllib3.PoolManager() as pool:
        outcome = send_with_retries(
            pool, "POST", f"{sink.url}/plain", body=b"{}", headers=headers, retry=transport_retry(3, 0.01, 0.05)
        )
    assert outcome.outcomes == (503, 503, 401)  # the sink verifies: unsigned is refused, and 401 is final
    assert calls == [1, 2, 3]
