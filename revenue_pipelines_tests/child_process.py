"""Processes the tests start: each in a process group of its own, its output in a file, dying with
the test (SIGTERM to the group when stopped, SIGKILL after a grace period, and PR_SET_PDEATHSIG
should the test process die first)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from revenue_pipelines.lib.processes import dying_with_this_process


def spawn(command: Sequence[str], env: Mapping[str, str], log_path: Path, **options) -> subprocess.Popen:
    """`command` in a process group of its own, its output in `log_path`, dying with this
    process; `options` go to Popen (a `cwd`)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            dying_with_this_process(command),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
            **options,
        )


def kill(process: subprocess.Popen) -> None:
    """SIGKILL to the whole group, no goodbye; then reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the group, SIGKILL what outlives 5 s."""
    for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
