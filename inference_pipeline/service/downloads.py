"""Where the service downloads the model versions it serves: ``<serving>/artifacts``.

Each process downloads into a folder of its own (``<host>-<pid>-<random>``), removes each copy
when it stops serving that version, and the whole folder when it exits; at start-up, and
after each switch of version, it sweeps the folders of processes that are gone. Before, every
start left one downloaded copy behind, forever.

A folder's owner is alive while it holds an exclusive ``flock`` on the folder's ``.owner``
file: the kernel releases it however the process ends (SIGKILL included), so a sweep that can
take the lock knows the owner is gone, and one that cannot leaves the folder alone. That
holds for the workers of one service (``--workers 2`` share the folder) and for services
sharing it on one host; across hosts it holds where the shared file system supports locks
(NFSv4, most cloud file systems). A folder with no lock file (the layout before this one, or
a process killed between creating its folder and locking it) is removed once it is older
than ``_UNLOCKED_GRACE_S``, longer than any download.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_OWNER = ".owner"
_UNLOCKED_GRACE_S = 3600.0


class Downloads:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.own = root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock: int | None = None

    def open(self) -> list[Path]:
        """Create and lock this process's folder, then sweep; returns what was removed."""
        self.own.mkdir(parents=True, exist_ok=True)
        # Locked before it gets its name: a sweep never sees an unlocked owner file.
        staged = self.own / f"{_OWNER}.new"
        fd = os.open(staged, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new, and ours: cannot be held
        os.replace(staged, self.own / _OWNER)
        self._lock = fd
        return self.sweep()

    def destination(self) -> Path:
        """A new, empty folder for one download."""
        return self.own / uuid.uuid4().hex

    def discard(self, path: Path) -> None:
        """Remove the download holding ``path`` (a file or folder under one `destination`)."""
        try:
            relative = path.resolve().relative_to(self.own.resolve())
        except ValueError:  # not one of ours: never touch it
            log.warning("not removing %s: outside %s", path, self.own)
            return
        if relative.parts:
            shutil.rmtree(self.own / relative.parts[0], ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove the folders of processes that are gone (see the module docstring)."""
        removed = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if folder == self.own or not folder.is_dir():
                continue
            if _abandoned(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if removed:
            log.info("removed %d model download(s) of processes gone: %s", len(removed), removed)
        return removed

    def close(self) -> None:
        """Remove this process's folder (every copy it downloaded) and release its lock."""
        shutil.rmtree(self.own, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _abandoned(folder: Path) -> bool:
    """Whether no live process owns ``folder``."""
    try:
        fd = os.open(folder / _OWNER, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _UNLOCKED_GRACE_S
        except FileNotFoundError:  # removed meanwhile
            return False
    except OSError:
        return False  # unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner holds the lock: alive
    finally:
        os.close(fd)  # closing releases the lock we may have taken
    return True
