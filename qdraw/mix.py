"""Mixup and CutMix on rendered picture batches: a second augmentation stage, on the device after the loader, off by
default (train.py --mixup / --cutmix).

Mixup (arXiv 1710.09412) blends each picture with its partner, ``lam * x + (1 - lam) * x_partner``; CutMix
(arXiv 1905.04899) pastes a box of the partner's picture, ``lam`` = the share of the picture left untouched. Targets
are mixed alike (soft labels for the cross-entropy). The partner of item i is item B - 1 - i (the batch reversed,
as timm pairs them), and lam, the choice between the two and the box are drawn from a generator seeded by
(seed, epoch, step), so a resumed run mixes exactly as the uninterrupted one. Strokes, not pictures, are what
qdraw.augment transforms; this stage exists because a blend of two drawings has no stroke form.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Mix:
    """mixup / cutmix: Beta(alpha, alpha) concentrations, 0 = off; prob: share of batches mixed; switch: when both
    are on, the probability that a mixed batch uses CutMix."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch: float = 0.5

    def __post_init__(self) -> None:
        if self.mixup < 0 or self.cutmix < 0 or not 0 <= self.prob <= 1 or not 0 <= self.switch <= 1:
            raise ValueError("need --mixup, --cutmix >= 0 and --mix-prob in [0, 1]")

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def draw(self, seed: int, epoch: int, step: int, size: int) -> tuple[str, float, tuple[int, int, int, int]]:
        """("none" | "mixup" | "cutmix", lam, box (y0, y1, x0, x1)) for one batch of size x size pictures."""
        rng = np.random.default_rng([seed, epoch, step, 0x313])
        if rng.random() >= self.prob:
            return "none", 1.0, (0, 0, 0, 0)
        cut = self.cutmix > 0 and (self.mixup == 0 or rng.random() < self.switch)
        lam = float(rng.beta(self.cutmix, self.cutmix) if cut else rng.beta(self.mixup, self.mixup))
        if not cut:
            return "mixup", lam, (0, 0, 0, 0)
        side = size * np.sqrt(1 - lam)
        cy, cx = rng.integers(0, size, 2)
        y0, y1 = int(np.clip(cy - side / 2, 0, size)), int(np.clip(cy + side / 2, 0, size))
        x0, x1 = int(np.clip(cx - side / 2, 0, size)), int(np.clip(cx + side / 2, 0, size))
        return "cutmix", 1 - (y1 - y0) * (x1 - x0) / size**2, (y0, y1, x0, x1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, epoch: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed pictures (float (B, C, S, S), in place where possible) and soft targets float (B, num_classes)."""
        kind, lam, (y0, y1, x0, x1) = self.draw(seed, epoch, step, x.shape[-1])
        target = F.one_hot(y, num_classes).to(x.dtype)
        if kind == "none":
            return x, target
        if kind == "mixup":
            x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
        else:
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        return x, target.mul(lam).add_(target.flip(0), alpha=1 - lam)
