"""MAP@3, top-1 and top-3 on hand-worked examples."""
import numpy as np
import pytest

from qdraw.metrics import map_at_k, ranking_metrics, top_k


def test_top_k_order_and_ties():
    s = np.array([[0.1, 0.5, 0.4, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert top_k(s, 3).tolist() == [[1, 2, 0], [0, 1, 2]]  # ties go to the lower class index


def test_map3_hand_worked():
    # label at rank 1 -> 1, rank 2 -> 1/2, rank 3 -> 1/3, absent -> 0
    topk = np.array([[4, 1, 2], [1, 4, 2], [1, 2, 4], [1, 2, 3]])
    labels = np.array([4, 4, 4, 4])
    assert map_at_k(topk, labels) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)


def test_ranking_metrics_differs_from_top3_accuracy():
    s = np.array([[0.1, 0.5, 0.4, 0.0], [0.3, 0.2, 0.1, 0.4], [0.4, 0.3, 0.2, 0.1]])
    m = ranking_metrics(s, np.array([2, 1, 0]))
    assert m["map3"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top3"] == 1.0  # what the ancestor logged as "MAP@3"
