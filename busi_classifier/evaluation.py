"""Classification metrics in plain NumPy (class order = CLASSES)."""

from __future__ import annotations

import numpy as np

from .config import CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def _safe_divide(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes=CLASSES) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro-F1, confusion matrix."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(probabilities).argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        precision = _safe_divide(tp, matrix[:, i].sum())
        recall = _safe_divide(tp, matrix[i, :].sum())
        f1 = _safe_divide(2 * precision * recall, precision + recall)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(matrix[i, :].sum())}
    return {
        "n": int(len(y_true)),
        "accuracy": _safe_divide(np.trace(matrix), matrix.sum()),
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(classes), "rows_true_cols_pred": matrix.tolist()},
    }
