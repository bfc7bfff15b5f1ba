"""Run the sandbox from a shell.

python -m revenue_pipelines.sandbox serve --port 8765 --salesforce-port 8766
python -m revenue_pipelines.sandbox run -- dagster job execute -m revenue_pipelines.definitions -j ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import date

from revenue_pipelines.lib.processes import dying_with_this_process
from revenue_pipelines.sandbox import Sandbox

GROUP_GRACE_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m revenue_pipelines.sandbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve until Ctrl-C or SIGTERM, printing the environment to use")
    _add_sandbox_options(serve, default_port=8765, default_salesforce_port=8766)
    run = commands.add_parser("run", help="run a command against a fresh sandbox and exit with its status")
    _add_sandbox_options(run, default_port=0, default_salesforce_port=0)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)

    sandbox = Sandbox(
        seed=args.seed,
        companies=args.companies,
        days=args.days,
        end_date=args.end_date,
        rate_limit_per_10s=None if args.no_rate_limit else 190,
        opportunities=args.opportunities,
        port=args.port,
        salesforce_port=args.salesforce_port,
        ga4_rows_per_day=args.ga4_rows_per_day,
        bigquery=not args.no_bigquery,
        object_storage=not args.no_object_storage,
        mess=args.mess,
    )
    command = getattr(args, "cmd", [])
    command = command[1:] if command[:1] == ["--"] else command
    if args.command == "run" and not command:
        parser.error("run needs a command after --")
    with sandbox:
        if args.webhooks_to:
            sandbox.webhooks.send_to(args.webhooks_to)
        sandbox.live_changes.start(args.live_changes)
        return _serve(sandbox) if args.command == "serve" else _run(sandbox, command)


def _add_sandbox_options(parser: argparse.ArgumentParser, default_port: int, default_salesforce_port: int) -> None:
    parser.add_argument("--port", type=int, default=default_port, help="HubSpot's (http); 0 picks a free port")
    parser.add_argument(
        "--salesforce-port", type=int, default=default_salesforce_port, help="Salesforce's (https); 0 picks a free port"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--companies",
        type=int,
        default=300,
        help="about 5 contacts and 2 deals per company; as many Salesforce accounts, 60%% of them shared",
    )
    parser.add_argument(
        "--opportunities", type=int, default=None, help="Salesforce opportunities, default 3 per account"
    )
    parser.add_argument("--days", type=int, default=30, help="days of modifications, ending with --end-date")
    parser.add_argument("--end-date", type=date.fromisoformat, default=None, help="YYYY-MM-DD, default yesterday UTC")
    parser.add_argument("--no-rate-limit", action="store_true")
    parser.add_argument(
        "--no-bigquery", action="store_true", help="skip BigQuery's emulator, which takes seconds to start"
    )
    parser.add_argument(
        "--no-object-storage", action="store_true", help="skip the S3 and GCS emulators the file routes write to"
    )
    parser.add_argument(
        "--webhooks-to",
        default=None,
        help="send HubSpot's and Salesforce's webhooks for the sandbox's edits to this receiver, e.g. "
        "http://127.0.0.1:8780",
    )
    parser.add_argument(
        "--live-changes",
        type=float,
        default=0.0,
        help="edit a random contact, deal or opportunity every this many seconds, now (0: never)",
    )
    parser.add_argument(
        "--mess",
        type=float,
        default=0.0,
        help="share of records given the odd values real portals hold (broken e-mails, internationalised "
        "domains, 15-character Salesforce ids, closed deals without a close date), e.g. 0.005",
    )
    parser.add_argument(
        "--ga4-rows-per-day",
        type=int,
        default=None,
        help="GA4 fact rows a day (default 300); 110000 takes a 3-day report by date, landing page and campaign "
        "past 250,000 rows",
    )


def _serve(sandbox: Sandbox) -> int:
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with sandbox:
        for name, value in sandbox.env().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        print("# ready", flush=True)  # the environment is complete; scripts may stop reading
        message = f"# HubSpot and GA4 sandbox on {sandbox.url}, Salesforce on {sandbox.salesforce_url}"
        if sandbox.bigquery:
            message += f", BigQuery on {sandbox.bigquery.endpoint}"
        message += "; Ctrl-C stops it"
        print(message, file=sys.stderr, flush=True)
        stopped.wait()
    return 0


def _run(sandbox: Sandbox, command: list[str]) -> int:
    """Run `command` with the sandbox's environment, in a process group of its own that dies with
    this process: SIGINT (Ctrl-C reaches only this process's group), SIGTERM and SIGHUP are passed on
    to the group; what is left of the group when the command exits is terminated; and on Linux the
    command gets SIGTERM when this process dies without a word (SIGKILL)."""
    with sandbox:
        # Handlers first: a signal that comes while the command starts is held, then passed on.
        group: list[int] = []
        held: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: _signal_group(group[0], signum) if group else held.append(signum))
        try:
            child = subprocess.Popen(  # noqa: S603 - the user's own command
                dying_with_this_process(command),
                env={**os.environ, **sandbox.env()},
                process_group=0,
            )
        except OSError as error:
            print(f"cannot run {command[0]!r}: {error}", file=sys.stderr)
            return 127
        group.append(child.pid)
        for signum in held:
            _signal_group(child.pid, signum)
        try:
            status = child.wait()
        finally:
            _end_group(child.pid)
    return 128 - status if status < 0 else status


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def _end_group(group: int) -> None:
    """SIGTERM what is left of the command's process group; SIGKILL what outlives a grace period."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + GROUP_GRACE_SECONDS
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
