"""The sandbox's child processes die with it, however it dies: no orphan keeps memory or ports."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# The sandbox's owner forks a child that lives on (as multiprocessing's fork does): it holds the
# emulator's standard input open, so the emulator sees no end of it when the owner is killed.
OWNER_THAT_FORKS = """
import os, time
from revenue_pipelines.sandbox import Sandbox
sandbox = Sandbox(companies=5, days=3, bigquery=True).start()
emulator = sandbox.bigquery._emulator.process.pid
forked = os.fork()
if forked == 0:
    time.sleep(300)
    os._exit(0)
print(emulator, forked, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after `seconds` (polled: a loaded machine is slow to reap)."""
    deadline = time.monotonic() + seconds
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_bigquery_emulator_dies_with_a_sandbox_killed_by_sigkill():
    owner = subprocess.Popen([sys.executable, "-c", OWNER_THAT_FORKS], stdout=subprocess.PIPE, text=True)
    emulator, forked = map(int, owner.stdout.readline().split())
    try:
        owner.kill()
        owner.wait()
        assert _gone_within([emulator], 30) == []
        assert _alive(forked)  # what held the emulator's input open before it watched its parent
    finally:
        _kill([emulator, forked])


def _sandbox_run(shell: str) -> tuple[subprocess.Popen, list[int]]:
    """`python -m revenue_pipelines.sandbox run -- sh -c <shell>`; `shell` prints the pids to watch."""
    command = [sys.executable, "-m", "revenue_pipelines.sandbox", "run", "--no-bigquery", "--companies", "5"]
    runner = subprocess.Popen([*command, "--", "sh", "-c", shell], stdout=subprocess.PIPE, text=True)
    return runner, list(map(int, runner.stdout.readline().split()))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sandbox_run_passes_a_signal_to_its_command_and_the_commands_children(signum):
    runner, pids = _sandbox_run("sleep 300 & echo $$ $!; wait")
    try:
        runner.send_signal(signum)
        assert runner.wait(timeout=60) == 128 + signum
        assert _gone_within(pids, 30) == []
    finally:
        _kill([runner.pid, *pids])


def test_sandbox_run_ends_what_its_command_left_running():
    runner, pids = _sandbox_run("sleep 300 & echo $!")
    try:
        assert runner.wait(timeout=60) == 0
        assert _gone_within(pids, 30) == []
    finally:
        _kill([runner.pid, *pids])


def test_sandbox_runs_command_gets_sigterm_when_the_runner_is_killed():
    runner, pids = _sandbox_run("echo $$; exec sleep 300")
    try:
        runner.kill()
        runner.wait()
        assert _gone_within(pids, 30) == []
    finally:
        _kill(pids)
