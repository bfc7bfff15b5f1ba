"""Salesforce ids in their 18-character form, in plain Python (the receiver does not load Polars).

The same rule as `revenue_pipelines.lib.identity.salesforce_id_18`, which tests compare it with.
"""

import re

SALESFORCE_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SALESFORCE_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$")


def salesforce_id_18(value: str) -> str | None:
    """The 18-character, case-safe form of a 15- or 18-character id; None for anything else,
    including an 18-character id whose suffix does not match its first 15 characters."""
    if not SALESFORCE_ID.match(value):
        return None
    head = value[:15]
    suffix = "".join(
        SALESFORCE_SUFFIX[sum(1 << position for position in range(5) if "A" <= head[block * 5 + position] <= "Z")]
        for block in range(3)
    )
    full = head + suffix
    return full if len(value) == 15 or value == full else None
