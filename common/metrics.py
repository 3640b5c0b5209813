"""Classification metrics in numpy (no scikit-learn at run time).

Every function takes numpy arrays or torch tensors. Classes are counted from an explicit
`num_classes`, so a class absent from a split still counts (and scores its zero-division
value) instead of silently dropping out of a macro average."""

from __future__ import annotations

import warnings

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _np(y_true), _np(y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of an empty split")
    return float((y_true == y_pred).mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j."""
    y_true, y_pred = _np(y_true).astype(np.int64), _np(y_pred).astype(np.int64)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has a label outside [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    out = np.full(num.shape, float(zero_division))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def precision_recall_f1(y_true, y_pred, num_classes: int, average: str | None = "macro",
                        zero_division: float = 0.0):
    """Per-class (average=None) or 'macro' / 'weighted' precision, recall and F1.

    F1 = 2TP / (2TP + FP + FN); a class with no true and no predicted sample gets
    `zero_division` for all three. 'weighted' weights by true-class support."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = _safe_div(tp, predicted, zero_division)
    recall = _safe_div(tp, support, zero_division)
    f1 = _safe_div(2 * tp, support + predicted, zero_division)
    if average is None:
        return precision, recall, f1
    if average == "macro":
        return float(precision.mean()), float(recall.mean()), float(f1.mean())
    if average == "weighted":
        if support.sum() == 0:
            return (float(zero_division),) * 3
        w = support / support.sum()
        return float((precision * w).sum()), float((recall * w).sum()), float((f1 * w).sum())
    raise ValueError(f"unknown average {average!r}")


def uar(y_true, y_pred, num_classes: int, zero_division: float = 0.0) -> float:
    """Unweighted average recall: mean per-class recall over ALL `num_classes` classes."""
    return precision_recall_f1(y_true, y_pred, num_classes, "macro", zero_division)[1]


def war(y_true, y_pred) -> float:
    """Weighted average recall = plain accuracy."""
    return accuracy(y_true, y_pred)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=float)
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)
    return ranks


def roc_auc(y_true, scores) -> float:
    """Binary ROC-AUC from scores (probabilities or logits, NOT hard labels), by the rank
    (Mann-Whitney) formula with ties counted half. One class only: NaN with a warning."""
    y_true, scores = _np(y_true).astype(np.int64).ravel(), _np(scores).astype(float).ravel()
    n_pos = int((y_true == 1).sum())
    n_neg = int((y_true == 0).sum())
    if n_pos == 0 or n_neg == 0:
        warnings.warn("roc_auc: only one class present in y_true; ROC-AUC is undefined (NaN)", stacklevel=2)
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true, scores) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds (scikit-learn's definition).
    No positive: NaN with a warning."""
    y_true, scores = _np(y_true).astype(np.int64).ravel(), _np(scores).astype(float).ravel()
    n_pos = int((y_true == 1).sum())
    if n_pos == 0:
        warnings.warn("average_precision: no positive sample; AP is undefined (NaN)", stacklevel=2)
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # thresholds at distinct scores
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
