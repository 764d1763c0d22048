"""Plumbing shared by the benchmark scripts (not a test, not a library of the system).

Every measured run happens in its own child process (the same script re-invoked with
``--child ...``) so that peak memory is per implementation: the child reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and its own timings as one JSON line on stdout.
The parent interleaves the implementations (a, b, a, b, ...) so that noise from other work on a
shared machine hits all of them alike, takes medians, prints a table and writes
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULT_MARKER = "BENCH_RESULT "


def use_repo_packages() -> None:
    """Import the checkout's packages whatever the working directory (the editable install can
    be stale, e.g. record a package as a namespace one)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(**fields: Any) -> None:
    """Child side: the one line the parent parses (the peak RSS is added here, at the end)."""
    fields.setdefault("peak_rss_mib", peak_rss_mib())
    print(RESULT_MARKER + json.dumps(fields, default=str), flush=True)


class ChildAborted(RuntimeError):
    """The child was stopped by the parent: over its memory cap or its time limit."""

    def __init__(self, reason: str, elapsed_s: float, sampled_peak_rss_mib: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.elapsed_s = elapsed_s
        self.sampled_peak_rss_mib = sampled_peak_rss_mib


def rss_mib(pid: int) -> float:
    """Resident memory of one process, MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them (none once it is
    gone)."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return children


def run_process(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    log: Path | None = None,
    rss_cap_mib: float | None = None,
) -> tuple[int, str, str, float, float]:
    """Run ``command``; return (exit code, stdout, stderr tail, wall seconds, peak RSS MiB).

    The peak RSS is the kernel's ``ru_maxrss`` of the process (``wait4``), at least the RSS
    sampled twice a second meanwhile: a process above ``rss_cap_mib`` or past ``timeout_s`` is
    killed (ChildAborted), so a runaway run cannot take a shared machine down. Its stderr goes
    to ``log`` when given."""
    began = time.perf_counter()
    sampled_peak = 0.0
    with (
        tempfile.TemporaryFile("w+") as out,
        open(log, "w+") if log is not None else tempfile.TemporaryFile("w+") as err,
    ):
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.5)
            sampled_peak = max(sampled_peak, rss_mib(child.pid))
            reason = None
            if rss_cap_mib is not None and sampled_peak > rss_cap_mib:
                reason = f"RSS {sampled_peak:,.0f} MiB above the cap of {rss_cap_mib:,.0f} MiB"
            elif timeout_s is not None and time.perf_counter() - began > timeout_s:
                reason = f"still running after the time limit of {timeout_s:,.0f} s"
            if reason:
                child.kill()
                os.wait4(child.pid, 0)
                child.returncode = -9
                raise ChildAborted(reason, time.perf_counter() - began, sampled_peak)
        child.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    peak = max(sampled_peak, usage.ru_maxrss / 1024)
    return child.returncode, stdout, stderr[-3000:], elapsed, peak


def run_child(
    script: Path,
    args: Sequence[str],
    *,
    timeout_s: float | None = None,
    log: Path | None = None,
    rss_cap_mib: float | None = None,
) -> dict[str, Any]:
    """Run ``script --child <args>`` in a fresh interpreter; return its reported fields plus the
    process's whole wall time (imports included) as ``process_s`` (see :func:`run_process`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code, stdout, stderr, elapsed, peak = run_process(
        [sys.executable, str(script), "--child", *args],
        env=env,
        timeout_s=timeout_s,
        log=log,
        rss_cap_mib=rss_cap_mib,
    )
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if code != 0 or not lines:
        tail = stderr if log is None else f"(stderr in {log})\n{stderr[-1500:]}"
        raise RuntimeError(
            f"benchmark child {' '.join(args)} failed (exit {code}):\n{stdout[-2000:]}\n{tail}"
        )
    fields: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    fields["process_s"] = elapsed
    fields["sampled_peak_rss_mib"] = peak
    return fields


def median(runs: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def environment() -> dict[str, Any]:
    """What the figures depend on: machine, versions, commit."""
    versions = {}
    for name in ("polars", "pandas", "deltalake", "pyarrow", "numpy", "pandera"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=str))
    tmp.replace(path)
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table when rich is installed, aligned plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        print(title)
        for row in (header, *rows):
            print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=max(120, Console().width)).print(table)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_mib(mib: float) -> str:
    return f"{mib:,.0f} MiB" if mib < 4096 else f"{mib / 1024:.2f} GiB"


def fmt_rate(rows_per_s: float) -> str:
    return f"{rows_per_s:,.0f}"
