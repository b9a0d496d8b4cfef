"""Weight averaging: an exponential moving average (EMA) of the weights during training, the average of saved
checkpoints (the last K of a run, or the snapshots at the end of each warm-restart period), and the recomputation of
BatchNorm statistics where averaging leaves them wrong.

Top Quick, Draw! teams averaged weights (14th place: the last 10 checkpoints; 5th and 21st: snapshot / top-k
averages). The EMA uses torch's own :class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True``, so the
BatchNorm running statistics are averaged with the same decay as the weights (as timm's ModelEmaV2/V3 do): they then
describe roughly the averaged network, and are good enough to evaluate it every epoch. The decay warms up as
``min(decay, (1 + n) / (10 + n))`` after n updates (timm's old ModelEma rule), so a short run is not dominated by
the initial weights. An average of checkpoints, by contrast, is a point no training step visited, and its averaged
running statistics do not belong to it: :func:`recompute_bn` re-estimates them on training batches with
:func:`torch.optim.swa_utils.update_bn` (the SWA recipe, arXiv 1803.05407), which average_checkpoints.py does by
default.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from .checkpoint import CheckpointError, load_checkpoint

# Fields that must agree for checkpoints to be averaged: they define the network and its input.
_SAME = ("arch", "model_args", "classes", "encoding", "image_size", "input")


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay applied by the update that follows ``updates`` earlier ones: the target decay, warmed up for short
    runs (0.18 after one update, 0.5 after 8, 0.9 after 80, 0.99 after 890)."""
    return min(decay, (1 + updates) / (10 + updates))


class Ema:
    """An EMA of ``model``'s parameters and buffers, kept on the model's device; ``update()`` after each step.

    ``module`` is the averaged network (evaluate it, save its state_dict); ``updates`` counts the updates so far.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.source, self.decay = model, decay

        def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
            # n counts the updates before this one (>= 1: AveragedModel's first update copies the weights)
            d = ema_decay_at(decay, int(n))
            if averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, 1 - d)
            else:  # integer buffers (BatchNorm's num_batches_tracked): take the current count
                for a, c in zip(averaged, current):
                    a.copy_(c)

        self.averaged = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self) -> None:
        self.averaged.update_parameters(self.source)

    def state(self) -> dict:
        """What a checkpoint holds of the EMA: the averaged network's state_dict and the update count."""
        return {"ema": self.module.state_dict(), "ema_updates": self.updates, "ema_decay": self.decay}

    def load(self, ckpt: dict) -> None:
        """Restore the state saved by :meth:`state` (exact: the next update continues bit for bit)."""
        self.module.load_state_dict(ckpt["ema"])
        self.averaged.n_averaged.fill_(int(ckpt["ema_updates"]))


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state_dicts of one architecture: floating tensors averaged in float64 and cast back,
    integer tensors (BatchNorm's batch counters) taken from the last state."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("the state_dicts differ in keys or shapes: not one architecture")
    out = {}
    for k in keys:
        if states[0][k].is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def average_checkpoints(paths: list[str | Path], weights: str = "raw") -> dict:
    """A checkpoint whose weights are the average of the given ones (the last one's other fields, no optimiser).

    weights: "raw" averages each file's training weights, "ema" their EMA weights (each file must have them).
    Raises CheckpointError when the files were trained on other classes, input or architecture.
    """
    if weights not in ("raw", "ema"):
        raise ValueError(f"weights must be 'raw' or 'ema', got {weights!r}")
    ckpts = [load_checkpoint(p) for p in paths]
    if not ckpts:
        raise ValueError("give at least one checkpoint")
    for p, c in zip(paths[1:], ckpts[1:]):
        for key in _SAME:
            if c.get(key) != ckpts[0].get(key):
                raise CheckpointError(f"{p}: {key} differs from {paths[0]}'s; only checkpoints of one run can be "
                                      f"averaged")
    key = "model" if weights == "raw" else "ema"
    missing = [str(p) for p, c in zip(paths, ckpts) if not isinstance(c.get(key), dict)]
    if missing:
        raise CheckpointError(f"{', '.join(missing)}: no {weights} weights (train with --ema-decay to have them)")
    out = {k: v for k, v in ckpts[-1].items()
           if k not in ("optimizer", "scaler", "rng", "ema", "ema_updates", "ema_decay")}
    out["model"] = average_state_dicts([c[key] for c in ckpts])
    out["averaged_from"] = [str(p) for p in paths]
    out["averaged_weights"] = weights
    return out


def _inputs(batches: Iterable, device: torch.device, limit: int) -> Iterator[torch.Tensor]:
    from .loader import to_model_input

    for i, (x, _) in enumerate(batches):
        if i >= limit:
            break
        yield to_model_input(x, device)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_bn(model: nn.Module, batches: Iterable, device: torch.device, limit: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance on up to ``limit`` uint8 training batches (the
    cumulative average over them, torch's update_bn); returns the batches used (0 when the model has no BatchNorm)."""
    if not has_batchnorm(model) or limit < 1:
        return 0
    used = []

    def counted() -> Iterator[torch.Tensor]:
        for x in _inputs(batches, device, limit):
            used.append(1)
            yield x

    update_bn(counted(), model)
    model.eval()
    return len(used)
