"""blend2.py: blend math, underflow safety, search of weights, and the CLI's refusals and outputs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blend2
from qdraw.predictions import blend, read_predictions, write_predictions
from common import run_cli

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["air plane", "bee", "cat"]
P1 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
P2 = np.array([[0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])


class TestBlendMath:
    def test_weighted_mean(self) -> None:
        # weights 1:3 -> 0.25, 0.75; e.g. 0.25 * 0.5 + 0.75 * 0.2 = 0.275
        expected = np.array([[0.275, 0.225, 0.5], [0.25, 0.475, 0.275]])
        np.testing.assert_allclose(blend([P1, P2], [1, 3], "mean"), expected, rtol=0, atol=1e-9)

    def test_equal_mean_is_default(self) -> None:
        np.testing.assert_allclose(blend([P1, P2]), (P1 + P2) / 2, rtol=0, atol=1e-12)

    def test_weighted_gmean(self) -> None:
        p1 = np.array([[1 / 16, 1 / 16, 7 / 8]])
        p2 = np.array([[1 / 16, 81 / 256, 159 / 256]])
        # p1^(1/4) * p2^(3/4): 1/16, (1/2) * (27/64) = 27/128, (7/8)^(1/4) * (159/256)^(3/4); then normalised
        g = np.array([1 / 16, 27 / 128, (7 / 8) ** 0.25 * (159 / 256) ** 0.75])
        np.testing.assert_allclose(blend([p1, p2], [1, 3], "gmean")[0], g / g.sum(), rtol=0, atol=1e-9)

    def test_equal_gmean(self) -> None:
        g = np.sqrt(P1 * P2)
        np.testing.assert_allclose(blend([P1, P2], None, "gmean"), g / g.sum(1, keepdims=True), rtol=0, atol=1e-9)

    def test_gmean_no_underflow(self) -> None:
        t = 1e-300
        models = [np.array([[t, t, 1.0], [t, t, t]]), np.array([[t, 1.0, t], [t, t, t]]),
                  np.array([[1.0, t, t], [t, t, t]])]
        assert np.prod([m[1] for m in models], 0).max() == 0.0  # a naive product underflows
        out = blend(models, [1, 1, 1], "gmean")
        np.testing.assert_allclose(out, 1 / 3, rtol=0, atol=1e-9)
        zeros = blend([np.zeros((2, 3)), np.zeros((2, 3))], None, "gmean")
        np.testing.assert_allclose(zeros, 1 / 3, rtol=0, atol=1e-12)

    def test_bad_weights(self) -> None:
        with pytest.raises(ValueError, match="need 2 non-negative weights"):
            blend([P1, P2], [1.0], "mean")
        with pytest.raises(ValueError, match="unknown blend method"):
            blend([P1, P2], None, "median")


def _synthetic(n: int = 600, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Labels and two models: the first informative, the second nearly noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    good = np.exp(2.0 * np.eye(c)[labels] + rng.normal(size=(n, c)))
    noise = np.exp(0.2 * np.eye(c)[labels] + rng.normal(size=(n, c)))
    return np.arange(n, dtype=np.int64) + 10**15, labels, [p / p.sum(1, keepdims=True) for p in (good, noise)]


@pytest.mark.parametrize("method", ["mean", "gmean"])
def test_search_weights_prefers_informative_model(method: str) -> None:
    _, labels, probs = _synthetic()
    w = blend2.search_weights(probs, labels, method)
    assert w.shape == (2,) and w.sum() == pytest.approx(1.0)
    assert w[0] > 0.8


def _write_set(folder: Path, n: int = 40) -> tuple[list[Path], Path]:
    keys, labels, probs = _synthetic(n, 4)
    classes = ["air plane", "bee", "cat", "The Eiffel Tower"]
    paths = [folder / "a.csv", folder / "b.csv.gz"]
    write_predictions(paths[0], keys, probs[0], classes)
    perm = np.random.default_rng(1).permutation(n)  # the second file in another row and column order
    cols = [3, 1, 0, 2]
    write_predictions(paths[1], keys[perm], probs[1][perm][:, cols], [classes[j] for j in cols])
    sol = folder / "labels.csv"
    sol.write_text("key_id,word\n" + "".join(f"{k},{classes[y].replace(' ', '_')}\n" for k, y in zip(keys, labels)))
    return paths, sol


class TestCli:
    def test_blend_and_report(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        paths, sol = _write_set(tmp_path)
        out, probs_out = tmp_path / "sub.csv", tmp_path / "blend.csv.gz"
        run_cli(blend2, ["--output", str(out), "--solution", str(sol), "--method", "gmean",
                                       "--save-probs", str(probs_out), "--weights", "3", "1", "--", *map(str, paths)])
        text = capsys.readouterr().out
        assert "MAP@3" in text and "blend gmean" in text and str(paths[1]) in text
        keys, blended, classes = read_predictions(probs_out)
        a, b = read_predictions(paths[0]), read_predictions(paths[1])
        cols = [b.classes.index(c) for c in a.classes]
        rows = np.argsort(b.key_ids)[np.searchsorted(np.sort(b.key_ids), a.key_ids)]
        np.testing.assert_allclose(blended, blend([a.probs, b.probs[rows][:, cols]], [3, 1], "gmean"), rtol=1e-5)
        lines = out.read_text().splitlines()
        assert lines[0] == "key_id,word" and len(lines) == 41
        assert [int(x.split(",")[0]) for x in lines[1:]] == a.key_ids.tolist()
        assert all(len(x.split(",")[1].split(" ")) == 3 for x in lines[1:])
        assert any("The_Eiffel_Tower" in x for x in lines[1:])

    def test_search_weights_prints_reusable_flag(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        paths, sol = _write_set(tmp_path, n=300)
        run_cli(blend2, ["--search-weights", "--solution", str(sol), *map(str, paths)])
        flag = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("--weights "))
        weights = [float(w) for w in flag.split()[1:]]
        assert len(weights) == 2 and weights[0] > weights[1]
        args = blend2.get_args_parser().parse_args(["--solution", str(sol), *map(str, paths), *flag.split()])
        assert args.weights == weights

    def test_balance_runs(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        paths, sol = _write_set(tmp_path)
        run_cli(blend2, ["--output", str(tmp_path / "s.csv"), "--solution", str(sol), "--balance",
                                       *map(str, paths)])
        assert "blend mean + balance" in capsys.readouterr().out
        assert len((tmp_path / "s.csv").read_text().splitlines()) == 41

    @pytest.mark.parametrize("change, message", [("keys", "key_ids differ"), ("classes", "class set differs")])
    def test_mismatch_refused_nothing_written(self, tmp_path: Path, change: str, message: str) -> None:
        paths, _ = _write_set(tmp_path)
        keys, probs, classes = read_predictions(paths[0])
        if change == "keys":
            keys = keys + 1
        else:
            classes = classes[:3] + ["dog"]
        write_predictions(paths[1], keys, probs, classes)
        out = tmp_path / "sub.csv"
        res = subprocess.run([sys.executable, "blend2.py", "--output", str(out), *map(str, paths)], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 1
        assert res.stderr.startswith("error: ") and message in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not out.exists()

    def test_weight_count_must_match(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        with pytest.raises(SystemExit, match="^error: --weights has 3 values for 2 prediction files$"):
            run_cli(blend2, ["--output", "s.csv", "a.csv", "b.csv", "--weights", "1",
                                                             "2", "3"])
        with pytest.raises(SystemExit):  # argparse's own type error: usage + message
            blend2.get_args_parser().parse_args(["--output", "s.csv", "--weights", "1", "2", "a.csv", "b.csv"])
        assert "'a.csv' is not a number; put the prediction files before --weights" in capsys.readouterr().err

    def test_missing_labels_refused(self, tmp_path: Path) -> None:
        paths, sol = _write_set(tmp_path)
        sol.write_text("\n".join(sol.read_text().splitlines()[:-1]) + "\n")
        with pytest.raises(SystemExit, match="error: .*1 of 40 key_ids have no label"):
            run_cli(blend2, ["--output", str(tmp_path / "s.csv"), "--solution", str(sol),
                                           *map(str, paths)])
        assert not (tmp_path / "s.csv").exists()
