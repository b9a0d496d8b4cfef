"""Learning-rate schedule: cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, arXiv 1608.03983).

The rate is a pure function of training time ``t`` measured in epochs, a real number: the optimiser step ``k`` of
``n`` in epoch ``e`` sits at ``t = e + k / n``. This is the paper's ``T_cur``, "updated at each batch iteration", and
it keeps the restarts on epoch boundaries even when epochs differ in length (one random block per class each epoch).
After an optional linear warm-up the first cosine period lasts ``period`` epochs and each next one ``t_mult`` times
longer; ``t_mult`` is any real >= 1 (the seed used 1.2, which torch's ``CosineAnnealingWarmRestarts`` refuses since it
takes integers). The cycle index comes in closed form from the geometric series of period lengths, as in timm's
``CosineLRScheduler._get_lr``, so there is no counter to save or restore: resuming at any step gives the same rate.

A schedule that fits the run (``total`` epochs, the run's ``--epochs``) keeps every period up to the last one and
fits the cycle that would run past the end so that the rate reaches ``min_lr`` exactly at ``total``: when at least
half of that cycle's nominal length remains, it is shortened to end at ``total``; otherwise (a restart would come too
late to pay off) the previous cycle is stretched to end at ``total`` instead. A run shorter than the first period is
one cosine from the end of the warm-up to ``total``. train.py evaluates the rate of a step at the time its step ends
(``epoch + (k + 1) / n``), and cycles are closed on the right (a time exactly on a restart is the end of the cycle
it finishes), so the last step of every cycle, and of the run, is taken at ``min_lr``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CosineRestarts:
    """Cosine annealing from ``lr`` to ``min_lr`` in periods of ``period * t_mult**i`` epochs after ``warmup`` epochs.

    Args:
        lr: peak rate, reached at the end of the warm-up and at every restart.
        period: length of the first cosine period in epochs (> 0).
        t_mult: growth factor of each next period (real, >= 1).
        min_lr: floor reached at the end of each period.
        warmup: epochs of linear warm-up from ``warmup_lr`` to ``lr`` before the first period (0 = none).
        warmup_lr: rate at t = 0 when warming up.
        total: epochs of the whole run (warm-up included) to fit the last cycle to (module docstring); None keeps
            the open-ended restarts.
    """

    lr: float
    period: float
    t_mult: float = 1.0
    min_lr: float = 0.0
    warmup: float = 0.0
    warmup_lr: float = 0.0
    total: float | None = None

    def __post_init__(self) -> None:
        if not self.period > 0:
            raise ValueError(f"period must be > 0 epochs, got {self.period}")
        if not self.t_mult >= 1:
            raise ValueError(f"t_mult must be >= 1, got {self.t_mult}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 epochs, got {self.warmup}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.total is not None and not self.total > self.warmup:
            raise ValueError(f"a fitted schedule needs more epochs than warm-up, got {self.total} and {self.warmup}")

    @property
    def last_cycle(self) -> tuple[int, float, float]:
        """(index, start, length) of the fitted last cycle, in epochs after the warm-up (total must be set)."""
        end = self.total - self.warmup
        i, _, _ = self.cycle(math.nextafter(end, 0.0))  # the cycle running at the end (a restart at `end` is none)
        start, nominal = self.cycle_start(i), self.period * self.t_mult ** i
        if i > 0 and end - start < nominal / 2:  # too little of it left: stretch the previous cycle instead
            i, start = i - 1, self.cycle_start(i - 1)
        return i, start, end - start

    def cycle_ends(self) -> list[float]:
        """Times (epochs from the start, warm-up included) at which the cycles of a fitted run reach min_lr."""
        last, start, length = self.last_cycle
        return [self.warmup + self.cycle_start(i) for i in range(1, last + 1)] + [self.warmup + start + length]

    def cycle_start(self, i: int) -> float:
        """Epoch (after the warm-up) at which cycle i begins: the sum of the first i period lengths."""
        if self.t_mult == 1:
            return self.period * i
        return self.period * (self.t_mult ** i - 1) / (self.t_mult - 1)

    def cycle(self, t: float) -> tuple[int, float, float]:
        """Cycle index, position in it (epochs) and its length (epochs) at time t >= 0 after the warm-up."""
        if self.t_mult == 1:
            i = int(t // self.period)
        else:
            # Invert cycle_start: t = P (m^i - 1) / (m - 1)  =>  i = floor(log(1 + t (m - 1) / P) / log m).
            i = math.floor(math.log1p(t * (self.t_mult - 1) / self.period) / math.log(self.t_mult))
        # log() rounding can put a time sitting exactly on a restart into the previous cycle (or the next); one
        # comparison with the forward formula settles it.
        if self.cycle_start(i + 1) <= t:
            i += 1
        elif self.cycle_start(i) > t:
            i -= 1
        start = self.cycle_start(i)
        return i, t - start, self.period * self.t_mult ** i

    def __call__(self, t: float) -> float:
        """Learning rate at time t (epochs since the start of training, fractional)."""
        if t < 0:
            raise ValueError(f"t must be >= 0 epochs, got {t}")
        if t < self.warmup:
            return self.warmup_lr + (self.lr - self.warmup_lr) * t / self.warmup
        after = t - self.warmup
        if self.total is not None and after > self.last_cycle[1]:
            _, start, length = self.last_cycle
            pos = min(after - start, length)  # past the end of the run: stay at the floor
        elif after <= 0:
            pos, length = 0.0, self.period
        else:
            # Cycles are closed on the right: the step that ends on a restart time still belongs to the cycle it
            # finishes (and runs at min_lr); the next one starts the new cycle.
            i, _, length = self.cycle(math.nextafter(after, 0.0))
            pos = after - self.cycle_start(i)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * pos / length))

    def at_step(self, step: int, steps_per_epoch: int) -> float:
        """Rate at global optimiser step ``step`` when every epoch has ``steps_per_epoch`` steps."""
        return self(step / steps_per_epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write lr into every parameter group (the schedule owns the rate; the optimiser only reads it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
