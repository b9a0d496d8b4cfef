"""Kill-anywhere safety: SIGKILL a CLI at several points, rerun it, and get exactly the uninterrupted output.

Readers never see a partial file: blocks are renamed into place whole, a class folder only once all its blocks are
written, meta.json last; the checks below read everything a killed run left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdraw.store import Store, StoreError, read_block

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, kill_after: float | None = None) -> int:
    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if kill_after is None:
        return proc.wait(timeout=600)
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the packing workers die too
        proc.wait()
        return -9


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "stats.json" and not p.name.startswith(".")
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


@pytest.mark.slow
def test_prepare_killed_anywhere_then_rerun_is_identical(shared_data, tmp_path):
    src = shared_data / "kaggle" / "train_simplified"
    argv = [str(ROOT / "prepare_data.py"), "--input", str(src), "--block-size", "16", "--workers", "1"]
    assert _run(argv + ["--output", str(tmp_path / "clean")], tmp_path) == 0
    clean = _snapshot(tmp_path / "clean")
    out = tmp_path / "killed"
    kills = 0
    for delay in (0.4, 0.9, 1.6, 2.5, 3.5):
        if _run(argv + ["--output", str(out)], tmp_path, kill_after=delay) == -9:
            kills += 1
            # whatever a killed run left is either absent or whole
            for block in out.glob("classes/[0-9]*/*.qdb"):
                read_block(block)
            if not (out / "meta.json").exists():
                with pytest.raises(StoreError):
                    Store(out)
    assert kills >= 2, "the run finished before it could be killed: raise the input size"
    assert _run(argv + ["--output", str(out)], tmp_path) == 0
    assert _snapshot(out) == clean
