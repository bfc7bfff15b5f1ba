"""The Slack destination: a partition's rows as one message in the team's channel.

One message per route and day, found again by its metadata (`route_delivery`, `route/day`), so a
re-run updates it instead of posting twice. It uses the Slack resource of the digest (`lib/slack.py`):
its retries, its refusals naming SLACK_BOT_TOKEN / SLACK_CHANNEL, its channel.
"""

import json
import logging
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from revenue_pipelines.lib.destinations import Delivery, sha256_checksum
from revenue_pipelines.lib.metadata import markdown_table
from revenue_pipelines.lib.slack import SlackResource

ROUTE_EVENT = "route_delivery"
SLACK_TEXT_LIMIT = 2900  # a section block holds 3,000 characters


class SlackDestination(BaseModel):
    """Post the rows to the channel the Slack resource posts to (SLACK_CHANNEL)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["slack"]
    title: str = Field(min_length=1, max_length=150, description="The message's heading, e.g. 'Accounts won today'.")
    max_rows: int = Field(
        default=15, ge=1, le=50, description="Rows shown in the message; the others are counted, not shown."
    )


class SlackRouteWriter(dg.ConfigurableResource):
    """Delivers routes of kind `slack` through the Slack resource."""

    slack: dg.ResourceDependency[SlackResource]

    def deliver(
        self, frame: pl.DataFrame, destination: SlackDestination, *, route: str, partition_key: str, log: logging.Logger
    ) -> Delivery:
        text, blocks = message(frame, destination, partition_key)
        metadata = {"event_type": ROUTE_EVENT, "event_payload": {"key": f"{route}/{partition_key}"}}
        previous = self.slack.find_message(ROUTE_EVENT, "key", f"{route}/{partition_key}")
        if previous and self.slack.update(previous["ts"], text, blocks, metadata):
            ts, change = previous["ts"], "updated"
        else:
            ts, change = self.slack.post(text, blocks, metadata), "posted"
        log.info(f"{route} {partition_key}: {change} message {ts} in {self.slack.channel}")
        payload = json.dumps(blocks, sort_keys=True).encode()
        return Delivery(
            uri=f"slack://{self.slack.channel}/{ts}",
            rows=frame.height,
            bytes=len(payload),
            checksum=sha256_checksum(payload),
            answer={"ts": ts, "change": change, "permalink": self.slack.permalink(ts)},
        )


def message(frame: pl.DataFrame, destination: SlackDestination, partition_key: str) -> tuple[str, list[dict]]:
    """The fallback text and the blocks: the title and day, then up to `max_rows` rows as a table."""
    heading = f"{destination.title}: {frame.height:,} row{'s' if frame.height != 1 else ''} for {partition_key}"
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": heading[:150]}}]
    if frame.height:
        shown = destination.max_rows
        while shown > 1 and len(table := "```\n" + markdown_table(frame, limit=shown) + "\n```") > SLACK_TEXT_LIMIT:
            shown //= 2
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": table[:SLACK_TEXT_LIMIT]}})
        if frame.height > shown:
            more = f"{frame.height - shown:,} more not shown: the route's materialization in Dagster has them all."
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return heading, blocks
