"""Slack's Web API (the methods the project calls) served under `/api/`, for `slack_sdk.WebClient`.

    client = WebClient(token=sb.slack.token, base_url=f"{sb.url}/api/")
    client.chat_postMessage(channel=sb.slack.channel_id("revenue"), text="hi", blocks=[...])
    sb.slack.messages(sb.slack.channel_id("revenue"))   # ground truth, oldest first

Slack's wire protocol: every method answers a POST (slack_sdk POSTs even the "GET" methods) or a
GET, with its arguments as a form, a JSON body or the query string; the bot token comes as
`Authorization: Bearer xoxb-...` (or a `token` form field). Answers are HTTP 200 with
`{"ok": true, ...}` or `{"ok": false, "error": "<code>"}`; only a rate limit is not: HTTP 429,
`Retry-After` and `{"ok": false, "error": "ratelimited"}`, counted per token and method over a
rolling window (`rate_limit_per_minute`, off by default; Slack's tier 3 is about 50).

The workspace holds three channels: `#revenue` (public, the bot is a member), `#general` (public,
the bot is not) and `#private-revops` (private, the bot is not). As on Slack, a public channel the
bot is not in refuses posts and history with `not_in_channel` until `conversations.join`; a private
one it is not in is `channel_not_found` to it, and cannot be joined.

Files go up as slack_sdk's `files_upload_v2` sends them: `files.getUploadURLExternal` gives an
upload URL on this listener (`/upload/v1/<ticket>`, no token needed, as on files.slack.com); the
bytes are POSTed there raw (or as a multipart form); `files.completeUploadExternal` makes them a
file and, given a channel, shares it: a message holding the file appears in the channel.

Blocks are checked against Block Kit's documented limits (`block_problems`); a breach answers
`invalid_blocks` with Slack's `errors` and `response_metadata.messages`.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import json
import mimetypes
import random
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from revenue_pipelines.sandbox.server import (
    Request,
    Response,
    RollingWindowLimiter,
    Route,
    Service,
    json_response,
    retry_after_header,
)

TEAM_NAME = "Revenue Sandbox"
BOT_NAME = "revenue-pipelines"
MAX_TEXT = 40_000  # chat.postMessage / chat.update: longer text is msg_too_long
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2000  # each of a section's fields (Slack's documented limit; its own text has 3,000)
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTIONS_ELEMENTS = 25
MAX_IMAGE_URL = 3000
MAX_ALT_TEXT = 2000
MAX_BLOCK_ID = 255
BLOCK_TYPES = ("header", "section", "context", "divider", "image", "actions", "rich_text")
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 999
SEEDED_CHANNELS = (  # name, private, the bot is a member
    ("revenue", False, True),
    ("general", False, False),
    ("private-revops", True, False),
)
SERVER_ERRORS = {500: "internal_error", 503: "service_unavailable", 504: "request_timeout"}
_ID_ALPHABET = string.ascii_uppercase + string.digits


class SlackError(Exception):
    """Raised by a method to answer `{"ok": false, "error": code, **extra}` (HTTP 200, as Slack does)."""

    def __init__(self, code: str, **extra: Any):
        super().__init__(code)
        self.code = code
        self.extra = extra


# --- ground truth: frozen snapshots -------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A message as the channel holds it now."""

    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None  # {"event_type": ..., "event_payload": {...}}
    files: tuple[str, ...]  # file ids shared with it (a deleted one stays listed; see `files`)
    edits: int  # chat.update calls that changed it
    thread_ts: str | None = None  # set on replies


@dataclass(frozen=True)
class Post:
    """A chat.postMessage that Slack accepted."""

    channel: str  # the channel's id, also when the caller named it
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None
    unfurl_links: bool | None
    unfurl_media: bool | None
    thread_ts: str | None


@dataclass(frozen=True)
class Update:
    """A chat.update that Slack accepted."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class Upload:
    """A file made by files.completeUploadExternal."""

    file_id: str
    name: str
    title: str
    size: int
    channel: str | None  # where it was shared, if anywhere
    initial_comment: str | None
    thread_ts: str | None
    share_ts: str | None  # the ts of the message that shares it


@dataclass(frozen=True)
class SlackFile:
    id: str
    name: str
    title: str
    bytes: bytes
    channel: str | None
    deleted: bool
    share_ts: str | None


# --- state --------------------------------------------------------------------------------------


@dataclass
class _Channel:
    id: str
    name: str
    private: bool
    member: bool
    created: int
    messages: list[_Message] = field(default_factory=list)


@dataclass
class _Message:
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None
    files: list[str]
    thread_ts: str | None = None
    edits: int = 0
    edited_ts: str | None = None
    upload: bool = False


@dataclass
class _File:
    id: str
    name: str
    length: int
    alt_txt: str | None
    ticket: str
    created: int
    content: bytes | None = None  # None until the bytes arrive at the upload URL
    title: str | None = None  # set by completeUploadExternal, which makes it a file
    channel: str | None = None
    share_ts: str | None = None
    deleted: bool = False

    @property
    def completed(self) -> bool:
        return self.title is not None


class Slack(Service):
    """A Slack workspace with one bot, its channels, messages and files; thread-safe.

    Knobs: `rate_limit_per_minute` (None: off) over `rate_limit_window_seconds`; `revoke_token()`;
    `leave_channel(name)` / `invite_bot(name)`; `add_channel(...)`. Ground truth (snapshots):
    `messages(channel_id)`, `posts`, `updates`, `uploads`, `files`, `channel_id(name)`.
    """

    def __init__(self, *, seed: int = 7, rate_limit_per_minute: int | None = None):
        super().__init__(limiter=None, send_retry_after=True)
        ids = random.Random(f"slack-{seed}")
        self._ids = ids
        self.team_id = self._new_id("T")
        self.user_id = self._new_id("U")
        self.bot_id = self._new_id("B")
        self.app_id = self._new_id("A")
        # A bot token's shape; random per sandbox, so no token works on two sandboxes.
        digits = "".join(secrets.choice(string.digits) for _ in range(25))
        self.token = f"xoxb-{digits[:12]}-{digits[12:]}-{secrets.token_hex(12)}"
        self.rate_limit_window_seconds = 60.0
        self._rate_limit_per_minute = rate_limit_per_minute
        self._limiter = self._make_limiter()
        self._revoked = False
        self._lock = threading.RLock()
        self._channels: dict[str, _Channel] = {}
        self._files: dict[str, _File] = {}
        self._tickets: dict[str, str] = {}  # upload ticket -> file id
        self._posts: list[Post] = []
        self._updates: list[Update] = []
        self._uploads: list[Upload] = []
        self._last_ts_us = 0
        for name, private, member in SEEDED_CHANNELS:
            self.add_channel(name, private=private, member=member)

    # --- knobs --------------------------------------------------------------------------------

    @property
    def rate_limit_per_minute(self) -> int | None:
        """Requests per token and method admitted in any `rate_limit_window_seconds` (60); None: no limit."""
        return self._rate_limit_per_minute

    @rate_limit_per_minute.setter
    def rate_limit_per_minute(self, value: int | None) -> None:
        self._rate_limit_per_minute = value
        self._limiter = self._make_limiter()

    def _make_limiter(self) -> RollingWindowLimiter | None:
        if self._rate_limit_per_minute is None:
            return None
        return RollingWindowLimiter(self._rate_limit_per_minute, self.rate_limit_window_seconds)

    def set_rate_limit(self, per_window: int | None, window_seconds: float = 60.0) -> None:
        """A rolling window of `window_seconds` (tests shorten it), starting empty."""
        self.rate_limit_window_seconds = window_seconds
        self.rate_limit_per_minute = per_window

    def revoke_token(self) -> None:
        """The bot token stops working: every call answers invalid_auth."""
        self._revoked = True

    def add_channel(self, name: str, *, private: bool = False, member: bool = True) -> str:
        """A new channel; its id."""
        with self._lock:
            if self._find_by_name(name) is not None:
                raise ValueError(f"a channel named #{name} exists")
            channel = _Channel(self._new_id("C"), name.lstrip("#"), private, member, int(time.time()))
            self._channels[channel.id] = channel
            return channel.id

    def leave_channel(self, channel: str) -> None:
        """The bot leaves the channel (a name or an id), as if removed by a member."""
        with self._lock:
            self._channel_for_knob(channel).member = False

    def invite_bot(self, channel: str) -> None:
        """A member invites the bot (the only way into a private channel)."""
        with self._lock:
            self._channel_for_knob(channel).member = True

    # --- ground truth -------------------------------------------------------------------------

    def channel_id(self, name: str) -> str:
        """The id of the channel `name` ("revenue" or "#revenue")."""
        with self._lock:
            channel = self._find_by_name(name)
            if channel is None:
                raise KeyError(f"no channel #{name.lstrip('#')}")
            return channel.id

    def is_member(self, channel: str) -> bool:
        with self._lock:
            return self._channel_for_knob(channel).member

    def messages(self, channel: str) -> list[Message]:
        """The channel's messages (a name or an id), oldest first, replies included."""
        with self._lock:
            return [
                Message(
                    ts=message.ts,
                    text=message.text,
                    blocks=copy.deepcopy(message.blocks),
                    metadata=copy.deepcopy(message.metadata),
                    files=tuple(message.files),
                    edits=message.edits,
                    thread_ts=message.thread_ts,
                )
                for message in self._channel_for_knob(channel).messages
            ]

    @property
    def posts(self) -> list[Post]:
        with self._lock:
            return list(self._posts)

    @property
    def updates(self) -> list[Update]:
        with self._lock:
            return list(self._updates)

    @property
    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._uploads)

    @property
    def files(self) -> dict[str, SlackFile]:
        """Every file completeUploadExternal made, by id, deleted ones too."""
        with self._lock:
            return {
                file.id: SlackFile(
                    id=file.id,
                    name=file.name,
                    title=file.title or file.name,
                    bytes=file.content or b"",
                    channel=file.channel,
                    deleted=file.deleted,
                    share_ts=file.share_ts,
                )
                for file in self._files.values()
                if file.completed
            }

    # --- HTTP ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        # Authentication is each method's business (an unknown method is unknown_method with or
        # without a token, as Slack answers), so the server's `refusal` step is skipped.
        api = re.compile(r"/api/(?P<method>[^/]*)")
        upload = re.compile(r"/upload/v1/(?P<ticket>[\w-]+)")
        return [
            Route("POST", api, self._api, False),
            Route("GET", api, self._api, False),
            Route("POST", upload, self._upload, False),
        ]

    def refusal(self, request: Request) -> Response | None:
        return None

    def error(self, status: int, message: str, category: str) -> Response:
        """A server-side failure (a scripted fault, a crash): Slack's body with that HTTP status."""
        code = SERVER_ERRORS.get(status, "fatal_error" if status >= 500 else "invalid_request")
        return json_response(status, {"ok": False, "error": code}, {"x-slack-failure": code})

    def rate_limited(self, retry_after: float | None) -> Response:
        headers = retry_after_header(retry_after) if retry_after is not None else {}
        return json_response(429, {"ok": False, "error": "ratelimited"}, headers)

    def _api(self, request: Request) -> Response:
        name = request.params["method"]
        method = self._methods().get(name)
        if method is None:
            return _failure(SlackError("unknown_method", req_method=name))
        try:
            args = _arguments(request)
            self._authenticate(request, args)
            limiter = self._limiter
            if limiter is not None:
                admission = limiter.admit(f"{request.bearer_token or args.get('token')}:{name}")
                if not admission.allowed:
                    return self.rate_limited(admission.retry_after)
            payload = method(request, args)
        except SlackError as error:
            return _failure(error)
        return json_response(200, {"ok": True, **payload})

    def _methods(self) -> dict[str, Any]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.history": self._conversations_history,
            "conversations.join": self._conversations_join,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "files.delete": self._files_delete,
            "files.info": self._files_info,
        }

    def _authenticate(self, request: Request, args: dict[str, Any]) -> None:
        token = request.bearer_token or (args.get("token") if isinstance(args.get("token"), str) else None)
        if not token:
            raise SlackError("not_authed")
        if self._revoked or not secrets.compare_digest(token.encode(), self.token.encode()):
            raise SlackError("invalid_auth")

    # --- methods ------------------------------------------------------------------------------

    def _auth_test(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"{request.base_url}/",
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": self.team_id,
            "user_id": self.user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        text = _string(args, "text") or ""
        blocks = _blocks(args, self._files)
        metadata = _metadata(args)
        thread_ts = _string(args, "thread_ts")
        if not text and not blocks:
            raise SlackError("no_text")
        if len(text) > MAX_TEXT:
            raise SlackError("msg_too_long")
        with self._lock:
            channel = self._writable(_required(args, "channel"), by_name=True)
            if thread_ts is not None and self._message(channel, thread_ts) is None:
                raise SlackError("thread_not_found")
            message = _Message(self._next_ts(), text, blocks, metadata, [], thread_ts=thread_ts)
            channel.messages.append(message)
            self._posts.append(
                Post(
                    channel=channel.id,
                    ts=message.ts,
                    text=text,
                    blocks=copy.deepcopy(blocks),
                    metadata=copy.deepcopy(metadata),
                    unfurl_links=_boolean(args, "unfurl_links"),
                    unfurl_media=_boolean(args, "unfurl_media"),
                    thread_ts=thread_ts,
                )
            )
            return {"channel": channel.id, "ts": message.ts, "message": self._render(message, metadata=True)}

    def _chat_update(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        text = _string(args, "text")
        blocks = _blocks(args, self._files)
        metadata = _metadata(args)
        ts = _required(args, "ts")
        if not text and not blocks:
            raise SlackError("no_text")
        if text is not None and len(text) > MAX_TEXT:
            raise SlackError("msg_too_long")
        with self._lock:
            channel = self._writable(_required(args, "channel"))
            message = self._message(channel, ts)
            if message is None:
                raise SlackError("message_not_found")
            if text is not None:
                message.text = text
            if "blocks" in args:
                message.blocks = blocks
            if metadata is not None:
                message.metadata = metadata
            message.edits += 1
            message.edited_ts = self._next_ts()
            self._updates.append(Update(channel.id, ts, text, copy.deepcopy(blocks), copy.deepcopy(metadata)))
            return {
                "channel": channel.id,
                "ts": ts,
                "text": message.text,
                "message": self._render(message, metadata=True),
            }

    def _chat_get_permalink(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        ts = _required(args, "message_ts")
        with self._lock:
            channel = self._visible(_required(args, "channel"))
            if self._message(channel, ts) is None:
                raise SlackError("message_not_found")
            permalink = f"{request.base_url}/archives/{channel.id}/p{ts.replace('.', '')}"
            return {"channel": channel.id, "permalink": permalink}

    def _conversations_history(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        limit = _integer(args, "limit", HISTORY_DEFAULT_LIMIT)
        if limit < 1:
            limit = HISTORY_DEFAULT_LIMIT
        limit = min(limit, HISTORY_MAX_LIMIT)
        oldest = _timestamp(args, "oldest", "invalid_ts_oldest")
        latest = _timestamp(args, "latest", "invalid_ts_latest")
        inclusive = bool(_boolean(args, "inclusive"))
        with_metadata = bool(_boolean(args, "include_all_metadata"))
        cursor = _string(args, "cursor")
        before = _cursor(cursor) if cursor else None
        with self._lock:
            channel = self._readable(_required(args, "channel"))
            candidates = [
                message
                for message in reversed(channel.messages)
                if (message.thread_ts is None or message.thread_ts == message.ts)
                and _within(message.ts, oldest, latest, inclusive)
                and (before is None or _ts_key(message.ts) < before)
            ]
            page = candidates[:limit]
            has_more = len(candidates) > limit
            payload: dict[str, Any] = {
                "messages": [self._render(message, metadata=with_metadata) for message in page],
                "has_more": has_more,
                "pin_count": 0,
                "channel_actions_ts": None,
                "channel_actions_count": 0,
            }
            if has_more:
                next_ts = page[-1].ts.replace(".", "")
                payload["response_metadata"] = {"next_cursor": base64.b64encode(f"next_ts:{next_ts}".encode()).decode()}
            return payload

    def _conversations_join(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            channel = self._find(_required(args, "channel"))
            if channel is None or (channel.private and not channel.member):
                if channel is not None:
                    raise SlackError("method_not_supported_for_channel_type")
                raise SlackError("channel_not_found")
            already = channel.member
            channel.member = True
            payload: dict[str, Any] = {"channel": self._render_channel(channel)}
            if already:
                payload["warning"] = "already_in_channel"
                payload["response_metadata"] = {"warnings": ["already_in_channel"]}
            return payload

    def _files_get_upload_url_external(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        filename = _required(args, "filename")
        length = _integer(args, "length", None)
        if length is None or length < 1:
            raise SlackError("invalid_arguments")
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            file = _File(self._new_id("F"), filename, length, _string(args, "alt_txt"), ticket, int(time.time()))
            self._files[file.id] = file
            self._tickets[ticket] = file.id
        return {"upload_url": f"{request.base_url}/upload/v1/{ticket}", "file_id": file.id}

    def _upload(self, request: Request) -> Response:
        """The upload URL: no token, the ticket is the credential. Slack answers `OK - <bytes>`."""
        with self._lock:
            file_id = self._tickets.get(request.params["ticket"])
            file = self._files.get(file_id) if file_id else None
            if file is None or file.completed:
                return Response(404, b"Not Found", {"Content-Type": "text/plain; charset=utf-8"})
            file.content = _uploaded_bytes(request)
            size = len(file.content)
        return Response(200, f"OK - {size}".encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def _files_complete_upload_external(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        items = _json_argument(args, "files", "invalid_arguments")
        if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
            raise SlackError("invalid_arguments")
        channel_arg = _string(args, "channel_id") or (_string(args, "channels") or "").split(",")[0] or None
        initial_comment = _string(args, "initial_comment")
        thread_ts = _string(args, "thread_ts")
        with self._lock:
            channel = self._writable(channel_arg) if channel_arg else None
            files: list[_File] = []
            for item in items:
                file = self._files.get(str(item.get("id")))
                if file is None or file.deleted or file.completed:
                    raise SlackError("file_not_found")
                if file.content is None:
                    raise SlackError("file_upload_not_found")  # the bytes never reached the upload URL
                files.append(file)
            if channel is not None and thread_ts is not None and self._message(channel, thread_ts) is None:
                raise SlackError("thread_not_found")
            for file, item in zip(files, items, strict=True):
                file.title = str(item.get("title") or file.name)
            share_ts = None
            if channel is not None:
                message = _Message(
                    ts=self._next_ts(),
                    text=initial_comment or "",
                    blocks=None,
                    metadata=None,
                    files=[file.id for file in files],
                    thread_ts=thread_ts,
                    upload=True,
                )
                channel.messages.append(message)
                share_ts = message.ts
                for file in files:
                    file.channel, file.share_ts = channel.id, share_ts
            for file in files:
                self._uploads.append(
                    Upload(
                        file_id=file.id,
                        name=file.name,
                        title=file.title or file.name,
                        size=len(file.content or b""),
                        channel=file.channel,
                        initial_comment=initial_comment,
                        thread_ts=thread_ts,
                        share_ts=share_ts,
                    )
                )
            return {"files": [self._render_file(request.base_url, file) for file in files]}

    def _files_delete(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            file = self._live_file(_required(args, "file"))
            file.deleted = True
        return {}

    def _files_info(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            file = self._live_file(_required(args, "file"))
            return {
                "file": self._render_file(request.base_url, file),
                "comments": [],
                "response_metadata": {"next_cursor": ""},
            }

    # --- access ---------------------------------------------------------------------------------

    def _find(self, channel: str) -> _Channel | None:
        return self._channels.get(channel)

    def _find_by_name(self, name: str) -> _Channel | None:
        name = name.lstrip("#")
        return next((channel for channel in self._channels.values() if channel.name == name), None)

    def _channel_for_knob(self, channel: str) -> _Channel:
        found = self._find(channel) or self._find_by_name(channel)
        if found is None:
            raise KeyError(f"no channel {channel!r}")
        return found

    def _visible(self, channel_arg: str, by_name: bool = False) -> _Channel:
        """The channel as the bot may see it: a private channel it is not in does not exist for it."""
        channel = self._find(channel_arg) or (self._find_by_name(channel_arg) if by_name else None)
        if channel is None or (channel.private and not channel.member):
            raise SlackError("channel_not_found")
        return channel

    def _writable(self, channel_arg: str, by_name: bool = False) -> _Channel:
        channel = self._visible(channel_arg, by_name)
        if not channel.member:
            raise SlackError("not_in_channel")
        return channel

    _readable = _writable  # conversations.history: a bot reads only the channels it is in

    @staticmethod
    def _message(channel: _Channel, ts: str) -> _Message | None:
        return next((message for message in channel.messages if message.ts == ts), None)

    def _live_file(self, file_id: str) -> _File:
        file = self._files.get(file_id)
        if file is None or not file.completed:
            raise SlackError("file_not_found")
        if file.deleted:
            raise SlackError("file_deleted")
        return file

    # --- rendering ------------------------------------------------------------------------------

    def _render(self, message: _Message, *, metadata: bool) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "type": "message",
            "user": self.user_id,
            "text": message.text,
            "ts": message.ts,
            "team": self.team_id,
        }
        if message.upload:
            rendered.update(upload=True, display_as_bot=False)
        else:
            rendered.update(bot_id=self.bot_id, app_id=self.app_id)
        if message.blocks is not None:
            rendered["blocks"] = copy.deepcopy(message.blocks)
        if message.files:
            rendered["files"] = [self._file_in_message(self._files[file_id]) for file_id in message.files]
        if message.thread_ts is not None:
            rendered["thread_ts"] = message.thread_ts
        if message.edited_ts is not None:
            rendered["edited"] = {"user": self.user_id, "ts": message.edited_ts}
        if metadata and message.metadata is not None:
            rendered["metadata"] = copy.deepcopy(message.metadata)
        return rendered

    def _file_in_message(self, file: _File) -> dict[str, Any]:
        if file.deleted:
            return {"id": file.id, "mode": "tombstone"}
        return {"id": file.id, "name": file.name, "title": file.title, "mimetype": _mimetype(file.name)}

    def _render_file(self, base_url: str, file: _File) -> dict[str, Any]:
        mimetype = _mimetype(file.name)
        extension = file.name.rsplit(".", 1)[-1].lower() if "." in file.name else "binary"
        private_url = f"{base_url}/files-pri/{self.team_id}-{file.id}/{file.name}"
        rendered: dict[str, Any] = {
            "id": file.id,
            "created": file.created,
            "timestamp": file.created,
            "name": file.name,
            "title": file.title,
            "mimetype": mimetype,
            "filetype": extension,
            "pretty_type": extension.upper(),
            "user": self.user_id,
            "user_team": self.team_id,
            "mode": "hosted",
            "editable": False,
            "is_external": False,
            "external_type": "",
            "size": len(file.content or b""),
            "url_private": private_url,
            "url_private_download": f"{private_url}?download=1",
            "permalink": f"{base_url}/files/{self.user_id}/{file.id}/{file.name}",
            "is_public": False,
            "channels": [],
            "groups": [],
            "ims": [],
            "shares": {},
            "has_rich_preview": False,
            "file_access": "visible",
        }
        if file.alt_txt:
            rendered["alt_txt"] = file.alt_txt
        if file.channel is not None:
            channel = self._channels[file.channel]
            share = {"ts": file.share_ts, "channel_name": channel.name, "team_id": self.team_id, "reply_count": 0}
            kind = "private" if channel.private else "public"
            rendered["shares"] = {kind: {channel.id: [share]}}
            rendered["groups" if channel.private else "channels"] = [channel.id]
            rendered["is_public"] = not channel.private
        return rendered

    def _render_channel(self, channel: _Channel) -> dict[str, Any]:
        return {
            "id": channel.id,
            "name": channel.name,
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_private": channel.private,
            "is_archived": False,
            "is_general": channel.name == "general",
            "is_member": channel.member,
            "created": channel.created,
            "context_team_id": self.team_id,
        }

    # --- ids and timestamps ---------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        """Slack's shape: a letter for the kind, then 10 uppercase letters and digits."""
        return prefix + "".join(self._ids.choice(_ID_ALPHABET) for _ in range(10))

    def _next_ts(self) -> str:
        """A message ts: now, in microseconds, strictly after the last one given ("1733140000.000100")."""
        with self._lock:
            self._last_ts_us = max(time.time_ns() // 1000, self._last_ts_us + 1)
            return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"


# --- arguments ----------------------------------------------------------------------------------


def _failure(error: SlackError) -> Response:
    return json_response(200, {"ok": False, "error": error.code, **error.extra}, {"x-slack-failure": error.code})


def _arguments(request: Request) -> dict[str, Any]:
    """The call's arguments: the query string, then the body over it (JSON, form or multipart)."""
    args: dict[str, Any] = {name: values[-1] for name, values in request.query.items()}
    if not request.body:
        return args
    content_type = (request.headers.get("Content-Type") or "").lower()
    if content_type.startswith("application/json"):
        try:
            body = json.loads(request.body)
        except ValueError:
            raise SlackError("invalid_json") from None
        if not isinstance(body, dict):
            raise SlackError("json_not_object")
        args.update(body)
    elif content_type.startswith("multipart/form-data"):
        for part in _multipart(request):
            if part.get_filename() is None:
                args[part.get_param("name", header="content-disposition")] = part.get_content()
    else:  # Slack reads a form whatever the type says (application/x-www-form-urlencoded or none)
        try:
            fields = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise SlackError("invalid_form_data") from None
        args.update({name: values[-1] for name, values in fields.items()})
    return args


def _multipart(request: Request) -> list[Any]:
    header = f"Content-Type: {request.headers.get('Content-Type')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + request.body)
    if not message.is_multipart():
        raise SlackError("invalid_form_data")
    return list(message.iter_parts())


def _uploaded_bytes(request: Request) -> bytes:
    """The raw body, or the file part of a multipart form (Slack takes either at the upload URL)."""
    if (request.headers.get("Content-Type") or "").lower().startswith("multipart/form-data"):
        try:
            parts = _multipart(request)
        except SlackError:
            return request.body
        for part in parts:
            if part.get_filename() is not None:
                return part.get_payload(decode=True) or b""
    return request.body


def _string(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SlackError("invalid_arguments")
    return str(value)


def _required(args: dict[str, Any], name: str) -> str:
    value = _string(args, name)
    if not value:
        # Slack names what is missing: channel_not_found for a channel, else invalid_arguments.
        raise SlackError("channel_not_found" if name in ("channel", "channel_id") else "invalid_arguments")
    return value


def _boolean(args: dict[str, Any], name: str) -> bool | None:
    value = args.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).lower() in ("1", "true", "0", "false", ""):
        return str(value).lower() in ("1", "true")
    raise SlackError("invalid_arguments")


def _integer(args: dict[str, Any], name: str, default: int | None) -> int | None:
    value = args.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise SlackError("invalid_arguments")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SlackError("invalid_arguments") from None


def _timestamp(args: dict[str, Any], name: str, error: str) -> float | None:
    value = args.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SlackError(error) from None


def _json_argument(args: dict[str, Any], name: str, error: str) -> Any:
    """An argument that is JSON: as sent in a JSON body, or a JSON string in a form."""
    value = args.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise SlackError(error) from None
    return value


def _blocks(args: dict[str, Any], files: dict[str, _File]) -> list[dict[str, Any]] | None:
    blocks = _json_argument(args, "blocks", "invalid_blocks_format")
    if blocks is None:
        return None
    if not isinstance(blocks, list):
        raise SlackError("invalid_blocks_format")
    problems = block_problems(blocks) + _file_problems(blocks, files)
    if problems:
        raise SlackError(
            "invalid_blocks",
            errors=problems,
            response_metadata={"messages": [f"[ERROR] {problem}" for problem in problems]},
        )
    return blocks


def _metadata(args: dict[str, Any]) -> dict[str, Any] | None:
    metadata = _json_argument(args, "metadata", "invalid_metadata_format")
    if metadata is None:
        return None
    if (
        not isinstance(metadata, dict)
        or not isinstance(metadata.get("event_type"), str)
        or not metadata["event_type"]
        or not isinstance(metadata.get("event_payload"), dict)
    ):
        raise SlackError("invalid_metadata_format")
    return {"event_type": metadata["event_type"], "event_payload": metadata["event_payload"]}


def _cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.b64decode(cursor, validate=True).decode().partition(":")
        if kind != "next_ts":
            raise ValueError(kind)
        return int(value)
    except ValueError:
        raise SlackError("invalid_cursor") from None


def _ts_key(ts: str) -> int:
    seconds, _, fraction = ts.partition(".")
    return int(seconds) * 1_000_000 + int(fraction.ljust(6, "0")[:6] or 0)


def _within(ts: str, oldest: float | None, latest: float | None, inclusive: bool) -> bool:
    key = _ts_key(ts)
    if oldest is not None:
        bound = round(oldest * 1_000_000)
        if key < bound or (key == bound and not inclusive):
            return False
    if latest is not None:
        bound = round(latest * 1_000_000)
        if key > bound or (key == bound and not inclusive):
            return False
    return True


def _mimetype(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _file_problems(blocks: list[Any], files: dict[str, _File]) -> list[str]:
    """Image blocks showing a Slack file must name one that was uploaded and not deleted."""
    problems = []
    for index, block in enumerate(blocks):
        file = block.get("slack_file") if isinstance(block, dict) and block.get("type") == "image" else None
        if isinstance(file, dict):
            found = files.get(str(file.get("id")))
            if found is None or found.deleted or not found.completed:
                problems.append(f"invalid slack file [json-pointer:/blocks/{index}/slack_file]")
    return problems


# --- Block Kit ----------------------------------------------------------------------------------


def block_problems(blocks: list[Any]) -> list[str]:
    """What Slack would refuse in `blocks`, each as its message with a JSON pointer; [] when valid."""
    problems: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    for index, block in enumerate(blocks):
        pointer = f"/blocks/{index}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"missing required field: type [json-pointer:{pointer}]")
            continue
        kind = block["type"]
        if kind not in BLOCK_TYPES:
            problems.append(f"failed to match all allowed schemas [json-pointer:{pointer}]")
            continue
        block_id = block.get("block_id")
        if block_id is not None and (not isinstance(block_id, str) or len(block_id) > MAX_BLOCK_ID):
            problems.append(f"must be less than {MAX_BLOCK_ID + 1} characters [json-pointer:{pointer}/block_id]")
        problems.extend(_block_kind_problems(kind, block, pointer))
    return problems


def _block_kind_problems(kind: str, block: dict[str, Any], pointer: str) -> list[str]:
    problems: list[str] = []
    if kind == "header":
        problems += _text_problems(block.get("text"), f"{pointer}/text", MAX_HEADER_TEXT, plain_only=True)
    elif kind == "section":
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            problems.append(f"must provide either text or fields [json-pointer:{pointer}]")
        if text is not None:
            problems += _text_problems(text, f"{pointer}/text", MAX_SECTION_TEXT)
        if fields is not None:
            if not isinstance(fields, list) or not fields:
                problems.append(f"must provide an array of text objects [json-pointer:{pointer}/fields]")
            else:
                if len(fields) > MAX_SECTION_FIELDS:
                    problems.append(f"no more than {MAX_SECTION_FIELDS} items allowed [json-pointer:{pointer}/fields]")
                for number, item in enumerate(fields):
                    problems += _text_problems(item, f"{pointer}/fields/{number}", MAX_FIELD_TEXT)
    elif kind in ("context", "actions", "rich_text"):
        most = {"context": MAX_CONTEXT_ELEMENTS, "actions": MAX_ACTIONS_ELEMENTS, "rich_text": None}[kind]
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"missing required field: elements [json-pointer:{pointer}]")
        elif most is not None and len(elements) > most:
            problems.append(f"no more than {most} items allowed [json-pointer:{pointer}/elements]")
    elif kind == "image":
        url, file = block.get("image_url"), block.get("slack_file")
        if not (isinstance(url, str) and url) and not isinstance(file, dict):
            problems.append(f"must provide either image_url or slack_file [json-pointer:{pointer}]")
        elif isinstance(url, str) and len(url) > MAX_IMAGE_URL:
            problems.append(f"must be less than {MAX_IMAGE_URL + 1} characters [json-pointer:{pointer}/image_url]")
        alt = block.get("alt_text")
        if not isinstance(alt, str) or not alt:
            problems.append(f"missing required field: alt_text [json-pointer:{pointer}]")
        elif len(alt) > MAX_ALT_TEXT:
            problems.append(f"must be less than {MAX_ALT_TEXT + 1} characters [json-pointer:{pointer}/alt_text]")
    return problems


def _text_problems(text: Any, pointer: str, limit: int, plain_only: bool = False) -> list[str]:
    if not isinstance(text, dict) or not isinstance(text.get("text"), str):
        return [f"must be a text object [json-pointer:{pointer}]"]
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if text.get("type") not in allowed:
        return [f"must be one of {', '.join(allowed)} [json-pointer:{pointer}/type]"]
    if not text["text"]:
        return [f"must be more than 0 characters [json-pointer:{pointer}/text]"]
    if len(text["text"]) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{pointer}/text]"]
    return []


__all__ = [
    "Message",
    "Post",
    "Slack",
    "SlackError",
    "SlackFile",
    "Update",
    "Upload",
    "block_problems",
]
