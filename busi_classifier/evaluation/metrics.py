"""Classification metrics in plain NumPy (class order = CLASSES): what a clinical reader
asks for. Accuracy, balanced accuracy, per-class precision / recall / F1 / ROC AUC,
macro-F1 and macro AUC, malignant sensitivity at 90 % specificity and specificity at
90 % sensitivity, confusion matrix, calibration (ECE, NLL, Brier), bootstrap confidence
intervals and temperature scaling.

No scikit-learn: the functions are short and tested against hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.predictor import apply_temperature

POSITIVE_CLASS = "malignant"
TARGET_RATE = 0.9  # sensitivity at 90 % specificity and the reverse
ECE_BINS = 10
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "malignant_auc",
            "malignant_sensitivity_at_90_specificity", "malignant_specificity_at_90_sensitivity")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def _safe_divide(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


# --- ranking metrics ----------------------------------------------------------------


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds) of a binary problem, one
    point per distinct score, starting at (0, 0). Needs positives and negatives."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    score, y = score[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, score[distinct]]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None when y has only one class."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.trapezoid(tpr, fpr))


def sensitivity_at_specificity(y: np.ndarray, score: np.ndarray, specificity: float = TARGET_RATE) -> float | None:
    """Highest sensitivity among thresholds whose specificity is at least ``specificity``."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, score)
    ok = (1 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max())


def specificity_at_sensitivity(y: np.ndarray, score: np.ndarray, sensitivity: float = TARGET_RATE) -> float | None:
    """Highest specificity among thresholds whose sensitivity is at least ``sensitivity``."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, score)
    ok = tpr >= sensitivity - 1e-12
    return float((1 - fpr[ok]).max())


# --- calibration -----------------------------------------------------------------------


def reliability(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Confidence (top probability) against accuracy in equal-width bins, and the
    expected calibration error: sum over bins of |accuracy - confidence| x bin share."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        in_bin = index == b
        n = int(in_bin.sum())
        if n:
            acc, conf = float(correct[in_bin].mean()), float(confidence[in_bin].mean())
            ece += n / len(confidence) * abs(acc - conf)
        else:
            acc = conf = None
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "bins": rows}


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.asarray(probabilities, dtype=np.float64)[np.arange(len(y_true)), np.asarray(y_true, int)]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def brier_score(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(y_true, int)]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray, low: float = 0.25, high: float = 10.0) -> float:
    """The temperature that minimises the NLL of ``probabilities`` (golden-section search
    over log T; the NLL is unimodal in log T). 1.0 when there is nothing to fit."""
    if len(y_true) == 0:
        return 1.0
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2

    def nll(log_t: float) -> float:
        return negative_log_likelihood(y_true, apply_temperature(probabilities, float(np.exp(log_t))))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    best = float(np.exp((a + b) / 2))
    return best if nll(np.log(best)) < nll(0.0) else 1.0


# --- everything together -------------------------------------------------------------


def point_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes=CLASSES) -> dict:
    """The headline numbers and the per-class table for one set of predictions."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        precision = _safe_divide(tp, matrix[:, i].sum())
        recall = _safe_divide(tp, matrix[i, :].sum())
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _safe_divide(2 * precision * recall, precision + recall),
            "support": int(matrix[i, :].sum()),
            "roc_auc": roc_auc(y_true == i, probabilities[:, i]),
        }
    present = [m for m in per_class.values() if m["support"]]
    aucs = [m["roc_auc"] for m in per_class.values() if m["roc_auc"] is not None]
    positive = list(classes).index(POSITIVE_CLASS) if POSITIVE_CLASS in classes else len(classes) - 1
    is_positive, score = y_true == positive, probabilities[:, positive]
    return {
        "n": int(len(y_true)),
        "accuracy": _safe_divide(np.trace(matrix), matrix.sum()),
        "balanced_accuracy": float(np.mean([m["recall"] for m in present])) if present else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "malignant_auc": per_class[classes[positive]]["roc_auc"],
        "malignant_sensitivity_at_90_specificity": sensitivity_at_specificity(is_positive, score),
        "malignant_specificity_at_90_sensitivity": specificity_at_sensitivity(is_positive, score),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(classes), "rows_true_cols_pred": matrix.tolist()},
        "ece": reliability(y_true, probabilities)["ece"],
        "nll": negative_log_likelihood(y_true, probabilities),
        "brier": brier_score(y_true, probabilities),
    }


def resample_units(groups: Sequence | None, n: int) -> list[np.ndarray]:
    """The units a bootstrap draws: one per image, or with ``groups`` (one id per image,
    e.g. the near-duplicate group from split.csv) one per group, holding its images."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} images")
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return [np.array(m) for m in members.values()]


def bootstrap_intervals(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], dict] = point_metrics,
    keys=HEADLINE,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence | None = None,
) -> dict:
    """Percentile bootstrap intervals for ``keys``.

    Without ``groups`` images are resampled with replacement. With ``groups`` whole
    groups are (a cluster bootstrap): near-duplicates of one frame are not independent
    evidence, and resampling them one by one makes the interval too narrow. A resample
    where a metric is undefined (e.g. no malignant image drawn) is skipped for that
    metric."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in keys}
    units = resample_units(groups, len(y_true))
    for _ in range(n_resamples):
        picked = rng.integers(0, len(units), size=len(units))
        idx = np.concatenate([units[j] for j in picked]) if units else np.array([], dtype=int)
        m = metric(y_true[idx], probabilities[idx])
        for k in keys:
            if m.get(k) is not None:
                values[k].append(m[k])
    alpha = (1 - level) / 2
    return {
        k: ([float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if v else None)
        for k, v in values.items()
    }


def evaluate_predictions(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    temperature: float = 1.0,
    n_resamples: int = 1000,
    seed: int = 0,
    classes=CLASSES,
    groups: Sequence | None = None,
) -> dict:
    """Full evaluation of one split: point metrics of the calibrated probabilities with
    bootstrap 95 % intervals (whole near-duplicate groups resampled when ``groups`` is
    given), the reliability table, and the uncalibrated ECE/NLL."""
    raw = np.asarray(probabilities, dtype=np.float64)
    calibrated = apply_temperature(raw, temperature) if temperature != 1.0 else raw
    metrics = point_metrics(y_true, calibrated, classes)
    metrics["temperature"] = float(temperature)
    metrics["uncalibrated"] = {"ece": reliability(y_true, raw)["ece"], "nll": negative_log_likelihood(y_true, raw)}
    metrics["reliability"] = reliability(y_true, calibrated)["bins"]
    metrics["ci95"] = bootstrap_intervals(y_true, calibrated, lambda a, b: point_metrics(a, b, classes),
                                          n_resamples=n_resamples, seed=seed, groups=groups)
    metrics["bootstrap_resamples"] = n_resamples
    metrics["bootstrap_unit"] = "image" if groups is None else "near-duplicate group"
    metrics["bootstrap_units"] = len(resample_units(groups, metrics["n"]))
    return metrics


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes=CLASSES) -> dict:
    """Point metrics only (kept for callers that do not need intervals)."""
    return point_metrics(y_true, probabilities, classes)
