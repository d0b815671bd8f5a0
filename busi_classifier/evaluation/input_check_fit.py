"""Fitting the input check (busi_classifier.serving.input_check) and measuring it.

- ``fit_input_check``: on the training split's pooled features and labels -> an
  ``InputCheck`` without threshold;
- ``choose_threshold``: the threshold from validation features for a stated flag rate of
  in-distribution images, with the rule as a sentence for the card and the docs;
- ``auroc``: out-of-distribution = positive, ties count half;
- ``compare_methods``: for each published method, the AUROC per out-of-distribution set
  and the flag rates at the method's own validation threshold; ``pick_default`` takes the
  servable method with the best mean AUROC over the sets.

The building blocks, in NumPy (no scikit-learn, no SciPy): PCA by SVD (through the Gram
matrix when there are fewer images than features), the Ledoit-Wolf
(2004) shrunk covariance. Methods compared (references in the serving module's docstring):
Mahalanobis (Lee et al. 2018), Mahalanobis with the residual off the PCA space, relative
Mahalanobis (Ren et al. 2021), kNN on normalised features (Sun et al. 2022), and the
baselines that need the classifier's outputs rather than the features, scored here but not
servable from the check file: maximum softmax probability (Hendrycks & Gimpel 2017,
score = 1 - max p) and, where logits are given, the energy score (Liu et al. 2020,
score = -logsumexp(logits)). The served graph outputs probabilities only: energy cannot
be computed from them (softmax forgets a per-image constant), only from logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from busi_classifier.serving.input_check import METHODS, InputCheck

# The default, chosen by benchmarks/input_check_methods.py on the real BUSI folds (64 px,
# 40 images per set; BENCHMARKS.md "Input check: methods compared"): the best mean AUROC
# over the sets that are clearly not breast ultrasound for both the multitask and the
# classify model of fold 0 (0.934 and 0.832, against 0.894 and 0.678 for plain Mahalanobis
# and 0.929 and 0.557 for kNN, the runner-up that fails on the classify model), and the
# best on the near-misses too; at 296 KiB and about 0.1 ms a score.
DEFAULT_METHOD = "mahalanobis_residual"
DEFAULT_DIMS = 32  # 2048 x 32 float32 projection = 256 KiB: the bulk of the file
DEFAULT_K = 10
DEFAULT_FLAG_RATE = 0.05
BASELINES = ("max_softmax", "energy")
REFERENCES = {
    "mahalanobis": "Lee et al. 2018, a simple unified framework for detecting out-of-distribution samples",
    "mahalanobis_residual": "Lee et al. 2018 with the probabilistic-PCA residual term (Tipping & Bishop 1999; "
                            "Kamoi & Kobayashi 2020)",
    "relative_mahalanobis": "Ren et al. 2021, a simple fix to Mahalanobis distance for near-OOD detection",
    "knn": "Sun et al. 2022, out-of-distribution detection with deep nearest neighbors",
    "max_softmax": "Hendrycks & Gimpel 2017, a baseline for detecting misclassified and OOD examples",
    "energy": "Liu et al. 2020, energy-based out-of-distribution detection",
}


# ---------------------------------------------------------------------- building blocks


def pca(features: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Principal axes of the centred data X (n, D), by its singular value decomposition.

    With fewer images than features (the usual case: ~550 x 2048) the SVD is taken through
    the n x n Gram matrix, X X' = U S^2 U', V = X' U / S (five times faster than a direct
    SVD of X, the same axes to rounding; re-orthonormalised); otherwise directly.
    Returns (mean (D,), components (D, d) orthonormal columns, singular values (d,), d) where
    d = min(dims, n - 1, D, numerical rank), at least 1. Each axis's sign is fixed (its
    largest-magnitude entry positive) so that a refit gives the same file.
    """
    x = np.asarray(features, dtype=np.float64)
    n, d_features = x.shape
    mean = x.mean(axis=0)
    centred = x - mean
    if n <= d_features:
        eigenvalues, left = np.linalg.eigh(centred @ centred.T)
        eigenvalues, left = eigenvalues[::-1], left[:, ::-1]
        tolerance = max(eigenvalues[0], 0.0) * max(n, d_features) * np.finfo(np.float64).eps
        rank = int((eigenvalues > tolerance).sum())
        singular = np.sqrt(np.maximum(eigenvalues, 0.0))
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        tolerance = singular[0] * max(n, d_features) * np.finfo(np.float64).eps
        rank = int((singular > tolerance).sum())
    if rank == 0:
        raise ValueError("the training features are all identical: there is nothing to fit an input check on")
    d = max(1, min(int(dims), n - 1, d_features, rank))
    if n <= d_features:
        components, r = np.linalg.qr(centred.T @ left[:, :d] / singular[:d])
        components *= np.where(np.diag(r) < 0, -1.0, 1.0)
    else:
        components = vt[:d].T.copy()
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(d)])
    components *= np.where(signs == 0, 1, signs)
    return mean, components, singular[:d], d


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf (2004) shrunk covariance of data already centred (rows = samples).

    S = X'X / n, mu = trace(S) / p, d2 = |S - mu I|^2 / p, b2 = min(d2, sum_k |x_k x_k' - S|^2 / (n^2 p)),
    shrinkage = b2 / d2, covariance = shrinkage mu I + (1 - shrinkage) S (the formula of
    scikit-learn's ``ledoit_wolf`` with ``assume_centered=True``). Returns (covariance, shrinkage).
    """
    x = np.asarray(centred, dtype=np.float64)
    n, p = x.shape
    if n < 1:
        raise ValueError("Ledoit-Wolf needs at least one sample")
    sample = x.T @ x / n
    mu = np.trace(sample) / p
    d2 = float(((sample - mu * np.eye(p)) ** 2).sum() / p)
    b2_bar = float((((x * x).sum(axis=1) ** 2).sum() / n - (sample**2).sum()) / (n * p))
    b2 = min(max(b2_bar, 0.0), d2)
    shrinkage = 0.0 if d2 <= 0 else b2 / d2
    return shrinkage * mu * np.eye(p) + (1 - shrinkage) * sample, shrinkage


def _shrunk_precision(centred: np.ndarray, shrinkage: str | float, floor: float) -> tuple[np.ndarray, float]:
    """Inverse of the shrunk covariance; ``floor`` (a variance) keeps it finite when the data have none."""
    x = np.asarray(centred, dtype=np.float64)
    p = x.shape[1]
    if shrinkage == "ledoit-wolf":
        covariance, amount = ledoit_wolf(x)
    else:
        amount = float(shrinkage)
        if not 0 <= amount <= 1:
            raise ValueError(f"shrinkage {shrinkage!r}: expected 'ledoit-wolf' or a number in [0, 1]")
        sample = x.T @ x / x.shape[0]
        covariance = amount * np.trace(sample) / p * np.eye(p) + (1 - amount) * sample
    covariance = covariance + floor * np.eye(p)
    precision = np.linalg.inv(covariance)
    return (precision + precision.T) / 2, amount


def _check_training(features, labels) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"training features of shape {x.shape}: expected (n >= 2, feature_dim)")
    if not np.all(np.isfinite(x)):
        raise ValueError("the training features hold NaN or infinite values")
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} training feature rows but {y.shape[0]} labels")
    return x.astype(np.float64), y


# ---------------------------------------------------------------------- fitting


def fit_input_check(features: np.ndarray, labels: np.ndarray, method: str = DEFAULT_METHOD,
                    dims: int = DEFAULT_DIMS, shrinkage: str | float = "ledoit-wolf", k: int = DEFAULT_K) -> InputCheck:
    """Fit the check on the training split's pooled features (n, D) and class labels (n,).

    Classes are those present in ``labels`` (a class absent from the training split has
    no mean and is simply not a centre). ``dims`` is capped at n - 1, the feature dimension
    and the rank of the features (the returned check's ``dims`` says what was used); the
    shrinkage keeps the covariance invertible when there are fewer images than dimensions.
    ``k`` (knn only) is capped at n. The threshold is NaN until ``choose_threshold``.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if int(dims) < 1:
        raise ValueError(f"dims {dims}: expected at least 1")
    x, y = _check_training(features, labels)
    n, d_features = x.shape
    if method == "knn":
        return _fit_knn(x, int(dims), int(k))
    mean, components, singular, d = pca(x, dims)
    centred = x - mean
    z = centred @ components
    classes = np.unique(y)
    class_means = np.stack([z[y == c].mean(axis=0) for c in classes])
    within = z - class_means[np.searchsorted(classes, y)]
    # a floor on the variance: 1e-6 of the average retained variance (features that do not vary within a class)
    floor = 1e-6 * max(float((singular**2).sum() / n / d), np.finfo(np.float32).tiny)
    precision, _ = _shrunk_precision(within, shrinkage, floor)
    common = {"method": method, "dims": d, "threshold": math.nan, "threshold_rule": "", "mean": mean,
              "projection": components, "class_means": class_means, "precision": precision}
    if method == "mahalanobis":
        return InputCheck(**common)
    if method == "relative_mahalanobis":
        background, _ = _shrunk_precision(z, shrinkage, floor)  # z is centred on the training mean
        return InputCheck(**common, background_precision=background)
    # mahalanobis_residual: the class means off the PCA space, and the within-class variance per left-out axis
    full_means = np.stack([centred[y == c].mean(axis=0) for c in classes])
    class_residuals = full_means - (full_means @ components) @ components.T
    residuals = centred - z @ components.T - class_residuals[np.searchsorted(classes, y)]
    degrees = max(n - len(classes), 1)
    left_out = max(d_features - d, 1)
    variance = float((residuals**2).sum() / degrees / left_out)
    variance = max(variance, floor, np.finfo(np.float32).tiny)
    return InputCheck(**common, class_residuals=class_residuals, residual_variance=variance)


def _fit_knn(x: np.ndarray, dims: int, k: int) -> InputCheck:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    normalised = x / np.where(norms > 0, norms, 1)
    mean, components, _, d = pca(normalised, dims)
    # the stored arrays are float32: compute the reference as the score will see it
    mean32, components32 = mean.astype(np.float32), components.astype(np.float32)
    centred = normalised.astype(np.float32) - mean32
    z = (centred @ components32).astype(np.float64)
    residual = np.maximum(np.einsum("nd,nd->n", centred, centred, dtype=np.float64) - (z * z).sum(axis=1), 0.0)
    return InputCheck(method="knn", dims=d, threshold=math.nan, threshold_rule="", mean=mean32,
                      projection=components32, reference=z, reference_residuals=residual,
                      k=max(1, min(int(k), x.shape[0])))


# ---------------------------------------------------------------------- threshold and metrics


def threshold_for(scores: np.ndarray, flag_rate: float = DEFAULT_FLAG_RATE) -> tuple[float, str]:
    """The (1 - flag_rate) quantile of in-distribution scores (the inverted-CDF quantile: at most
    ``flag_rate`` of them lie above it) and the rule as a sentence."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not 0 < flag_rate < 1:
        raise ValueError(f"flag_rate {flag_rate}: expected a number in (0, 1)")
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("the validation scores are empty or not finite")
    threshold = float(np.quantile(s, 1 - flag_rate, method="inverted_cdf"))
    flagged = int((s > threshold).sum())
    percentile = f"{100 * (1 - flag_rate):g}"
    rule = (f"the {percentile}th percentile of the {s.size} validation images' scores: {100 * flag_rate:g} % of "
            f"in-distribution images are flagged (a score above it is flagged; {flagged} of the {s.size} "
            "validation images are)")
    return threshold, rule


def choose_threshold(check: InputCheck, val_features: np.ndarray, flag_rate: float = DEFAULT_FLAG_RATE) -> InputCheck:
    """The check with its threshold set from the validation split's features (in-distribution images)."""
    threshold, rule = threshold_for(check.score(np.atleast_2d(val_features)), flag_rate)
    return dataclasses.replace(check, threshold=threshold, threshold_rule=rule)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(out score > in score) + half P(tie): out-of-distribution images are the positives."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one in-distribution and one out-of-distribution score")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("auroc: the scores hold NaN")
    everything = np.concatenate([a, b])
    order = everything.argsort(kind="mergesort")
    ranks = np.empty(everything.size, dtype=np.float64)
    sorted_values = everything[order]
    # average rank per group of ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], everything.size]
    average = (starts + ends + 1) / 2
    ranks[order] = np.repeat(average, ends - starts)
    out_rank_sum = ranks[a.size:].sum()
    return float((out_rank_sum - b.size * (b.size + 1) / 2) / (a.size * b.size))


def share_flagged(scores: np.ndarray, threshold: float) -> float:
    """Share of images whose score is above the threshold (not-a-number scores count as flagged)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return float(np.mean(~(s <= threshold))) if s.size else math.nan


def max_softmax_score(probabilities: np.ndarray) -> np.ndarray:
    """1 - max p: higher = less confident = more likely out of distribution."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """-logsumexp(logits) (temperature 1): higher = more likely out of distribution."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


# ---------------------------------------------------------------------- comparison


def _outputs(name: str, given: dict | None, ood: dict) -> dict | None:
    if given is None:
        return None
    missing = [key for key in ("val", "test", "ood") if key not in given]
    if missing:
        raise ValueError(f"{name}: missing {', '.join(missing)} (expected {{'val', 'test', 'ood': {{set: array}}}})")
    absent = sorted(set(ood) - set(given["ood"]))
    if absent:
        raise ValueError(f"{name}: no outputs for the set(s) {', '.join(absent)}")
    return given


def _row(method: str, val: np.ndarray, test: np.ndarray, ood: dict[str, np.ndarray], rate: float, **extra) -> dict:
    threshold, rule = threshold_for(val, rate)
    aurocs = {name: auroc(test, scores) for name, scores in ood.items()}
    return {"method": method, "reference": REFERENCES[method], **extra, "threshold": threshold,
            "threshold_rule": rule, "test_flag_rate": share_flagged(test, threshold),
            "auroc": aurocs, "mean_auroc": float(np.mean(list(aurocs.values()))) if aurocs else math.nan,
            "ood_flag_rate": {name: share_flagged(scores, threshold) for name, scores in ood.items()}}


def compare_methods(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                    test_features: np.ndarray, ood_features: dict[str, np.ndarray], *,
                    probabilities: dict | None = None, logits: dict | None = None, dims: int = DEFAULT_DIMS,
                    k: int = DEFAULT_K, flag_rate: float = DEFAULT_FLAG_RATE,
                    methods: Sequence[str] = METHODS) -> list[dict]:
    """One row per method: AUROC per out-of-distribution set (against the test split's
    in-distribution images), its mean, and the flag rates (test split, each set) at the
    method's own threshold chosen on the validation split.

    ``probabilities`` / ``logits``: ``{"val": (n, C), "test": (n, C), "ood": {set: (m, C)}}``,
    the classifier's outputs for the same images; with them the max-softmax (and energy)
    baselines get a row too (``servable`` False: they are not a check file).
    Rows of servable methods carry ``dims`` (as fitted) and ``file_bytes`` (the .npz size).
    """
    rows = []
    val = np.atleast_2d(val_features)
    test = np.atleast_2d(test_features)
    for method in methods:
        check = fit_input_check(train_features, train_labels, method=method, dims=dims, k=k)
        ood = {name: check.score(np.atleast_2d(f)) for name, f in ood_features.items()}
        row = _row(method, check.score(val), check.score(test), ood, flag_rate, servable=True, dims=check.dims)
        served = dataclasses.replace(check, threshold=row["threshold"], threshold_rule=row["threshold_rule"])
        row["file_bytes"] = len(served.to_bytes())
        if method == "knn":
            row["k"] = check.k
        rows.append(row)
    for name, given, scorer in (("max_softmax", probabilities, max_softmax_score), ("energy", logits, energy_score)):
        given = _outputs(name, given, ood_features)
        if given is not None:
            ood = {set_name: scorer(given["ood"][set_name]) for set_name in ood_features}
            rows.append(_row(name, scorer(given["val"]), scorer(given["test"]), ood, flag_rate, servable=False))
    return rows


def pick_default(rows: list[dict]) -> str:
    """The servable method with the best mean AUROC over the sets (ties: the earlier row)."""
    servable = [row for row in rows if row.get("servable") and not math.isnan(row["mean_auroc"])]
    if not servable:
        raise ValueError("no servable method with an AUROC to choose from")
    return max(servable, key=lambda row: row["mean_auroc"])["method"]


def check_size(check: InputCheck) -> int:
    """Bytes of the .npz the check writes (threshold set or not)."""
    if not check.has_threshold:
        check = dataclasses.replace(check, threshold=0.0)
    return len(check.to_bytes())


__all__ = ["BASELINES", "DEFAULT_DIMS", "DEFAULT_FLAG_RATE", "DEFAULT_K", "DEFAULT_METHOD", "REFERENCES", "auroc",
           "check_size", "choose_threshold", "compare_methods", "energy_score", "fit_input_check",
           "ledoit_wolf", "max_softmax_score", "pca", "pick_default", "share_flagged", "threshold_for"]
