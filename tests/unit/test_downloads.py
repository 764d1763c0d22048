"""`Downloads`: each process's model downloads in a folder it locks; a sweep removes the
folders of processes that are gone (killed included) and never a live sibling's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inference_pipeline.service.downloads import Downloads

OWNER = (
    "import sys, time; from pathlib import Path; "
    "from inference_pipeline.service.downloads import Downloads; "
    "d = Downloads(Path(sys.argv[1])); d.open(); d.destination().mkdir(); "
    "print(d.own, flush=True); time.sleep(120)"
)


def _owner(root: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_sweep_removes_what_dead_processes_left_and_keeps_live_siblings(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    alive, alive_folder = _owner(root)
    killed, killed_folder = _owner(root)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        old_layout = root / ("a" * 32)  # a download of the layout before (no owner file)
        old_layout.mkdir()
        hour_ago = time.time() - 2 * 3600
        os.utime(old_layout, (hour_ago, hour_ago))
        recent = root / ("b" * 32)  # no owner file yet, but young: maybe being set up
        recent.mkdir()

        mine = Downloads(root)
        removed = mine.open()

        assert sorted(removed) == sorted([killed_folder, old_layout])
        assert alive_folder.is_dir() and recent.is_dir() and mine.own.is_dir()
        download = mine.destination()
        (download / "model").mkdir(parents=True)
        mine.discard(download / "model")
        assert not download.exists() and mine.own.is_dir()
        mine.discard(alive_folder)  # not its own: left alone
        assert alive_folder.is_dir()
        mine.close()
        assert not mine.own.exists()
    finally:
        alive.kill()
        alive.wait()
    assert Downloads(root).sweep() == [alive_folder]
