"""Child processes that die with their parent: every process the project starts (the demo's run,
the sandbox's command and PostgreSQL, the tests' servers) is started through this, so nothing is
left running.

`dying_with_this_process(command)` is the command line to give `subprocess.Popen` instead of
`command`: a small launcher (this module, `python -m revenue_pipelines.lib.processes <pid> ...`)
asks Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG, kept across exec), exits at once if
the parent is already gone, and execs `command`. Not a `preexec_fn`: that makes Python fork
instead of vfork, and a fork runs the parent's at-fork handlers in the child, which gRPC's event
engine (loaded by the Google clients and Dagster) aborts in.
"""

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def dying_with_this_process(command: Sequence[str]) -> list[str]:
    """`command`, started so that it gets SIGTERM when the thread of this process that starts it
    ends (Linux); `command` itself elsewhere (no such signal)."""
    if sys.platform != "linux":
        return list(command)
    return [sys.executable, "-m", "revenue_pipelines.lib.processes", str(os.getpid()), *map(str, command)]


def _launch(parent: int, command: list[str]) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(128 + signal.SIGTERM)
    try:
        os.execvp(command[0], command)  # noqa: S606 (a command line, as given)
    except OSError as error:  # as a shell says it
        print(f"cannot run {command[0]!r}: {error.strerror}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    _launch(int(sys.argv[1]), sys.argv[2:])
