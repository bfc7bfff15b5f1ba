"""The receiver as the tests run it: `python -m revenue_pipelines.receiver` in a process group of
its own, on a free port, its output in a file, dying with the test (SIGTERM to the group in the
finaliser, SIGKILL after a grace period, and PR_SET_PDEATHSIG should the test process die first)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from revenue_pipelines.receiver.database import database_url

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LISTENING = re.compile(r"listening on (http://\S+?);")
HUBSPOT_SECRET = "hs-client-secret-" + "7f3c9a1e2b4d"
ORGANIZATION_ID_18 = "00D5g000004Dqk2EAC"
ORGANIZATION_ID_15 = ORGANIZATION_ID_18[:15]
BILLING_SECRET = "whsec_" + base64.b64encode(b"billing-secret-32-bytes-long!!!!").decode()
ERP_SECRET = "whsec_" + base64.b64encode(b"erp-secret-of-thirty-two-bytes!!").decode()
PUBLIC_URL = "https://hooks.revenue.example"


def receiver_env(queue_path: Path | None, **overrides: str | None) -> dict[str, str]:
    """The process environment: this one's, without any RECEIVER_, DAGSTER_PG_ or secret variable it
    may hold, plus the receiver's settings (an override of None leaves a variable out; the `postgres`
    fixture's settings as overrides put the queue in PostgreSQL)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RECEIVER_", "DAGSTER_PG_"))
        and name not in ("HUBSPOT_APP_CLIENT_SECRET", "SALESFORCE_ORGANIZATION_ID", "DAGSTER_HOME")
    }
    settings: dict[str, str | None] = {
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": "0",
        "RECEIVER_PUBLIC_URL": PUBLIC_URL,
        "RECEIVER_QUEUE_PATH": str(queue_path) if queue_path else None,
        "HUBSPOT_APP_CLIENT_SECRET": HUBSPOT_SECRET,
        "SALESFORCE_ORGANIZATION_ID": ORGANIZATION_ID_18,
        "RECEIVER_WEBHOOK_SECRETS": f"billing={BILLING_SECRET},erp={ERP_SECRET}",
        **overrides,
    }
    env.update({name: value for name, value in settings.items() if value is not None})
    return env


@dataclass
class Receiver:
    process: subprocess.Popen
    log_path: Path
    database_url: sa.URL | None
    """Where its queue is, by the receiver's own rule."""
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, no goodbye; then reaped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL what outlives 5 s."""
        for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def spawn(env: Mapping[str, str], log_path: Path) -> Receiver:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "revenue_pipelines.receiver"],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None,
        )
    return Receiver(process, log_path, database_url(env))


def start(env: Mapping[str, str], log_path: Path, timeout: float = 20.0) -> Receiver:
    """Spawn the receiver and wait until it says where it listens."""
    receiver = spawn(env, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := LISTENING.search(receiver.log()):
            receiver.url = match.group(1)
            return receiver
        if receiver.process.poll() is not None:
            raise RuntimeError(f"the receiver exited with {receiver.process.returncode}:\n{receiver.log()}")
        time.sleep(0.05)
    receiver.stop()
    raise RuntimeError(f"the receiver did not start within {timeout} s:\n{receiver.log()}")


def _die_with(parent: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)

    return in_child
