"""What the experiments share: running CLI steps (optionally under a lock shared with other heavy jobs), scoring
prediction CSVs per drawing, paired differences with their standard errors, the machine line, and writing a
generated section into docs/RESULTS.md between markers."""
from __future__ import annotations

import fcntl
import os
import resource
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qdraw.atomic import write_text
from qdraw.metrics import ranking_metrics, top_k
from qdraw.predictions import labels_for, read_labels, read_predictions

REPO = Path(__file__).resolve().parents[1]
CLASSES_16 = ("airplane,bicycle,calculator,camera,computer,crayon,dragon,eye,guitar,headphones,map,paint can,"
              "paintbrush,television,cat,monkey")


class Runner:
    """Runs steps as subprocesses from the repo root, each under an optional shared lock, and logs each command
    (repo-relative, so the logged commands run on any checkout next to ../shared)."""

    def __init__(self, lock: str | None):
        self.lock, self.commands, self.seconds, self.cpu = lock, [], {}, {}
        self.last_cpu = 0.0

    def note(self, script: str, *args: str) -> str:
        """Log a step's command line without running it (a finished step reused from an earlier invocation)."""
        shown = "python " + " ".join(shlex.quote(a) for a in [script, *args])
        shown = shown.replace(str(REPO) + "/", "").replace(str(REPO.parent) + "/", "../")
        self.commands.append(shown)
        return shown

    def __call__(self, script: str, *args: str, env: dict | None = None) -> float:
        """Run one step; return its wall seconds (the wait for the lock excluded). Its CPU seconds (user + system,
        all threads) are kept in .last_cpu: on a shared machine wall time grows with the load, CPU time much less."""
        cmd = [sys.executable, str(REPO / script), *args]
        shown = self.note(script, *args)
        print(f"$ {shown}", flush=True)
        with open(self.lock or os.devnull, "a") as lock:
            if self.lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, so other users' steps interleave with ours
            start, used = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(cmd, cwd=REPO, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env={**os.environ, **(env or {})})
            elapsed, after = time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
        if done.returncode:
            raise SystemExit(f"error: step failed ({done.returncode}): {shown}\n{done.stdout[-3000:]}")
        self.seconds[shown] = elapsed
        return elapsed


def per_drawing_ap(pred_csv: Path, labels_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(key_ids sorted, AP@3 of each drawing: 1, 1/2, 1/3 or 0) of a prediction CSV against a labels CSV."""
    pred = read_predictions(pred_csv)
    labels = labels_for(pred.key_ids, read_labels(labels_csv, pred.classes), str(labels_csv))
    hits = top_k(pred.probs, 3) == labels[:, None]
    ap = (hits / np.arange(1, 4)).sum(1)
    order = np.argsort(pred.key_ids)
    return pred.key_ids[order], ap[order]


def score(pred_csv: Path, labels_csv: Path) -> dict[str, float]:
    """MAP@3 / top-1 / top-3 and the count of a prediction CSV against a key_id,word labels CSV."""
    pred = read_predictions(pred_csv)
    labels = labels_for(pred.key_ids, read_labels(labels_csv, pred.classes), str(labels_csv))
    return {**ranking_metrics(pred.probs, labels), "n": len(labels)}


def paired(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """Mean and standard error of the difference a - b of per-drawing AP@3, paired by drawing and seed: each
    drawing's difference is averaged over the seeds, and the SE is over drawings (the test set's sampling noise,
    with the seeds' noise inside each drawing's mean)."""
    d = np.mean([x - y for x, y in zip(a, b)], axis=0)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def machine() -> str:
    """One line naming the CPU, its core count, Python and torch, for the results."""
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{cpu}, nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()}")


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between the markers in path (or append it), keeping the hand-written parts."""
    text = path.read_text() if path.exists() else "# Results\n"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text(path, text)
