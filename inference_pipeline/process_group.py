"""A child process that leads a process group of its own (``start_new_session=True``), and
everything it starts: its exit watched without reaping it, its whole group ended and reaped.

Triton's Python backend runs each model in a stub process inside Triton's group. A Triton
killed alone left its stub running (304 MB, for good), and a Triton nobody waited for stayed
a ``[tritonserver] <defunct>`` zombie. The order below matters: the group is killed while the
leader's zombie still holds the group id (no new process can take that id meanwhile, so the
signal cannot reach a stranger); then the leader is reaped, then the group's other members.

Orphans are reparented to the nearest *subreaper* ancestor, or to PID 1. When the service is
PID 1 of its container they become its children anyway; `become_subreaper` makes that so
everywhere (Linux), so that the stubs of a killed Triton are children of the service and are
reaped here instead of lingering as zombies of an init that may not reap.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_POLL_S = 0.02
_REAP_GROUP_S = 5.0  # SIGKILLed members normally go in milliseconds

_subreaper = False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl``); False where
    the system has no such thing (the group is still killed, only its reaping is left to
    init)."""
    global _subreaper
    if _subreaper:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    if not _subreaper:
        log.debug("cannot become a child subreaper; orphans of a killed group go to init")
    return _subreaper


def exit_status(process: subprocess.Popen[bytes]) -> str | None:
    """How the process ended ("killed by SIGKILL", "exited with code 1"), or None while it
    runs; it is not reaped (see the module docstring)."""
    if process.returncode is not None:
        return _describe_code(process.returncode)
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: poll reaps, nothing better
        code = process.poll()
        return None if code is None else _describe_code(code)
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else: it has ended, how is unknown
        return "ended"
    return None if info is None else _describe(info)


def wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether the process ended within ``timeout_s`` (not reaped)."""
    deadline = time.monotonic() + timeout_s
    while exit_status(process) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def watch_exit(
    process: subprocess.Popen[bytes], on_exit: Callable[[str], None], name: str
) -> threading.Thread:
    """Call ``on_exit(how it ended)`` from a daemon thread blocked until the process ends (no
    polling, nothing reaped); nothing is called when it was reaped first (stopped on purpose)."""

    def wait() -> None:
        if hasattr(os, "waitid"):
            try:
                info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                return
            how = "ended" if info is None else _describe(info)
        else:
            how = _describe_code(process.wait())
        on_exit(how)

    thread = threading.Thread(target=wait, name=name, daemon=True)
    thread.start()
    return thread


def end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the process's group (the leader too, if it still runs),
    then reap the leader and every member of the group that is our child."""
    if process.returncode is None:  # its zombie still holds the group id: safe to signal
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # not a group leader after all
            with suppress(ProcessLookupError):
                process.kill()
        except PermissionError:
            log.warning("cannot signal process group %d", process.pid)
    process.wait()
    _reap_group(process.pid)


def _reap_group(group: int) -> None:
    deadline = time.monotonic() + _REAP_GROUP_S
    while True:
        try:
            pid, _ = os.waitpid(-group, os.WNOHANG)
        except ChildProcessError:  # none of our children left in the group
            return
        if pid == 0:  # members still dying
            if time.monotonic() >= deadline:
                log.warning("members of process group %d still running after SIGKILL", group)
                return
            time.sleep(_POLL_S)


def _describe(info: os.waitid_result) -> str:
    if info.si_code == os.CLD_EXITED:
        return f"exited with code {info.si_status}"
    return f"killed by {_signal_name(info.si_status)}"


def _describe_code(code: int) -> str:
    return f"killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
