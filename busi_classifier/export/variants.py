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


def agreement_evidence(reference: np.ndarray, candidate: np.ndarray, y_true: np.ndarray,
                       reference_maps: np.ndarray | None = None, candidate_maps: np.ndarray | None = None) -> dict:
    """How closely ``candidate`` probabilities follow ``reference`` (the Keras model) on
    the same images: top-1 agreement, macro-F1 and macro-AUC differences, largest
    probability difference; with both models' class maps, their agreement too."""
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
    }


def passes_gates(evidence: dict) -> bool:
    """Macro-F1 loss and top-1 agreement; the class maps' difference too where measured."""
    maps_ok = evidence.get("map_mean_abs_diff") is None or evidence["map_mean_abs_diff"] <= MAX_MAP_DIFF + 1e-12
    return (evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12
            and evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12 and maps_ok)


def choose_default(variants: dict[str, dict], evidence: str = "train+val images") -> tuple[str, str]:
    """(name, reason): the fastest variant (lowest ``latency_ms``) whose evidence passes
    both gates; float32, the reference, when none does. ``evidence`` names the images
    the gates were measured on (never the test split, which only reports)."""
    passing = [name for name, v in variants.items() if passes_gates(v["evidence"])]
    if not passing:
        return "float32", "no variant passed the accuracy gates: the float32 reference is served"
    best = min(passing, key=lambda name: (variants[name]["latency_ms"], VARIANTS.index(name)))
    v = variants[best]
    return best, (f"fastest variant ({v['latency_ms']:.1f} ms per image at export) with macro-F1 loss <= "
                  f"{MAX_MACRO_F1_LOSS:.2f}, top-1 agreement >= {MIN_TOP1_AGREEMENT:.0%} and class-map difference <= "
                  f"{MAX_MAP_DIFF:.2f} on {evidence} "
                  f"(agreement {v['evidence']['top1_agreement']:.3f}, macro-F1 diff "
                  f"{v['evidence']['macro_f1_diff']:+.3f})")
