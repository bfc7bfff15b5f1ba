"""The receiver as the tests run it: `python -m revenue_pipelines.receiver` on a free port, started
as `child_process` starts every process (its own group, its output in a file, dying with the test)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from revenue_pipelines.receiver.database import database_url
from revenue_pipelines_tests.child_process import kill, stop
from revenue_pipelines_tests.child_process import spawn as spawn_process

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
        kill(self.process)

    def stop(self) -> None:
        stop(self.process)


def spawn(env: Mapping[str, str], log_path: Path) -> Receiver:
    process = spawn_process([sys.executable, "-m", "revenue_pipelines.receiver"], env, log_path)
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
