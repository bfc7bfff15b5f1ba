"""Child processes that die with their parent: every process the project starts (the demo's run,
the sandbox's command, the tests' servers) is given this, so nothing is left running."""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGTERM when this process's thread that
    started it dies (Linux's PR_SET_PDEATHSIG), or exits at once if that already happened. None
    elsewhere (no such signal)."""
    if sys.platform != "linux":
        return None
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)

    return in_child
