"""Transport faults a test scripts ahead of time; the server applies them to matching requests."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

# What each kind does to the request it fires on, and the parameters it takes (with defaults).
FAULT_KINDS: dict[str, dict[str, Any]] = {
    "rate_limit": {"retry_after": None},  # the service's 429; Retry-After (rounded up) only if given
    "status": {"status": 500, "retry_after": None},  # this error status, the service's error body; Retry-After if given
    "drop": {},  # close the connection without answering
    "drop_mid_body": {},  # send headers (full Content-Length) and half the body, then close
    "slow": {"seconds": 1.0},  # wait, then answer normally
}


@dataclass
class Fault:
    """One scripted fault: fires on `times` matching requests after letting `skip` of them pass.

    `skip` counts down as matching requests pass; `fired` counts up as the fault fires.
    """

    kind: str
    times: int
    path_contains: str | None
    skip: int
    params: dict[str, Any]
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.times

    def matches(self, target: str) -> bool:
        return self.path_contains is None or self.path_contains in target


class FaultPlan:
    """The ordered list of pending faults, shared by every service of a sandbox.

    Each fault counts the matching requests it sees: with skip=N the first N pass it by.
    A request gets at most one fault, the earliest added that is due; a later fault that
    was also due waits for the next matching request.
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._fired = 0
        self._lock = threading.Lock()

    def add(self, kind: str, times: int = 1, path_contains: str | None = None, skip: int = 0, **params: Any) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        unknown = set(params) - set(FAULT_KINDS[kind])
        if unknown:
            raise ValueError(f"fault {kind!r} takes no parameters {sorted(unknown)}")
        if times < 1 or skip < 0:
            raise ValueError("times must be >= 1 and skip >= 0")
        if kind == "status" and not 400 <= int(params.get("status", 500)) <= 599:
            raise ValueError("a status fault answers with an error status, 400-599")
        fault = Fault(kind, times, path_contains, skip, {**FAULT_KINDS[kind], **params})
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget pending faults; the `fired` total is kept."""
        with self._lock:
            self._faults.clear()

    @property
    def fired(self) -> int:
        """How many faults fired since the sandbox started, across all kinds."""
        with self._lock:
            return self._fired

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return [fault for fault in self._faults if not fault.exhausted]

    def take(self, target: str) -> Fault | None:
        """The fault to apply to a request for `target` (path and query), counting it as fired."""
        chosen = None
        with self._lock:
            for fault in self._faults:
                if fault.exhausted or not fault.matches(target):
                    continue
                if fault.skip:
                    fault.skip -= 1
                elif chosen is None:
                    chosen = fault
            if chosen is not None:
                chosen.fired += 1
                self._fired += 1
                self._faults = [fault for fault in self._faults if not fault.exhausted]
        return chosen
