"""The Slack sandbox speaks Slack's Web API: checked with the real slack_sdk WebClient (and, where
slack_sdk cannot send it, plain urllib) against the sandbox's ground truth."""

from __future__ import annotations

import base64
import json
import re
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.client import IncompleteRead

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

TS = re.compile(r"^\d{10}\.\d{6}$")
CHANNEL_ID = re.compile(r"^C[A-Z0-9]{10}$")
QUICK = FixedValueRetryIntervalCalculator(0.01)
SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*Won* $1,200"}}


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory(seed=5, companies=5, days=3)


def client(sb, token: str | None = "bot", retry_handlers=None) -> WebClient:
    """The real client, aimed at the sandbox as the project aims it (SLACK_API_URL); no retries unless given."""
    env = sb.env()
    return WebClient(
        token=env["SLACK_BOT_TOKEN"] if token == "bot" else token,
        base_url=env["SLACK_API_URL"],
        timeout=10,
        retry_handlers=retry_handlers or [],
    )


def refused(call, *args, **kwargs) -> SlackApiError:
    with pytest.raises(SlackApiError) as raised:
        call(*args, **kwargs)
    return raised.value


def raw(sb, method: str, body: bytes | None = None, content_type: str | None = None, query: str = "", verb="POST"):
    """One call by hand: (status, headers, body as JSON)."""
    headers = {"Authorization": f"Bearer {sb.slack.token}"}
    if content_type:
        headers["Content-Type"] = content_type
    url = f"{sb.url}/api/{method}" + (f"?{query}" if query else "")
    request = urllib.request.Request(url, data=body, headers=headers, method=verb)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def png(width: int = 120, height: int = 80) -> bytes:
    """A real PNG (8-bit RGB, a gradient), built by hand: the test environment has no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(value for x in range(width) for value in (x * 2 % 256, y * 3 % 256, (x + y) % 256))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --- the workspace -------------------------------------------------------------------------------


def test_env_points_slack_sdk_at_the_sandbox_with_a_bot_token_made_for_it(sb, sandbox_factory):
    env = sb.env()
    assert env["SLACK_API_URL"] == f"{sb.url}/api/"
    assert env["SLACK_BOT_TOKEN"] == sb.slack.token and re.fullmatch(r"xoxb-\d+-\d+-\w+", sb.slack.token)
    assert env["SLACK_CHANNEL"] == sb.slack.channel_id("revenue") == sb.slack.channel_id("#revenue")
    other = sandbox_factory(seed=5, companies=5, days=3)
    assert other.slack.token != sb.slack.token  # never a constant
    assert refused(client(other, token=sb.slack.token).auth_test).response["error"] == "invalid_auth"

    names = ("revenue", "general", "private-revops")
    ids = [sb.slack.channel_id(name) for name in names]
    assert all(CHANNEL_ID.fullmatch(channel) for channel in ids) and len(set(ids)) == 3
    assert [sb.slack.is_member(name) for name in names] == [True, False, False]

    answer = client(sb).auth_test()
    assert answer.status_code == 200 and answer["ok"] is True
    assert answer["url"] == f"{sb.url}/" and answer["team"] and answer["user"]
    assert answer["team_id"].startswith("T") and answer["user_id"].startswith("U") and answer["bot_id"].startswith("B")


# --- messages ------------------------------------------------------------------------------------


def test_a_post_with_blocks_and_metadata_is_what_the_channel_holds(sb):
    channel = sb.slack.channel_id("revenue")
    metadata = {"event_type": "daily_revenue_digest", "event_payload": {"partition": "2026-11-20"}}
    header = {"type": "header", "text": {"type": "plain_text", "text": "Revenue, 20 Nov"}}
    blocks = [header, SECTION, {"type": "divider"}]
    answer = client(sb).chat_postMessage(
        channel=channel, text="Revenue digest", blocks=blocks, metadata=metadata, unfurl_links=False
    )
    assert answer["channel"] == channel and TS.fullmatch(answer["ts"])
    assert answer["message"]["text"] == "Revenue digest" and answer["message"]["blocks"] == blocks
    assert answer["message"]["metadata"] == metadata and answer["message"]["ts"] == answer["ts"]

    [message] = sb.slack.messages(channel)
    assert (message.ts, message.text, message.blocks, message.metadata) == (
        answer["ts"],
        "Revenue digest",
        blocks,
        metadata,
    )
    assert message.files == () and message.edits == 0
    [post] = sb.slack.posts
    assert (post.channel, post.ts, post.unfurl_links, post.unfurl_media) == (channel, answer["ts"], False, None)


def test_timestamps_are_unique_and_increasing_even_from_threads(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: web.chat_postMessage(channel=channel, text=f"n{n}")["ts"], range(40)))
    assert len(set(answers)) == 40 and all(TS.fullmatch(ts) for ts in answers)
    held = [message.ts for message in sb.slack.messages(channel)]
    assert held == sorted(held, key=float) and sorted(held) == sorted(answers)
    assert len(sb.slack.posts) == 40


def test_a_channel_may_be_named_when_posting_and_a_form_body_is_read_like_json(sb):
    channel = sb.slack.channel_id("revenue")
    assert client(sb).chat_postMessage(channel="#revenue", text="by name")["channel"] == channel
    # A form, as slack_sdk sends every method but chat.*: blocks and metadata as JSON text.
    form = client(sb).api_call(
        "chat.postMessage",
        params={
            "channel": channel,
            "text": "form",
            "blocks": json.dumps([SECTION]),
            "metadata": json.dumps({"event_type": "t", "event_payload": {"a": 1}}),
        },
    )
    assert sb.slack.messages(channel)[-1].blocks == [SECTION]
    assert sb.slack.messages(channel)[-1].metadata == {"event_type": "t", "event_payload": {"a": 1}}
    assert form["ts"] == sb.slack.messages(channel)[-1].ts


def test_an_update_changes_the_message_in_place_and_counts_the_edit(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    posted = web.chat_postMessage(channel=channel, text="first", blocks=[SECTION])
    web.chat_postMessage(channel=channel, text="another")
    new_blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Won* $2,400"}}]
    new_metadata = {"event_type": "daily_revenue_digest", "event_payload": {"revision": 2}}
    answer = web.chat_update(channel=channel, ts=posted["ts"], text="second", blocks=new_blocks, metadata=new_metadata)
    assert (answer["channel"], answer["ts"], answer["text"]) == (channel, posted["ts"], "second")

    first, other = sb.slack.messages(channel)
    assert (first.ts, first.text, first.blocks, first.metadata, first.edits) == (
        posted["ts"],
        "second",
        new_blocks,
        new_metadata,
        1,
    )
    assert (other.text, other.edits) == ("another", 0)
    [update] = sb.slack.updates
    assert (update.channel, update.ts, update.text) == (channel, posted["ts"], "second")
    assert len(sb.slack.posts) == 2  # an update is not a post

    unknown = refused(web.chat_update, channel=channel, ts="1700000000.000001", text="x")
    assert unknown.response["error"] == "message_not_found" and unknown.response.status_code == 200
    assert len(sb.slack.updates) == 1


def test_a_permalink_names_the_channel_and_the_ts(sb):
    channel = sb.slack.channel_id("revenue")
    ts = client(sb).chat_postMessage(channel=channel, text="x")["ts"]
    answer = client(sb).chat_getPermalink(channel=channel, message_ts=ts)
    assert answer["permalink"] == f"{sb.url}/archives/{channel}/p{ts.replace('.', '')}"
    error = refused(client(sb).chat_getPermalink, channel=channel, message_ts="1700000000.000001")
    assert error.response["error"] == "message_not_found"


def test_history_is_newest_first_paged_by_cursor_with_metadata_on_request(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    posted = [
        web.chat_postMessage(
            channel=channel, text=f"m{n}", blocks=[SECTION], metadata={"event_type": "e", "event_payload": {"n": n}}
        )["ts"]
        for n in range(5)
    ]
    plain = web.conversations_history(channel=channel)
    assert [message["ts"] for message in plain["messages"]] == posted[::-1]
    assert plain["has_more"] is False and not plain.get("response_metadata", {}).get("next_cursor")
    assert all("metadata" not in message for message in plain["messages"])
    assert plain["messages"][0]["blocks"] == [SECTION]

    pages, cursor = [], None
    while True:
        page = web.conversations_history(channel=channel, limit=2, cursor=cursor, include_all_metadata=True)
        pages.append([(message["text"], message["metadata"]["event_payload"]["n"]) for message in page["messages"]])
        cursor = page.get("response_metadata", {}).get("next_cursor")
        assert page["has_more"] is bool(cursor)
        if not cursor:
            break
    assert pages == [[("m4", 4), ("m3", 3)], [("m2", 2), ("m1", 1)], [("m0", 0)]]
    first_page = web.conversations_history(channel=channel, limit=1)
    assert base64.b64decode(first_page["response_metadata"]["next_cursor"]).startswith(b"next_ts:")  # Slack's shape

    window = web.conversations_history(channel=channel, oldest=posted[1], latest=posted[3])
    assert [message["text"] for message in window["messages"]] == ["m2"]  # both bounds exclusive
    inclusive = web.conversations_history(channel=channel, oldest=posted[1], latest=posted[3], inclusive=True)
    assert [message["text"] for message in inclusive["messages"]] == ["m3", "m2", "m1"]


def test_history_also_answers_a_get_with_the_query_string(sb):
    channel = sb.slack.channel_id("revenue")
    client(sb).chat_postMessage(channel=channel, text="hello", metadata={"event_type": "e", "event_payload": {}})
    status, _, body = raw(sb, "conversations.history", query=f"channel={channel}&include_all_metadata=true", verb="GET")
    assert status == 200 and body["ok"] is True
    assert [(message["text"], message["metadata"]["event_type"]) for message in body["messages"]] == [("hello", "e")]


# --- channels ------------------------------------------------------------------------------------


def test_a_public_channel_is_joined_and_a_private_one_refuses(sb):
    web = client(sb)
    general, private = sb.slack.channel_id("general"), sb.slack.channel_id("private-revops")
    assert refused(web.chat_postMessage, channel=general, text="x").response["error"] == "not_in_channel"
    assert refused(web.conversations_history, channel=general).response["error"] == "not_in_channel"
    joined = web.conversations_join(channel=general)
    assert joined["channel"]["id"] == general and joined["channel"]["is_member"] is True
    assert sb.slack.is_member("general")
    web.chat_postMessage(channel=general, text="now in")
    assert [message.text for message in sb.slack.messages("general")] == ["now in"]
    assert web.conversations_join(channel=general)["warning"] == "already_in_channel"

    # A private channel the bot is not in does not exist to it, and cannot be joined.
    assert refused(web.chat_postMessage, channel=private, text="x").response["error"] == "channel_not_found"
    assert refused(web.conversations_join, channel=private).response["error"] == (
        "method_not_supported_for_channel_type"
    )
    assert not sb.slack.is_member("private-revops") and sb.slack.messages("private-revops") == []
    sb.slack.invite_bot("private-revops")
    web.chat_postMessage(channel=private, text="invited")
    assert [message.text for message in sb.slack.messages(private)] == ["invited"]


def test_a_bot_removed_from_revenue_gets_not_in_channel_until_it_joins(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    sb.slack.leave_channel("revenue")
    assert refused(web.chat_postMessage, channel=channel, text="x").response["error"] == "not_in_channel"
    web.conversations_join(channel=channel)
    assert web.chat_postMessage(channel=channel, text="back")["ok"]
    assert [post.text for post in sb.slack.posts] == ["back"]


# --- errors --------------------------------------------------------------------------------------


def test_auth_errors_come_as_slack_api_errors(sb):
    channel = sb.slack.channel_id("revenue")
    for token, error in ((None, "not_authed"), ("xoxb-1-2-wrong", "invalid_auth")):
        failure = refused(client(sb, token=token).chat_postMessage, channel=channel, text="x")
        assert failure.response.status_code == 200 and failure.response["error"] == error
    assert client(sb).auth_test()["ok"]
    sb.slack.revoke_token()
    assert refused(client(sb).auth_test).response["error"] == "invalid_auth"
    assert refused(client(sb).chat_postMessage, channel=channel, text="x").response["error"] == "invalid_auth"
    assert sb.slack.posts == []


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_argument_errors_are_slacks(sb):
    web = client(sb)
    channel = sb.slack.channel_id("revenue")
    no_payload = {"event_type": "e"}
    cases = [
        (web.chat_postMessage, {"channel": "C0000000000", "text": "x"}, "channel_not_found"),
        (web.conversations_history, {"channel": "C0000000000"}, "channel_not_found"),
        (web.chat_postMessage, {"channel": channel, "text": "x" * 40_001}, "msg_too_long"),
        (web.chat_postMessage, {"channel": channel, "text": ""}, "no_text"),
        (web.chat_postMessage, {"channel": channel, "text": "x", "metadata": no_payload}, "invalid_metadata_format"),
        (web.files_getUploadURLExternal, {"filename": "a.png", "length": "many"}, "invalid_arguments"),
        (web.conversations_history, {"channel": channel, "cursor": "not-a-cursor"}, "invalid_cursor"),
    ]
    for call, arguments, error in cases:
        assert refused(call, **arguments).response["error"] == error, (call.__name__, error)
    assert web.chat_postMessage(channel=channel, text="x" * 40_000)["ok"]  # the limit itself passes
    assert len(sb.slack.posts) == 1

    status, _, body = raw(sb, "chat.postMessage", b'{"channel": ', "application/json")
    assert (status, body) == (200, {"ok": False, "error": "invalid_json"})
    status, _, body = raw(sb, "chat.postMessage", b"[1, 2]", "application/json")
    assert body["error"] == "json_not_object"
    not_text = refused(web.api_call, "chat.postMessage", json={"channel": channel, "text": ["x"]})
    assert not_text.response["error"] == "invalid_arguments"
    unknown = refused(web.api_call, "chat.postEphemeralish")
    assert unknown.response.status_code == 200 and unknown.response.data == {
        "ok": False,
        "error": "unknown_method",
        "req_method": "chat.postEphemeralish",
    }


def test_block_kit_limits_answer_invalid_blocks_like_slack(sb):
    web = client(sb)
    channel = sb.slack.channel_id("revenue")

    def section(length: int) -> dict:
        return {"type": "section", "text": {"type": "mrkdwn", "text": "x" * length}}

    def error_of(blocks) -> dict:
        return refused(web.chat_postMessage, channel=channel, text="x", blocks=blocks).response.data

    too_many = error_of([{"type": "divider"}] * 51)
    assert too_many["error"] == "invalid_blocks"
    assert too_many["response_metadata"]["messages"] == ["[ERROR] no more than 50 items allowed [json-pointer:/blocks]"]
    too_long = error_of([{"type": "divider"}, section(3001)])
    assert too_long["errors"] == ["must be less than 3001 characters [json-pointer:/blocks/1/text/text]"]
    header = error_of([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}])
    assert "must be less than 151 characters [json-pointer:/blocks/0/text/text]" in header["errors"]
    fields = [{"type": "mrkdwn", "text": "f"}] * 11
    assert error_of([{"type": "section", "fields": fields}])["errors"] == [
        "no more than 10 items allowed [json-pointer:/blocks/0/fields]"
    ]
    long_field = [{"type": "mrkdwn", "text": "f" * 2001}]
    assert error_of([{"type": "section", "fields": long_field}])["error"] == "invalid_blocks"
    unknown_type = error_of([{"type": "carousel"}])["errors"]
    assert unknown_type == ["failed to match all allowed schemas [json-pointer:/blocks/0]"]
    assert error_of([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}])["error"] == "invalid_blocks"
    assert error_of([{"type": "image", "image_url": "https://example.com/a.png"}])["error"] == "invalid_blocks"
    assert sb.slack.posts == []

    # At the limits, everything passes; and chat.update checks the same way.
    at_limits = [
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
        section(3000),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2000}] * 10},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}]},
        {"type": "image", "image_url": "https://example.com/a.png", "alt_text": "chart"},
        {"type": "rich_text", "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": "r"}]}]},
        {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "b"}}]},
    ] + [{"type": "divider"}] * 43
    assert len(at_limits) == 50
    ts = web.chat_postMessage(channel=channel, text="x", blocks=at_limits)["ts"]
    update = refused(web.chat_update, channel=channel, ts=ts, text="x", blocks=[section(3001)])
    assert update.response["error"] == "invalid_blocks"
    assert sb.slack.messages(channel)[0].blocks == at_limits and sb.slack.updates == []


# --- files ---------------------------------------------------------------------------------------


def test_files_upload_v2_stores_the_bytes_and_shares_them_in_the_channel(sb):
    channel = sb.slack.channel_id("revenue")
    chart = png()
    answer = client(sb).files_upload_v2(
        channel=channel, file=chart, filename="daily_revenue.png", title="Daily revenue", initial_comment="Chart"
    )
    file = answer["file"]
    assert file["id"].startswith("F") and (file["name"], file["title"]) == ("daily_revenue.png", "Daily revenue")
    assert file["mimetype"] == "image/png" and file["size"] == len(chart)
    share_ts = file["shares"]["public"][channel][0]["ts"]

    stored = sb.slack.files[file["id"]]
    assert stored.bytes == chart and stored.channel == channel and not stored.deleted
    assert stored.bytes.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", stored.bytes[16:24]) == (120, 80)
    [message] = sb.slack.messages(channel)
    assert (message.ts, message.text, message.files) == (share_ts, "Chart", (file["id"],))
    [upload] = sb.slack.uploads
    assert (upload.file_id, upload.channel, upload.size, upload.share_ts) == (file["id"], channel, len(chart), share_ts)
    # The three steps, as slack_sdk takes them: a URL, the bytes to it (no token), the completion.
    log = [(entry.path, entry.status) for entry in sb.requests.log()]
    assert [path.rsplit("/", 2)[-2] if "/upload/" in path else path for path, _ in log] == [
        "/api/files.getUploadURLExternal",
        "v1",
        "/api/files.completeUploadExternal",
    ]
    assert all(status == 200 for _, status in log)

    history = client(sb).conversations_history(channel=channel)["messages"]
    assert history[0]["files"][0]["id"] == file["id"] and history[0]["upload"] is True
    assert client(sb).files_info(file=file["id"])["file"]["size"] == len(chart)


def test_a_chart_is_replaced_by_deleting_the_old_file(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    old = web.files_upload_v2(channel=channel, content=b"old", filename="chart.png")["file"]["id"]
    new = web.files_upload_v2(channel=channel, content=b"new", filename="chart.png")["file"]["id"]
    assert web.files_delete(file=old)["ok"]
    assert sb.slack.files[old].deleted and not sb.slack.files[new].deleted
    assert refused(web.files_info, file=old).response["error"] == "file_deleted"
    assert refused(web.files_delete, file=old).response["error"] == "file_deleted"
    assert refused(web.files_info, file="F0000000000").response["error"] == "file_not_found"
    shown = [message["files"][0] for message in web.conversations_history(channel=channel)["messages"]]
    assert shown[0]["id"] == new and shown[1] == {"id": old, "mode": "tombstone"}


def test_an_upload_without_a_channel_is_not_shared_and_a_wrong_channel_is_refused(sb):
    web = client(sb)
    private = web.files_upload_v2(content=b"private", filename="notes.txt")["file"]
    assert private["shares"] == {} and sb.slack.files[private["id"]].channel is None
    assert sb.slack.messages("revenue") == []
    general = sb.slack.channel_id("general")
    error = refused(web.files_upload_v2, channel=general, content=b"x", filename="a.txt")
    assert error.response["error"] == "not_in_channel"
    assert sb.slack.messages("general") == [] and len(sb.slack.uploads) == 1


# --- rate limits and faults ----------------------------------------------------------------------


def test_a_rate_limit_is_429_with_retry_after_per_method_and_slack_sdk_waits_it_out(sb):
    channel = sb.slack.channel_id("revenue")
    sb.slack.set_rate_limit(2, window_seconds=1.0)
    web = client(sb)
    web.chat_postMessage(channel=channel, text="1")
    web.chat_postMessage(channel=channel, text="2")
    limited = refused(web.chat_postMessage, channel=channel, text="3")
    assert limited.response.status_code == 429 and limited.response.data == {"ok": False, "error": "ratelimited"}
    assert int(limited.response.headers["Retry-After"]) == 1
    assert web.auth_test()["ok"]  # another method has its own window

    patient = client(sb, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=3)])
    assert patient.chat_postMessage(channel=channel, text="3")["ok"]
    assert [post.text for post in sb.slack.posts] == ["1", "2", "3"]
    assert sb.requests.count(path_contains="chat.postMessage", status=429) >= 1

    sb.slack.rate_limit_per_minute = None
    for n in range(5):
        web.chat_postMessage(channel=channel, text=f"free {n}")


def test_scripted_faults_on_api_paths_are_absorbed_by_slack_sdks_retry_handlers(sb):
    channel = sb.slack.channel_id("revenue")
    sb.faults.add("rate_limit", path_contains="chat.postMessage", retry_after=0)
    sb.faults.add("status", status=503, path_contains="chat.postMessage")
    sb.faults.add("status", status=500, path_contains="chat.postMessage")
    sb.faults.add("drop", path_contains="chat.postMessage")
    # slack_sdk counts attempts once per call, across handlers: each handler's max_retry_count caps
    # the retries so far of any kind, so a call meeting four faults needs every cap at 4.
    handlers = [
        RateLimitErrorRetryHandler(max_retry_count=4),
        ServerErrorRetryHandler(max_retry_count=4, interval_calculator=QUICK),
        ConnectionErrorRetryHandler(max_retry_count=4, interval_calculator=QUICK),
    ]
    answer = client(sb, retry_handlers=handlers).chat_postMessage(channel=channel, text="once")
    assert answer["ok"] and [post.text for post in sb.slack.posts] == ["once"]
    statuses = [entry.status for entry in sb.requests.log() if "chat.postMessage" in entry.path]
    assert statuses == [429, 503, 500, None, 200]
    assert sb.faults.pending == []


def test_without_retry_handlers_faults_surface_in_slacks_dialect(sb):
    channel = sb.slack.channel_id("revenue")
    web = client(sb)
    sb.faults.add("status", status=503, path_contains="chat.postMessage")
    failure = refused(web.chat_postMessage, channel=channel, text="x")
    assert failure.response.status_code == 503 and failure.response["error"] == "service_unavailable"
    sb.faults.add("rate_limit", path_contains="chat.postMessage")
    failure = refused(web.chat_postMessage, channel=channel, text="x")
    assert failure.response.status_code == 429 and "Retry-After" not in failure.response.headers
    sb.faults.add("drop", path_contains="conversations.history")
    with pytest.raises(ConnectionError):  # RemoteDisconnected, unwrapped: urllib wraps only send errors
        web.conversations_history(channel=channel)
    assert sb.slack.posts == []


def test_a_body_cut_short_after_a_post_leaves_the_message_posted(sb):
    """What a caller must allow for: Slack may post and the answer still be lost; a blind re-post
    would post twice (ConnectionErrorRetryHandler does not take an IncompleteRead)."""
    channel = sb.slack.channel_id("revenue")
    sb.faults.add("drop_mid_body", path_contains="chat.postMessage")
    handlers = [ConnectionErrorRetryHandler(max_retry_count=1, interval_calculator=QUICK)]
    with pytest.raises(IncompleteRead):
        client(sb, retry_handlers=handlers).chat_postMessage(channel=channel, text="lost answer")
    assert [message.text for message in sb.slack.messages(channel)] == ["lost answer"]


def test_an_image_block_must_show_a_file_that_exists(sb):
    client = WebClient(token=sb.slack.token, base_url=f"{sb.url}/api/")
    channel = sb.slack.channel_id("revenue")
    file_id = client.files_upload_v2(content=b"\x89PNG\r\n\x1a\n", filename="c.png", title="c")["files"][0]["id"]
    image = {"type": "image", "slack_file": {"id": file_id}, "alt_text": "chart"}
    client.chat_postMessage(channel=channel, text="with a chart", blocks=[image])
    client.files_delete(file=file_id)
    for gone in (file_id, "F0000000000"):
        block = {**image, "slack_file": {"id": gone}}
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel=channel, text="with a chart", blocks=[block])
        assert refused.value.response["error"] == "invalid_blocks"
