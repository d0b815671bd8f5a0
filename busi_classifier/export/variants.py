"""The exported TFLite variants and the rule that picks the one the function serves.

No TensorFlow here: the rule and the evidence are NumPy, so the serving world can read
them and tests can check the rule on constructed evidence.
"""

from __future__ import annotations

import numpy as np

# name -> file written beside model.json (model.tflite keeps its name: float32 is the reference)
VARIANT_FILES = {
    "float32": "model.tflite",
    "float16": "model_float16.tflite",
    "int8_dynamic": "model_int8_dynamic.tflite",
    "int8_full": "model_int8_full.tflite",
}
VARIANTS = tuple(VARIANT_FILES)
MAX_MACRO_F1_LOSS = 0.01  # at most 1 point of macro-F1 lost against the Keras model
MIN_TOP1_AGREEMENT = 0.99  # at least 99 % of test images get the Keras model's class


def agreement_evidence(reference: np.ndarray, candidate: np.ndarray, y_true: np.ndarray) -> dict:
    """How closely ``candidate`` probabilities follow ``reference`` (the Keras model) on
    the same images: top-1 agreement, macro-F1 and macro-AUC differences, largest
    probability difference."""
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
    }


def passes_gates(evidence: dict) -> bool:
    return (evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12
            and evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12)


def choose_default(variants: dict[str, dict]) -> tuple[str, str]:
    """(name, reason): the fastest variant (lowest ``latency_ms``) whose evidence passes
    both gates; float32, the reference, when none does."""
    passing = [name for name, v in variants.items() if passes_gates(v["evidence"])]
    if not passing:
        return "float32", "no variant passed the accuracy gates: the float32 reference is served"
    best = min(passing, key=lambda name: (variants[name]["latency_ms"], VARIANTS.index(name)))
    v = variants[best]
    return best, (f"fastest variant ({v['latency_ms']:.1f} ms per image at export) with macro-F1 loss <= "
                  f"{MAX_MACRO_F1_LOSS:.2f} and top-1 agreement >= {MIN_TOP1_AGREEMENT:.0%} on the test split "
                  f"(agreement {v['evidence']['top1_agreement']:.3f}, macro-F1 diff "
                  f"{v['evidence']['macro_f1_diff']:+.3f})")
