"""Slack: the resource over slack_sdk's `WebClient`, and the IO manager that posts a digest.

A digest is a message of one day: posting it twice would leave two, so a re-run updates the
message it posted before (found from the previous materialization, else from the channel's
history by the message's metadata) and replaces its chart.
"""

import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import URLError

import dagster as dg
import polars as pl
from pydantic import Field, PrivateAttr

from revenue_pipelines.lib.http import unreachable
from revenue_pipelines.lib.metadata import markdown_table

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

SLACK_API = "https://slack.com/api/"
REFUSED_TOKEN = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
HISTORY_PAGES = 5  # how far back (pages of history) a lost digest is looked for
DIGEST_EVENT = "revenue_digest"


class SlackResource(dg.ConfigurableResource):
    """Slack's Web API as the bot, through slack_sdk's `WebClient` and its retry handlers: rate
    limits (429, waiting out Retry-After), server errors and dropped connections are retried with
    backoff and jitter. A refused token, an unknown channel or an unreachable API fail at once,
    naming the variable to fix.

    dagster-slack's `SlackResource` makes a `WebClient` from a token alone: it cannot be given a
    base URL (the sandbox, a proxy) nor retry handlers, so it is not used.
    """

    bot_token: str = Field(description="The bot's OAuth token (xoxb-...), from SLACK_BOT_TOKEN.")
    channel: str = Field(description="The id of the channel posted to (C0123456789), from SLACK_CHANNEL.")
    api_url: str = Field(default=SLACK_API, description="Slack's Web API base URL, from SLACK_API_URL.")
    timeout_seconds: float = 30.0
    max_retries: int = 4
    history_page_size: int = Field(default=200, ge=1, le=999, description="Messages per page of channel history.")

    _client: Any = PrivateAttr(default=None)

    def client(self) -> "WebClient":
        if self._client is None:
            from slack_sdk import WebClient
            from slack_sdk.http_retry.builtin_handlers import (
                ConnectionErrorRetryHandler,
                RateLimitErrorRetryHandler,
                ServerErrorRetryHandler,
            )

            self._client = WebClient(
                token=self.bot_token,
                base_url=self.api_url if self.api_url.endswith("/") else self.api_url + "/",
                timeout=int(self.timeout_seconds),
                # The handlers share one count of retries per call: each may use them all.
                retry_handlers=[
                    ConnectionErrorRetryHandler(max_retry_count=self.max_retries),
                    RateLimitErrorRetryHandler(max_retry_count=self.max_retries),
                    ServerErrorRetryHandler(max_retry_count=self.max_retries),
                ],
            )
        return self._client

    @contextmanager
    def _answers(self) -> Iterator[None]:
        """Slack's refusals that no retry fixes, as failures naming what to check."""
        try:
            yield
        except (URLError, OSError) as error:
            if failure := unreachable("Slack", self.api_url, "SLACK_API_URL", error):
                raise failure from None
            raise
        except Exception as error:
            code = _code(error)
            if code in REFUSED_TOKEN:
                raise dg.Failure(
                    f"Slack refused the bot token ({code}). Check SLACK_BOT_TOKEN.", allow_retries=False
                ) from None
            if code == "channel_not_found":
                raise dg.Failure(
                    f"Slack has no channel {self.channel} the bot can see (channel_not_found). Check SLACK_CHANNEL: "
                    "a channel id such as C0123456789; a private channel must have the bot invited.",
                    allow_retries=False,
                ) from None
            if code == "missing_scope":
                raise dg.Failure(
                    f"The Slack app lacks the scope {error.response.get('needed')}: add it to the app and reinstall "
                    "it. Check SLACK_BOT_TOKEN is that app's.",
                    allow_retries=False,
                ) from None
            raise

    def _in_channel(self, method: str, **arguments: Any) -> "SlackResponse":
        """Call a method that needs the bot in the channel; joins a public channel when it is not."""
        with self._answers():
            try:
                return getattr(self.client(), method)(channel=self.channel, **arguments)
            except Exception as error:
                if _code(error) != "not_in_channel":
                    raise
            self.join()
            return getattr(self.client(), method)(channel=self.channel, **arguments)

    def join(self) -> None:
        with self._answers():
            try:
                self.client().conversations_join(channel=self.channel)
            except Exception as error:
                if _code(error) != "method_not_supported_for_channel_type":
                    raise
                raise dg.Failure(
                    f"The bot is not in the private channel {self.channel}, and a bot cannot join a private channel "
                    "itself: invite it there (/invite @<your bot>), or check SLACK_CHANNEL.",
                    allow_retries=False,
                ) from None

    def post(self, text: str, blocks: list[dict], metadata: dict | None = None) -> str:
        """Post a message to the channel; its ts."""
        return self._in_channel("chat_postMessage", text=text, blocks=blocks, metadata=metadata, unfurl_links=False)[
            "ts"
        ]

    def update(self, ts: str, text: str, blocks: list[dict], metadata: dict | None = None) -> bool:
        """Replace the message `ts`; False if it is gone (deleted in Slack)."""
        with self._answers():
            try:
                self.client().chat_update(channel=self.channel, ts=ts, text=text, blocks=blocks, metadata=metadata)
            except Exception as error:
                if _code(error) == "message_not_found":
                    return False
                raise
        return True

    def find_message(self, event_type: str, key: str, value: str) -> dict[str, Any] | None:
        """The newest message of the channel whose metadata has `event_type` and
        `event_payload[key] == value`, among the latest HISTORY_PAGES pages of history (slack_sdk's
        response follows the cursor from page to page)."""
        history = self._in_channel("conversations_history", include_all_metadata=True, limit=self.history_page_size)
        with self._answers():
            for page in itertools.islice(history, HISTORY_PAGES):
                for message in page.get("messages", []):
                    metadata = message.get("metadata") or {}
                    payload = metadata.get("event_payload") or {}
                    if metadata.get("event_type") == event_type and payload.get(key) == value:
                        return message
        return None

    def permalink(self, ts: str) -> str:
        with self._answers():
            return self.client().chat_getPermalink(channel=self.channel, message_ts=ts)["permalink"]

    def upload(self, content: bytes, filename: str, title: str) -> str:
        """Upload a file (not shared in any channel: a message shows it); its id."""
        with self._answers():
            response = self.client().files_upload_v2(content=content, filename=filename, title=title)
        return response["files"][0]["id"] if response.get("files") else response["file"]["id"]

    def delete_file(self, file_id: str) -> None:
        """Delete a file the bot uploaded; one already gone is fine."""
        with self._answers():
            try:
                self.client().files_delete(file=file_id)
            except Exception as error:
                if _code(error) != "file_not_found":
                    raise


def _code(error: Exception) -> str | None:
    """Slack's error code of a refused call (`{"ok": false, "error": ...}`), else None."""
    from slack_sdk.errors import SlackApiError

    return error.response.get("error") if isinstance(error, SlackApiError) else None


@dataclass(frozen=True)
class PostedDigest:
    """Where a day's digest is: its message and the chart it shows."""

    ts: str
    chart_file_id: str | None = None


@dataclass(frozen=True)
class DayDigest:
    """One day's digest: the message (Block Kit) and its chart, with where it was posted before."""

    day: str
    text: str
    blocks: list[dict]
    chart_png: bytes
    chart_alt_text: str
    previous: PostedDigest | None = None


@dataclass(frozen=True)
class Digests:
    """The digests of the days of a run (one, or a backfill's range)."""

    days: list[DayDigest] = field(default_factory=list)


class SlackDigestIOManager(dg.ConfigurableIOManager):
    """Posts each day's digest to the channel, exactly once per day: a re-run updates the message
    posted before and replaces its chart. The PNG sent is kept under `chart_dir`, so the UI shows
    what the channel got. A digest is a message, not data: loading it as an input is refused."""

    slack: dg.ResourceDependency[SlackResource]
    chart_dir: str = Field(description="Where the charts sent are kept, one PNG per day.")

    def handle_output(self, context: dg.OutputContext, obj: Digests) -> None:
        sent = []
        for digest in obj.days:
            chart = self._keep_chart(context, digest)
            file_id = self.slack.upload(digest.chart_png, f"revenue-{digest.day}.png", f"Revenue, {digest.day}")
            blocks = [
                *digest.blocks,
                {"type": "image", "slack_file": {"id": file_id}, "alt_text": digest.chart_alt_text},
            ]
            metadata = {"event_type": DIGEST_EVENT, "event_payload": {"day": digest.day}}
            previous = digest.previous or self._found(digest.day)
            if previous and self.slack.update(previous.ts, digest.text, blocks, metadata):
                ts, change = previous.ts, "updated"
            else:
                ts, change = self.slack.post(digest.text, blocks, metadata), "posted"
            if previous and previous.chart_file_id and previous.chart_file_id != file_id:
                self.slack.delete_file(previous.chart_file_id)
            sent.append(
                {"day": digest.day, "ts": ts, "chart_file_id": file_id, "change": change, "chart": str(chart)}
                | {"permalink": self.slack.permalink(ts)}
            )
        context.add_output_metadata(
            {
                "channel": self.slack.channel,
                "messages": dg.MetadataValue.json(sent),
                "sent": dg.MetadataValue.md(markdown_table(_table(sent), limit=len(sent))),
                **(_one_day(sent[0]) if len(sent) == 1 else {}),
            }
        )

    def _found(self, day: str) -> PostedDigest | None:
        """The day's digest found in the channel by its metadata, with the chart it shows."""
        message = self.slack.find_message(DIGEST_EVENT, "day", day)
        if message is None:
            return None
        charts = [block["slack_file"]["id"] for block in message.get("blocks") or [] if "slack_file" in block]
        return PostedDigest(message["ts"], charts[0] if charts else None)

    def _keep_chart(self, context: dg.OutputContext, digest: DayDigest) -> Path:
        """The PNG, written beside its target and renamed into place."""
        folder = Path(self.chart_dir).joinpath(*context.asset_key.path)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{digest.day}.png"
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as partial:
            partial.write(digest.chart_png)
        os.replace(partial.name, target)
        return target

    def load_input(self, context: dg.InputContext) -> Any:
        raise dg.Failure(
            f"{context.asset_key.to_user_string()} is a Slack message, not data, and cannot be loaded as an "
            "input: depend on the marts it summarises (revenue/marts/daily_revenue_metrics, revenue/marts/pipeline).",
            allow_retries=False,
        )


def _table(sent: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(sent).select("day", "change", "ts", "permalink")


def _one_day(sent: dict) -> dict[str, Any]:
    return {
        "ts": sent["ts"],
        "permalink": dg.MetadataValue.url(sent["permalink"]),
        "change": sent["change"],
        "chart": dg.MetadataValue.path(sent["chart"]),
    }
