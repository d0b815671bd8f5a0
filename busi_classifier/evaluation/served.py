"""Score the freshly exported TFLite files with LiteRT, as the function will run them:
each variant's speed and agreement with the Keras model on non-test images (the evidence
the served variant is chosen on, ``export.variants.choose_default``: probabilities, class
maps, a multitask model's lesion map and the input check's decisions), then the served
variant's own test metrics, its class maps against the lesion masks, its lesion map's
segmentation, and its input check: the threshold chosen on the served file's features of
the validation split (``input_check_threshold``), the flag rate on the test split and the
AUROC and flag rate on each out-of-distribution set (``evaluation.ood_sets``), each image
of those as the function takes it: bytes, ``decode_image``, one invoke, features, score.
Every output of an image comes from one invoke (``Predictor.raw_all``).

Works on files and plain arrays: the Keras model's outputs come in as data
(``GateEvidence``, ``TestSet``); no TensorFlow, nothing of training.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busi_classifier.console import native_stderr_silenced
from busi_classifier.evaluation.input_check_fit import DEFAULT_FLAG_RATE, choose_threshold
from busi_classifier.export.variants import agreement_evidence, choose_default
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.input_check import InputCheck


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
    # The input check (None: not gated): the Keras model's pooled features of the gate
    # images (N, F); the check fitted on the training split with the threshold chosen on the
    # Keras model's validation features (the reference decisions); the validation images
    # each variant's own threshold is chosen on (as it would be served), at ``flag_rate``.
    reference_features: np.ndarray | None = None
    input_check: InputCheck | None = None
    check_images: np.ndarray | None = None
    flag_rate: float = DEFAULT_FLAG_RATE


@dataclass
class InputCheckPlan:
    """What the export fits, thresholds and measures the input check with."""

    check: InputCheck  # fitted on the Keras model's training features; threshold from its validation features
    val_images: np.ndarray  # uint8 validation images: the served file's threshold is chosen on their features
    flag_rate: float  # the target share of in-distribution validation images flagged
    ood: dict[str, list[bytes]]  # out-of-distribution sets (image bytes as users send them); {}: not measured
    left_out: dict[str, str]  # set name -> why it is not measured
    n_per_set: int  # images per made set (0: the sets are not measured)
    seed: int
    timings_s: dict = field(default_factory=dict)  # what fitting and building the sets took


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
    # The input check (None: the file has none): the report (``ood_report`` with the
    # validation flag rate, the sets left out and what the measurement took) and the scores
    # {"test": (N,), "sets": {name: (m,)}} (the figure draws them).
    input_check: dict | None = None
    input_check_scores: dict | None = None


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
    reference_scores = None
    if gate.input_check is not None:
        if gate.reference_features is None or gate.check_images is None:
            raise ValueError("the gate evidence has an input check but not the Keras model's features of the gate "
                             "images or the validation images to choose each variant's threshold on")
        reference_scores = gate.input_check.score(np.asarray(gate.reference_features).reshape(len(gate.images), -1))
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
        check = None
        if reference_scores is not None:
            own, _ = served_threshold(batch, gate.input_check, gate.check_images, gate.flag_rate, entry["file"])
            check = {"reference_scores": reference_scores, "reference_threshold": gate.input_check.threshold,
                     "candidate_scores": own.score(_features(outputs, entry["file"], len(gate.images))),
                     "candidate_threshold": own.threshold}
        entry["evidence"] = agreement_evidence(
            gate.reference, outputs["probabilities"], gate.labels, gate.reference_maps, outputs.get("class_maps"),
            reference_lesion=gate.reference_lesion, candidate_lesion=lesion, lesion_threshold=gate.lesion_threshold,
            input_check=check)
    default, reason = choose_default(files, f"{len(gate.images)} train+val images and augmented views")
    return default, reason, gate.description


def _features(outputs: dict, name: str, n: int) -> np.ndarray:
    """The pooled features (n, F) of ``raw_all``'s answer; a file without them is an export error."""
    features = outputs.get("features")
    if features is None:
        raise ValueError(f"{name} has no features output, but the model has an input check to score them with")
    return np.asarray(features, dtype=np.float32).reshape(n, -1)


def served_threshold(predictor, check: InputCheck, val_images: np.ndarray, flag_rate: float,
                     name: str = "the served file") -> tuple[InputCheck, np.ndarray]:
    """``check`` with its threshold chosen on ``predictor``'s features of the validation
    images (``input_check_fit.choose_threshold``), and those images' scores."""
    features = _features(predictor.raw_all(val_images), name, len(val_images))
    chosen = choose_threshold(check, features, flag_rate)
    return chosen, np.asarray(chosen.score(features), dtype=np.float64)


def threshold_on_file(path: Path, check: InputCheck, val_images: np.ndarray, flag_rate: float, image_size: int,
                      verbose: bool = False) -> tuple[InputCheck, np.ndarray]:
    """``served_threshold`` with a LiteRT predictor of the .tflite file at ``path``."""
    with contextlib.nullcontext() if verbose else native_stderr_silenced():
        predictor = file_predictor(path, image_size, num_threads=None)
    return served_threshold(predictor, check, val_images, flag_rate, Path(path).name)


def decode_all(images: list[bytes], image_size: int) -> tuple[np.ndarray, int]:
    """The model inputs of image bytes as the function makes them (``inspect_image``,
    ``decode_image``), and how many the intake refused (those answer 4xx, not a class)."""
    from busi_classifier.serving.decode import InvalidImageError, decode_image, inspect_image

    arrays, refused = [], 0
    for data in images:
        try:
            arrays.append(decode_image(inspect_image(data), image_size))
        except InvalidImageError:
            refused += 1
    return (np.stack(arrays) if arrays else np.zeros((0, image_size, image_size, 3), np.uint8)), refused


def score_sets(predictor, check: InputCheck, sets: dict[str, list[bytes]], image_size: int,
               name: str = "the served file") -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each set's input-check scores through ``predictor`` (bytes -> decode -> invoke ->
    features -> score), and per set how many images the intake refused."""
    scores, refused = {}, {}
    for set_name, images in sets.items():
        arrays, refused[set_name] = decode_all(images, image_size)
        scores[set_name] = (np.asarray(check.score(_features(predictor.raw_all(arrays), name, len(arrays))),
                                       dtype=np.float64) if len(arrays) else np.zeros(0))
    return scores, refused


def input_check_report(check: InputCheck, test_scores: np.ndarray, set_scores: dict[str, np.ndarray],
                       val_scores: np.ndarray | None = None, refused: dict[str, int] | None = None,
                       left_out: dict[str, str] | None = None, n_per_set: int | None = None,
                       seed: int | None = None) -> dict:
    """The card's ``input_check.metrics``: ``ood_report`` (the in-distribution flag rate
    on the test split, the validation one, AUROC and flag rate per set, their mean) with
    the mean over the sets that are clearly not breast ultrasound and over the near-misses,
    the images the intake refused, the sets left out and why, and how the sets were made."""
    from busi_classifier.evaluation.ood_sets import CLEARLY_NOT, NEAR_MISSES, ood_report

    report = ood_report(test_scores, set_scores, check.threshold, in_val_scores=val_scores)
    for key, names in (("mean_auroc_clearly_not", CLEARLY_NOT), ("mean_auroc_near_misses", NEAR_MISSES)):
        values = [v["auroc"] for k, v in report["sets"].items() if k in names and v["auroc"] is not None]
        report[key] = float(np.mean(values)) if values else None
    report["method"] = check.method
    if refused is not None:
        report["refused_by_intake"] = {k: v for k, v in refused.items() if v}
    report["left_out"] = dict(left_out or {})
    if n_per_set is not None:
        report["n_per_set"] = int(n_per_set)
    if seed is not None:
        report["seed"] = int(seed)
    return report


def score_served(path: Path, variant: str, test: TestSet, image_size: int, verbose: bool = False,
                 lesion_threshold: float | None = None, input_check: InputCheck | None = None,
                 ood: InputCheckPlan | None = None, val_scores: np.ndarray | None = None) -> ServedScore:
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
        input_check: the served check (threshold chosen on this file's validation
            features, ``threshold_on_file``); with it the test split's scores and, with
            ``ood``, each of ``ood.ood``'s sets are scored (``ServedScore.input_check``).
        ood: the out-of-distribution sets, those left out, how they were made.
        val_scores: the validation images' scores (their flag rate goes in the report).

    Returns:
        the served variant's predictions and metrics (``metrics["localisation"]`` where the
        file has class maps, ``metrics["segmentation"]`` where it has a lesion map and a
        threshold is given; ``input_check`` where a check is given).
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
    if input_check is not None:
        t0 = time.perf_counter()
        test_scores = np.asarray(input_check.score(_features(outputs, path.name, len(test.images))), dtype=np.float64)
        set_scores, refused = score_sets(served, input_check, ood.ood if ood is not None else {}, image_size,
                                         path.name)
        score.input_check = input_check_report(
            input_check, test_scores, set_scores, val_scores, refused,
            ood.left_out if ood is not None else {"all sets": "not measured (no sets given)"},
            ood.n_per_set if ood is not None else None, ood.seed if ood is not None else None)
        score.input_check["timings_s"] = {**(ood.timings_s if ood is not None else {}),
                                          "scoring the sets": round(time.perf_counter() - t0, 2)}
        score.input_check_scores = {"test": test_scores, "sets": set_scores}
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
