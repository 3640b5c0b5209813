"""common/metrics.py: small hand-computed cases (always) and scikit-learn on random cases."""

import warnings

import numpy as np
import pytest
import torch

from common.metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    precision_recall_f1,
    roc_auc,
    uar,
    war,
)


def test_confusion_matrix_and_uar_count_absent_classes():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 2]
    cm = confusion_matrix(y_true, y_pred, num_classes=4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # recalls 1/2, 2/3, 1 and class 3 absent -> 0: UAR over all four classes
    assert uar(y_true, y_pred, 4) == pytest.approx((0.5 + 2 / 3 + 1.0 + 0.0) / 4)
    assert uar(y_true, y_pred, 3) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert war(y_true, y_pred) == pytest.approx(4 / 6)


def test_precision_recall_f1_hand_computed():
    y_true = torch.tensor([0, 0, 1, 1, 1, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 2, 2])
    p, r, f = precision_recall_f1(y_true, y_pred, 3, average=None)
    assert p.tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert f.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    pw, rw, fw = precision_recall_f1(y_true, y_pred, 3, average="weighted")
    assert pw == pytest.approx((2 * 1.0 + 3 * 2 / 3 + 1 * 0.5) / 6)
    assert rw == pytest.approx(accuracy(y_true, y_pred))
    assert fw == pytest.approx(2 / 3)


def test_roc_auc_ties_and_one_class():
    # pos scores [0.8, 0.5], neg [0.5, 0.2]: pairs (0.8>0.5)(0.8>0.2)(0.5=0.5 half)(0.5>0.2) = 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(value) and any("one class" in str(w.message) for w in caught)


def test_average_precision_hand_computed():
    # sorted scores 0.9(1) 0.8(0) 0.7(1) 0.1(0): AP = 0.5*1 + 0.5*(2/3)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)
    # a tie at the top between a positive and a negative counts as one threshold
    assert average_precision([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.5)


def test_metrics_reject_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 1], num_classes=3)


def test_metrics_equal_sklearn_on_random_cases():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    rng = np.random.default_rng(0)
    for case in range(60):
        c = int(rng.integers(2, 7))
        n = int(rng.integers(5, 80))
        y_true = rng.integers(0, c, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, c, n))
        labels = list(range(c))
        np.testing.assert_allclose(confusion_matrix(y_true, y_pred, c), sk.confusion_matrix(y_true, y_pred, labels=labels))
        for avg in ("macro", "weighted"):
            ours = precision_recall_f1(y_true, y_pred, c, average=avg)
            theirs = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)[:3]
            np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=f"case {case} {avg}")
        np.testing.assert_allclose(uar(y_true, y_pred, c),
                                   sk.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0), atol=1e-6)
        binary = rng.integers(0, 2, n)
        binary[:2] = [0, 1]
        scores = np.round(rng.random(n), 1)  # rounding creates ties
        np.testing.assert_allclose(roc_auc(binary, scores), sk.roc_auc_score(binary, scores), atol=1e-6)
        np.testing.assert_allclose(average_precision(binary, scores), sk.average_precision_score(binary, scores), atol=1e-6)
