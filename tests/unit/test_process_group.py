"""`process_group`: a killed group leader's children (Triton's Python-backend stubs) are
killed and reaped with it, the leader's exit is seen without reaping it, and nothing is left
as a zombie. A stand-in server: a Python process in a session of its own that starts a child
and waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inference_pipeline.process_group import (
    become_subreaper,
    end_group,
    exit_status,
    wait_for_exit,
    watch_exit,
)

SERVER = (
    "import subprocess, sys, time; "
    "stub = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "print(stub.pid, flush=True); time.sleep(120)"
)


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(")") + 2]


def _start() -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, start_new_session=True
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_leader_is_seen_then_its_group_is_killed_and_reaped() -> None:
    assert become_subreaper()  # the orphaned stub becomes our child, to reap
    server, stub = _start()
    seen: list[str] = []
    done = threading.Event()
    watch_exit(server, lambda how: (seen.append(how), done.set()), name="test-watch")
    assert exit_status(server) is None

    os.kill(server.pid, signal.SIGKILL)  # the leader alone, as kill -9 does
    assert done.wait(10)
    assert seen == ["killed by SIGKILL"]
    assert _state(server.pid) == "Z"  # seen, not reaped: its group id is still held
    assert _state(stub) in ("S", "R")  # the orphaned stub runs on
    assert os.getpgid(stub) == server.pid

    end_group(server)

    assert server.returncode == -signal.SIGKILL
    assert _state(server.pid) is None and _state(stub) is None  # killed and reaped


def test_an_exit_is_reported_without_reaping_and_waited_for() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    assert wait_for_exit(quick, 30)
    assert exit_status(quick) == "exited with code 3"
    assert quick.returncode is None  # not reaped yet
    end_group(quick)
    assert quick.returncode == 3


def test_a_stopped_process_is_not_reported() -> None:
    """A process reaped on purpose (stopped) before the watcher looks: no report."""
    server, _ = _start()
    end_group(server)
    seen: list[str] = []
    thread = watch_exit(server, seen.append, name="test-watch")
    thread.join(10)
    assert seen == []
