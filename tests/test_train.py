"""The training job: config precedence, accumulation, end-to-end runs, exact resume, torchrun on CPU, bench smoke.

Runs use a tiny synthetic store (6 classes, 2 blocks each) and SqueezeNet at 32 px, a few steps an epoch, so each
test takes seconds on a CPU.
"""
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import models
from common import SIX_CLASSES, run_train, train_argv
import train
from qdraw.checkpoint import load_checkpoint
from qdraw.config import parse_args
from qdraw.engine import StepOptions, train_one_epoch
from qdraw.logs import read_summary
from qdraw.prepare import PrepareOptions, prepare
from qdraw.synthetic import write_ndjson

ROOT = Path(__file__).resolve().parents[1]
CLASSES = SIX_CLASSES


@pytest.fixture(scope="module")
def store(raw_store) -> Path:
    """The shared raw synthetic store (conftest.raw_store): 6 classes x 60 drawings, blocks of 30."""
    return raw_store


_argv, _run = train_argv, run_train


class TestConfig:
    def test_cli_over_yaml_over_defaults(self, tmp_path):
        cfg = tmp_path / "c.yaml"
        cfg.write_text("model: mobilenetv2\nlr: 1e-3\nbatch_size: 32\nhflip: false\n")
        args = parse_args(train.get_args_parser(), ["--config", str(cfg), "--batch-size", "8"])
        assert (args.model, args.batch_size, args.hflip, args.epochs) == ("mobilenetv2", 8, False, 40)
        assert args.lr == 1e-3 and isinstance(args.lr, float)  # PyYAML reads "1e-3" as a string

    @pytest.mark.parametrize("text, message", [
        ("colour: red\n", "unknown key"), ("opt: rmsprop\n", "not one of"), ("epochs: 2.5\n", "must be an integer"),
        ("hflip: 3\n", "true, false or null"), ("- a\n", "mapping")])
    def test_bad_yaml_is_one_error_line(self, tmp_path, capsys, text, message):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        with pytest.raises(SystemExit) as exc:
            parse_args(train.get_args_parser(), ["--config", str(cfg)])
        assert exc.value.code == 2 and message in capsys.readouterr().err

    def test_help_gives_a_default_for_every_key(self):
        for action in train.get_args_parser()._actions:
            if action.dest != "help":
                assert "default" in (action.help or ""), action.dest

    def test_one_config_per_architecture_and_each_parses(self):
        names = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
        assert set(models.list_models()) <= names and "demo" in names
        for name in names:
            args = parse_args(train.get_args_parser(), ["--config", str(ROOT / "configs" / f"{name}.yaml")])
            assert args.model in models.list_models()
            # per-architecture configs are named after their model; demo and cpu_* are recipes for a budget
            assert name == "demo" or name.startswith("cpu_") or args.model == name


class _NoBatchNorm(nn.Module):
    """A tiny conv net whose loss is a plain mean over samples, so accumulated gradients can equal one big batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.net(x)


def _train_on(batches: list, accum: int) -> nn.Module:
    model = _NoBatchNorm()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(model, nn.CrossEntropyLoss(), batches, opt, lambda t: 0.5, torch.device("cpu"), 0, 0,
                    StepOptions(accum_steps=accum, progress=False))
    return model


def test_accumulation_equals_a_big_batch():
    """2 micro-batches of 8 with accum 2 == 1 batch of 16 (and a short last group is weighted per sample).

    BatchNorm in training mode normalises each micro-batch with its own statistics, so accumulation is not exactly a
    big batch there; the model here has no BatchNorm and the loss is a per-sample mean, which makes it exact up to
    float rounding.
    """
    g = torch.Generator().manual_seed(1)
    xs = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 5, (40,), generator=g)
    micro = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, 40, 8)]  # 5 micro-batches: groups of 2, 2, 1
    big = [(xs[0:16], ys[0:16]), (xs[16:32], ys[16:32]), (xs[32:40], ys[32:40])]
    a, b = _train_on(micro, accum=2), _train_on(big, accum=1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    c = _train_on(micro, accum=1)  # and it is not a no-op: five small steps differ
    assert not torch.allclose(next(c.parameters()), next(b.parameters()), atol=1e-4)


def test_step_counts_and_lr_per_optimizer_step():
    batches = [(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))] * 5
    seen = []
    model = _NoBatchNorm()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    out = train_one_epoch(model, nn.CrossEntropyLoss(), batches, opt, lambda t: seen.append(t) or 0.1,
                          torch.device("cpu"), 3, 7, StepOptions(accum_steps=2, progress=False))
    assert out["step"] == 7 + 3 and seen == [3 + 1 / 3, 3 + 2 / 3, 4.0]  # the time each step ends


class TestRun:
    def test_outputs_of_a_run(self, store, tmp_path, capsys):
        _run(_argv(store, tmp_path / "run"))
        out = tmp_path / "run"
        assert "validation MAP@3" in capsys.readouterr().out
        rows = read_summary(out / "summary.csv")
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        assert all(0 <= r["val_map3"] <= 1 and r["val_top1"] <= r["val_map3"] <= r["val_top3"] for r in rows)
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        assert cfg["model"] == "squeezenet" and cfg["image_size"] == 32 and "config" not in cfg
        again = parse_args(train.get_args_parser(), ["--config", str(out / "config.yaml")])  # re-runs the same job
        assert vars(again) == vars(parse_args(train.get_args_parser(), _argv(store, out))) | {
            "config": str(out / "config.yaml")}
        last = load_checkpoint(out / "last.pth")
        assert (last["epoch"], last["step"], last["arch"], last["encoding"]) == (2, 9, "squeezenet", "rgb")
        assert last["classes"] == sorted(CLASSES) and last["model_args"] == {"num_classes": 6, "in_chans": 3}
        best = load_checkpoint(out / "best.pth")
        assert best["best_metric"] == max(r["val_map3"] for r in rows)
        rebuilt = models.create_model(last["arch"], **last["model_args"])  # predict.py's path: no YAML needed
        rebuilt.load_state_dict(last["model"])

    def test_kill_and_resume_equals_uninterrupted(self, store, tmp_path, monkeypatch):
        _run(_argv(store, tmp_path / "full"))

        class Killed(Exception):
            pass

        real = train.train_one_epoch

        def dies_in_epoch_2(*args, **kwargs):
            if args[6] == 2:  # the epoch argument: killed mid-way, after epoch 1's checkpoint
                raise Killed
            return real(*args, **kwargs)

        monkeypatch.setattr(train, "train_one_epoch", dies_in_epoch_2)
        with pytest.raises(Killed):
            _run(_argv(store, tmp_path / "cut"))
        assert load_checkpoint(tmp_path / "cut" / "last.pth")["epoch"] == 1
        monkeypatch.setattr(train, "train_one_epoch", real)
        _run(_argv(store, tmp_path / "cut", "--resume", str(tmp_path / "cut" / "last.pth")))
        a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "cut" / "last.pth")
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert (a["step"], a["best_metric"]) == (b["step"], b["best_metric"])
        keep = ("epoch", "lr", "train_loss", "val_loss", "val_map3")
        ra, rb = read_summary(tmp_path / "full" / "summary.csv"), read_summary(tmp_path / "cut" / "summary.csv")
        assert [[r[k] for k in keep] for r in ra] == [[r[k] for k in keep] for r in rb]

    def test_fresh_run_refuses_to_overwrite_an_earlier_one(self, store, tmp_path, capsys):
        argv = _argv(store, tmp_path / "run", "--epochs", "1")
        _run(argv)
        with pytest.raises(SystemExit, match="holds an earlier run.*--resume"):
            _run(argv)
        _run([*argv, "--overwrite"])
        assert len(read_summary(tmp_path / "run" / "summary.csv")) == 1  # started over, not appended

    @pytest.mark.parametrize("extra, message", [
        (["--model", "nosuchnet"], "unknown model"),
        (["--image-size", "12"], "needs inputs of at least"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--batch-size", "1000", "--min-steps-per-epoch", "0"], "larger than an epoch"),
        (["--encoding", "sepia"], "unknown encoding"),
        (["--t-mult", "0.5"], "t_mult must be >= 1"),
        (["--resume", "/nonexistent/last.pth"], "no such checkpoint"),
    ])
    def test_bad_settings_are_one_error_line(self, store, tmp_path, extra, message):
        with pytest.raises(SystemExit, match=message) as exc:
            _run(_argv(store, tmp_path / "run", *extra))
        assert str(exc.value).startswith("error: ")

    def test_resume_with_other_settings_is_refused(self, store, tmp_path):
        _run(_argv(store, tmp_path / "run", "--epochs", "1"))
        with pytest.raises(SystemExit, match="image_size is 32, this run asks for 48"):
            _run(_argv(store, tmp_path / "run", "--image-size", "48", "--resume", str(tmp_path / "run" / "last.pth")))

    def test_grey_encoding_builds_a_one_channel_model(self, store, tmp_path):
        _run(_argv(store, tmp_path / "run", "--epochs", "1", "--encoding", "grey", "--accum-steps", "2",
                   "--opt", "sgd", "--label-smoothing", "0.1", "--clip-grad", "1.0"))
        ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
        assert ckpt["model_args"]["in_chans"] == 1 and ckpt["step"] == 2  # 3 micro-batches in groups of 2 + 1


def test_store_without_validation_still_trains(tmp_path):
    write_ndjson(tmp_path / "src", 20, seed=2, classes=CLASSES[:3])
    prepare(PrepareOptions(output=str(tmp_path / "st"), val_every=100000, workers=1), tmp_path / "src")
    _run(_argv(tmp_path / "st", tmp_path / "run", "--epochs", "2"))
    rows = read_summary(tmp_path / "run" / "summary.csv")
    assert len(rows) == 2 and all(math.isnan(r["val_map3"]) for r in rows)
    assert load_checkpoint(tmp_path / "run" / "best.pth")["epoch"] == 1  # no metric: best follows last


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_rendezvous_on_loopback(store, tmp_path):
    """Multi-machine training exercised on one machine: two torchrun launchers as two "nodes" (--nnodes 2, one
    process each, c10d rendezvous on 127.0.0.1). A BatchNorm network (mobilenetv2) with an EMA, 24 steps: both
    train, rank 0 alone writes, and the ranks agree on the final parameters and buffers, raw and EMA (train.py
    compares checksums of every rank's and fails when they differ)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=qdraw-test", "--max_restarts=0",
               str(ROOT / "train.py"), *_argv(store, tmp_path / "two", "--epochs", "4", "--model", "mobilenetv2",
                                              "--batch-size", "4", "--ema-decay", "0.9")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    text = "".join(out + err for out, err in outputs)
    assert text.count("ranks agree: weights checksum") == 1 and "on 2 processes" in text
    assert text.count("ranks agree: EMA weights checksum") == 1
    assert text.count("validation MAP@3") == 1  # one rank 0, whichever launcher it landed on
    ckpt = load_checkpoint(tmp_path / "two" / "last.pth")
    # 48 drawings an epoch, 24 per rank, batches of 4: 6 steps an epoch on each rank.
    assert ckpt["step"] == 24 and len(ckpt["rng"]) == 2


def test_bench_train_smoke(store, capsys):
    import argparse

    from benchmarks import bench_train

    p = argparse.ArgumentParser()
    bench_train.add_args(p)
    bench_train.run(p.parse_args(["--model", "squeezenet", "--size", "32", "--data", str(store), "--device", "cpu",
                                  "--batch-size", "4", "--steps", "1", "--warmup", "0", "--workers", "0"]))
    out = capsys.readouterr().out
    for label in ("tensors fp32 nchw:", "loader only (0 workers):", "loader fp32 nchw:", "stall ratio"):
        assert label in out
