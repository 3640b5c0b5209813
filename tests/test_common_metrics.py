"""common/metrics.py, and the metrics one project adds on it (caer_clip/train.py: UAR; WAR is accuracy;
deepfake_effnet_lstm/metrics.py: ROC-AUC, average precision): small hand-computed cases (always)
and scikit-learn on random cases."""

import warnings

import numpy as np
import pytest
import torch

from caer_clip.train import uar
from common.metrics import accuracy, confusion_matrix, precision_recall_f1
from deepfake_effnet_lstm.metrics import average_precision, roc_auc


def test_confusion_matrix_and_uar_count_absent_classes():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 2]
    cm = confusion_matrix(y_true, y_pred, num_classes=4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # recalls 1/2, 2/3, 1 and class 3 absent -> 0: UAR over all four classes
    assert uar(y_true, y_pred, 4) == pytest.approx((0.5 + 2 / 3 + 1.0 + 0.0) / 4)
    assert uar(y_true, y_pred, 3) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)  # WAR


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
        np.testing.assert_allclose(confusion_matrix(y_true, y_pred, c),
                                   sk.confusion_matrix(y_true, y_pred, labels=labels))
        for avg in ("macro", "weighted"):
            ours = precision_recall_f1(y_true, y_pred, c, average=avg)
            theirs = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)[:3]
            np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=f"case {case} {avg}")
        np.testing.assert_allclose(uar(y_true, y_pred, c),
                                   sk.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
                                   atol=1e-6)
        binary = rng.integers(0, 2, n)
        binary[:2] = [0, 1]
        scores = np.round(rng.random(n), 1)  # rounding creates ties
        np.testing.assert_allclose(roc_auc(binary, scores), sk.roc_auc_score(binary, scores), atol=1e-6)
        np.testing.assert_allclose(average_precision(binary, scores), sk.average_precision_score(binary, scores),
                                   atol=1e-6)


# Input the metrics cannot score is refused with a ValueError naming the argument, the values and
# how many; each case below was scored silently before (values measured on the old code).

def test_ranking_metrics_refuse_nan_scores():
    for metric in (roc_auc, average_precision):  # roc_auc gave 0.75 here
        with pytest.raises(ValueError, match=rf"{metric.__name__}: scores has 1 NaN of 4 values \(first at index 1\)"):
            metric([0, 1, 0, 1], [0.1, float("nan"), 0.3, 0.2])


def test_ranking_metrics_refuse_infinite_scores_as_sklearn_does():
    inf = float("inf")
    for metric in (roc_auc, average_precision):
        # tied +inf scores were ranked as distinct values (np.diff(inf, inf) is NaN)
        with pytest.raises(ValueError, match=rf"{metric.__name__}: scores has 2 infinite of 4 values"):
            metric([0, 1, 0, 1], torch.tensor([0.1, inf, 0.3, inf]))
        with pytest.raises(ValueError, match="scores has 1 infinite of 3 values"):
            metric([0, 1, 1], [-inf, 0.5, 0.2])


def test_rank_helper_treats_tied_infinities_as_ties():
    from deepfake_effnet_lstm.metrics import _average_ranks
    inf = float("inf")
    assert _average_ranks(np.array([inf, 0.0, inf, -inf, -inf])).tolist() == [4.5, 3.0, 4.5, 1.5, 1.5]


def test_binary_metrics_refuse_labels_outside_0_1():
    scores = [0.9, 0.8, 0.7, 0.1]
    for metric in (roc_auc, average_precision):
        # a label 2 gave average_precision 3.42 (above 1)
        with pytest.raises(ValueError, match=r"y_true has 1 of 4 labels outside \{0, 1\}: \[2\]"):
            metric([1, 2, 1, 0], scores)
        # {-1, 1} labels gave NaN with a misleading "one class" warning
        with pytest.raises(ValueError, match=r"y_true has 2 of 4 labels outside \{0, 1\}: \[-1\]"):
            metric(np.array([1, -1, 1, -1]), scores)


def test_metrics_refuse_float_labels_instead_of_truncating():
    with pytest.raises(ValueError, match=r"roc_auc: y_true must hold integer class labels, got dtype float64 "
                                         r"\(1 of 4 values are not whole numbers, e.g. \[0.5\]\)"):
        roc_auc([0.0, 1.0, 0.5, 1.0], [0.1, 0.4, 0.3, 0.2])
    with pytest.raises(ValueError, match="average_precision: y_true must hold integer class labels, got dtype "
                                         "float32 \\(all 2 values are whole numbers"):
        average_precision(torch.tensor([0.0, 1.0]), [0.1, 0.4])
    with pytest.raises(ValueError, match="confusion_matrix: y_pred must hold integer class labels"):
        confusion_matrix([0, 1], [0.7, 1.0], num_classes=2)  # 0.7 was truncated to class 0
    with pytest.raises(ValueError, match="precision_recall_f1: y_true must hold integer class labels"):
        precision_recall_f1(np.array([0.0, 1.9]), [0, 1], 2)
    with pytest.raises(ValueError, match="precision_recall_f1: y_pred must hold integer class labels"):
        uar([0, 1], [0.0, 1.0], 2)
    with pytest.raises(ValueError, match="accuracy: y_pred must hold integer class labels"):
        accuracy([0, 1], [0.0, 1.0])
    # bool labels are exact 0/1 and stay accepted
    assert roc_auc(torch.tensor([False, True]), [0.2, 0.9]) == 1.0


def test_metrics_refuse_mismatched_shapes_and_empty_ranking_input():
    with pytest.raises(ValueError, match=r"accuracy: y_true has shape \(3,\) but y_pred has shape \(1,\)"):
        accuracy([0, 1, 1], [1])  # broadcast to 1/3 before
    with pytest.raises(ValueError, match=r"roc_auc: y_true has shape \(2,\) but scores has shape \(3,\)"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="confusion_matrix: y_true has shape"):
        confusion_matrix([0, 1, 1], [1, 0], 2)
    for metric in (roc_auc, average_precision):  # NaN with a "one class" warning before
        with pytest.raises(ValueError, match=f"{metric.__name__} of an empty split"):
            metric([], [])


def test_zero_division_nan_leaves_values_out_of_the_average():
    y_true, y_pred = [0, 1, 2], [0, 1, 1]  # class 3 absent, class 2 never predicted
    p, r, f = precision_recall_f1(y_true, y_pred, 4, average=None, zero_division=float("nan"))
    np.testing.assert_allclose(p, [1.0, 0.5, np.nan, np.nan])
    np.testing.assert_allclose(r, [1.0, 1.0, 0.0, np.nan])
    np.testing.assert_allclose(f, [1.0, 2 / 3, 0.0, np.nan])
    for average in ("macro", "weighted"):  # support 1, 1, 1, 0: weighted equals macro here
        assert precision_recall_f1(y_true, y_pred, 4, average, np.nan) == pytest.approx((0.75, 2 / 3, 5 / 9))
    assert uar([0, 0, 1], [0, 1, 1], 3, zero_division=np.nan) == pytest.approx(0.75)
    assert uar([0, 0, 1], [0, 1, 1], 3, zero_division=1) == pytest.approx((0.5 + 1 + 1) / 3)
    # weighted: the only non-NaN precision has zero support -> plain mean of what is left (sklearn)
    assert precision_recall_f1([0, 0], [1, 1], 2, "weighted", np.nan) == (0.0, 0.0, 0.0)
    assert precision_recall_f1([0, 0], [1, 1], 2, "weighted", 1) == (1.0, 0.0, 0.0)


def test_zero_division_refuses_what_sklearn_refuses():
    for bad in (0.5, -1, "warn", None):
        with pytest.raises(ValueError, match=rf"zero_division must be 0, 1 or nan .*got {bad!r}"):
            precision_recall_f1([0, 1], [0, 1], 2, zero_division=bad)
    with pytest.raises(ValueError, match="zero_division must be 0, 1 or nan"):
        uar([0, 1], [0, 1], 2, zero_division=0.5)


def test_sklearn_refuses_the_same_scores_and_agrees_on_zero_division_nan():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed (optional cross-check)")
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            sk.roc_auc_score([0, 1, 0, 1], [0.1, bad, 0.3, 0.2])
        with pytest.raises(ValueError):
            sk.average_precision_score([0, 1, 0, 1], [0.1, bad, 0.3, 0.2])
    with pytest.raises(ValueError):
        sk.precision_recall_fscore_support([0, 1], [0, 1], zero_division=0.5)
    rng = np.random.default_rng(1)
    for case in range(60):
        c = int(rng.integers(2, 7))
        n = int(rng.integers(1, 30))  # small splits: classes absent or never predicted are common
        y_true = rng.integers(0, c, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, c, n))
        labels = list(range(c))
        for zero_division in (0, 1, np.nan):
            theirs = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                        zero_division=zero_division)[:3]
            np.testing.assert_allclose(precision_recall_f1(y_true, y_pred, c, None, zero_division), theirs,
                                       err_msg=f"case {case} per class zero_division={zero_division}")
            for avg in ("macro", "weighted"):
                theirs = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                            zero_division=zero_division)[:3]
                np.testing.assert_allclose(precision_recall_f1(y_true, y_pred, c, avg, zero_division), theirs,
                                           atol=1e-12, err_msg=f"case {case} {avg} zero_division={zero_division}")
