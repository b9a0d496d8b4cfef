"""One training epoch and one evaluation pass, the two verbs of train.py's loop (ConvNeXt/DeiT ``engine.py``).

Batches arrive as uint8 (B, C, S, S) and are normalised on the device (``float() / 255``), which keeps the loader's
transfers four times smaller. A training step may be split into ``accum_steps`` micro-batches whose losses are
divided by their count, so the summed gradient equals that of one big batch (exactly, for a model without
batch-dependent layers such as BatchNorm in training mode); DDP's gradient all-reduce then runs only on the last one.
Evaluation computes the competition metric, true MAP@3 (qdraw.metrics), not the top-3 accuracy the ancestor logged.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .averaging import Ema
from .distributed import all_gather_objects, all_reduce_sum, is_main_process
from .metrics import map_at_k, top_k
from .mix import Mix
from .render import to_model_input
from .schedule import set_lr


@dataclass
class StepOptions:
    """How each optimiser step is taken.

    Args:
        accum_steps: micro-batches per optimiser step (gradient accumulation).
        clip_grad: max global L2 norm of the gradients, None for no clipping.
        amp_dtype: torch.bfloat16 or torch.float16 to run forward and loss under autocast, None for float32.
        scaler: a GradScaler, only with float16 (bfloat16 has float32's range and needs none).
        channels_last: feed NHWC tensors (faster convolutions on tensor cores).
        progress: show a tqdm bar (rank 0 only).
        mix: mixup / CutMix of the pictures (qdraw.mix), None for none; its draws are seeded by (seed, epoch,
            micro-batch), and its soft targets need num_classes.
    """

    accum_steps: int = 1
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    progress: bool = True
    mix: Mix | None = None
    seed: int = 0
    num_classes: int = 0


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for dtype on device.type, or a no-op context for float32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    lr_at: Callable[[float], float], device: torch.device, epoch: int, step: int,
                    opts: StepOptions, ema: "Ema | None" = None) -> dict[str, float]:
    """Train for one pass over loader; return mean loss, last lr, images/s, the seconds spent waiting for batches
    (``data_wait_s``: a loader that cannot keep up shows here) and the global step count after it. Under torchrun
    the loss and images/s cover all ranks and ``data_wait_s`` is the longest any rank waited.

    The rate of optimiser step k of n in this epoch is ``lr_at(epoch + (k + 1) / n)``, the time at which the step
    ends (time in epochs; see schedule.py), so the last step of a fitted schedule runs at its floor. ``step`` counts
    optimiser steps before this epoch; the returned ``step`` is the count after it. ``ema`` (qdraw.averaging.Ema, which
    holds the raw module, not the DDP or compiled view) is updated after every optimiser step.
    """
    model.train()
    n_micro = len(loader)
    accum = opts.accum_steps
    n_steps = math.ceil(n_micro / accum)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, lr, wait, t0 = 0, float("nan"), 0.0, time.perf_counter()
    bar = tqdm(total=n_micro, desc=f"epoch {epoch}", unit="batch", leave=False,
               disable=not (opts.progress and is_main_process()))
    optimizer.zero_grad(set_to_none=True)
    batches = iter(loader)
    for i in range(n_micro):
        t_wait = time.perf_counter()
        x, y = next(batches)
        wait += time.perf_counter() - t_wait
        bar.update(1)
        k, first = divmod(i, accum)
        if first == 0:
            lr = lr_at(epoch + (k + 1) / n_steps)
            set_lr(optimizer, lr)
        # The last group of an epoch may be short: divide by its real size so every sample weighs the same.
        group = min(accum, n_micro - k * accum)
        last = first == group - 1
        x, y = to_model_input(x, device, opts.channels_last), y.to(device, non_blocking=True)
        if opts.mix is not None:
            x, target = opts.mix(x, y, opts.num_classes, opts.seed, epoch, i)
        else:
            target = y
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            with autocast(device, opts.amp_dtype):
                loss = criterion(model(x), target)
            scaled = loss / group
            (opts.scaler.scale(scaled) if opts.scaler is not None else scaled).backward()
        if last:
            _optimizer_step(model, optimizer, opts)
            step += 1
            if ema is not None:
                ema.update()
        loss_sum += loss.detach().double() * len(y)
        seen += len(y)
        if i % 20 == 0 or i + 1 == n_micro:
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum.item() / max(seen, 1):.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    # Under torchrun: loss over every rank's drawings, images/s of all ranks together, and the wait of the rank that
    # waited longest (every optimiser step waits for the slowest rank, so its loader sets the pace).
    total_loss, total_seen = all_reduce_sum([loss_sum.item(), float(seen)], device)
    (wait,) = all_reduce_sum([wait], device, op="max")
    return {"loss": total_loss / max(total_seen, 1), "lr": lr, "images_per_s": total_seen / max(elapsed, 1e-9),
            "seconds": elapsed, "data_wait_s": wait, "step": step}


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions) -> None:
    """Unscale (fp16), clip, step, update the scaler and clear the gradients."""
    if opts.scaler is not None:
        if opts.clip_grad is not None:
            opts.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        if opts.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """Cross-entropy, top-1, top-3 and MAP@3 over loader (its shard on each rank, gathered when distributed).

    Only the top-3 class indices of each drawing are kept (qdraw.metrics.top_k, ties to the lower index), so memory
    stays O(N) however many classes there are. An empty loader gives NaN metrics and n = 0.
    """
    model.eval()
    loss_sum, tops, labels = 0.0, [], []
    for x, y in loader:
        with autocast(device, amp_dtype):
            out = model(to_model_input(x, device, channels_last))
        out = out.float()
        loss_sum += F.cross_entropy(out, y.to(device), reduction="sum").item()
        tops.append(top_k(out.cpu().numpy(), 3))
        labels.append(y.numpy())
    local = (loss_sum, np.concatenate(tops) if tops else np.zeros((0, 3), np.int64),
             np.concatenate(labels) if labels else np.zeros(0, np.int64))
    parts = all_gather_objects(local)
    loss_sum = sum(p[0] for p in parts)
    t3 = np.concatenate([p[1] for p in parts])
    y = np.concatenate([p[2] for p in parts]).astype(np.int64)
    n = len(y)
    if n == 0:
        return {"loss": math.nan, "top1": math.nan, "top3": math.nan, "map3": math.nan, "n": 0}
    return {"loss": loss_sum / n, "top1": float((t3[:, 0] == y).mean()),
            "top3": float((t3 == y[:, None]).any(1).mean()), "map3": map_at_k(t3, y), "n": n}
