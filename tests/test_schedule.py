"""Cosine annealing with warm restarts (qdraw.schedule): restart boundaries, real t_mult, warm-up, floor, purity."""
import math

import pytest
import torch

from qdraw.schedule import CosineRestarts, set_lr


class TestRestartBoundaries:
    """cycle(t) places a time exactly on a restart in the new cycle; the rate itself is closed on the right: the
    step that ends on a restart runs at the floor, and the next one near the peak (train.py asks for the time at
    which each step ends)."""

    def test_t_mult_1_restarts_every_period(self):
        s = CosineRestarts(lr=0.1, period=4, min_lr=0.001)
        for i in range(6):
            assert s.cycle(4.0 * i) == (i, 0.0, 4.0)
            assert s(4.0 * i) == pytest.approx(0.1 if i == 0 else 0.001, abs=1e-15)
            assert s(4.0 * i + 1e-9) == pytest.approx(0.1, abs=1e-9)
            assert s.cycle(4.0 * i + 3.999)[0] == i
        assert s(2.0) == pytest.approx((0.1 + 0.001) / 2, rel=1e-12)  # half-way down the cosine
        assert s(4 - 1e-9) == pytest.approx(0.001, abs=1e-12)  # just before a restart: at the floor

    def test_t_mult_2_doubles_periods(self):
        s = CosineRestarts(lr=1.0, period=4, t_mult=2)
        starts = [0, 4, 12, 28, 60, 124]
        assert [s.cycle_start(i) for i in range(6)] == starts
        for i, t0 in enumerate(starts):
            assert s.cycle(float(t0)) == (i, 0.0, 4.0 * 2**i)
            assert s(float(t0)) == (1.0 if i == 0 else 0.0)
            assert s(t0 + 1e-9) == pytest.approx(1.0, abs=1e-9)
            if i:
                assert s.cycle(t0 - 1e-9)[0] == i - 1
        assert s(4 + 4) == pytest.approx(0.5, abs=1e-12)  # middle of the 8-epoch cycle 1
        assert s(12 + 8) == pytest.approx(0.5, abs=1e-12)  # middle of the 16-epoch cycle 2

    def test_real_t_mult_1_2(self):
        """The seed's setting: periods 32, 38.4, 46.08, 55.296 ... epochs; restarts at their running sums."""
        s = CosineRestarts(lr=1e-3, period=32, t_mult=1.2, min_lr=1e-5)
        assert s.cycle_start(1) == pytest.approx(32)
        assert s.cycle_start(2) == pytest.approx(70.4)
        assert s.cycle_start(3) == pytest.approx(116.48)
        i, pos, length = s.cycle(70.4)
        assert (i, length) == (2, pytest.approx(46.08)) and pos == pytest.approx(0, abs=1e-9)
        assert s.cycle(70.39)[0] == 1 and s.cycle(70.41)[0] == 2
        assert s(70.4 + 46.08 / 2) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-9)
        assert s(116.48 - 1e-9) == pytest.approx(1e-5, rel=1e-6)

    @pytest.mark.parametrize("t_mult", [1.0, 1.2, 1.5, 2.0, 3.0])
    def test_every_computed_restart_lands_in_its_cycle(self, t_mult):
        """log() rounding must never put a restart time in the previous cycle, for 40 restarts; the rate at the
        restart is the floor of the cycle it ends, one ulp later the peak."""
        s = CosineRestarts(lr=1.0, period=3, t_mult=t_mult)
        for i in range(40):
            t = s.cycle_start(i)
            assert s.cycle(t)[0] == i
            assert s(t) == pytest.approx(1.0 if i == 0 else 0.0, abs=1e-9)
            assert s(math.nextafter(t, math.inf)) == pytest.approx(1.0, abs=1e-9)
            if i:
                below = math.nextafter(t, 0.0)
                assert s.cycle(below)[0] == i - 1

    def test_matches_torch_integer_restarts_per_epoch(self):
        """Stepped once per epoch with an integer t_mult, the closed form (just after each epoch start, where the
        right-closed cycles agree with torch's left-closed ones) equals torch's stateful scheduler."""
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.5)
        ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=0.01)
        s = CosineRestarts(lr=0.5, period=3, t_mult=2, min_lr=0.01)
        for epoch in range(40):
            assert s(epoch + 1e-12) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
            opt.step()
            ref.step()


class TestFittedSchedule:
    """A schedule fitted to the run's --epochs ends at min_lr on its last step, whatever --epochs is."""

    def test_short_run_is_one_cosine_after_the_warmup(self):
        """resnet34.yaml run for 8 epochs: 1 epoch of warm-up, then one cosine over 7 (not 7/32 of one)."""
        s = CosineRestarts(lr=1e-3, period=32, t_mult=1.2, min_lr=1e-5, warmup=1, warmup_lr=1e-5, total=8)
        assert s.last_cycle == (0, 0.0, 7.0) and s.cycle_ends() == [8.0]
        assert s(1.0) == pytest.approx(1e-3) and s(8.0) == pytest.approx(1e-5, rel=1e-12)
        assert s(1 + 3.5) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-12)
        assert s(9.0) == pytest.approx(1e-5, rel=1e-12)  # past the end: the floor

    def test_the_cycle_running_at_the_end_is_shortened(self):
        """71 epochs of resnet34.yaml: periods 32 and 38.4 after 1 warm-up epoch; 38 of the 38.4 remain."""
        s = CosineRestarts(lr=1e-3, period=32, t_mult=1.2, min_lr=1e-5, warmup=1, warmup_lr=1e-5, total=71)
        assert s.last_cycle == (1, 32.0, pytest.approx(38.0)) and s.cycle_ends() == [33.0, pytest.approx(71.0)]
        assert s(33.0) == pytest.approx(1e-5) and s(33.0 + 1e-9) == pytest.approx(1e-3, rel=1e-6)
        assert s(33 + 19) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-9) and s(71.0) == pytest.approx(1e-5)

    def test_less_than_half_a_cycle_left_stretches_the_previous_one(self):
        """Periods of 4: 9 epochs would restart at 8 for one epoch; instead the second cycle runs from 4 to 9."""
        s = CosineRestarts(lr=1.0, period=4, min_lr=0.0, total=9)
        assert s.last_cycle == (1, 4.0, 5.0) and s.cycle_ends() == [4.0, 9.0]
        assert s(8.0) > 0.09 and s(9.0) == 0.0 and s(4.0 + 2.5) == pytest.approx(0.5)
        half = CosineRestarts(lr=1.0, period=4, min_lr=0.0, total=10)  # exactly half of cycle 2 left: shortened
        assert half.last_cycle == (2, 8.0, 2.0) and half(9.0) == pytest.approx(0.5)

    @pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 7, 8, 13, 33, 40, 71, 100])
    @pytest.mark.parametrize("period, t_mult, warmup", [(32, 1.2, 1.0), (64, 1.2, 1.0), (10, 1.0, 0.5),
                                                        (3, 2.0, 0.0)])
    def test_every_run_ends_at_min_lr_on_its_last_step(self, epochs, period, t_mult, warmup):
        if epochs <= warmup:
            pytest.skip("no run shorter than its warm-up")
        s = CosineRestarts(lr=2e-3, period=period, t_mult=t_mult, min_lr=3e-5, warmup=warmup, warmup_lr=1e-5,
                           total=epochs)
        steps = 37  # optimiser steps per epoch; the k-th step's rate is taken where it ends
        rates = [s(e + (k + 1) / steps) for e in range(epochs) for k in range(steps)]
        assert rates[-1] == pytest.approx(3e-5, rel=1e-12)
        assert min(rates) >= 3e-5 * (1 - 1e-12) and max(rates) <= 2e-3 * (1 + 1e-12)

    def test_a_run_must_outlast_its_warmup(self):
        with pytest.raises(ValueError, match="more epochs than warm-up"):
            CosineRestarts(lr=1.0, period=4, warmup=2, total=2)


class TestWarmup:
    def test_endpoints_and_middle(self):
        s = CosineRestarts(lr=0.2, period=10, warmup=2, warmup_lr=0.02)
        assert s(0.0) == 0.02
        assert s(1.0) == pytest.approx(0.11)
        assert s(2.0) == pytest.approx(0.2)  # the peak, and the first cosine period starts here
        assert s(2.0 + 10 + 1e-9) == pytest.approx(0.2)  # first restart is period epochs after the warm-up
        assert s(2.0 + 5) == pytest.approx(0.1)

    def test_no_warmup_starts_at_peak(self):
        assert CosineRestarts(lr=0.3, period=5)(0.0) == 0.3


class TestFloorAndPurity:
    def test_never_below_min_lr_nor_above_lr(self):
        s = CosineRestarts(lr=1e-3, period=7, t_mult=1.2, min_lr=2e-5, warmup=1, warmup_lr=1e-4)
        values = [s(k / 97) for k in range(97 * 100)]
        assert min(values) >= 2e-5 and max(values) <= 1e-3 + 1e-18
        assert min(values) == pytest.approx(2e-5, rel=1e-3)

    def test_pure_function_of_time(self):
        s = CosineRestarts(lr=1.0, period=2.5, t_mult=1.2, min_lr=0.1)
        ts = [k * 0.37 for k in range(200)]
        forward = [s(t) for t in ts]
        backward = [s(t) for t in reversed(ts)][::-1]
        assert forward == backward

    def test_at_step_is_time_in_epochs(self):
        s = CosineRestarts(lr=1.0, period=4, t_mult=1.2)
        assert s.at_step(150, 100) == s(1.5)

    @pytest.mark.parametrize("kw", [{"period": 0}, {"period": 4, "t_mult": 0.9}, {"period": 4, "warmup": -1},
                                    {"period": 4, "min_lr": 2.0}])
    def test_bad_settings_raise(self, kw):
        with pytest.raises(ValueError):
            CosineRestarts(lr=1.0, **kw)

    def test_negative_time_raises(self):
        with pytest.raises(ValueError):
            CosineRestarts(lr=1.0, period=4)(-0.1)

    def test_set_lr_writes_all_groups(self):
        a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
        set_lr(opt, 0.125)
        assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]
