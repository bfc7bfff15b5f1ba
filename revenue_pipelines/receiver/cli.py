"""The receiver's administration commands: API keys and the audit trail.

python -m revenue_pipelines.receiver keys create --name N --scope launch [--scope read] [--expires-in 90d]
                                                 [--rate-per-minute 60]
python -m revenue_pipelines.receiver keys list
python -m revenue_pipelines.receiver keys rotate KEY_ID [--overlap 24h]
python -m revenue_pipelines.receiver keys revoke KEY_ID
python -m revenue_pipelines.receiver audit [--since 24h | --since 2026-12-01T00:00Z] [--limit N] [--json]

They open the receiver's database where the receiver does (`database.database_url`: PostgreSQL from
DAGSTER_PG_*, else the SQLite file) and need none of its webhook secrets. Every key operation, failed
ones included, is appended to the audit as `cli:<os user>`. A new token is printed once, alone on
stdout (so `TOKEN=$(... keys create ...)` works); everything else about it goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from revenue_pipelines.receiver.audit import AuditLog
from revenue_pipelines.receiver.database import connect, database_url
from revenue_pipelines.receiver.keys import SCOPES, ApiKey, KeyStore, UnknownKey

PROG = "python -m revenue_pipelines.receiver"
DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
NOT_SHOWN_AGAIN = "This token is not shown again: store it now (the receiver keeps only its SHA-256)."


@dataclass(frozen=True)
class Done:
    """What a key command did: `detail` for the audit, `out` for stdout, `note` for stderr."""

    detail: dict[str, Any]
    out: str
    note: str = ""


def main(argv: Sequence[str]) -> int:
    try:
        arguments = _parser().parse_args(list(argv))
    except SystemExit as exit_:  # usage errors (status 2, the flag named) and --help (0)
        return int(exit_.code or 0)
    url = database_url(os.environ)
    if url is None:
        print(
            "receiver: no database: set DAGSTER_PG_HOST (PostgreSQL, with DAGSTER_PG_*) or RECEIVER_QUEUE_PATH "
            "(or DAGSTER_HOME) for the SQLite file",
            file=sys.stderr,
        )
        return 2
    engine = connect(url)
    try:
        audit = AuditLog(engine)
        if arguments.command == "audit":
            return _show_audit(audit, arguments)
        return _key_command(KeyStore(engine), audit, arguments)
    finally:
        engine.dispose()


def _key_command(keys: KeyStore, audit: AuditLog, arguments: argparse.Namespace) -> int:
    """Run one `keys` command and audit it, success or failure, before printing what it made."""
    who = {"actor": f"cli:{_os_user()}", "action": f"keys.{arguments.action}", "client": socket.gethostname()}
    try:
        done = arguments.run(keys, arguments)
    except (ValueError, UnknownKey) as error:
        audit.record(**who, outcome=f"failed: {error}", detail=_asked(arguments))
        print(f"receiver keys {arguments.action}: {error}", file=sys.stderr)
        return 1
    audit.record(**who, outcome="ok", detail=done.detail)
    if done.note:
        print(done.note, file=sys.stderr)
    print(done.out)
    return 0


def _create(keys: KeyStore, arguments: argparse.Namespace) -> Done:
    key, token = keys.create(arguments.name, arguments.scope, arguments.expires_in, arguments.rate_per_minute)
    return Done(_described(key), token, f"created {_summary(key)}\n{NOT_SHOWN_AGAIN}")


def _list(keys: KeyStore, _arguments: argparse.Namespace) -> Done:
    listed = keys.list()
    rows = [
        [key.key_id, key.name, ",".join(key.scopes), _when(key.created_at), _when(key.expires_at),
         _when(key.revoked_at), str(key.rate_per_minute)]
        for key in listed
    ]  # fmt: skip
    table = _table(["id", "name", "scopes", "created", "expires", "revoked", "rate/min"], rows)
    return Done({"keys": len(listed)}, table)


def _rotate(keys: KeyStore, arguments: argparse.Namespace) -> Done:
    new, token = keys.rotate(arguments.key_id, arguments.overlap)
    old = keys.get(arguments.key_id)
    note = f"created {_summary(new)}\n{old.key_id} works until {_when(old.expires_at)}\n{NOT_SHOWN_AGAIN}"
    return Done({**_described(new), "replaces": old.key_id, "old_expires_at": _when(old.expires_at)}, token, note)


def _revoke(keys: KeyStore, arguments: argparse.Namespace) -> Done:
    key = keys.revoke(arguments.key_id)
    return Done(_described(key), f"revoked {key.key_id} ({key.name}) at {_when(key.revoked_at)}")


def _show_audit(audit: AuditLog, arguments: argparse.Namespace) -> int:
    entries = audit.since(arguments.since, arguments.limit)
    if arguments.json:
        for entry in entries:
            print(json.dumps({**dataclasses.asdict(entry), "at": entry.at.isoformat()}, ensure_ascii=False))
        return 0
    rows = [
        [_when(entry.at), entry.actor, entry.action, entry.outcome, entry.client or "",
         json.dumps(entry.detail, ensure_ascii=False) if entry.detail else ""]
        for entry in entries
    ]  # fmt: skip
    print(_table(["at", "actor", "action", "outcome", "client", "detail"], rows))
    return 0


def _described(key: ApiKey) -> dict[str, Any]:
    """A key as the audit records it: everything but the secret."""
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "expires_at": _when(key.expires_at) or None,
        "revoked_at": _when(key.revoked_at) or None,
        "rate_per_minute": key.rate_per_minute,
    }


def _asked(arguments: argparse.Namespace) -> dict[str, Any]:
    """What a failed command was asked to do, for the audit."""
    return {name: str(value) for name, value in vars(arguments).items() if name not in ("command", "action", "run")}


def _summary(key: ApiKey) -> str:
    expires = f"expires {_when(key.expires_at)}" if key.expires_at else "never expires"
    return f"{key.key_id} ({key.name}; scopes {', '.join(key.scopes)}; {expires}; {key.rate_per_minute} requests/min)"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [headers, *rows])  # fmt: skip


def _os_user() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name and no passwd entry (some containers)
        return f"uid-{os.getuid()}"


# Arguments --------------------------------------------------------------------------------------


def _duration(text: str) -> timedelta:
    """`90d`, `24h`, `30m`, `45s`."""
    match = DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90d, 24h, 30m or 45s")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def _since(text: str) -> datetime:
    """A duration back from now (`24h`) or a time (`2026-12-01T00:00Z`; UTC when no zone is given)."""
    if DURATION.match(text.strip()):
        return datetime.now(UTC) - _duration(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        message = f"{text!r} is neither a duration (24h) nor a time (2026-12-01T00:00Z)"
        raise argparse.ArgumentTypeError(message) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve the receiver (no arguments), or administer it.")
    commands = parser.add_subparsers(dest="command", required=True)

    keys = commands.add_parser("keys", help="create, list, rotate and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key; its token is printed once")
    create.add_argument("--name", required=True, help="who or what uses it, e.g. 'airflow-prod'")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES, help="repeat for several")
    create.add_argument("--expires-in", type=_duration, default=None, help="e.g. 90d (default: never)")
    create.add_argument("--rate-per-minute", type=_positive, default=60, help="token bucket size and refill")
    create.set_defaults(run=_create)
    listing = actions.add_parser("list", help="every key, never a secret")
    listing.set_defaults(run=_list)
    rotate = actions.add_parser("rotate", help="a new key like this one; this one expires after the overlap")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap", type=_duration, default="24h", help="how long the old key keeps working")
    rotate.set_defaults(run=_rotate)
    revoke = actions.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_revoke)

    audit = commands.add_parser("audit", help="the audit trail, oldest first")
    audit.add_argument("--since", type=_since, default="24h", help="24h (the default), 7d, or 2026-12-01T00:00Z")
    audit.add_argument("--limit", type=_positive, default=None, help="only the latest N entries")
    audit.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser
