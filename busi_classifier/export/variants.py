"""The exported TFLite variants and the rule that picks the one the function serves.

No TensorFlow here: the rule and the evidence are NumPy, so the serving world can read
them and tests can check the rule on constructed evidence.
"""

from __future__ import annotations

import numpy as np

from busi_classifier.serving.constants import VARIANT_FILES, VARIANTS  # noqa: F401  (re-exported)

MAX_MACRO_F1_LOSS = 0.01  # at most 1 point of macro-F1 lost against the Keras model
MIN_TOP1_AGREEMENT = 0.99  # at least 99 % of the gate images get the Keras model's class
MAX_MAP_DIFF = 0.10  # class maps: mean absolute difference of the 0..1 maps at most 0.10
# Lesion map: the mean per-image Dice between the variant's and the Keras model's thresholded
# maps at least 0.90. A lesion of 30 px radius (at 224 px) whose outline moves inwards by 3 px
# all round scores Dice 2 x 27^2 / (27^2 + 30^2) = 0.895: 0.90 tolerates less than one map cell
# (4 px) of outline disagreement on an average image, far less than the distance between any
# model's outline and the mask (BUSI Dice is typically 0.6 to 0.8), while a variant that loses a
# lesion, or finds one the Keras model does not, costs that image its whole Dice (0).
MIN_LESION_DICE = 0.90
# Input check: at least 98 % of the gate images get the same in-distribution decision from
# the variant (its features scored at the threshold chosen on its own validation features,
# as it would be served) as from the Keras model (its features at the threshold chosen on
# the Keras model's validation features). With the threshold at the 95th percentile of the
# validation scores, about 1 image in 20 lies near it; 2 % tolerates a few of those
# crossing it, not a quantisation that moves the scores of many images.
MIN_INPUT_CHECK_AGREEMENT = 0.98


def map_agreement(reference_maps: np.ndarray, candidate_maps: np.ndarray, classes: np.ndarray) -> dict:
    """How closely ``candidate`` class maps (N, h, w, C) follow ``reference`` ones, each
    image's map of ``classes[i]`` (the Keras model's predicted class) normalised to 0..1
    as the API sends it: mean and largest per-image mean absolute difference, and the
    share of images whose peak cell is the same."""
    from busi_classifier.serving.explain import normalise_map

    if not len(classes):
        return {"map_mean_abs_diff": 0.0, "map_max_abs_diff": 0.0, "map_peak_agreement": 1.0}
    diffs, same_peak = [], []
    for ref, cand, c in zip(reference_maps, candidate_maps, classes, strict=True):
        a, b = normalise_map(ref[..., c]), normalise_map(cand[..., c])
        diffs.append(float(np.abs(a - b).mean()))
        same_peak.append(int(np.argmax(a)) == int(np.argmax(b)))
    return {"map_mean_abs_diff": float(np.mean(diffs)), "map_max_abs_diff": float(np.max(diffs)),
            "map_peak_agreement": float(np.mean(same_peak))}


def _lesion_grid(grid: np.ndarray) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float32)
    return grid[..., 0] if grid.ndim == 3 and grid.shape[-1] == 1 else grid


def lesion_agreement(reference_grids: np.ndarray, candidate_grids: np.ndarray, threshold: float,
                     size: int | None = None) -> dict:
    """How closely ``candidate`` lesion maps (N, h, w) follow ``reference`` ones (the Keras
    model's), as the API would outline them: each map upsampled to the square model input
    (``serving.lesion.upsample_map``; ``size`` defaults to MAP_STRIDE x h) and
    thresholded (>= ``threshold``), then per image the Dice of the two masks (1.0 when both
    are empty, 0.0 when one only is).

    Returns: ``lesion_threshold``, ``lesion_dice_mean``, ``lesion_dice_p05`` (5th
    percentile), ``lesion_dice_min``, ``lesion_found_agreement`` (share of images where
    both or neither find a lesion), ``lesion_peak_agreement`` (share with the same peak
    cell) and ``lesion_max_abs_diff`` (largest probability difference of a map cell)."""
    from busi_classifier.serving.lesion import MAP_STRIDE, upsample_map

    reference_grids, candidate_grids = list(reference_grids), list(candidate_grids)
    if len(reference_grids) != len(candidate_grids):
        raise ValueError(f"{len(reference_grids)} reference lesion maps for {len(candidate_grids)} candidate ones")
    base = {"lesion_threshold": float(threshold)}
    if not reference_grids:
        return {**base, "lesion_dice_mean": 1.0, "lesion_dice_p05": 1.0, "lesion_dice_min": 1.0,
                "lesion_found_agreement": 1.0, "lesion_peak_agreement": 1.0, "lesion_max_abs_diff": 0.0}
    cut = np.float32(threshold)
    dice, same_found, same_peak, diffs = [], [], [], []
    for i, (ref, cand) in enumerate(zip(reference_grids, candidate_grids, strict=True)):
        ref, cand = _lesion_grid(ref), _lesion_grid(cand)
        if ref.shape != cand.shape or ref.ndim != 2:
            raise ValueError(f"image {i}: lesion maps of shapes {ref.shape} and {cand.shape}; one (h, w) grid each")
        side = int(size) if size is not None else MAP_STRIDE * ref.shape[0]
        a, b = upsample_map(ref, side) >= cut, upsample_map(cand, side) >= cut
        total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        dice.append(2 * int(np.count_nonzero(a & b)) / total if total else 1.0)
        same_found.append(bool(a.any()) == bool(b.any()))
        same_peak.append(int(np.argmax(ref)) == int(np.argmax(cand)))
        diffs.append(float(np.abs(ref.astype(np.float64) - cand).max()))
    return {**base, "lesion_dice_mean": float(np.mean(dice)), "lesion_dice_p05": float(np.quantile(dice, 0.05)),
            "lesion_dice_min": float(np.min(dice)), "lesion_found_agreement": float(np.mean(same_found)),
            "lesion_peak_agreement": float(np.mean(same_peak)), "lesion_max_abs_diff": float(np.max(diffs))}


def input_check_agreement(reference_scores: np.ndarray, candidate_scores: np.ndarray, reference_threshold: float,
                          candidate_threshold: float) -> dict:
    """How closely a variant's input-check decisions follow the Keras model's on the same
    images: each side's scores (N,) against its own threshold (a score above it, or one
    that is not a number, is flagged, as ``InputCheck.answer`` decides).

    Returns: ``input_check_agreement`` (share of images with the same in-distribution
    decision), ``input_check_threshold`` and ``input_check_reference_threshold``,
    ``input_check_flagged`` and ``input_check_reference_flagged`` (shares flagged) and
    ``input_check_score_rel_diff_median`` (the median of |candidate score - reference
    score| / |reference threshold|: how far the scores move, in units of the threshold;
    None where a score is not a number)."""
    ref = np.asarray(reference_scores, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate_scores, dtype=np.float64).reshape(-1)
    if ref.shape != cand.shape:
        raise ValueError(f"{ref.size} reference input-check scores for {cand.size} candidate ones")
    base = {"input_check_threshold": float(candidate_threshold),
            "input_check_reference_threshold": float(reference_threshold)}
    if not ref.size:
        return {**base, "input_check_agreement": 1.0, "input_check_flagged": 0.0, "input_check_reference_flagged": 0.0,
                "input_check_score_rel_diff_median": 0.0}
    ref_in, cand_in = ref <= reference_threshold, cand <= candidate_threshold
    scale = abs(float(reference_threshold)) or 1.0
    diff = np.abs(cand - ref) / scale
    return {**base, "input_check_agreement": float(np.mean(ref_in == cand_in)),
            "input_check_flagged": float(np.mean(~cand_in)), "input_check_reference_flagged": float(np.mean(~ref_in)),
            "input_check_score_rel_diff_median": float(np.median(diff)) if np.isfinite(diff).all() else None}


def agreement_evidence(reference: np.ndarray, candidate: np.ndarray, y_true: np.ndarray,
                       reference_maps: np.ndarray | None = None, candidate_maps: np.ndarray | None = None,
                       reference_lesion: np.ndarray | None = None, candidate_lesion: np.ndarray | None = None,
                       lesion_threshold: float | None = None, input_check: dict | None = None) -> dict:
    """How closely ``candidate`` probabilities follow ``reference`` (the Keras model) on
    the same images: top-1 agreement, macro-F1 and macro-AUC differences, largest
    probability difference; with both models' class maps, their agreement too; with both
    models' lesion maps (N, h, w) and the card's ``lesion_threshold``, ``lesion_agreement``;
    with ``input_check`` (``input_check_agreement``'s keyword arguments: both sides'
    scores and thresholds), the input-check decision agreement."""
    from busi_classifier.evaluation.metrics import point_metrics

    ref, cand = point_metrics(y_true, reference), point_metrics(y_true, candidate)
    auc_diff = None
    if ref["macro_auc"] is not None and cand["macro_auc"] is not None:
        auc_diff = cand["macro_auc"] - ref["macro_auc"]
    return {
        "n": int(len(y_true)),
        "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))) if len(y_true) else 1.0,
        "macro_f1": cand["macro_f1"],
        "macro_f1_diff": cand["macro_f1"] - ref["macro_f1"],
        "macro_auc_diff": auc_diff,
        "max_probability_diff": float(np.abs(reference - candidate).max()) if len(y_true) else 0.0,
        **(map_agreement(reference_maps, candidate_maps, reference.argmax(1))
           if reference_maps is not None and candidate_maps is not None else {}),
        **(lesion_agreement(reference_lesion, candidate_lesion, lesion_threshold)
           if reference_lesion is not None and candidate_lesion is not None and lesion_threshold is not None else {}),
        **(input_check_agreement(**input_check) if input_check is not None else {}),
    }


def passes_gates(evidence: dict) -> bool:
    """Macro-F1 loss and top-1 agreement; the class maps' difference, the lesion maps'
    mean Dice (``MIN_LESION_DICE``) and the input-check decision agreement
    (``MIN_INPUT_CHECK_AGREEMENT``) too where measured."""
    maps_ok = evidence.get("map_mean_abs_diff") is None or evidence["map_mean_abs_diff"] <= MAX_MAP_DIFF + 1e-12
    lesion_ok = evidence.get("lesion_dice_mean") is None or evidence["lesion_dice_mean"] >= MIN_LESION_DICE - 1e-12
    check_ok = (evidence.get("input_check_agreement") is None
                or evidence["input_check_agreement"] >= MIN_INPUT_CHECK_AGREEMENT - 1e-12)
    return (evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12
            and evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12 and maps_ok and lesion_ok and check_ok)


def choose_default(variants: dict[str, dict], evidence: str = "train+val images") -> tuple[str, str]:
    """(name, reason): the fastest variant (lowest ``latency_ms``) whose evidence passes
    the gates (``passes_gates``); float32, the reference, when none does. ``evidence``
    names the images the gates were measured on (never the test split, which only
    reports). The reason names the lesion-map and input-check gates where they were measured."""
    passing = [name for name, v in variants.items() if passes_gates(v["evidence"])]
    if not passing:
        return "float32", "no variant passed the accuracy gates: the float32 reference is served"
    best = min(passing, key=lambda name: (variants[name]["latency_ms"], VARIANTS.index(name)))
    v = variants[best]
    lesion = v["evidence"].get("lesion_dice_mean")
    check = v["evidence"].get("input_check_agreement")
    gates = [f"top-1 agreement >= {MIN_TOP1_AGREEMENT:.0%}", f"class-map difference <= {MAX_MAP_DIFF:.2f}"]
    if lesion is not None:
        gates.append(f"lesion-map Dice >= {MIN_LESION_DICE:.2f}")
    if check is not None:
        gates.append(f"input-check agreement >= {MIN_INPUT_CHECK_AGREEMENT:.0%}")
    listed = ", ".join(gates[:-1]) + " and " + gates[-1]
    return best, (f"fastest variant ({v['latency_ms']:.1f} ms per image at export) with macro-F1 loss <= "
                  f"{MAX_MACRO_F1_LOSS:.2f}, {listed}"
                  f" on {evidence} (agreement {v['evidence']['top1_agreement']:.3f}, macro-F1 diff "
                  f"{v['evidence']['macro_f1_diff']:+.3f}"
                  + (f", lesion-map Dice {lesion:.3f}" if lesion is not None else "")
                  + (f", input-check agreement {check:.3f}" if check is not None else "") + ")")
