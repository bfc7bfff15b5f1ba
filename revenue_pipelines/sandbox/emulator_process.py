"""The handshake between the sandbox and an emulator it runs in a child process (BigQuery, object
storage): the child prints one JSON line once it listens and serves until its standard input closes
or the sandbox's process is gone; the sandbox reads that line and closes the input to stop it.

The parent is watched apart because a process the sandbox forked keeps the standard input open after
the sandbox is killed (SIGKILL included)."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from typing import IO

PARENT_POLL_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 10.0


def exit_when_orphaned(parent: int) -> None:
    """In the child: exit at once when `parent` is no longer its parent (it died: the child was reparented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def first_line(stream: IO[str], timeout: float) -> str:
    """In the sandbox: the child's announcement, or TimeoutError / ValueError if none comes."""
    readable, _, _ = select.select([stream], [], [], timeout)
    if not readable:
        raise TimeoutError(f"no answer in {timeout:.0f} s")
    line = stream.readline()
    if not line:
        raise ValueError("it exited")
    return line


def end(process: subprocess.Popen[str]) -> None:
    """In the sandbox: close its stdin, which it takes as the order to stop; kill it if it does not."""
    process.stdin.close()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
