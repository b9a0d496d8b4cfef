"""Multi-process training computes what one process computes, and ends with one model on every rank.

The equivalence runs the real training step (qdraw.engine.train_one_epoch, SGD with Nesterov momentum as
``--opt sgd``, a registered BatchNorm network) on the same drawings two ways and compares the parameters after 4
optimiser steps:

* 2 gloo ranks x B drawings each, DDP (gradients averaged over ranks), against
* 1 process over the same 2B drawings.

BatchNorm in training mode normalises each forward's batch by its own statistics, so 2 x B and 1 x 2B are different
computations, not a rounding apart. Two pairings are therefore exact in arithmetic (equal up to float rounding):
BatchNorm frozen to eval-mode statistics against one batch of 2B (per-drawing work is then independent of the
batch), and BatchNorm in training mode against one process accumulating two micro-batches of B (each micro-batch
normalised by its own statistics, as each rank's is). Measured: 3.7e-9 and exactly 0 largest weight difference;
the tolerance is 1e-6, while the weights move by ~1 over the 4 steps and a wrong gradient scale (sum instead of
mean over ranks) or a missing all-reduce changes them by far more than that. Dropout, random in each process by
design, is set to 0. Why not Adam: it divides each gradient by its running RMS, so a gradient of 1e-12 in one
summation order and -1e-12 in the other moves a weight by +-lr (2.2e-5 measured with Adam at lr 1e-3) — a property
of the optimiser, not of DDP.

Then train.py itself under torchrun, on configs/demo.yaml as shipped for 2 epochs, must end with "ranks agree".
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import models  # noqa: F401  (registers the architectures in spawned ranks too)
from common import ROOT
from qdraw.dataset import BalancedBlockDataset
from qdraw.distributed import broadcast_buffers
from qdraw.logs import read_summary
from qdraw.render import InputSpec, make_render
from qdraw.engine import StepOptions, train_one_epoch
from qdraw.job import weights_checksum
from qdraw.zoo import create_model

STEPS, B, SIZE, LR = 4, 8, 32, 0.01
TOL = 1e-6


class _FrozenBN(nn.Module):
    """A network whose BatchNorm layers stay in eval mode (running statistics, not the batch's) while it trains."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> "_FrozenBN":
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _run(rank: int, world: int, init: str, images: torch.Tensor, labels: torch.Tensor, accum: int, frozen: bool,
         out: str) -> None:
    """Train STEPS steps on this rank's share of each global batch; save the state before and after the buffer
    broadcast that train.py does before validating."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = create_model("mobilenetv2", 6, in_chans=3)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # its masks come from each process's own generator: random by design, not comparable
    model = _FrozenBN(model) if frozen else model
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True)  # train.py --opt sgd
    share, micro = 2 * B // world, 2 * B // world // accum
    batches = [(images[s, rank * share + m * micro:rank * share + (m + 1) * micro],
                labels[s, rank * share + m * micro:rank * share + (m + 1) * micro])
               for s in range(STEPS) for m in range(accum)]
    train_one_epoch(net, nn.CrossEntropyLoss(), batches, optimizer, lambda t: LR, torch.device("cpu"), 0, 0,
                    StepOptions(accum_steps=accum, progress=False))
    before, sums_before = {k: v.clone() for k, v in model.state_dict().items()}, weights_checksum(model)
    broadcast_buffers(model)
    torch.save({"before": before, "after": model.state_dict(), "sums_before": sums_before,
                "sums_after": weights_checksum(model)}, f"{out}/rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _train(tmp: Path, name: str, world: int, accum: int, frozen: bool, images, labels) -> list[dict]:
    out = tmp / name
    out.mkdir()
    args = (world, f"file://{out}/pg", images, labels, accum, frozen, str(out))
    if world == 1:
        _run(0, *args)
    else:
        mp.spawn(_run, args=args, nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def drawings(raw_store):
    """STEPS global batches of 2B real-path images (the store's rgb rendering at 32 px) and their labels."""
    batch = BalancedBlockDataset(raw_store, seed=0).batch(list(range(STEPS * 2 * B)), epoch=0)
    images = torch.from_numpy(make_render(InputSpec.raster("rgb", SIZE)).__call__(batch))
    labels = torch.from_numpy(batch.labels)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # mix classes within a batch
    images = images[perm].view(STEPS, 2 * B, 3, SIZE, SIZE)  # uint8: train_one_epoch normalises on the device
    return images, labels[perm].view(STEPS, 2 * B)


def _max_diff(a: dict, b: dict, names) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in names)


@pytest.mark.slow
def test_two_ranks_equal_one_process_bn_eval_statistics(drawings, tmp_path):
    one = _train(tmp_path, "one", 1, 1, True, *drawings)[0]["after"]
    two = _train(tmp_path, "two", 2, 1, True, *drawings)
    params = [k for k, v in one.items() if v.is_floating_point() and "running" not in k]
    for rank in two:
        assert _max_diff(one, rank["after"], params) < TOL
    assert _max_diff(two[0]["after"], two[1]["after"], one) == 0  # DDP: bitwise one model on both ranks


@pytest.mark.slow
def test_two_ranks_equal_one_process_accumulating_bn_train_statistics(drawings, tmp_path):
    one = _train(tmp_path, "one", 1, 2, False, *drawings)[0]["after"]
    two = _train(tmp_path, "two", 2, 1, False, *drawings)
    torch.manual_seed(0)
    start = create_model("mobilenetv2", 6, in_chans=3)
    params = [k for k, _ in start.named_parameters()]
    moved = _max_diff(one, start.state_dict(), params)
    assert moved > 100 * TOL  # the steps did train: the comparison below is not between two untouched models
    for rank in two:
        assert _max_diff(one, rank["after"], params) < TOL
    # Each rank ends holding its own last batch's BatchNorm statistics; the broadcast makes them rank 0's.
    buffers = [k for k in one if "running" in k]
    assert _max_diff(two[0]["before"], two[1]["before"], buffers) > 1e-4
    assert _max_diff(two[0]["after"], two[1]["after"], buffers) == 0
    assert _max_diff(two[0]["before"], two[0]["after"], buffers) == 0  # rank 0 keeps its own
    # train.py's end-of-run check sees the difference (it failed every BatchNorm run before the broadcast) ...
    assert two[0]["sums_before"]["parameters"] == two[1]["sums_before"]["parameters"]
    assert two[0]["sums_before"]["buffers"] != two[1]["sums_before"]["buffers"]
    assert two[0]["sums_after"] == two[1]["sums_after"]  # ... and none after it


def _torchrun(argv: list[str], timeout: int = 400) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too, not only the launcher
        proc.communicate()
        raise
    return proc.returncode, text


@pytest.mark.slow
def test_torchrun_demo_config_ranks_agree(tmp_path):
    """configs/demo.yaml as shipped (mobilenetv2: BatchNorm; EMA off) for 2 epochs on the synthetic store, the
    config's own data; only the output folder moves into tmp_path."""
    rc, text = _torchrun(["--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), "--config",
                          str(ROOT / "configs" / "demo.yaml"), "--epochs", "2", "--output", str(tmp_path / "run"),
                          "--no-progress", "--device", "cpu"])
    assert rc == 0, text[-3000:]
    assert re.search(r"ranks agree: weights checksum \S+ \(parameters\), \S+ \(buffers\) on 2 processes", text), text
    assert text.count("validation MAP@3") == 1  # rank 0 alone prints and writes
    rows = read_summary(tmp_path / "run" / "summary.csv")
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["val_map3"] > 0.2  # 16 classes: chance is ~0.11
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    # 2,560 drawings an epoch, 1,280 per rank; the batch is fitted to 16 for >= 100 steps an epoch.
    assert ckpt["step"] == 160 and ckpt["epoch"] == 1 and ckpt["batch_size"] == 16
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # seed + rank
    assert not any(k.startswith("module.") for k in ckpt["model"])
