"""Mixup and CutMix (qdraw.mix): exact arithmetic against the draws, soft targets that sum to 1, reproducible draws."""
from __future__ import annotations

import pytest
import torch

from qdraw.mix import Mix


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])


def test_mixup_blends_with_the_reversed_batch():
    x, y = _batch()
    mix = Mix(mixup=0.4)
    kind, lam, _ = mix.draw(3, 2, 7, 16)
    got, target = mix(x.clone(), y, 5, 3, 2, 7)
    assert kind == "mixup" and 0 < lam < 1
    torch.testing.assert_close(got, lam * x + (1 - lam) * x.flip(0))
    assert target[0].tolist() == pytest.approx([1, 0, 0, 0, 0])  # item 0's partner, item 5, is class 0 too
    assert target[1].tolist() == pytest.approx([0, lam, 0, 0, 1 - lam])  # item 1's partner is item 4
    torch.testing.assert_close(target.sum(1), torch.ones(6))


def test_cutmix_pastes_the_partners_box_and_weighs_by_area():
    x, y = _batch()
    mix = Mix(cutmix=1.0)
    for step in range(20):
        kind, lam, (y0, y1, x0, x1) = mix.draw(0, 0, step, 16)
        got, target = mix(x, y, 5, 0, 0, step)
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(got[:, :, inside], x.flip(0)[:, :, inside]) and torch.equal(got[:, :, ~inside],
                                                                                       x[:, :, ~inside])
        assert lam == pytest.approx(1 - inside.float().mean().item())
        assert target[2, 2] == pytest.approx(lam) and target[2, 3] == pytest.approx(1 - lam)  # 2 <-> 3


def test_off_and_reproducible():
    x, y = _batch()
    same, target = Mix(mixup=0.2, prob=0.0)(x, y, 5, 0, 0, 0)
    assert torch.equal(same, x) and torch.equal(target.argmax(1), y)
    draws = [Mix(mixup=0.2, cutmix=1.0).draw(1, e, s, 32) for e in range(3) for s in range(5)]
    assert draws == [Mix(mixup=0.2, cutmix=1.0).draw(1, e, s, 32) for e in range(3) for s in range(5)]
    assert {d[0] for d in draws} == {"mixup", "cutmix"}
    with pytest.raises(ValueError, match="mix-prob"):
        Mix(mixup=0.2, prob=2)
