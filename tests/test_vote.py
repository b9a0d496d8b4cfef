"""Rank-weighted voting (qdraw.vote, blend2.py --method vote): hand-worked arithmetic, the safe formula parser,
submissions as inputs, and the CLI's refusals."""
from pathlib import Path

import numpy as np
import pytest

import blend2
from qdraw.predictions import read_predictions, write_predictions
from qdraw.vote import parse_rank_weight, rank_weights, ranks_from_probs, submission_ranks, vote
from common import run_cli

CLASSES = ["a", "b", "c", "paint can"]
M1 = np.array([[0.5, 0.3, 0.15, 0.05]])  # ranks a, b, c, paint can
M2 = np.array([[0.3, 0.4, 0.1, 0.2]])  # ranks b, a, paint can, c
S3 = [["c", "b", "a"]]  # a submission row


def _ranks(depth: int = 3) -> list[np.ndarray]:
    lookup = {c: i for i, c in enumerate(CLASSES)}
    return [ranks_from_probs(M1, depth), ranks_from_probs(M2, depth), submission_ranks(S3, lookup, 4)]


class TestVoteArithmetic:
    def test_ranks(self) -> None:
        np.testing.assert_array_equal(ranks_from_probs(M2, 3), [[1, 0, np.inf, 2]])
        np.testing.assert_array_equal(_ranks()[2], [[2, 1, 0, np.inf]])

    def test_reciprocal_rank_by_hand(self) -> None:
        # weights 1, 1, 2 -> 1/4, 1/4, 1/2; votes 1/(r+1):
        # a: 1/4*1 + 1/4*1/2 + 1/2*1/3 = 13/24;  b: 1/4*1/2 + 1/4*1 + 1/2*1/2 = 15/24
        # c: 1/4*1/3 + 0 + 1/2*1 = 14/24;        paint can: 0 + 1/4*1/3 + 0 = 2/24;   sum 44/24
        out = vote(_ranks(), [1, 1, 2], rank_weights("1/(r+1)", 3))
        np.testing.assert_allclose(out, [[13 / 44, 15 / 44, 14 / 44, 2 / 44]], rtol=0, atol=1e-12)
        assert np.argsort(-out[0]).tolist() == [1, 2, 0, 3]  # b, c, a

    def test_five_minus_rank_by_hand_orders_otherwise(self) -> None:
        # a: 5/4 + 4/4 + 3/2 = 15/4;  b: 4/4 + 5/4 + 4/2 = 17/4;  c: 3/4 + 0 + 5/2 = 13/4;  paint can: 3/4; sum 12
        out = vote(_ranks(), [1, 1, 2], rank_weights("5-r", 3))
        np.testing.assert_allclose(out, [[15 / 48, 17 / 48, 13 / 48, 3 / 48]], rtol=0, atol=1e-12)
        assert np.argsort(-out[0]).tolist() == [1, 0, 2, 3]  # b, a, c: the formula changes the second guess

    def test_ties_go_to_the_more_probable_class(self) -> None:
        p1, p2 = np.array([[0.5, 0.4, 0.1]]), np.array([[0.3, 0.6, 0.1]])  # swap first two; b more probable
        ranks = [ranks_from_probs(p, 3) for p in (p1, p2)]
        out = vote(ranks, None, rank_weights("1/(r+1)", 3), [p1, p2])
        assert out[0, 1] > out[0, 0] and abs(out[0, 1] - out[0, 0]) < 1e-8

    def test_depth_and_negative_weights(self) -> None:
        np.testing.assert_array_equal(rank_weights("5-r", 7), [5, 4, 3, 2, 1, 0, 0])
        ranks = [ranks_from_probs(M1, 1)]  # only the first guess votes; the rest share nothing
        np.testing.assert_allclose(vote(ranks, None, rank_weights("1/(r+1)", 1)), [[1, 0, 0, 0]])


class TestFormula:
    @pytest.mark.parametrize("text, r, expected", [("1/(r+1)", 2, 1 / 3), ("5 - r", 1, 4), ("2**-r", 3, 0.125),
                                                   ("1/log2(r+2)", 2, 0.5), ("-(-r) + sqrt(4)", 1, 3)])
    def test_values(self, text: str, r: int, expected: float) -> None:
        assert parse_rank_weight(text)(np.array([float(r)]))[0] == pytest.approx(expected)

    @pytest.mark.parametrize("text", ["__import__('os').system('echo hi')", "r.real", "x + 1", "open('f')",
                                      "[r]", "r if r else 1", "lambda: 1", "'1'", "True", "exp(r, 2)", "r; 1",
                                      "r" * 201])
    def test_refused(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_rank_weight(text)

    @pytest.mark.parametrize("text, message", [("10**10**10", "not finite"), ("1/r", "not finite"),
                                               ("r", "first guess no vote")])
    def test_unusable_weights(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            rank_weights(text, 3)


def _files(folder: Path) -> list[str]:
    keys = np.array([7, 3])
    m1, m2 = np.vstack([M1, [0.1, 0.2, 0.3, 0.4]]), np.vstack([M2, [0.4, 0.3, 0.2, 0.1]])
    write_predictions(folder / "m1.csv", keys, m1, CLASSES)
    write_predictions(folder / "m2.csv.gz", keys[::-1], m2[::-1][:, [3, 2, 1, 0]], CLASSES[::-1])
    (folder / "s3.csv").write_text("key_id,word\n3,a b c\n7,c b a\n")
    return [str(folder / n) for n in ("m1.csv", "m2.csv.gz", "s3.csv")]


def test_cli_vote_over_files_and_a_submission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _files(tmp_path)
    (tmp_path / "labels.csv").write_text("key_id,word\n7,b\n3,paint_can\n")
    run_cli(blend2, [*paths, "--method", "vote", "--vote-depth", "3", "--weights", "1", "1", "2",
                                   "--preds", str(tmp_path / "v.csv"), "--submission", str(tmp_path / "sub.csv"),
                                   "--labels", str(tmp_path / "labels.csv")])
    keys, probs, classes = read_predictions(tmp_path / "v.csv")
    assert keys.tolist() == [7, 3] and classes == CLASSES
    np.testing.assert_allclose(probs[0], [13 / 44, 15 / 44, 14 / 44, 2 / 44], atol=2e-6)
    assert (tmp_path / "sub.csv").read_text().splitlines()[1] == "7,b c a"
    assert "blend vote" in capsys.readouterr().out


def test_cli_vote_of_submissions_only(tmp_path: Path) -> None:
    (tmp_path / "s1.csv").write_text("key_id,word\n1,paint_can cat dog\n")
    (tmp_path / "s2.csv").write_text("key_id,word\n1,dog cat paint_can\n")
    run_cli(blend2, [str(tmp_path / "s1.csv"), str(tmp_path / "s2.csv"), "--method", "vote",
                                   "--submission", str(tmp_path / "out.csv"), "--weights", "2", "1"])
    # paint_can 2/3 + 1/9, dog 2/9 + 1/3, cat 1/3 + 1/6
    assert (tmp_path / "out.csv").read_text().splitlines()[1] == "1,paint_can dog cat"


@pytest.mark.parametrize("extra, message", [(["--rank-weight", "__import__('os')"], "--rank-weight"),
                                            (["--search-weights", "--labels", "x.csv"], "takes no --search-weights"),
                                            (["--balance"], "takes no")])
def test_cli_vote_refusals(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(blend2, ["a.csv", "b.csv", "--method", "vote", "--submission",
                                                         "s.csv", *extra])
    assert str(exc.value).startswith("error: ") and message in str(exc.value)


def test_cli_mean_refuses_a_submission(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    with pytest.raises(SystemExit, match="error: .*s3.csv is a submission .*only --method vote"):
        run_cli(blend2, [*paths, "--submission", str(tmp_path / "sub.csv")])
