"""Classification metrics in numpy (no scikit-learn at run time), on numpy arrays or torch tensors.

Classes are counted from an explicit `num_classes`, so a class absent from a split still counts (and
scores its zero-division value) instead of silently dropping out of a macro average. Input a metric
cannot score is refused with a ValueError naming the argument, the values and how many: non-integer
labels (never truncated), labels out of range, arguments of different shapes, a `zero_division` other
than scikit-learn's 0, 1, nan. The checks are public for deepfake_effnet_lstm/metrics.py."""

from __future__ import annotations

import math

import numpy as np


def to_numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _examples(values: np.ndarray, limit: int = 5) -> str:
    distinct = np.unique(values)
    shown = ", ".join(repr(v.item()) for v in distinct[:limit])
    return f"[{shown}{', ...' if distinct.size > limit else ''}]"


def class_labels(fn: str, name: str, y) -> np.ndarray:
    """Class labels as int64; a float array is refused, not truncated (0.7 -> 0 would score it).
    An empty one has nothing to truncate (np.asarray([]) is float64) and passes."""
    y = to_numpy(y)
    if y.size and y.dtype != np.bool_ and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating):
            bad = y[~(np.mod(y, 1) == 0)]
            detail = (f"{bad.size} of {y.size} values are not whole numbers, e.g. {_examples(bad)}" if bad.size
                      else f"all {y.size} values are whole numbers: cast them to an integer dtype")
        else:
            detail = f"{y.size} values, e.g. {_examples(y)}"
        raise ValueError(f"{fn}: {name} must hold integer class labels, got dtype {y.dtype} ({detail})")
    return y.astype(np.int64)


def check_range(fn: str, name: str, y: np.ndarray, num_classes: int) -> None:
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        allowed = "{0, 1}" if num_classes == 2 else f"[0, {num_classes})"
        raise ValueError(f"{fn}: {name} has {bad.size} of {y.size} labels outside {allowed}: {_examples(bad)}")


def same_shape(fn: str, a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}")


def _class_pair(fn: str, y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = class_labels(fn, "y_true", y_true), class_labels(fn, "y_pred", y_pred)
    same_shape(fn, "y_true", y_true, "y_pred", y_pred)
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _class_pair("accuracy", y_true, y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of an empty split")
    return float((y_true == y_pred).mean())


def confusion_matrix(y_true, y_pred, num_classes: int, fn: str = "confusion_matrix") -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j; errors name the caller `fn`."""
    y_true, y_pred = _class_pair(fn, y_true, y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        check_range(fn, name, y, num_classes)
    return np.bincount((y_true * num_classes + y_pred).ravel(),
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    return np.divide(num, den, out=np.full(num.shape, float(zero_division)), where=den > 0)


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


def precision_recall_f1(y_true, y_pred, num_classes: int, average: str | None = "macro",
                        zero_division: float = 0.0):
    """Per-class (average=None) or 'macro' / 'weighted' (by true-class support) precision, recall and F1.
    F1 = 2TP / (2TP + FP + FN); a class with no true and no predicted sample gets `zero_division` for all
    three. As in scikit-learn (>= 1.3), zero_division=nan leaves those values out of the average."""
    number = isinstance(zero_division, (int, float, np.floating, np.integer)) and not isinstance(zero_division, bool)
    if not number or not (zero_division in (0, 1) or math.isnan(zero_division)):
        raise ValueError(f"precision_recall_f1: zero_division must be 0, 1 or nan (scikit-learn's choices), "
                         f"got {zero_division!r}")
    if average not in (None, "macro", "weighted"):
        raise ValueError(f"precision_recall_f1: unknown average {average!r}")
    cm = confusion_matrix(y_true, y_pred, num_classes, fn="precision_recall_f1").astype(float)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = _safe_div(tp, predicted, zero_division)
    recall = _safe_div(tp, support, zero_division)
    f1 = _safe_div(2 * tp, support + predicted, zero_division)
    if average is None:
        return precision, recall, f1
    weights = support if average == "weighted" else None
    return tuple(_nan_average(m, weights) for m in (precision, recall, f1))
