"""Score the freshly exported TFLite files with LiteRT, as the function will run them:
each variant's speed and agreement with the Keras model on non-test images (the evidence
the served variant is chosen on, ``export.variants.choose_default``: probabilities, class
maps and, for a multitask model, the lesion map), then the served variant's own test
metrics, its class maps against the lesion masks and its lesion map's segmentation.
Every output of an image comes from one invoke (``Predictor.raw_all``).

Works on files and plain arrays: the Keras model's outputs come in as data
(``GateEvidence``, ``TestSet``); no TensorFlow, nothing of training.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busi_classifier.console import native_stderr_silenced
from busi_classifier.export.variants import agreement_evidence, choose_default
from busi_classifier.serving.constants import CLASSES


@dataclass
class GateEvidence:
    """Images the variants are compared with the Keras model on, and the Keras model's
    probabilities for them. No test image: the test split only reports."""

    images: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray
    reference: np.ndarray  # the Keras model's probabilities
    reference_maps: np.ndarray | None  # the Keras model's class maps (N, h, w, classes); None: the graph has none
    description: str  # which images, for model.json's variant_rule
    reference_lesion: np.ndarray | None = None  # the Keras model's lesion maps (N, h, w); None: classify-only
    lesion_threshold: float | None = None  # the card's lesion threshold (needed with reference_lesion)


@dataclass
class TestSet:
    """The test split the served variant is scored on (with the Keras model's metrics
    beside it)."""

    images: np.ndarray
    labels: np.ndarray
    groups: list  # near-duplicate group of each image (cluster bootstrap), or None
    keras_metrics: dict  # evaluate_predictions of the Keras model
    masks: list  # lesion mask of each image over the model input ((size, size) bool), None without a lesion
    temperature: float
    bootstrap_resamples: int
    seed: int


@dataclass
class ServedScore:
    """The served variant's own test predictions and metrics."""

    variant: str
    file: str
    raw: np.ndarray  # uncalibrated probabilities on the test split
    maps: np.ndarray | None  # class maps on the test split (N, h, w, classes); None: the file has none
    masks: list  # the test images' lesion masks (TestSet.masks)
    metrics: dict  # evaluate_predictions (calibrated with model.json's temperature)
    lesion: np.ndarray | None = None  # lesion maps on the test split (N, h, w); None: a classify-only file


def file_predictor(path: Path, image_size: int, num_threads: int | None = 1):
    """A LiteRT predictor of a freshly written .tflite file (model.json does not exist
    yet): one thread for the latency, LiteRT's default for scoring many images."""
    from busi_classifier.serving.predictor import Predictor

    return Predictor.for_file(path, CLASSES, image_size, num_threads)


def latency_ms(predictor, image: np.ndarray, repeats: int = 10) -> float:
    """Median time of one invoke on one thread (after two warm-up runs)."""
    for _ in range(2):
        predictor.predict_array(image, calibrated=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict_array(image, calibrated=False)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def gate_variants(out_dir: Path, files: dict[str, dict], gate: GateEvidence | None, image_size: int,
                  verbose: bool = False) -> tuple[str, str, str]:
    """Time each variant file and compare it with the Keras model on ``gate``'s images;
    pick the served variant by ``choose_default``.

    Args:
        out_dir: the folder the variant files are in.
        files: variant name -> {"file", ...} (as ``export.tflite.write_model_files``
            returns); each entry gets ``latency_ms`` and ``evidence`` here.
        gate: the non-test images and the Keras model's outputs for them; None: nothing
            is measured and float32, the reference, is served. With the Keras model's
            lesion maps (and the threshold), each file's lesion map is gated too
            (``export.variants.lesion_agreement``).
        image_size: the model's input side.
        verbose: let LiteRT print its own lines.

    Returns:
        (default variant, the reason, which images the evidence is on).
    """
    if gate is None:
        return "float32", "no gate evidence given: the float32 reference is served", "none"
    if gate.reference_lesion is not None and gate.lesion_threshold is None:
        raise ValueError("the gate evidence has the Keras model's lesion maps but no lesion threshold to compare at")
    probe = gate.images[0] if len(gate.images) else np.zeros((image_size,) * 2 + (3,), np.uint8)
    for entry in files.values():
        with contextlib.nullcontext() if verbose else native_stderr_silenced():  # LiteRT's "INFO: Created ..."
            timed = file_predictor(out_dir / entry["file"], image_size)
            batch = file_predictor(out_dir / entry["file"], image_size, num_threads=None)
        entry["latency_ms"] = latency_ms(timed, probe)
        outputs = batch.raw_all(gate.images)
        lesion = outputs.get("lesion")
        if gate.reference_lesion is not None and lesion is None:
            raise ValueError(f"{entry['file']} has no lesion output, but the Keras model it was exported from has one")
        entry["evidence"] = agreement_evidence(
            gate.reference, outputs["probabilities"], gate.labels, gate.reference_maps, outputs.get("class_maps"),
            reference_lesion=gate.reference_lesion, candidate_lesion=lesion, lesion_threshold=gate.lesion_threshold)
    default, reason = choose_default(files, f"{len(gate.images)} train+val images and augmented views")
    return default, reason, gate.description


def score_served(path: Path, variant: str, test: TestSet, image_size: int, verbose: bool = False,
                 lesion_threshold: float | None = None) -> ServedScore:
    """The served file's own test metrics (with intervals, calibrated with ``test``'s
    temperature), its class maps against the lesion masks and, for a file with a lesion
    output, its segmentation of the test images.

    Args:
        path: the served variant's .tflite file.
        variant: its name.
        test: the test split and what scoring it needs.
        image_size: the model's input side.
        verbose: let LiteRT print its own lines.
        lesion_threshold: the card's lesion threshold (chosen on validation images); with
            it, a file with a lesion output gets ``metrics["segmentation"]``
            (``evaluation.segmentation.segmentation_report``); None: not scored.

    Returns:
        the served variant's predictions and metrics (``metrics["localisation"]`` where the
        file has class maps, ``metrics["segmentation"]`` where it has a lesion map and a
        threshold is given).
    """
    from busi_classifier.evaluation.localisation import served_localisation
    from busi_classifier.evaluation.metrics import evaluate_predictions

    with contextlib.nullcontext() if verbose else native_stderr_silenced():
        served = file_predictor(path, image_size, num_threads=None)
    outputs = served.raw_all(test.images)
    raw, maps, lesion = outputs["probabilities"], outputs.get("class_maps"), outputs.get("lesion")
    score = ServedScore(variant, path.name, raw, maps, test.masks,
                        evaluate_predictions(test.labels, raw, test.temperature, test.bootstrap_resamples,
                                             test.seed, groups=test.groups), lesion)
    if maps is not None:
        score.metrics["localisation"] = served_localisation(maps, raw, test.masks, test.groups,
                                                            test.bootstrap_resamples, test.seed)
    if lesion is not None and lesion_threshold is not None:
        from busi_classifier.evaluation.segmentation import input_areas, segmentation_report

        score.metrics["segmentation"] = segmentation_report(
            lesion, test.masks, test.labels, image_size, lesion_threshold, test.groups, test.bootstrap_resamples,
            test.seed, areas=input_areas(test.images),
            class_map_grid=None if maps is None else tuple(np.shape(maps)[1:3]))
    return score


def card_metrics(score: ServedScore, keras_metrics: dict) -> dict:
    """model.json's ``metrics``: the served file's test headline, the Keras model's beside it."""
    return {
        "served": {"variant": score.variant, "file": score.file, "test": headline(score.metrics)},
        "keras": {"file": "model.keras", "test": headline(keras_metrics)},
    }


def headline(metrics: dict) -> dict:
    """What model.json carries of a split's metrics: the numbers, their intervals, the
    confusion matrix; not the reliability table."""
    return {k: v for k, v in metrics.items() if k != "reliability"}
