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
