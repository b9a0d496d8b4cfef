"""Every CLI on bad input: a non-zero exit, one clear line on stderr (or argparse's usage error), never a traceback.

Each case runs the real script in a process of its own, as a user would. The cases cover missing files, wrong
formats, data that does not fit the model (a time-encoding checkpoint on simplified drawings, other classes), unknown
models, disagreeing prediction files and bad flag values. They run two at a time from one fixture, forked from a
server that has imported torch (common.run_scripts), because each script that imports torch spends ~2 s starting
up. The README's table of errors lists these cases.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import orjson
import pytest

import models
from common import run_scripts
from qdraw.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from qdraw.inference import open_input
from qdraw.predictions import write_labels, write_predictions
from qdraw.prepare import PrepareOptions, prepare
from qdraw.simplify import simplify_drawing, to_google_lists
from qdraw.store import read_block
from qdraw.strokes import to_arrays
from qdraw.synthetic import write_ndjson

ROOT = Path(__file__).resolve().parents[1]
CLASSES = sorted(["circle", "square", "triangle", "star", "house", "zigzag"])
TINY = ["--model", "squeezenet", "--image-size", "32", "--batch-size", "8", "--samples-per-class", "8",
        "--epochs", "1", "--workers", "0", "--no-progress", "--no-tensorboard", "--device", "cpu"]


def _simplified_copy(src: Path, dst: Path) -> None:
    """Google's simplification of every raw ndjson file in src, written to dst (the simplified layout)."""
    dst.mkdir()
    for path in src.glob("*.ndjson"):
        records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        for r in records:
            r["drawing"] = to_google_lists(simplify_drawing(to_arrays(r["drawing"])))
        (dst / path.name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


class _Payload:
    """What a malicious checkpoint carries: unpickling it runs a shell command (here, one that creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _checkpoint(path: Path, classes: list[str], encoding: str = "rgb", arch: str = "squeezenet", **over) -> Path:
    """A weights_only-loadable checkpoint of untrained weights, as train.py writes it (no training needed)."""
    model = models.create_model("squeezenet", len(classes), in_chans=3)
    state = {"version": CHECKPOINT_VERSION, "arch": arch, "model_args": {"num_classes": len(classes), "in_chans": 3},
             "classes": classes, "num_classes": len(classes), "encoding": encoding, "image_size": 32, "config": {},
             "model": model.state_dict(), "epoch": 0, "step": 0, "best_metric": 0.0} | over
    save_checkpoint(state, path)
    return path


def _predictions(root: Path) -> dict[str, Path]:
    """Prediction CSVs of two models that agree, one with other key_ids, one with other classes, one empty."""
    rng = np.random.default_rng(0)
    keys, names = np.arange(100, 140), ["air plane", "bee", "cat", "dog"]
    files = {}
    for name, k, c in [("a", keys, names), ("b", keys, names), ("keys", keys + 1, names),
                       ("classes", keys, names[:3] + ["eel"]), ("empty", keys[:0], names)]:
        files[name] = root / f"{name}.csv"
        write_predictions(files[name], k, rng.dirichlet(np.ones(4), len(k)), c)
    files["labels"] = root / "labels.csv"
    write_labels(files["labels"], keys, rng.integers(0, 4, len(keys)), names)
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The files the cases refer to by {name}: a store, a damaged copy, checkpoints, CSVs and prediction files."""
    root = tmp_path_factory.mktemp("cli")
    write_ndjson(root / "raw_src", 20, seed=3, classes=CLASSES)
    _simplified_copy(root / "raw_src", root / "simp_src")
    prepare(PrepareOptions(output=str(root / "simp"), block_size=10, val_every=5, workers=1), root / "simp_src")
    shutil.copytree(root / "simp", root / "damaged")
    for block in (root / "damaged/classes/001").glob("train_*.qdb"):
        block.write_bytes(block.read_bytes()[:300])  # cut short, as by a full disk in another tool
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key_id", "countrycode", "drawing"])
        for i, line in enumerate((root / "simp_src/circle.ndjson").read_bytes().splitlines()[:5]):
            writer.writerow([i, "US", orjson.dumps(orjson.loads(line)["drawing"]).decode()])
    (root / "notes.txt").write_text("not a drawing file\n")
    (root / "garbage.pth").write_bytes(bytes(range(256)) * 4)
    (root / "empty_dir").mkdir()
    ckpt = {"rgb": _checkpoint(root / "rgb.pth", CLASSES), "time": _checkpoint(root / "time.pth", CLASSES, "time"),
            "other": _checkpoint(root / "other.pth", [c.upper() for c in CLASSES]),
            "arch": _checkpoint(root / "arch.pth", CLASSES, arch="mobilenetv2"),
            "pickle": _checkpoint(root / "pickle.pth", CLASSES, config=_Payload(root / "pwned"))}
    return {"root": root, "simp": root / "simp", "damaged": root / "damaged",
            "test_csv": root / "test.csv", "notes": root / "notes.txt", "garbage": root / "garbage.pth",
            "empty_dir": root / "empty_dir", "simp_src": root / "simp_src",
            **{f"ckpt_{k}": v for k, v in ckpt.items()}, **_predictions(root)}


# (id, script, arguments with {placeholders} from the fixture, expected text on stderr, "error" | "usage").
# "error": exactly one stderr line, "error: ..."; "usage": argparse's usage text and "<script>: error: ...", exit 2.
CASES = [
    ("train-unknown-model", "train.py", ["--data", "{simp}", "--output", "{root}/t1", *TINY, "--model", "nosuchnet"],
     "unknown model 'nosuchnet'", "error"),
    ("train-time-on-simplified", "train.py", ["--data", "{simp}", "--output", "{root}/t2", *TINY, "--encoding", "time"],
     "needs stroke timing", "error"),
    ("train-no-store", "train.py", ["--data", "{root}/nowhere", *TINY], "not a prepared store", "error"),
    ("train-bad-device", "train.py", ["--data", "{simp}", *TINY, "--device", "gpu0"], "is not a device", "error"),
    ("train-resume-garbage", "train.py", ["--data", "{simp}", *TINY, "--resume", "{garbage}"],
     "unreadable checkpoint", "error"),
    ("train-resume-other-classes", "train.py", ["--data", "{simp}", "--output", "{root}/t3", *TINY, "--resume",
                                                "{ckpt_other}"], "checkpoint classes differ", "error"),
    ("train-damaged-block", "train.py", ["--data", "{damaged}", "--output", "{root}/t4", *TINY],
     "classes/001/train_", "error"),
    ("predict-other-classes", "predict.py", ["--checkpoint", "{ckpt_other}", "--input", "{simp}"],
     "checkpoint classes differ from the data's at index 0", "error"),
    ("predict-time-on-simplified-csv", "predict.py", ["--checkpoint", "{ckpt_time}", "--input", "{test_csv}"],
     "encoding 'time' needs stroke timing, but", "error"),
    ("predict-pickle-payload", "predict.py", ["--checkpoint", "{ckpt_pickle}", "--input", "{simp}"],
     "refused by torch.load(weights_only=True): it holds a pickled object (", "error"),
    ("predict-garbage-checkpoint", "predict.py", ["--checkpoint", "{garbage}", "--input", "{simp}"],
     "unreadable checkpoint", "error"),
    ("predict-weights-other-arch", "predict.py", ["--checkpoint", "{ckpt_arch}", "--input", "{simp}"],
     "weights do not fit a mobilenetv2", "error"),
    ("predict-not-a-test-csv", "predict.py", ["--checkpoint", "{ckpt_rgb}", "--input", "{notes}"],
     "not a Kaggle test CSV", "error"),
    ("predict-split-of-a-csv", "predict.py", ["--checkpoint", "{ckpt_rgb}", "--input", "{test_csv}", "--split", "val"],
     "needs a prepared store", "error"),
    ("predict-output-folder-missing", "predict.py", ["--checkpoint", "{ckpt_rgb}", "--input", "{simp}", "--output",
                                                     "{root}/nowhere/p.csv"], "not a file name in an existing folder",
     "error"),
    ("predict-bad-batch-size", "predict.py", ["--checkpoint", "{ckpt_rgb}", "--input", "{simp}", "--batch-size", "0"],
     "need --batch-size >= 1", "error"),
    ("blend-missing-file", "blend2.py", ["--output", "{root}/s.csv", "{a}", "{root}/nope.csv"],
     "no such prediction file", "error"),
    ("blend-not-predictions", "blend2.py", ["--output", "{root}/s.csv", "{a}", "{notes}"],
     "not a valid prediction CSV", "error"),
    ("blend-other-keys", "blend2.py", ["--output", "{root}/s.csv", "{a}", "{keys}"], "key_ids differ", "error"),
    ("blend-other-classes", "blend2.py", ["--output", "{root}/s.csv", "{a}", "{classes}"], "class set differs",
     "error"),
    ("blend-empty-file", "blend2.py", ["--output", "{root}/s.csv", "{empty}"], "no prediction rows", "error"),
    ("blend-output-folder-missing", "blend2.py", ["--output", "{root}/nowhere/s.csv", "{a}", "{b}"],
     "no such folder", "error"),
    ("blend-negative-weight", "blend2.py", ["--output", "{root}/s.csv", "{a}", "{b}", "--weights", "-1", "2"],
     "--weights must be non-negative", "error"),
    ("stack-labels-missing", "stack.py", ["--val", "{a}", "{b}", "--labels", "{root}/nope.csv"], "cannot read labels",
     "error"),
    ("stack-test-other-classes", "stack.py", ["--val", "{a}", "--labels", "{labels}", "--test", "{classes}",
                                              "--output", "{root}/s.csv"], "class set differs", "error"),
    ("stack-too-many-folds", "stack.py", ["--val", "{a}", "--labels", "{labels}", "--folds", "50"],
     "cannot be split", "error"),
    ("stack-bad-rounds", "stack.py", ["--val", "{a}", "--labels", "{labels}", "--rounds", "0"], "--rounds >= 1",
     "error"),
    ("stack-model-out-folder-missing", "stack.py", ["--val", "{a}", "--labels", "{labels}", "--model-out",
                                                    "{root}/nowhere/m.txt"], "no such folder", "error"),
    ("prepare-unknown-class", "prepare_data.py", ["--input", "{simp_src}", "--output", "{root}/p1", "--classes",
                                                  "circle,unicorn"], "classes not in the input: unicorn", "error"),
    ("prepare-test-csv-missing", "prepare_data.py", ["--input", "{simp_src}", "--output", "{root}/p2", "--test",
                                                     "{root}/nope.csv"], "no such test CSV", "error"),
    ("prepare-output-is-a-file", "prepare_data.py", ["--input", "{simp_src}", "--output", "{notes}"], "is a file",
     "error"),
    ("prepare-bad-max-per-class", "prepare_data.py", ["--input", "{simp_src}", "--output", "{root}/p3",
                                                      "--max-per-class", "0"], "must be >= 1", "error"),
    ("simplify-output-is-a-folder", "simplify.py", ["{simp_src}/circle.ndjson", "{empty_dir}"], "is a folder",
     "error"),
    ("simplify-no-ndjson", "simplify.py", ["{empty_dir}", "{root}/o.ndjson"], "no *.ndjson files", "error"),
    ("download-bad-url", "download_data.py", ["--classes", "cat", "--base-url", "bucket", "--output", "{root}/d"],
     "must start with http://", "error"),
    ("download-bad-timeout", "download_data.py", ["--classes", "cat", "--timeout", "0", "--output", "{root}/d"],
     "--timeout must be > 0", "error"),
    ("download-output-is-a-file", "download_data.py", ["--classes", "cat", "--output", "{notes}"], "is not a folder",
     "error"),
    ("visualize-no-store", "visualize.py", ["--data", "{root}/nowhere", "--output", "{root}/g.png"],
     "not a prepared store", "error"),
    ("visualize-time-on-simplified", "visualize.py", ["--data", "{simp}", "--output", "{root}/g.png", "--encodings",
                                                      "time"], "needs stroke timing", "error"),
    ("visualize-unknown-format", "visualize.py", ["--data", "{simp}", "--output", "{root}/g.xyz", "--n", "2"],
     "is not supported", "error"),
    ("bench-no-store", "bench.py", ["raster", "--data", "{root}/nowhere"], "not a prepared store", "error"),
    ("bench-no-command", "bench.py", [], "required", "usage"),
    ("bench-store-no-store", "bench.py", ["store", "--data", "{root}/nowhere"], "not a prepared store", "error"),
    ("prepare-verify-damaged", "prepare_data.py", ["--verify", "{damaged}"], "problem(s) in", "error"),
    ("predict-no-ema-weights", "predict.py", ["--checkpoint", "{ckpt_rgb}", "--input", "{simp}", "--weights", "ema"],
     "no EMA weights", "error"),
    ("average-nothing-kept", "average_checkpoints.py", ["--run", "{root}", "--last", "3", "--output", "{root}/a.pth"],
     "no epoch_*.pth", "error"),
    ("average-other-runs", "average_checkpoints.py", ["--checkpoints", "{ckpt_rgb}", "{ckpt_other}", "--output",
                                                      "{root}/a.pth"], "only checkpoints of one run", "error"),
    ("average-no-ema", "average_checkpoints.py", ["--checkpoints", "{ckpt_rgb}", "--weights", "ema", "--output",
                                                  "{root}/a.pth"], "no ema weights", "error"),
]


@pytest.fixture(scope="module")
def results(inputs) -> dict[str, subprocess.CompletedProcess]:
    """Every case's finished process, two at a time, forked from a server that has imported torch (common.run_scripts:
    a fresh process each, without paying torch's import 48 times)."""
    done = run_scripts([(script, [a.format(**inputs) for a in argv]) for _, script, argv, _, _ in CASES],
                       cwd=inputs["root"])
    return {case[0]: res for case, res in zip(CASES, done)}


@pytest.mark.slow
@pytest.mark.parametrize("name, script, argv, message, kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(results, name, script, argv, message, kind):
    res = results[name]
    assert res.returncode != 0, res.stdout[-500:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert message in res.stderr, res.stderr
    if kind == "usage":
        assert res.returncode == 2 and lines[0].startswith("usage: ")
        assert lines[-1].startswith(f"{script}: error: ")
    else:  # log lines may come first (train.py logs its set-up); the error is the one last line
        assert [ln for ln in lines if "error" in ln.lower()] == [lines[-1]] and lines[-1].startswith("error: "), lines


def test_nothing_was_written_by_a_refused_run(results, inputs):
    """Refusals come before any output: no run folder, prediction, submission or store appeared, and the
    checkpoint's os.system payload never ran."""
    leftovers = {"t1", "t2", "s.csv", "p1", "p2", "p3", "o.ndjson", "g.png", "g.xyz", "d", "pwned"}
    assert not leftovers & {p.name for p in inputs["root"].iterdir()}


def test_predict_warns_about_skipped_rows(inputs, tmp_path, caplog):
    """Unreadable rows of a test CSV get no prediction: predict.py says how many and why instead of staying silent."""
    rows = inputs["test_csv"].read_text().splitlines()
    bad = ['7,US,"[[[1, 2], [3]]]"', '8,US,"[[[""a""], [1]]]"']  # CSV doubles the quotes of the JSON string
    (tmp_path / "t.csv").write_text("\n".join([rows[0], bad[0], *rows[1:], bad[1]]) + "\n")
    with ExitStack() as stack, caplog.at_level(logging.WARNING):
        store, split = open_input(tmp_path / "t.csv", CLASSES, None, stack)
        assert len(read_block(store.test_blocks()[0])) == len(rows) - 1
    assert caplog.messages == [f"warning: {tmp_path / 't.csv'}: 2 of {len(rows) + 1} rows skipped and not predicted "
                               "(non-numeric coordinate: 1, x/y/t lengths differ: 1)"]
