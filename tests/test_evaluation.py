"""Metric functions against hand-computed cases, calibration and temperature scaling."""

import numpy as np
import pytest

from busi_classifier.evaluation.metrics import (
    apply_temperature,
    bootstrap_intervals,
    evaluate_predictions,
    fit_temperature,
    negative_log_likelihood,
    point_metrics,
    reliability,
    roc_auc,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)


def one_hot_probs(pred, confidence=0.8, n=3):
    p = np.full((len(pred), n), (1 - confidence) / (n - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_confusion_precision_recall_f1_by_hand():
    # true:  0 0 1 1 1 2 ; pred: 0 1 1 1 2 2
    y = np.array([0, 0, 1, 1, 1, 2])
    m = point_metrics(y, one_hot_probs([0, 1, 1, 1, 2, 2]))
    assert m["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    benign = m["per_class"]["benign"]
    assert benign["precision"] == pytest.approx(2 / 3) and benign["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["normal"]["recall"] == pytest.approx(0.5) and m["per_class"]["normal"]["precision"] == 1.0
    malignant = m["per_class"]["malignant"]
    assert malignant["precision"] == pytest.approx(0.5) and malignant["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3) / 3)


def test_class_with_no_positives():
    """No malignant image: its recall, F1 and AUC are undefined (0 / None), not a crash,
    and balanced accuracy and macro AUC average the classes that are present."""
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    m = point_metrics(y, p)
    assert m["per_class"]["malignant"]["support"] == 0
    assert m["per_class"]["malignant"]["recall"] == 0.0 and m["per_class"]["malignant"]["roc_auc"] is None
    assert m["malignant_sensitivity_at_90_specificity"] is None
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["per_class"]["normal"]["roc_auc"] == pytest.approx(1.0)
    assert m["macro_auc"] == pytest.approx(np.mean([m["per_class"]["normal"]["roc_auc"],
                                                    m["per_class"]["benign"]["roc_auc"]]))


def test_roc_auc_by_hand_with_ties():
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.6, 0.6, 0.2, 0.4, 0.5])
    # positives 0.9, 0.6, 0.4 vs negatives 0.6, 0.5, 0.2: wins 3 + (1 tie = .5) + 1 + 1 (0.6>0.5, 0.6>0.2) ...
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_operating_points_by_hand():
    # 10 negatives, 10 positives; scores separate except one negative scored high
    y = np.array([0] * 10 + [1] * 10)
    s = np.r_[np.linspace(0.0, 0.4, 9), 0.95, np.linspace(0.5, 0.9, 10)]
    # specificity >= 0.9 allows one false positive: threshold at 0.5 keeps all positives
    assert sensitivity_at_specificity(y, s, 0.9) == pytest.approx(1.0)
    # specificity 1.0 requires scores above 0.95: no positive
    assert sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.0)
    # sensitivity >= 0.9 at threshold 0.55..: 9 negatives below, the 0.95 one above
    assert specificity_at_sensitivity(y, s, 0.9) == pytest.approx(0.9)


def test_reliability_and_ece_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.35, 0.65, 0.0], [0.65, 0.35, 0.0]])
    r = reliability(y, p, bins=10)
    # bin 0.9-1.0: two right at 0.95 -> |1 - .95|; bin 0.6-0.7: one right one wrong at .65 -> |.5 - .65|
    assert r["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.15)
    assert sum(b["n"] for b in r["bins"]) == 4


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.0  # some signal
    logits *= 6.0  # overconfident
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = fit_temperature(y, p)
    assert t > 2.0
    calibrated = apply_temperature(p, t)
    assert negative_log_likelihood(y, calibrated) < negative_log_likelihood(y, p) - 0.1
    assert reliability(y, calibrated)["ece"] < reliability(y, p)["ece"]
    assert (calibrated.argmax(1) == p.argmax(1)).all(), "temperature never changes the predicted class"
    # the exact equivalence with scaling the logits
    scaled = np.exp(logits / t - (logits / t).max(1, keepdims=True))
    assert np.allclose(calibrated, scaled / scaled.sum(1, keepdims=True), atol=1e-9)


def test_temperature_of_a_calibrated_model_stays_near_one():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([2, 2, 2], size=2000)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(y, p) == pytest.approx(1.0, abs=0.15)


def test_bootstrap_interval_contains_the_point_and_narrows_with_n():
    rng = np.random.default_rng(2)

    def sample(n):
        y = rng.integers(0, 3, n)
        return y, np.where(rng.random(n)[:, None] < 0.7, np.eye(3)[y] * 0.8 + 0.066, rng.dirichlet([1, 1, 1], n))

    y, p = sample(60)
    ci = bootstrap_intervals(y, p, n_resamples=300, seed=0)
    point = point_metrics(y, p)
    assert ci["accuracy"][0] <= point["accuracy"] <= ci["accuracy"][1]
    y2, p2 = sample(600)
    ci2 = bootstrap_intervals(y2, p2, n_resamples=300, seed=0)
    assert ci2["accuracy"][1] - ci2["accuracy"][0] < ci["accuracy"][1] - ci["accuracy"][0]
    assert bootstrap_intervals(y, p, n_resamples=50, seed=3) == bootstrap_intervals(y, p, n_resamples=50, seed=3)


def test_evaluate_predictions_reports_calibrated_and_raw():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = one_hot_probs([0, 1, 2, 1, 1, 0], confidence=0.99)
    m = evaluate_predictions(y, p, temperature=3.0, n_resamples=50)
    assert m["temperature"] == 3.0
    assert m["nll"] < m["uncalibrated"]["nll"]
    assert set(m["ci95"]) >= {"accuracy", "macro_f1", "macro_auc"}
    assert len(m["reliability"]) == 10


def test_group_bootstrap_resamples_whole_near_duplicate_groups():
    """Three copies of each of 40 frames are 40 pieces of evidence, not 120: resampling
    whole groups gives exactly the interval of the de-duplicated set, and resampling the
    copies one by one gives a narrower, overconfident one."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 40)
    p = np.where(rng.random(40)[:, None] < 0.6, np.eye(3)[y] * 0.7 + 0.1, rng.dirichlet([1, 1, 1], 40))
    y3, p3, groups = np.repeat(y, 3), np.repeat(p, 3, axis=0), np.repeat(np.arange(40), 3)
    unique = bootstrap_intervals(y, p, n_resamples=400, seed=1)
    grouped = bootstrap_intervals(y3, p3, n_resamples=400, seed=1, groups=list(groups))
    per_image = bootstrap_intervals(y3, p3, n_resamples=400, seed=1)
    for key in ("accuracy", "macro_f1", "macro_auc"):
        assert grouped[key] == pytest.approx(unique[key]), key
    width = {name: ci["accuracy"][1] - ci["accuracy"][0] for name, ci in (("grouped", grouped),
                                                                           ("per_image", per_image))}
    assert width["per_image"] < 0.75 * width["grouped"]
    m = evaluate_predictions(y3, p3, n_resamples=50, groups=list(groups))
    assert (m["bootstrap_unit"], m["bootstrap_units"]) == ("near-duplicate group", 40)
    assert evaluate_predictions(y3, p3, n_resamples=50)["bootstrap_unit"] == "image"
    with pytest.raises(ValueError, match="group ids"):
        bootstrap_intervals(y3, p3, n_resamples=5, groups=list(groups[:-1]))
