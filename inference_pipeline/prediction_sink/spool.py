"""The default sink: an append-only spool file per worker process, in segments the log writer
commits and then deletes. No server: it works on the embedded default (one host, one folder).

Service side (:class:`SpoolSink`). Each worker process appends to its own open segment,
``<host>-<pid>-<random>-<n>.open``, locked (``flock``) for as long as the process holds it; a
record is one ``write`` of a frame (length, CRC-32, payload). The segment is sealed (renamed to
``.seg``) once it holds ``segment_bytes`` or its first record is ``segment_s`` old, so the writer
sees a record within about ``segment_s``.

Durability (``FTI_PREDICTION_LOG_FSYNC``): off (the default), an append is in the kernel's page
cache when it returns, which survives the death of the process (SIGKILL, OOM kill, a crash) but
not of the host (power loss, kernel panic: the last seconds not yet written back are lost). On,
each append is also ``fdatasync``-ed before the response, which survives the host too and costs
a disk flush per answered batch on the request path.

Writer side (:class:`SpoolSource`). One writer per spool folder (it holds ``.writer.lock``).
It reads sealed segments, and open segments whose lock it can take (their process died before
sealing them); a torn last frame (a write the process did not finish, so never answered) is
dropped. A segment read is renamed ``.taken`` and deleted once all its records are committed; a
``.taken`` segment a new writer finds may have been committed by a writer that died before
deleting it, so its records are flagged ``replayed`` (and upserted).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_pipeline.prediction_sink.protocol import LogRecord, SinkUnavailable

log = logging.getLogger(__name__)

OPEN = ".open"
SEALED = ".seg"
TAKEN = ".taken"  # read by a writer, maybe committed: a writer that finds one upserts it
WRITER_LOCK = ".writer.lock"
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
_POLL_S = 0.1


class SpoolSink:
    """One worker process's spool (see the module docstring)."""

    def __init__(
        self, directory: Path, *, segment_bytes: int, segment_s: float, fsync: bool
    ) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._segment_s = segment_s
        self._fsync = fsync
        self._prefix = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._number = 0
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkUnavailable(f"prediction log spool {directory}: {exc}") from exc

    def _path(self, suffix: str) -> Path:
        return self.directory / f"{self._prefix}-{self._number:08d}{suffix}"

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self._path(OPEN), flags, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        self._fd, self._size, self._opened = fd, 0, time.monotonic()
        return fd

    def append(self, record: bytes) -> None:
        frame = _FRAME.pack(len(record), zlib.crc32(record)) + record
        try:
            fd = self._fd if self._fd is not None else self._open()
            written = os.write(fd, frame)
            while written < len(frame):  # a regular file writes all of it, short of errors
                written += os.write(fd, frame[written:])
            if self._fsync:
                os.fdatasync(fd)
        except OSError as exc:
            # A half-written frame ends the segment: the reader stops at it, so nothing may
            # follow it there. The next append opens a new segment.
            self._seal_quietly()
            raise SinkUnavailable(f"prediction log spool {self.directory}: {exc}") from exc
        self._size += len(frame)
        if self._size >= self._segment_bytes:
            self._seal()

    def tick(self) -> None:
        if self._fd is not None and time.monotonic() - self._opened >= self._segment_s:
            self._seal_quietly()

    def _seal(self) -> None:
        """Hand the open segment to the writer: renamed while still locked, so the writer
        never takes it for a dead process's segment."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._size == 0:
                os.unlink(self._path(OPEN))
            else:
                if self._fsync:
                    os.fsync(fd)
                os.rename(self._path(OPEN), self._path(SEALED))
                if self._fsync:
                    _fsync_directory(self.directory)
        finally:
            os.close(fd)
            self._number += 1

    def _seal_quietly(self) -> None:
        try:
            self._seal()
        except OSError as exc:  # left open and unlocked: the writer takes it as an orphan
            log.error("could not seal prediction log segment in %s: %s", self.directory, exc)

    def close(self) -> None:
        self._seal_quietly()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolSource:
    """The log writer's side of a spool folder (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(directory / WRITER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        except OSError as exc:
            raise SinkUnavailable(f"prediction log spool {directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock)
            raise SinkUnavailable(
                f"another log writer holds the prediction log spool {directory}: run one "
                "writer per spool folder"
            ) from exc
        # Segments fetched and not wholly acknowledged: their records still unacknowledged,
        # and the lock held on a dead process's segment.
        self._taken: dict[str, _Taken] = {}

    @property
    def name(self) -> str:
        return f"spool {self.directory}"

    def _entries(self) -> list[os.DirEntry[str]]:
        """The folder's segments (open, sealed, taken), as listed now."""
        try:
            with os.scandir(self.directory) as entries:
                return [entry for entry in entries if entry.name.endswith((OPEN, SEALED, TAKEN))]
        except OSError as exc:
            raise SinkUnavailable(f"prediction log spool {self.directory}: {exc}") from exc

    def _segments(self) -> list[Path]:
        """The segments not yet read by this writer, oldest first."""
        paths = [Path(entry.path) for entry in self._entries() if entry.name not in self._taken]
        return sorted(paths, key=_modified)

    def fetch(self, max_records: int, wait_s: float) -> list[LogRecord]:
        deadline = time.monotonic() + wait_s
        while True:
            records = self._read_ready(max_records)
            if records or time.monotonic() >= deadline:
                return records
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def _read_ready(self, max_records: int) -> list[LogRecord]:
        """Whole segments, oldest first, until ``max_records`` (at least one segment)."""
        records: list[LogRecord] = []
        for path in self._segments():
            if len(records) >= max_records:
                break
            lock = None
            if path.name.endswith(OPEN):
                lock = _orphan_lock(path)
                if lock is None:  # its process is alive and appending
                    continue
            replayed = path.name.endswith(TAKEN)  # a writer before this one read it
            try:
                payloads = _frames(path) or [b""]  # an empty one: acknowledged, deleted
                if not replayed:
                    path = path.rename(path.with_suffix(TAKEN))
            except FileNotFoundError:  # sealed or deleted meanwhile: listed again next time
                if lock is not None:
                    os.close(lock)
                continue
            except OSError as exc:
                if lock is not None:
                    os.close(lock)
                raise SinkUnavailable(f"prediction log spool {self.directory}: {exc}") from exc
            self._taken[path.name] = _Taken(lock, len(payloads))
            records.extend(LogRecord(path.name, payload, replayed) for payload in payloads)
        return records

    # Records are counted only by reading the segments: the backlog is their size.
    backlog_unit = "bytes"

    def backlog(self) -> int:
        """The size of every segment not yet deleted: open, sealed, and read but not wholly
        acknowledged."""
        total = 0
        for entry in self._entries():
            with contextlib.suppress(FileNotFoundError):  # deleted or renamed meanwhile
                total += entry.stat().st_size
        return total

    def ack(self, records: Sequence[LogRecord]) -> None:
        """A segment is deleted once every record of it is acknowledged."""
        for name, count in Counter(record.position for record in records).items():
            taken = self._taken.get(name)
            if taken is None:
                continue
            taken.outstanding -= count
            if taken.outstanding > 0:
                continue
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError as exc:
                raise SinkUnavailable(f"prediction log spool {self.directory}: {exc}") from exc
            del self._taken[name]
            if taken.lock is not None:
                os.close(taken.lock)

    def close(self) -> None:
        for taken in self._taken.values():
            if taken.lock is not None:
                os.close(taken.lock)
        self._taken.clear()
        os.close(self._lock)


@dataclass
class _Taken:
    lock: int | None  # the lock fd on a dead process's open segment
    outstanding: int  # its records not yet acknowledged


def _modified(path: Path) -> float:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return 0.0


def _orphan_lock(path: Path) -> int | None:
    """A lock on an open segment whose process is gone, or None while its process holds it.
    Taken on the file the name still refers to: one sealed meanwhile is read as ``.seg``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            log.warning("taking over %s: its service process ended without sealing it", path)
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _frames(path: Path) -> list[bytes]:
    """The complete frames of a segment; a torn or corrupt tail is dropped with a warning."""
    data = path.read_bytes()
    payloads, at = [], 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size : at + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        at += _FRAME.size + length
    if at < len(data):
        log.warning("%s: dropped %d bytes of an unfinished last record", path, len(data) - at)
    return payloads
