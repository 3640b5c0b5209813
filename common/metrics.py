"""Classification metrics in numpy (no scikit-learn at run time).

Every function takes numpy arrays or torch tensors. Classes are counted from an explicit
`num_classes`, so a class absent from a split still counts (and scores its zero-division
value) instead of silently dropping out of a macro average.

Input a metric cannot score is refused with a ValueError naming the argument, the values and
how many: labels of a non-integer dtype (never truncated), labels out of range (outside {0, 1}
for the binary ranking metrics), NaN or infinite scores (scikit-learn refuses infinite scores
too), arguments of different shapes, and a `zero_division` other than scikit-learn's 0, 1, nan."""

from __future__ import annotations

import math
import warnings

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _examples(values: np.ndarray, limit: int = 5) -> str:
    distinct = np.unique(values)
    shown = ", ".join(repr(v.item()) for v in distinct[:limit])
    return f"[{shown}{', ...' if distinct.size > limit else ''}]"


def _labels(fn: str, name: str, y) -> np.ndarray:
    """Class labels as int64; a float array is refused, not truncated (0.7 -> 0 would score it).
    An empty one has nothing to truncate (np.asarray([]) is float64) and passes."""
    y = _np(y)
    if y.size and y.dtype != np.bool_ and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating):
            bad = y[~(np.mod(y, 1) == 0)]
            detail = (f"{bad.size} of {y.size} values are not whole numbers, e.g. {_examples(bad)}" if bad.size
                      else f"all {y.size} values are whole numbers: cast them to an integer dtype")
        else:
            detail = f"{y.size} values, e.g. {_examples(y)}"
        raise ValueError(f"{fn}: {name} must hold integer class labels, got dtype {y.dtype} ({detail})")
    return y.astype(np.int64)


def _check_range(fn: str, name: str, y: np.ndarray, num_classes: int) -> None:
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        allowed = "{0, 1}" if num_classes == 2 else f"[0, {num_classes})"
        raise ValueError(f"{fn}: {name} has {bad.size} of {y.size} labels outside {allowed}: {_examples(bad)}")


def _same_shape(fn: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}")


def _class_pair(fn: str, y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _labels(fn, "y_true", y_true), _labels(fn, "y_pred", y_pred)
    _same_shape(fn, "y_true", y_true, "y_pred", y_pred)
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _class_pair("accuracy", y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of an empty split")
    return float((y_true == y_pred).mean())


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j."""
    return _confusion_matrix("confusion_matrix", y_true, y_pred, num_classes)


def _confusion_matrix(fn: str, y_true, y_pred, num_classes: int) -> np.ndarray:
    y_true, y_pred = _class_pair(fn, y_true, y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        _check_range(fn, name, y, num_classes)
    return np.bincount((y_true * num_classes + y_pred).ravel(),
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    out = np.full(num.shape, float(zero_division))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _nan_average(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """scikit-learn's average: NaN entries (zero_division=nan) are left out and the weights of the
    rest renormalised; all NaN -> NaN; remaining weights all zero -> the plain mean of the rest."""
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    values = values[keep]
    if weights is None or weights[keep].sum() == 0:
        return float(values.mean())
    return float(np.average(values, weights=weights[keep]))


def _zero_division(fn: str, zero_division) -> float:
    ok = isinstance(zero_division, (int, float, np.floating, np.integer)) and not isinstance(zero_division, bool)
    if not ok or not (zero_division in (0, 1) or math.isnan(zero_division)):
        raise ValueError(f"{fn}: zero_division must be 0, 1 or nan (scikit-learn's choices), got {zero_division!r}")
    return float(zero_division)


def precision_recall_f1(y_true, y_pred, num_classes: int, average: str | None = "macro",
                        zero_division: float = 0.0):
    """Per-class (average=None) or 'macro' / 'weighted' precision, recall and F1.

    F1 = 2TP / (2TP + FP + FN); a class with no true and no predicted sample gets
    `zero_division` for all three. 'weighted' weights by true-class support. As in
    scikit-learn (>= 1.3), zero_division=nan leaves those values out of the average."""
    zero_division = _zero_division("precision_recall_f1", zero_division)
    if average not in (None, "macro", "weighted"):
        raise ValueError(f"precision_recall_f1: unknown average {average!r}")
    cm = _confusion_matrix("precision_recall_f1", y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = _safe_div(tp, predicted, zero_division)
    recall = _safe_div(tp, support, zero_division)
    f1 = _safe_div(2 * tp, support + predicted, zero_division)
    if average is None:
        return precision, recall, f1
    weights = support if average == "weighted" else None
    return tuple(_nan_average(m, weights) for m in (precision, recall, f1))


def uar(y_true, y_pred, num_classes: int, zero_division: float = 0.0) -> float:
    """Unweighted average recall: mean per-class recall over ALL `num_classes` classes (a class
    absent from y_true scores `zero_division`; nan leaves it out, as scikit-learn does)."""
    return precision_recall_f1(y_true, y_pred, num_classes, "macro", zero_division)[1]


def war(y_true, y_pred) -> float:
    """Weighted average recall = plain accuracy."""
    return accuracy(y_true, y_pred)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=float)
    # `!=`, not np.diff: inf - inf is NaN, which would read tied infinities as distinct values
    boundaries = np.flatnonzero(sorted_vals[1:] != sorted_vals[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)
    return ranks


def _binary_scores(fn: str, y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and finite real scores of one shape, flattened. scikit-learn (1.9) refuses NaN and
    infinite scores alike ("Input contains NaN" / "infinity"), so both are refused here."""
    y_true, scores = _labels(fn, "y_true", y_true), _np(scores)
    if scores.dtype != np.bool_ and not (np.issubdtype(scores.dtype, np.integer)
                                         or np.issubdtype(scores.dtype, np.floating)):
        raise ValueError(f"{fn}: scores must be real numbers, got dtype {scores.dtype}")
    _same_shape(fn, "y_true", y_true, "scores", scores)
    y_true, scores = y_true.ravel(), scores.astype(float).ravel()
    if y_true.size == 0:
        raise ValueError(f"{fn} of an empty split")
    _check_range(fn, "y_true", y_true, 2)
    for what, bad in (("NaN", np.isnan(scores)), ("infinite", np.isinf(scores))):
        if bad.any():
            raise ValueError(f"{fn}: scores has {int(bad.sum())} {what} of {scores.size} values "
                             f"(first at index {int(np.flatnonzero(bad)[0])})")
    return y_true, scores


def roc_auc(y_true, scores) -> float:
    """Binary ROC-AUC from scores (probabilities or logits, NOT hard labels), by the rank
    (Mann-Whitney) formula with ties counted half. One class only: NaN with a warning, as in
    scikit-learn 1.9; callers logging a one-class window (deepfake train.py) rely on it."""
    y_true, scores = _binary_scores("roc_auc", y_true, scores)
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
    # NOTE(deviation): scikit-learn returns 0.0 (with a warning) when y_true has no positive;
    # recall is 0/0 there, so NaN is the honest value and a one-class log window shows it as nan.
    y_true, scores = _binary_scores("average_precision", y_true, scores)
    n_pos = int((y_true == 1).sum())
    if n_pos == 0:
        warnings.warn("average_precision: no positive sample; AP is undefined (NaN)", stacklevel=2)
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # thresholds at distinct scores
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
