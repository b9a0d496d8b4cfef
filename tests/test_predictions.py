"""Prediction CSV / submission / labels I/O, alignment and class balancing (qdraw.predictions)."""
import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from qdraw.predictions import (align, balance, labels_for, read_labels, read_predictions, write_labels,
                               write_predictions, write_submission)

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/quickdraw"
CLASSES = ["The Eiffel Tower", "a,b", 'say "hi"', "cat", "dog"]


def _random_preds(n: int = 7, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(4_000_000_000_000_000, 6_999_999_999_999_999, n), rng.dirichlet(np.ones(c), n)


class TestRoundTrip:
    @pytest.mark.parametrize("name", ["p.csv", "p.csv.gz"])
    def test_round_trip(self, tmp_path: Path, name: str) -> None:
        keys, probs = _random_preds()
        probs[0, :] = [1e-30, 2.5e-7, 0.5, 0.25, 0.25 - 2.5e-7 - 1e-30]
        path = tmp_path / name
        write_predictions(path, keys, probs, CLASSES)
        got_keys, got_probs, got_classes = read_predictions(path)
        assert got_classes == CLASSES
        assert got_keys.dtype == np.int64 and np.array_equal(got_keys, keys)
        assert got_probs.dtype == np.float64
        np.testing.assert_allclose(got_probs, probs, rtol=5e-6, atol=0)  # 6 significant digits, tiny values too
        assert got_probs[0, 0] == pytest.approx(1e-30, rel=1e-6)
        assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind

    def test_gz_is_gzip_and_header_quoted_by_csv(self, tmp_path: Path) -> None:
        keys, probs = _random_preds()
        write_predictions(tmp_path / "p.csv.gz", keys, probs, CLASSES)
        with gzip.open(tmp_path / "p.csv.gz", "rt", newline="") as f:
            assert next(csv.reader(f)) == ["key_id", *CLASSES]
        write_predictions(tmp_path / "p.csv", keys, probs, CLASSES)
        assert (tmp_path / "p.csv").read_text().splitlines()[0] == 'key_id,The Eiffel Tower,"a,b","say ""hi""",cat,dog'

    def test_bad_shape_writes_nothing(self, tmp_path: Path) -> None:
        keys, probs = _random_preds()
        with pytest.raises(ValueError, match="shape"):
            write_predictions(tmp_path / "p.csv", keys, probs[:, :4], CLASSES)
        assert list(tmp_path.iterdir()) == []


class TestMalformed:
    @pytest.mark.parametrize("text, match", [
        ("id,a,b\n1,0.5,0.5\n", "header"),
        ("key_id,a,a\n1,0.5,0.5\n", "duplicate class"),
        ("key_id,a,b\n1,0.5,0.5,0.1\n", "not a valid prediction CSV"),
        ("key_id,a,b\n1,0.5\n", "non-finite"),
        ("key_id,a,b\n1,0.5,x\n", "not a valid prediction CSV"),
        ("key_id,a,b\n1.5,0.5,0.5\n", "not a valid prediction CSV"),
        ("key_id,a,b\n1,0.5,0.5\n1,0.2,0.8\n", "1 duplicate key_ids"),
        ("key_id,a,b\n1,-0.5,0.5\n", "negative"),
        ("", "header"),
    ])
    def test_refused(self, tmp_path: Path, text: str, match: str) -> None:
        path = tmp_path / "bad.csv"
        path.write_text(text)
        with pytest.raises(ValueError, match=match) as err:
            read_predictions(path)
        assert str(path) in str(err.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no such prediction file"):
            read_predictions(tmp_path / "nope.csv")


class TestSubmission:
    def test_exact_text(self, tmp_path: Path) -> None:
        probs = np.array([[0.1, 0.2, 0.3, 0.4, 0.0],
                          [0.5, 0.0, 0.0, 0.2, 0.3],
                          [0.2, 0.2, 0.2, 0.2, 0.2]])  # all tied: lowest class indices first
        classes = ["The Eiffel Tower", "b b", "c", "d", "e"]
        write_submission(tmp_path / "s.csv", np.array([30, 10, 20]), probs, classes)
        assert (tmp_path / "s.csv").read_text() == ("key_id,word\n"
                                                    "30,d c b_b\n"
                                                    "10,The_Eiffel_Tower e d\n"
                                                    "20,The_Eiffel_Tower b_b c\n")

    def test_every_row_three_labels(self, tmp_path: Path) -> None:
        keys, probs = _random_preds(50, 8, seed=3)
        classes = [f"class {i}" for i in range(8)]
        write_submission(tmp_path / "s.csv", keys, probs, classes)
        with open(tmp_path / "s.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["key_id", "word"]
        assert [int(r[0]) for r in rows[1:]] == keys.tolist()
        words = [r[1].split(" ") for r in rows[1:]]
        assert all(len(w) == 3 and len(set(w)) == 3 for w in words)
        best = [classes[i].replace(" ", "_") for i in probs.argmax(1)]
        assert [w[0] for w in words] == best

    def test_needs_three_classes(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="at least 3 classes"):
            write_submission(tmp_path / "s.csv", np.array([1]), np.array([[0.4, 0.6]]), ["a", "b"])
        assert not (tmp_path / "s.csv").exists()


class TestLabels:
    def test_read_labels(self, tmp_path: Path) -> None:
        (tmp_path / "l.csv").write_text("key_id,word\n5,The_Eiffel_Tower\n6,dog\n7,cat\n")
        labels = read_labels(tmp_path / "l.csv", CLASSES)
        assert labels == {5: 0, 6: 4, 7: 3}
        np.testing.assert_array_equal(labels_for(np.array([7, 5]), labels), [3, 0])
        with pytest.raises(ValueError, match="1 of 2 key_ids have no label"):
            labels_for(np.array([7, 8]), labels)

    def test_write_labels_round_trip(self, tmp_path: Path) -> None:
        write_labels(tmp_path / "l.csv.gz", np.array([9, 3, 5]), np.array([0, 4, 0]), CLASSES)
        with gzip.open(tmp_path / "l.csv.gz", "rt") as f:
            assert f.read() == "key_id,word\n9,The_Eiffel_Tower\n3,dog\n5,The_Eiffel_Tower\n"
        assert read_labels(tmp_path / "l.csv.gz", CLASSES) == {9: 0, 3: 4, 5: 0}
        with pytest.raises(ValueError, match="class indices"):
            write_labels(tmp_path / "bad.csv", np.array([1]), np.array([-1]), CLASSES)
        assert not (tmp_path / "bad.csv").exists()

    def test_unknown_word_named(self, tmp_path: Path) -> None:
        (tmp_path / "l.csv").write_text("key_id,word\n5,The_Eiffel_Tower\n6,unicorn\n")
        with pytest.raises(ValueError, match="line 3: unknown class 'unicorn'"):
            read_labels(tmp_path / "l.csv", CLASSES)

    def test_conflicting_labels(self, tmp_path: Path) -> None:
        (tmp_path / "l.csv").write_text("key_id,word\n5,cat\n5,dog\n")
        with pytest.raises(ValueError, match="two different labels"):
            read_labels(tmp_path / "l.csv", CLASSES)

    def test_real_kaggle_solution(self) -> None:
        folder = DATA / "kaggle"
        if not folder.is_dir():
            pytest.skip(f"real data not found at {DATA}")
        classes = sorted(p.name[:-4] for p in (folder / "train_simplified").glob("*.csv"))
        labels = read_labels(folder / "test_simplified_solution.csv", classes)
        with open(folder / "test_simplified_solution.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(labels) == len(rows) > 1000
        first = rows[0]
        assert classes[labels[int(first["key_id"])]].replace(" ", "_") == first["word"]
        assert "The Eiffel Tower" in {classes[i] for i in labels.values()}


class TestAlign:
    def test_reorders_rows_and_columns(self) -> None:
        keys, probs = _random_preds()
        perm, cols = np.random.default_rng(1).permutation(len(keys)), [3, 0, 4, 1, 2]
        other = (keys[perm], probs[perm][:, cols] * 2, [CLASSES[j] for j in cols])
        first, second = align([(keys, probs, CLASSES), other])
        assert np.array_equal(second.key_ids, keys) and second.classes == CLASSES
        np.testing.assert_array_equal(second.probs, probs * 2)

    def test_refuses_different_keys(self) -> None:
        keys, probs = _random_preds()
        other = (np.r_[keys[2:], 1, 2, 3], np.r_[probs[2:], probs[:3]], CLASSES)
        with pytest.raises(ValueError, match="b.csv: key_ids differ from a.csv: 2 missing, 3 extra"):
            align([(keys, probs, CLASSES), other], names=["a.csv", "b.csv"])

    def test_refuses_different_classes(self) -> None:
        keys, probs = _random_preds()
        other = (keys, probs, CLASSES[:4] + ["horse"])
        with pytest.raises(ValueError, match=r"class set differs .* missing \['dog'\] \(1\), extra \['horse'\] \(1\)"):
            align([(keys, probs, CLASSES), other])


def _skewed(n: int = 4000, c: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced true labels; the model adds a bias towards the low class indices, so its argmax counts are skewed."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    logits = 2.0 * np.eye(c)[labels] + rng.normal(size=(n, c)) + np.linspace(1.5, 0, c)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True), labels


class TestBalance:
    def test_flattens_argmax_counts(self) -> None:
        probs, labels = _skewed()
        before = np.bincount(probs.argmax(1), minlength=10)
        out = balance(probs)
        after = np.bincount(out.argmax(1), minlength=10)
        assert before.max() > 3 * before.min()  # the synthetic skew is real
        assert after.std() < 0.25 * before.std()
        np.testing.assert_allclose(out.sum(0), len(out) / 10, rtol=1e-3)  # equal class mass
        np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-12)
        assert (out.argmax(1) == labels).mean() > (probs.argmax(1) == labels).mean() + 0.05

    def test_balanced_input_nearly_unchanged(self) -> None:
        rng = np.random.default_rng(0)
        base = rng.dirichlet(np.ones(6), 50)
        probs = np.concatenate([np.roll(base, s, axis=1) for s in range(6)])  # every class has mass exactly N/C
        np.testing.assert_allclose(balance(probs), probs, atol=1e-9)

    def test_zero_class_left_alone(self) -> None:
        probs, _ = _skewed(600, 5)
        probs[:, 2] = 0.0
        out = balance(probs)
        assert np.isfinite(out).all() and (out[:, 2] == 0).all()
        np.testing.assert_allclose(out.sum(0)[[0, 1, 3, 4]], out.sum(0)[0], rtol=1e-3)

    def test_rejects_negative(self) -> None:
        with pytest.raises(ValueError, match="non-negative"):
            balance(np.array([[0.5, -0.5]]))
