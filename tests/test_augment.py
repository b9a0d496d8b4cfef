"""Stroke augmentation (qdraw.augment): exact outputs on hand-made drawings, the guarantees each transform makes, and
determinism: an item's augmentation depends on (seed, epoch, key) alone, so batches are identical across batch
composition, thread counts, chunk sizes and backends, and the compiled chunk producer equals the Python stages."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qdraw.augment import PRESETS, Augment, affine, augment_arrays, flip_bits, parse_augment
from qdraw.batch import StrokeBatch
from qdraw.dataset import BalancedBlockDataset, SplitDataset
from qdraw.loader import create_loader
from qdraw.produce import fused
from qdraw.raster import pack_strokes, rasterize
from qdraw.render import InputSpec, make_render

L_SHAPE = [np.array([[100, 100], [100, 140], [120, 140]])]
EXTREME = Augment(hflip=0.5, scale=0.9, aspect=0.9, rotate=180, shear=2, translate=1, stroke_drop=0.5, jitter=32)


def _random_drawings(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Drawings of 1-6 strokes of 1-12 points, a third of the points on the frame's edges."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        strokes = []
        for _ in range(rng.integers(1, 7)):
            p = rng.integers(0, 256, (rng.integers(1, 13), 2))
            p[rng.random(p.shape) < 0.3] = rng.choice([0, 255])
            strokes.append(p)
        out.append(strokes)
    return out


def _aug(drawings, augment: Augment, keys=None, seed: int = 0, epoch: int = 0, times: bool = False):
    xy, t, strokes, off = pack_strokes(drawings)
    if times:
        t = np.arange(len(xy), dtype=np.int32) * 10
    keys = np.arange(len(off) - 1) if keys is None else np.asarray(keys)
    return (xy, t, strokes, off), augment_arrays(xy, t, strokes, off, keys, seed, epoch, augment.params)


class TestExactOutputs:
    def test_a_quarter_turn_of_an_l_lands_on_known_pixels(self):
        """The L (100,100)-(100,140)-(120,140) turned +90 degrees about its box centre (110, 120) is
        (130,110)-(90,110)-(90,130); drawn at 256 px, width 1, margin 0 that is the row 118 from x 108 to 148 and the
        column 108 from y 118 to 138 (qdraw.raster's geometry: X = (255*255 + (2x - 220)*255 + 255) // 510)."""
        xy, _, strokes, drawings = pack_strokes([L_SHAPE])
        turned = affine(xy, strokes, drawings, np.array([[[0.0, -1.0], [1.0, 0.0]]]), np.zeros((1, 2)))
        assert turned.tolist() == [[130, 110], [90, 110], [90, 130]]
        img = rasterize(turned, None, strokes, drawings, "grey", 256, 1, 0)[0, 0]
        ink = {(int(x), int(y)) for y, x in zip(*np.nonzero(img))}
        assert ink == {(x, 118) for x in range(108, 149)} | {(108, y) for y in range(118, 139)}

    def test_growing_past_the_frame_shrinks_to_fit_and_keeps_the_shape(self):
        square = [np.array([[0, 0], [255, 0], [255, 127], [0, 127]])]  # 255 x 127
        xy, _, strokes, drawings = pack_strokes([square])
        out = affine(xy, strokes, drawings, np.array([[[1.9, 0.0], [0.0, 1.9]]]), np.zeros((1, 2)))
        assert out[:, 0].min() == 0 and out[:, 0].max() == 255  # the long side fills the frame again
        assert out[:, 1].max() - out[:, 1].min() == 127  # the ratio is kept (1.9 x 127 shrunk by 255 / 484.5)

    def test_a_shift_moves_the_box_and_stops_at_the_frame(self):
        xy, _, strokes, drawings = pack_strokes([L_SHAPE])
        moved = affine(xy, strokes, drawings, np.eye(2)[None], np.array([[50.0, -30.0]]))
        assert (moved.astype(int) - xy.astype(int)).tolist() == [[50, -30]] * 3
        stopped = affine(xy, strokes, drawings, np.eye(2)[None], np.array([[500.0, -500.0]]))
        assert stopped[:, 0].max() == 255 and stopped[:, 1].min() == 0  # pushed to the frame's edge, not past it
        assert (stopped.astype(int) - stopped[0].astype(int)).tolist() == (xy.astype(int) - xy[0]).tolist()

    def test_flip_is_the_loaders_coin_and_the_bounding_box_mirror(self):
        drawings = _random_drawings(200, seed=1)
        (xy, _, strokes, off), (out, _, _, _) = _aug(drawings, Augment(hflip=0.5), keys=np.arange(200) * 3, seed=4,
                                                     epoch=2)
        coin = flip_bits(4, 2, np.arange(200) * 3)
        assert 60 < coin.sum() < 140
        for b in range(200):
            a, e = strokes[off[b]], strokes[off[b + 1]]
            x = xy[a:e, 0].astype(int)
            assert out[a:e, 0].tolist() == (x.min() + x.max() - x if coin[b] else x).tolist()
            assert out[a:e, 1].tolist() == xy[a:e, 1].tolist()
        everything = _aug(drawings, Augment(hflip=1.0))[1][0]
        assert (everything[:, 0] != xy[:, 0]).any() and all(
            everything[strokes[off[b]]:strokes[off[b + 1]], 0].tolist() == (
                xy[strokes[off[b]]:strokes[off[b + 1]], 0].astype(int).min()
                + xy[strokes[off[b]]:strokes[off[b + 1]], 0].astype(int).max()
                - xy[strokes[off[b]]:strokes[off[b + 1]], 0].astype(int)).tolist() for b in range(200))


class TestGuarantees:
    def test_stroke_dropout_never_empties_a_drawing_and_keeps_strokes_whole(self):
        drawings = _random_drawings(300, seed=2)
        (xy, _, strokes, off), (oxy, _, ostrokes, ooff) = _aug(drawings, Augment(stroke_drop=0.9))
        kept_counts = np.diff(ooff)
        assert kept_counts.min() >= 1 and kept_counts.sum() < 400  # 300 drawings, 1,029 strokes: most went
        for b, d in enumerate(drawings):
            kept = [oxy[ostrokes[s]:ostrokes[s + 1]].tolist() for s in range(ooff[b], ooff[b + 1])]
            original = [s.tolist() for s in d]
            assert all(k in original for k in kept)  # whole strokes, unchanged
            if len(kept) == 1 and len(d) > 1:  # one left: a survivor, or the longest when all were drawn to go
                assert len(kept[0]) <= max(len(s) for s in original)

    def test_all_drawn_to_go_keeps_the_longest_stroke(self):
        d = [np.array([[0, 0]]), np.array([[1, 1], [2, 2], [3, 3]]), np.array([[4, 4], [5, 5]])]
        outcomes = set()
        for key in range(400):
            _, (oxy, _, ostrokes, _) = _aug([d], Augment(stroke_drop=0.9), keys=[key])
            outcomes.add(tuple(map(tuple, oxy.tolist())))
        assert ((1, 1), (2, 2), (3, 3)) in outcomes  # 0.9 ** 3 of the keys drop all: the 3-point stroke stays
        assert all(len(o) >= 1 for o in outcomes)

    def test_extreme_strengths_keep_points_in_the_frame_and_offsets_whole(self):
        drawings = _random_drawings(300, seed=3)
        (xy, _, strokes, off), (oxy, _, ostrokes, ooff) = _aug(drawings, EXTREME)
        StrokeBatch(oxy, None, ostrokes, ooff, np.zeros(300, np.int64), np.arange(300)).check()
        assert oxy.dtype == np.uint8 and len(ooff) == len(off)
        # nothing piles up on the edges: the fit and the shift keep drawings inside rather than clipping them
        on_edge = np.isin(oxy, (0, 255)).mean()
        assert on_edge < np.isin(xy, (0, 255)).mean()

    def test_jitter_moves_each_point_by_at_most_its_strength(self):
        drawings = _random_drawings(100, seed=4)
        (xy, _, _, _), (oxy, _, _, _) = _aug(drawings, Augment(jitter=2))
        moved = np.abs(oxy.astype(int) - xy.astype(int))
        assert moved.max() == 2 and (moved > 0).mean() > 0.5

    def test_time_scale_stretches_each_drawings_times_by_one_factor(self):
        drawings = [[np.c_[s, 10 * np.arange(len(s))] for s in d] for d in _random_drawings(50, seed=5)]
        for d in drawings:  # times from each drawing's first point, increasing
            start = 0
            for s in d:
                s[:, 2] += start
                start = s[-1, 2] + 25
        xy, t, strokes, off = pack_strokes(drawings)
        ot = augment_arrays(xy, t, strokes, off, np.arange(50), 0, 0, Augment(time_scale=0.3).params)[1]
        factors = []
        for b in range(50):
            a, e = strokes[off[b]], strokes[off[b + 1]]
            if t[e - 1] >= 100:
                f = ot[e - 1] / t[e - 1]  # one factor per drawing, every time rounded half up from it
                assert np.abs(ot[a:e] - t[a:e] * f).max() <= 1 and (np.diff(ot[a:e]) >= 0).all()
                factors.append(f)
        assert 0.7 - 0.01 <= min(factors) < 0.9 and 1.1 < max(factors) <= 1.3 + 0.01

    def test_rotation_keeps_lengths(self):
        d = [np.array([[60, 60], [180, 60], [180, 120]])]
        for key in range(20):
            _, (oxy, _, _, _) = _aug([d], Augment(rotate=30), keys=[key])
            sides = np.hypot(*np.diff(oxy.astype(float), axis=0).T)
            assert np.abs(sides - [120, 60]).max() <= 1.5  # rounding to the integer frame only


class TestDeterminism:
    def test_an_item_is_augmented_alike_alone_and_in_any_batch(self):
        drawings = _random_drawings(40, seed=6)
        keys = np.arange(40) * 7 + 11
        _, (oxy, _, ostrokes, ooff) = _aug(drawings, PRESETS["strong"], keys=keys, seed=3, epoch=5)
        for b in (0, 17, 39):
            _, (one, _, _, _) = _aug([drawings[b]], PRESETS["strong"], keys=[keys[b]], seed=3, epoch=5)
            assert one.tolist() == oxy[ostrokes[ooff[b]]:ostrokes[ooff[b + 1]]].tolist()
        _, (other, _, _, _) = _aug(drawings, PRESETS["strong"], keys=keys, seed=3, epoch=6)
        assert other.shape != oxy.shape or (other != oxy).any()  # another epoch, other draws

    def test_presets_and_flag_values(self):
        assert Augment.from_config("none", hflip=0.5) == Augment(hflip=0.5)
        assert Augment.from_config({"rotate": 10}, hflip=0.5) == Augment(hflip=0.5, rotate=10)
        assert Augment.from_config(parse_augment("rotate=10,stroke_drop=0.1")) == Augment(rotate=10, stroke_drop=0.1)
        for bad, match in (("wild", "unknown augment preset"), ({"spin": 1}, "unknown augment field"),
                           ({"rotate": 500}, "rotate must be"), ({"hflip": -1}, "hflip must be")):
            with pytest.raises(ValueError, match=match):
                Augment.from_config(bad)
        with pytest.raises(ValueError, match="not name=number"):
            parse_augment("rotate=ten")


def _all_batches(loader, epochs) -> list:
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out += [(x.clone(), y.clone()) for x, y in loader]
    return out


@pytest.mark.parametrize("encoding", ["rgb", "thirds"])
def test_strong_augmentation_is_identical_across_threads_chunks_backends_and_resume(raw_store, encoding):
    """Training batches with the strong preset: 0, 1 and 2 threads at several chunk sizes, worker processes, and a
    loader that starts at epoch 2 (a resume) give the same pictures and labels; the compiled producer equals the
    Python stages (a transform that is not an Augment goes through them)."""
    render = make_render(InputSpec.raster(encoding, 48))
    ds = BalancedBlockDataset(raw_store, seed=7, samples_per_class=12, transform=PRESETS["strong"])
    ref = _all_batches(create_loader(ds, render, 8, True, 0, seed=7), [0, 1, 2])
    assert len(ref) == 27
    slow = BalancedBlockDataset(raw_store, seed=7, samples_per_class=12,
                                transform=lambda b, s, e: PRESETS["strong"](b, s, e))
    assert fused(ds, render) and not fused(slow, render)
    loaders = [create_loader(ds, render, 8, True, 1, seed=7, chunk=1),
               create_loader(ds, render, 8, True, 2, seed=7, chunk=3, prefetch=7),
               create_loader(ds, render, 8, True, 2, seed=7, backend="processes"),
               create_loader(slow, render, 8, True, 2, seed=7)]
    for loader in loaders:
        got = _all_batches(loader, [0, 1, 2])
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    resumed = _all_batches(create_loader(ds, render, 8, True, 2, seed=7), [2])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[18:], resumed))
    plain = _all_batches(create_loader(BalancedBlockDataset(raw_store, seed=7, samples_per_class=12), render, 8, True,
                                       0, seed=7), [0])
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(ref, plain))  # the augmentation did change pictures


def test_loader_streams_across_epochs_and_restarts_on_another(raw_store):
    """A training loader draws epoch e + 1 while e is consumed; asking for the same epoch again, or skipping one,
    restarts the stream with the right batches."""
    render = make_render(InputSpec.raster("grey", 32))
    ds = BalancedBlockDataset(raw_store, seed=1, samples_per_class=10, transform=Augment(hflip=0.5, rotate=10))
    want = {e: _all_batches(create_loader(ds, render, 6, True, 0, seed=1), [e]) for e in (0, 1, 3)}
    loader = create_loader(ds, render, 6, True, 2, seed=1, chunk=2)
    for e in (0, 1, 1, 3, 0):
        got = _all_batches(loader, [e])
        assert len(got) == len(want[e]) == 10
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(want[e], got))
        if e == 1:
            assert loader._next_start in (2, None)  # epoch 2's first chunk already in flight after epoch 1
    loader.set_epoch(0)
    first = next(iter(loader))  # an epoch left half-way: the next one starts from its own beginning
    assert torch.equal(first[0], want[0][0][0])
    got = _all_batches(loader, [1])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(want[1], got))
    val = SplitDataset(raw_store, "val", transform=Augment(hflip=1.0))
    flipped = [x for x, _ in create_loader(val, render, 4, False, 2)]
    assert sum(len(x) for x in flipped) == len(val)
