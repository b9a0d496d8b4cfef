"""Constants and small helpers the test files share (fixtures built from them live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "quickdraw"

# The synthetic classes of the small stores most tests train on, in the generator's spelling.
SIX_CLASSES = ["circle", "square", "triangle", "star", "house", "zigzag"]

# The 16 large classes of the shared real slice (~400 drawings each; cat ~1,600, monkey ~820).
CLASSES_16 = ["airplane", "bicycle", "calculator", "camera", "computer", "crayon", "dragon", "eye", "guitar",
              "headphones", "map", "paint can", "paintbrush", "television", "cat", "monkey"]


def train_argv(store: Path, out: Path, *extra: str) -> list[str]:
    """train.py flags of a run of seconds on a small store: SqueezeNet at 32 px, 3 epochs of 8 drawings a class."""
    return ["--data", str(store), "--output", str(out), "--model", "squeezenet", "--image-size", "32",
            "--batch-size", "16", "--samples-per-class", "8", "--epochs", "3", "--workers", "0", "--lr", "3e-3",
            "--period", "2", "--t-mult", "1.5", "--warmup-epochs", "0.5", "--no-progress", "--no-tensorboard",
            "--deterministic", "--device", "cpu", *extra]


def run_train(argv: list[str]) -> None:
    """train.py's main in this process (so tests can patch it)."""
    import train
    from qdraw.config import parse_args

    train.main(parse_args(train.get_args_parser(), argv))


def run_cli(module, argv: list[str]) -> None:
    """A script's main on argv, the way its ``__main__`` block runs it: main(get_args_parser().parse_args(argv))."""
    module.main(module.get_args_parser().parse_args(argv))


# What a script imports before it reads its arguments; a fork-server process imports it once (qdraw's CLIs all import
# torch: ~2 s of a refused run's ~2.5 s).
SCRIPT_PRELOAD = ["torch", "torchvision", "numpy", "numba", "models", "data_loader_rgb", "data_loader_time",
                  "qdraw.job", "qdraw.inference", "qdraw.stacking", "qdraw.serving", "common"]


def _script_in_child(script: str, argv: list[str], cwd: str, out: str, err: str) -> None:
    """`python SCRIPT ARGV` in a child of the fork server: fresh fds 1 and 2 (files), argv, cwd, the script's
    ``__main__``. multiprocessing maps SystemExit as the interpreter does (an int is the exit code; a message goes to
    stderr with code 1) and prints a traceback for any other exception."""
    import os
    import runpy
    import sys

    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [script, *argv]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / script), run_name="__main__")


def run_scripts(jobs: list[tuple[str, list[str]]], cwd: Path, workers: int = 2, timeout: float = 300):
    """Run each (script, argv) as its own process, `workers` at a time, and return a CompletedProcess each.

    The processes fork from a server that has imported SCRIPT_PRELOAD (with OMP_NUM_THREADS=1), not from pytest: each
    is a fresh `python SCRIPT` apart from the imports it did not have to repeat (48 refused runs: ~100 s as
    subprocesses, a fraction of that this way)."""
    import multiprocessing as mp
    import os
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(SCRIPT_PRELOAD)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the server when it starts (its children inherit it)
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.__setitem__("OMP_NUM_THREADS", saved)

    def one(i: int, script: str, argv: list[str]) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = f"{tmp}/out", f"{tmp}/err"
            proc = ctx.Process(target=_script_in_child, args=(script, argv, str(cwd), out, err))
            proc.start()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
                raise TimeoutError(f"{script} {argv} ran past {timeout} s")
            with open(out) as f_out, open(err) as f_err:
                return subprocess.CompletedProcess([script, *argv], proc.exitcode, f_out.read(), f_err.read())

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: one(*job), [(i, *job) for i, job in enumerate(jobs)]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, alive=lambda: True, tries: int = 3000) -> None:
    """Poll GET url until the server answers (0.1 s apart), failing early when alive() turns false."""
    import time

    import httpx

    for _ in range(tries):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            assert alive(), f"the server behind {url} died"
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")
