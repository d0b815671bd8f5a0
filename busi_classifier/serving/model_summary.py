"""How good is the served model? A few lines of its card for the people who see its answers.

``model_summary(card)`` turns a ``ModelCard`` (model.json) into a small JSON-ready dict:
the served variant's test figures (accuracy and macro-F1 with their bootstrap 95 %
intervals, the number of test images), the weights training started from, whether the
training data was the synthetic demo set, whether the model outlines lesions
(``segment``: its card describes a lesion output), whether it checks its input and what
a flagged image gets (``input_check``), a one-line ``text`` and, for a demo model, a
``notice``. ``GET /health`` carries it as ``"model"`` (the page shows it under
the class and asks for the lesion outline only where ``segment`` is true)
and ``python -m busi_classifier predict`` prints it beside its table.

Whether the data was synthetic: ``python -m busi_classifier synthesize`` writes a marker
file (SYNTHETIC.md) at the root of every set it makes, and training records
``dataset.synthetic`` (a boolean) in model.json from it, wherever the set was saved. For a
card exported before that field existed, the data counts as synthetic when the dataset
folder, or the ``--data`` folder training was given, has "synthetic" in its name (``make
demo`` writes ``data/synthetic``). ``synthetic_basis`` says which rule decided.

Nothing in the answer is a path of the machine that trained the model (a weights file is
named by its file name only). Standard library and the serving package only: it ships in
the Lambda image.
"""

from __future__ import annotations

import math
import re

from .card import ModelCard
from .settings import DEFAULT_OOD_ACTION, OOD_ACTIONS

# Where the figures are explained in full (the real-data run, intervals, what they do not say)
REPORT = "docs/evaluation.md"
DEMO_NOTICE = "demo model, synthetic data: not a classifier of real scans"
SYNTHETIC_WORD = re.compile(r"synthetic", re.IGNORECASE)


def model_summary(card: ModelCard, ood_action: str = DEFAULT_OOD_ACTION) -> dict:
    """The served model's test figures and provenance, from its card.

    Args:
        card: the served model's card (model.json).
        ood_action: what the API does with an image the input check flags (OOD_ACTION:
            "flag" or "refuse"; the local tools always flag).

    Returns:
        ``{"model_version", "variant", "test", "weights", "initialisation", "synthetic",
        "synthetic_basis", "segment", "input_check", "notice", "text", "report"}``: ``segment`` is
        whether the model has a lesion map (``"segment": true`` requests work);
        ``input_check`` is ``{"available", "action", "method", "threshold", "flag_rate"}``
        (``available`` false, the rest null but ``action``, for a model without the check:
        its answers carry no ``input_check`` and nothing is refused); ``test`` is ``{"split",
        "images", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95",
        "bootstrap_unit"}`` or None when model.json holds no test figures (an export
        without evaluation data); an interval is ``[low, high]`` or None; ``weights`` is
        "none", "imagenet", a weights file's name, or None when not recorded;
        ``notice`` is the demo-model sentence or None.
    """
    served = card.metrics.get("served") if isinstance(card.metrics, dict) else None
    served = served if isinstance(served, dict) else {}
    test = _test_figures(served.get("test"))
    weights = _weights(card.training.get("weights") if isinstance(card.training, dict) else None)
    synthetic, basis = _synthetic(card)
    initialisation = _initialisation(weights)
    if test is None:
        text = "No test figures in model.json (exported without evaluation data)"
    else:
        text = (f"Test accuracy {_number(test['accuracy'])}{_ci(test['accuracy_ci95'])} on {test['images']} "
                f"images, macro-F1 {_number(test['macro_f1'])}{_ci(test['macro_f1_ci95'])}")
    text += f"; {initialisation}"
    return {
        "model_version": card.model_version,
        "variant": served.get("variant") if isinstance(served.get("variant"), str) else card.default_variant,
        "test": test,
        "weights": weights,
        "initialisation": initialisation,
        "synthetic": synthetic,
        "synthetic_basis": basis,
        "segment": card.lesion is not None,
        "input_check": _input_check(card, ood_action),
        "notice": DEMO_NOTICE if synthetic else None,
        "text": text,
        "report": REPORT,
    }


def summary_line(summary: dict) -> str:
    """One line for a terminal: the text, the demo notice (upper case) where it applies,
    and where the full report is."""
    notice = f" {summary['notice'].upper()}." if summary.get("notice") else ""
    return f"model {summary['model_version']}: {summary['text']}.{notice} Full report: {summary['report']}"


# --- the parts ------------------------------------------------------------------------

def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval(value) -> list[float] | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    low, high = _finite(value[0]), _finite(value[1])
    return None if low is None or high is None else [low, high]


def _test_figures(test) -> dict | None:
    """The served variant's test split figures (model.json ``metrics.served.test``)."""
    if not isinstance(test, dict):
        return None
    accuracy, macro_f1 = _finite(test.get("accuracy")), _finite(test.get("macro_f1"))
    images = test.get("n")
    if accuracy is None or macro_f1 is None or isinstance(images, bool) or not isinstance(images, int):
        return None
    intervals = test.get("ci95") if isinstance(test.get("ci95"), dict) else {}
    unit = test.get("bootstrap_unit")
    return {
        "split": "test",
        "images": images,
        "accuracy": accuracy,
        "accuracy_ci95": _interval(intervals.get("accuracy")),
        "macro_f1": macro_f1,
        "macro_f1_ci95": _interval(intervals.get("macro_f1")),
        "bootstrap_unit": unit if isinstance(unit, str) else None,
    }


def _input_check(card: ModelCard, ood_action: str) -> dict:
    """Whether the answers carry ``input_check``, and what a flagged image gets."""
    if ood_action not in OOD_ACTIONS:
        raise ValueError(f"ood_action {ood_action!r}: expected one of {', '.join(OOD_ACTIONS)}")
    spec = card.input_check
    if spec is None:
        return {"available": False, "action": ood_action, "method": None, "threshold": None, "flag_rate": None}
    return {"available": True, "action": ood_action, "method": spec.method, "threshold": spec.threshold,
            "flag_rate": spec.flag_rate}


def _weights(value) -> str | None:
    """"none", "imagenet", or a weights file's name (never its folder)."""
    if not isinstance(value, str) or not value:
        return None
    if value.lower() in ("none", "imagenet"):
        return value.lower()
    return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or None


def _initialisation(weights: str | None) -> str:
    if weights == "none":
        return "random initialisation"
    if weights == "imagenet":
        return "started from ImageNet weights"
    if weights is None:
        return "initial weights not recorded"
    return f"started from the weights in {weights}"


def _folder_names(path) -> list[str]:
    return [part for part in re.split(r"[\\/]", path) if part] if isinstance(path, str) else []


def _synthetic(card: ModelCard) -> tuple[bool, str]:
    """(synthetic?, the rule that decided)."""
    dataset = card.dataset if isinstance(card.dataset, dict) else {}
    if isinstance(dataset.get("synthetic"), bool):
        return dataset["synthetic"], "model.json dataset.synthetic"
    training = card.training if isinstance(card.training, dict) else {}
    for where, path in (("dataset.root", dataset.get("root")), ("training.data_dir", training.get("data_dir"))):
        if any(SYNTHETIC_WORD.search(name) for name in _folder_names(path)):
            return True, f'the dataset folder ({where}) has "synthetic" in its name'
    return False, 'no "synthetic" in the dataset folder names (model.json does not record where the images came from)'


def _number(value: float) -> str:
    return f"{value:.2f}"


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" (95 % CI {_number(interval[0])}-{_number(interval[1])})"
