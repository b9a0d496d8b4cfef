"""Recipes that fit the run: the batch and rate rules, the fitted schedule through train.py and every config, the EMA
and checkpoint averaging (exact arithmetic on tiny models, exact resume, BatchNorm re-estimation), the peer
encodings (exact pixels), and predict.py's choice of weights."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import average_checkpoints
import predict
import train
from common import ROOT, run_train, train_argv
from qdraw.averaging import Ema, average_checkpoints as average_files, average_state_dicts, ema_decay_at, recompute_bn
from qdraw.checkpoint import load_checkpoint, save_checkpoint
from qdraw.config import parse_args
from qdraw.job import fit_batch, schedule, scaled_lr
from qdraw.logs import read_summary
from qdraw.raster import pack_strokes, rasterize


_argv, _run = train_argv, run_train


class TestRules:
    def test_batch_is_lowered_for_short_epochs_only(self):
        assert fit_batch(256, 3_400_000, 100) == 256  # the full Kaggle epoch: untouched
        assert fit_batch(256, 7040, 100) == 64  # 16 classes x 440: 70 -> 64 (a multiple of 8)
        assert fit_batch(256, 7040, 100, accum=2) == 32  # steps count optimiser steps
        assert fit_batch(256, 500, 100) == 16 and fit_batch(8, 500, 100) == 8  # never below 16 (or the flag)
        assert fit_batch(256, 7040, 0) == 256  # the rule switched off

    def test_rate_follows_the_global_batch(self):
        assert scaled_lr(1e-3, 64, 256, "adam") == pytest.approx(5e-4)  # square root for Adam-family
        assert scaled_lr(1e-3, 64, 256, "adamw") == pytest.approx(5e-4)
        assert scaled_lr(0.4, 64, 256, "sgd") == pytest.approx(0.1)  # linear for SGD
        assert scaled_lr(1e-3, 64, None, "adam") == 1e-3

    @pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
    @pytest.mark.parametrize("epochs", [4, 8])
    def test_every_config_run_short_ends_at_its_min_lr(self, config, epochs):
        args = parse_args(train.get_args_parser(), ["--config", str(ROOT / "configs" / config), "--epochs",
                                                    str(epochs)])
        lr_at = schedule(args, args.lr)
        steps = 110
        assert lr_at(epochs - 1 + steps / steps) == pytest.approx(min(args.min_lr, args.lr), rel=1e-12)
        assert lr_at(epochs - 1 + 1 / steps) > lr_at(epochs)  # still annealing in the last epoch


class TestEma:
    def test_exact_arithmetic(self):
        """One weight w set to 1, 2, 3, 4 before each update: the first update copies, the next ones decay by
        min(0.25, (1 + n) / (10 + n)) = 2/11, 0.25, 0.25 (the warm-up rule caps the target only later)."""
        model = nn.Linear(1, 1, bias=False)
        ema = Ema(model, decay=0.25)
        expect = None
        for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
            with torch.no_grad():
                model.weight.fill_(value)
            ema.update()
            d = ema_decay_at(0.25, n)
            expect = value if expect is None else d * expect + (1 - d) * value
            assert ema.module.weight.item() == pytest.approx(expect, rel=1e-6)
        assert ema.updates == 4 and ema_decay_at(0.25, 1) == pytest.approx(2 / 11)
        assert ema_decay_at(0.999, 8) == 0.5 and ema_decay_at(0.999, 890) == pytest.approx(0.99)

    def test_buffers_are_averaged_and_integers_copied(self):
        model = nn.BatchNorm1d(2)
        ema = Ema(model, decay=0.5)
        ema.update()  # copy
        with torch.no_grad():
            model.running_mean.fill_(4.0)
            model.num_batches_tracked.fill_(7)
        for _ in range(9):  # past the warm-up (n >= 8): decay 0.5
            ema.update()
        assert ema.module.num_batches_tracked.item() == 7
        assert 0 < ema.module.running_mean[0].item() < 4.0
        state = ema.state()
        again = Ema(nn.BatchNorm1d(2), decay=0.5)
        again.load(state)
        assert again.updates == 10 and torch.equal(again.module.running_mean, ema.module.running_mean)

    def test_kill_and_resume_keeps_the_ema_bit_exact(self, raw_store, tmp_path, monkeypatch):
        _run(_argv(raw_store, tmp_path / "full", "--ema-decay", "0.9"))

        class Killed(Exception):
            pass

        real = train.train_one_epoch

        def dies_in_epoch_2(*args, **kwargs):
            if args[6] == 2:
                raise Killed
            return real(*args, **kwargs)

        monkeypatch.setattr(train, "train_one_epoch", dies_in_epoch_2)
        with pytest.raises(Killed):
            _run(_argv(raw_store, tmp_path / "cut", "--ema-decay", "0.9"))
        monkeypatch.setattr(train, "train_one_epoch", real)
        _run(_argv(raw_store, tmp_path / "cut", "--ema-decay", "0.9", "--resume", str(tmp_path / "cut" / "last.pth")))
        a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "cut" / "last.pth")
        assert a["ema_updates"] == b["ema_updates"] == a["step"]
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), k
        assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"] if a["model"][k].is_floating_point())
        rows = read_summary(tmp_path / "full" / "summary.csv")
        assert [r["ema_val_map3"] for r in rows] == [r["ema_val_map3"] for r in read_summary(tmp_path / "cut" /
                                                                                            "summary.csv")]
        assert a["best_metric"] == max(r["ema_val_map3"] for r in rows)  # best.pth follows the EMA's metric


class TestAveraging:
    def test_state_dicts_average_exactly(self):
        a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
        b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
        c = {"w": torch.tensor([2.0, 1.0]), "n": torch.tensor(9)}
        out = average_state_dicts([a, b, c])
        assert torch.equal(out["w"], torch.tensor([2.0, 3.0])) and out["n"].item() == 9
        with pytest.raises(ValueError, match="one architecture"):
            average_state_dicts([a, {"w": torch.zeros(3), "n": torch.tensor(1)}])

    def test_batchnorm_is_re_estimated_on_the_batches(self):
        """After recompute_bn, running mean and variance are those of all the (normalised) inputs seen."""
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)).eval()
        batches = [(torch.randint(0, 256, (4, 1, 3, 3), dtype=torch.uint8), torch.zeros(4)) for _ in range(5)]
        with torch.no_grad():
            model[1].running_mean.fill_(99.0)
            used = recompute_bn(model, batches, torch.device("cpu"), limit=3)
            feats = torch.cat([model[0](x.float() / 255) for x, _ in batches[:3]])
        assert used == 3 and not model.training
        per_batch = torch.stack([model[0](x.float() / 255).mean((0, 2, 3)) for x, _ in batches[:3]]).detach()
        assert torch.allclose(model[1].running_mean, per_batch.mean(0), atol=1e-6)
        assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-6)  # equal batch sizes

    def test_cli_averages_a_run_and_predict_reads_it(self, raw_store, tmp_path):
        out = tmp_path / "run"
        _run(_argv(raw_store, out, "--epochs", "4", "--ema-decay", "0.9", "--keep-checkpoints", "3", "--snapshots"))
        kept = sorted(p.name for p in out.glob("epoch_*.pth"))
        assert kept == ["epoch_001.pth", "epoch_002.pth", "epoch_003.pth"]
        snaps = sorted(p.name for p in out.glob("snapshot_*.pth"))
        assert snaps == ["snapshot_001.pth", "snapshot_003.pth"]  # cycles of 2 epochs after 0.5 of warm-up, fitted
        avg_args = average_checkpoints.get_args_parser().parse_args(
            ["--run", str(out), "--last", "3", "--bn-batches", "0", "--output", str(tmp_path / "avg.pth")])
        average_checkpoints.main(avg_args)
        avg = load_checkpoint(tmp_path / "avg.pth")
        parts = [load_checkpoint(out / k)["model"] for k in kept]
        for k, v in avg["model"].items():
            if v.is_floating_point():
                assert torch.allclose(v, sum(p[k].double() for p in parts).float() / 3, atol=1e-6), k
        assert "optimizer" not in avg and "ema" not in avg and avg["averaged_weights"] == "raw"
        assert avg["bn_recomputed_batches"] == 0
        ema_avg = average_files([out / "snapshot_001.pth", out / "snapshot_003.pth"], weights="ema")
        assert torch.equal(ema_avg["model"]["classifier.1.weight"], average_state_dicts(
            [load_checkpoint(out / s)["ema"] for s in snaps])["classifier.1.weight"])
        preds = tmp_path / "avg.csv"
        predict.main(predict.get_args_parser().parse_args(["--checkpoint", str(tmp_path / "avg.pth"), "--input",
                                                           str(raw_store), "--split", "val", "--preds", str(preds),
                                                           "--quiet", "--workers", "1"]))
        assert preds.is_file()
        with pytest.raises(SystemExit, match="no epoch_"):
            average_checkpoints.main(average_checkpoints.get_args_parser().parse_args(
                ["--run", str(tmp_path), "--last", "2", "--output", str(tmp_path / "x.pth")]))

    def test_run_ends_at_min_lr_and_predict_chooses_weights(self, raw_store, tmp_path, capsys):
        out = tmp_path / "run"
        _run(_argv(raw_store, out, "--ema-decay", "0.5", "--min-lr", "1e-4"))
        rows = read_summary(out / "summary.csv")
        assert rows[-1]["lr"] == pytest.approx(1e-4, rel=1e-12) and "loader_wait_s" in rows[0]
        assert not list(out.glob("snapshot_*.pth")) and not list(out.glob("epoch_*.pth"))  # only when asked
        results = {}
        for weights in ("auto", "raw", "ema"):
            predict.main(predict.get_args_parser().parse_args(
                ["--checkpoint", str(out / "last.pth"), "--input", str(raw_store), "--split", "val", "--quiet",
                 "--workers", "0", "--weights", weights, "--preds", str(tmp_path / f"{weights}.csv")]))
            results[weights] = (tmp_path / f"{weights}.csv").read_bytes()
        assert results["auto"] == results["ema"] != results["raw"]
        ckpt = load_checkpoint(out / "last.pth")
        ckpt.pop("ema")
        save_checkpoint(ckpt, tmp_path / "noema.pth")
        with pytest.raises(SystemExit, match="no EMA weights"):
            predict.main(predict.get_args_parser().parse_args(
                ["--checkpoint", str(tmp_path / "noema.pth"), "--input", str(raw_store), "--split", "val",
                 "--weights", "ema"]))


class TestPeerEncodings:
    """Exact pixels at 32 px, line width 1 (margin 1, so E = 29): three strokes of a 200x200 drawing through its
    centre (vertical, horizontal, diagonal). Frame x maps to ((31 * 255 + (2 x - 200) * 29 + 255) // 510): 0 -> 4,
    100 -> 16, 200 -> 27 (y likewise), so the centre pixel (16, 16) is crossed by all three strokes."""

    STROKES = [[np.array([[100, 0], [100, 200]]), np.array([[0, 100], [200, 100]]), np.array([[0, 0], [200, 200]])]]

    def _draw(self, name: str) -> np.ndarray:
        xy, _, strokes, drawings = pack_strokes(self.STROKES)
        return rasterize(xy, None, strokes, drawings, name, 32, 1)[0]

    def test_thirds_are_unions_of_strokes(self):
        img = self._draw("thirds")  # [:, row, column]
        assert img[:, 16, 16].tolist() == [255, 255, 255]  # the first stroke is in every third, and stays on top
        assert img[:, 4, 16].tolist() == [255, 255, 255]  # top of the vertical (first) stroke
        assert img[:, 16, 4].tolist() == [0, 255, 255]  # left end of the horizontal (second) stroke
        assert img[:, 4, 4].tolist() == [0, 0, 255]  # top-left end of the diagonal (third) stroke
        assert img[:, 8, 23].tolist() == [0, 0, 0]  # background
        assert int((img[0] > 0).sum()) == 24 and int((img[1] > 0).sum()) == 24 + 23  # union, nothing erased

    def test_points_are_index_and_count(self):
        img = self._draw("points")
        # the diagonal is drawn last (on top): index 2 -> round(255 * 2 / 15) = 34; 2 points -> round(255 * 2 / 64)
        assert img[:, 16, 16].tolist() == [34, 8, 255]
        assert img[:, 4, 16].tolist() == [0, 8, 255]  # the first stroke: index 0
        assert img[:, 16, 4].tolist() == [17, 8, 255]  # the second: round(255 / 15) = 17
