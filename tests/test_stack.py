"""qdraw.stacking and stack.py: candidate table, candidate softmax, splits, a LightGBM stacker on synthetic models,
and the CLI."""
from pathlib import Path

import numpy as np
import pytest

import stack
from qdraw import stacking
from qdraw.metrics import ranking_metrics
from qdraw.predictions import read_predictions, write_predictions
from common import run_cli

M0 = np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.1, 0.2, 0.3, 0.4, 0.0]])
M1 = np.array([[0.1, 0.5, 0.05, 0.15, 0.2], [0.1, 0.2, 0.3, 0.4, 0.0]])


def test_candidate_table_exact() -> None:
    rows, cands, feats, names = stacking.candidate_table([M0, M1], k=3, entropy=True)
    # sample 0: top-3 of M0 = {0, 1, 2}, of M1 = {1, 4, 3}; sample 1: both {3, 2, 1}
    np.testing.assert_array_equal(rows, [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(cands, [0, 1, 2, 3, 4, 1, 2, 3])
    f = {name: feats[:, j] for j, name in enumerate(names)}
    assert feats.dtype == np.float32 and len(names) == feats.shape[1] == 2 * 4 + 5
    np.testing.assert_array_equal(f["rank_0"], [0, 1, 2, 3, 4, 2, 1, 0])
    np.testing.assert_array_equal(f["rank_1"], [3, 0, 4, 2, 1, 2, 1, 0])
    np.testing.assert_allclose(f["p_1"], [0.1, 0.5, 0.05, 0.15, 0.2, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(f["ratio_1"][:5], [0.2, 1.0, 0.1, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(f["n_top1"], [1, 1, 0, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(f["n_top3"], [1, 2, 1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(f["p_mean"][:5], [0.3, 0.35, 0.1, 0.125, 0.125], rtol=1e-6)
    np.testing.assert_allclose(f["p_max"][:5], [0.5, 0.5, 0.15, 0.15, 0.2], rtol=1e-6)
    ent = -(M0[1, :4] * np.log(M0[1, :4])).sum()  # the 0 probability contributes 0, not NaN
    np.testing.assert_allclose(f["entropy_0"][5:], ent, rtol=1e-6)
    assert "entropy_0" not in stacking.candidate_table([M0, M1], k=3, entropy=False)[3]


def test_rank_in_row_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 6, size=(50, 12)) / 10.0  # many ties, zeros included
    p[0, 3] = -0.0
    rows, cols = np.repeat(np.arange(50), 12), np.tile(np.arange(12), 50)
    expected = (p[rows] > p[rows, cols][:, None]).sum(1)
    np.testing.assert_array_equal(stacking.rank_in_row(p, rows, cols), expected)


def test_candidate_probs_softmax_per_drawing() -> None:
    rows, cands = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 2, 3, 1, 2, 3])
    scores = np.array([0.0, np.log(3), 1000.0, 1.0, 1.0, 1.0 + np.log(2)])
    out = stacking.candidate_probs(rows, cands, scores, (2, 4))
    np.testing.assert_allclose(out, [[0, 0, 0, 1], [0, 0.25, 0.25, 0.5]], atol=1e-12)  # 1000 would overflow exp
    out = stacking.candidate_probs(rows, cands, np.array([0.0, np.log(3), 0.0, 0, 0, 0]), (2, 4))
    np.testing.assert_allclose(out[0], [0.2, 0, 0.6, 0.2], atol=1e-12)


def test_make_splits() -> None:
    folds = stacking.make_splits(10, 0.2, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10)) and [len(f) for f in folds] == [4, 3, 3]
    (hold,) = stacking.make_splits(10, 0.2, 0, seed=0)
    assert len(hold) == 2 and np.array_equal(hold, stacking.make_splits(10, 0.2, 0, seed=0)[0])


def _models(n: int, c: int = 8, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and 3 synthetic models: logits = 2 * one-hot + noise, with different noise and temperature.

    The third ranks as well as the first but is badly calibrated (temperature 6), which a mean of probabilities
    under-uses and a stacker with rank features can exploit.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    probs = []
    for noise, temperature in [(1.0, 1.0), (1.5, 1.0), (1.0, 6.0)]:
        z = np.exp((2.0 * np.eye(c)[labels] + noise * rng.normal(size=(n, c))) / temperature)
        probs.append(z / z.sum(1, keepdims=True))
    return labels, probs


@pytest.mark.parametrize("objective", ["lambdarank", "binary"])
@pytest.mark.parametrize("folds", [0, 4])
def test_stacker_matches_or_beats_best_single(folds: int, objective: str) -> None:
    labels, probs = _models(60)
    params = stacking.lgb_params(objective, min_data_in_leaf=5, threads=1)
    splits = stacking.make_splits(len(labels), 0.2, folds, seed=0)
    boosters, stacked = stacking.fit_stacker(probs, labels, 5, True, splits, params, 500, 50)
    held = np.concatenate(splits)
    assert len(boosters) == max(folds, 1) and stacked.shape == (len(held), 8)
    best_single = max(ranking_metrics(p[held], labels[held])["map3"] for p in probs)
    assert ranking_metrics(stacked, labels[held])["map3"] >= best_single


def _write_model_files(folder: Path) -> tuple[list[str], list[str], Path, np.ndarray]:
    classes = [f"class {i}" for i in range(7)] + ["The Eiffel Tower"]
    labels, probs = _models(100)
    val_keys, test_keys = np.arange(100) + 10**15, np.arange(40)[::-1] + 2 * 10**15
    val, test = [], []
    for m, p in enumerate(probs):
        val.append(str(folder / f"m{m}_val.csv"))
        write_predictions(val[-1], val_keys, p, classes)
        test.append(str(folder / f"m{m}_test.csv.gz"))
        cols = np.roll(np.arange(8), m)  # test files in another class order
        write_predictions(test[-1], test_keys, p[:40][:, cols], [classes[j] for j in cols])
    sol = folder / "val_labels.csv"
    sol.write_text("key_id,word\n" + "".join(f"{k},{classes[y].replace(' ', '_')}\n"
                                             for k, y in zip(val_keys, labels)))
    return val, test, sol, test_keys


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    val, test, sol, test_keys = _write_model_files(tmp_path)
    out, probs_out, model = tmp_path / "sub.csv", tmp_path / "stack.csv.gz", tmp_path / "stack.txt"
    run_cli(stack, ["--val", *val, "--labels", str(sol), "--test", *test, "--output", str(out),
                                 "--save-probs", str(probs_out), "--model-out", str(model), "--min-data-in-leaf",
                                 "5", "--threads", "1", "--rounds", "200"])
    text = capsys.readouterr().out
    assert "held-out MAP@3 on 20 of 100 drawings" in text and "stacker" in text and "mean blend" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "key_id,word" and [int(x.split(",")[0]) for x in lines[1:]] == test_keys.tolist()
    assert all(len(x.split(",")[1].split(" ")) == 3 for x in lines[1:])
    keys, stacked, classes = read_predictions(probs_out)
    assert classes[-1] == "The Eiffel Tower" and np.array_equal(keys, test_keys)
    np.testing.assert_allclose(stacked.sum(1), 1.0, atol=1e-5)
    assert ((stacked > 0).sum(1) >= 5).all() and ((stacked == 0).sum(1) >= 1).any()
    assert model.read_text().startswith("tree")


def test_cli_folds_write_one_model_per_fold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    val, _, sol, _ = _write_model_files(tmp_path)
    run_cli(stack, ["--val", *val, "--labels", str(sol), "--folds", "3", "--model-out",
                                 str(tmp_path / "s.txt"), "--min-data-in-leaf", "5", "--threads", "1",
                                 "--rounds", "50"])
    assert "out-of-fold MAP@3 on 100 of 100 drawings" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.glob("s.fold*.txt")) == ["s.fold0.txt", "s.fold1.txt", "s.fold2.txt"]


@pytest.mark.parametrize("argv_change, message", [
    (lambda v, t: ["--test", *t[:2]], "--test has 2 files for 3 --val files"),
    (lambda v, t: ["--test", *t, "--top-k", "2"], "--top-k must be at least 3"),
    (lambda v, t: ["--test", *t, "--folds", "1"], "--folds must be 0"),
    (lambda v, t: [], "--submission and --preds need --test"),
])
def test_cli_flag_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture, argv_change, message: str) -> None:
    val, test, sol, _ = _write_model_files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_cli(stack, ["--val", *val, "--labels", str(sol), "--output", "x.csv",
                                                       *argv_change(val, test)])
    assert str(exc.value).startswith("error: ") and message in str(exc.value)


def test_cli_refuses_other_classes_nothing_written(tmp_path: Path) -> None:
    val, test, sol, _ = _write_model_files(tmp_path)
    keys, probs, classes = read_predictions(test[1])
    write_predictions(test[1], keys, probs, classes[:-1] + ["dog"])
    out = tmp_path / "sub.csv"
    with pytest.raises(SystemExit, match="error: .*m1_test.csv.gz: class set differs"):
        run_cli(stack, ["--val", *val, "--labels", str(sol), "--test", *test, "--output", str(out)])
    assert not out.exists()
