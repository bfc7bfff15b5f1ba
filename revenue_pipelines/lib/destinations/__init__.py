"""Destination writers: where a route delivers a mart's rows, and what the destination confirmed.

One module per destination kind (webhook, files, postgres, hubspot, slack). Each has a pydantic
model of its `destination:` block in routes.yaml (`kind: Literal[...]` and its own fields) and a
resource with `deliver(frame, destination, *, route, partition_key, log) -> Delivery`. The route
assets (`defs/routes/`) select the rows and call it; the writer knows the wire protocol, retries,
atomicity and idempotency, and reports a `Delivery`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg


@dataclass(frozen=True)
class Delivery:
    """What one destination confirmed for one partition's rows: the route's materialization metadata."""

    uri: str
    """Where the rows went, without a secret (no password, token or signed query)."""
    rows: int
    bytes: int
    """The payload's size as sent or written."""
    checksum: str
    """`sha256:<hex>` of the payload (for several batches, of their concatenation in order)."""
    answer: Mapping[str, Any] = field(default_factory=dict)
    """What the destination said: HTTP statuses and attempts, object generation or ETag, rows inserted
    and updated, ..."""
    dead_letters: tuple[str, ...] = ()
    """Batches that could not be delivered after the last attempt, where they are kept."""

    def metadata(self) -> dict[str, dg.MetadataValue]:
        metadata: dict[str, dg.MetadataValue] = {
            "destination": dg.MetadataValue.text(self.uri),
            "rows_delivered": dg.MetadataValue.int(self.rows),
            "bytes": dg.MetadataValue.int(self.bytes),
            "checksum": dg.MetadataValue.text(self.checksum),
            "answer": dg.MetadataValue.json(dict(self.answer)),
        }
        if self.dead_letters:
            metadata["dead_letters"] = dg.MetadataValue.json(list(self.dead_letters))
        return metadata


def sha256_checksum(*payloads: bytes) -> str:
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(payload)
    return f"sha256:{digest.hexdigest()}"
