"""What only this project measures and schedules: ROC-AUC and average precision of the fake scores
(icpr2020dfdc scores sigmoid outputs with scikit-learn's roc_auc_score, train_binclass.py:319, 437),
and the plateau controller that lowers the lr on the validation loss and stops the run at min_lr
(their ReduceLROnPlateau and `lr == min_lr` stop, train_binclass.py:139-147, 349).

The label checks are common/metrics.py's, so every metric refuses bad input the same way: NaN or
infinite scores (scikit-learn refuses infinite scores too), binary labels outside {0, 1}."""

from __future__ import annotations

import math
import warnings

import numpy as np

from common.metrics import check_range, class_labels, same_shape, to_numpy


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
    y_true, scores = class_labels(fn, "y_true", y_true), to_numpy(scores)
    if scores.dtype != np.bool_ and not (np.issubdtype(scores.dtype, np.integer)
                                         or np.issubdtype(scores.dtype, np.floating)):
        raise ValueError(f"{fn}: scores must be real numbers, got dtype {scores.dtype}")
    same_shape(fn, "y_true", y_true, "scores", scores)
    y_true, scores = y_true.ravel(), scores.astype(float).ravel()
    if y_true.size == 0:
        raise ValueError(f"{fn} of an empty split")
    check_range(fn, "y_true", y_true, 2)
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


class PlateauController:
    """Reduce the lr by `factor` after more than `patience` evaluations without improvement of
    a metric ('min' mode: a loss), then wait `cooldown` evaluations; never below `min_lr`.

    Unlike torch's ReduceLROnPlateau, the lr is set to exactly `min_lr` when the next
    reduction would pass it, so `should_stop()` (lr at the floor and still no improvement for
    `patience` more evaluations) really becomes true. torch's scheduler skips any change
    smaller than eps=1e-8, so its lr can stall just above min_lr and `lr == min_lr` never holds."""

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 10, cooldown: int = 0,
                 min_lr: float = 0.0, threshold: float = 1e-4, mode: str = "min"):
        if not 0.0 < factor < 1.0:
            raise ValueError("factor must be in (0, 1)")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.lr, self.factor, self.patience, self.cooldown = lr, factor, patience, cooldown
        self.min_lr, self.threshold, self.mode = min_lr, threshold, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0
        self.cooldown_left = 0
        self.stopped = False

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold) if self.best > 0 else value < self.best - self.threshold
        return value > self.best * (1.0 + self.threshold) if self.best > 0 else value > self.best + self.threshold

    def step(self, value: float) -> float:
        """Feed one evaluation's metric; returns the lr to use from now on."""
        if math.isnan(value):
            raise ValueError("PlateauController.step got NaN: the validation metric is not finite")
        if self._improved(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evals = 0
        if self.bad_evals > self.patience:
            if self.lr <= self.min_lr:
                self.stopped = True
            else:
                # Snap to the floor within rounding: 1e-8 * 0.1 is 1.0000000000000005e-09 in floats,
                # which would cost one more plateau round before lr == min_lr could hold.
                cut = self.lr * self.factor
                self.lr = self.min_lr if cut <= self.min_lr * (1 + 1e-9) else cut
                self.cooldown_left = self.cooldown
            self.bad_evals = 0
        return self.lr

    def should_stop(self) -> bool:
        return self.stopped

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
