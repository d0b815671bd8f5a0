"""Write the trained model: model.keras, the TFLite variants (float32, float16, int8
dynamic range, int8 full integer; each with the class activation maps as a second
output), and model.json with the evidence for the default variant and that variant's
own test metrics."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from busi_classifier import __version__
from busi_classifier.cli import native_stderr_silenced
from busi_classifier.config import TrainConfig
from busi_classifier.export.variants import (
    MAX_MACRO_F1_LOSS,
    MIN_TOP1_AGREEMENT,
    VARIANT_FILES,
    VARIANTS,
    agreement_evidence,
    choose_default,
)
from busi_classifier.serving.card import FORMAT_VERSION as CARD_FORMAT_VERSION
from busi_classifier.serving.card import ModelCard, preprocessing_description
from busi_classifier.serving.constants import CLASSES, MODEL_INPUT_DTYPE

TRACKED_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "ai-edge-litert")


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "busi_classifier": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def convert_to_tflite(model: keras.Model, variant: str = "float32", representative: np.ndarray | None = None,
                      verbose: bool = False) -> bytes:
    """TFLite flatbuffer of the Keras model (input: raw RGB 0..255, float32; output:
    probabilities, float32) in one of the VARIANTS:

    * float32: the reference;
    * float16: weights stored as float16 (half the size), computed in float32;
    * int8_dynamic: dynamic-range quantisation, int8 weights, activations quantised on the fly;
    * int8_full: full-integer int8 kernels, activation ranges calibrated on
      ``representative`` images from the training split (float32 input and output kept).
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # batch dimension fixed to 1
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8_full":
        if representative is None or not len(representative):
            raise ValueError("int8_full needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def samples():
            for image in representative:
                yield [np.asarray(image, dtype=np.float32)[None]]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif variant != "float32":
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    # The converter prints the whole signature (Python stdout) and MLIR notes and warnings
    # (C++, straight to file descriptor 2); keep the console readable unless verbose.
    if verbose:
        return converter.convert()
    with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        return converter.convert()


def _predictor(path: Path, image_size: int, num_threads: int | None = 1):
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


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class GateEvidence:
    """Images the variants are compared with the Keras model on, and the Keras model's
    probabilities for them. No test image: the test split only reports."""

    images: np.ndarray  # uint8 (N, size, size, 3)
    labels: np.ndarray
    reference: np.ndarray  # the Keras model's probabilities
    reference_maps: np.ndarray  # the Keras model's class maps (N, h, w, classes)
    description: str  # which images, for model.json's variant_rule


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
    maps: np.ndarray  # class maps on the test split (N, h, w, classes)
    masks: list  # the test images' lesion masks (TestSet.masks)
    metrics: dict  # evaluate_predictions (calibrated with model.json's temperature)


def export_model(
    model: keras.Model,
    out_dir: Path,
    config: TrainConfig,
    dataset_info: dict,
    calibration: dict | None = None,
    representative: np.ndarray | None = None,
    gate: GateEvidence | None = None,
    test: TestSet | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[dict, ServedScore | None]:
    """Write model.keras, every TFLite variant and model.json into ``out_dir``; return
    (the metadata, the served variant's test score or None).

    Only ``config.variants`` are written (float32, the reference, always is).
    ``representative``: uint8 training images for int8_full calibration (without them
    that variant is skipped). ``gate``: each variant is compared with the Keras model on
    these (non-test) images and the default variant is chosen by
    ``variants.choose_default``. ``test``: the served variant's own test metrics (with
    intervals and calibration) are computed and become model.json's headline, the Keras
    model's beside them."""
    from tqdm import tqdm

    from busi_classifier.serving.explain import METHOD as CAM_METHOD
    from busi_classifier.training.model import CAM_OUTPUT, explain_model, inference_copy

    out_dir.mkdir(parents=True, exist_ok=True)
    inference_copy(model).save(out_dir / "model.keras")  # uncompiled: no optimizer state in the file
    served_graph = explain_model(model)  # + the class maps, as a second output of every variant
    map_shape = [1, *[int(d) for d in served_graph.get_layer(CAM_OUTPUT).output.shape[1:]]]
    for stale in set(VARIANT_FILES.values()) - {VARIANT_FILES[v] for v in config.variants}:
        (out_dir / stale).unlink(missing_ok=True)  # a variant not asked for must not outlive an older run
    names = [v for v in VARIANTS if v in config.variants and (v != "int8_full" or representative is not None)]
    files: dict[str, dict] = {}
    for variant in tqdm(names, desc="TFLite variants", unit="variant", disable=not progress):
        data = convert_to_tflite(served_graph, variant, representative, verbose)
        (out_dir / VARIANT_FILES[variant]).write_bytes(data)
        files[variant] = {"file": VARIANT_FILES[variant], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    digest = files["float32"]["sha256"]
    if gate is not None:
        probe = gate.images[0] if len(gate.images) else np.zeros((config.image_size,) * 2 + (3,), np.uint8)
        for entry in files.values():
            with contextlib.nullcontext() if verbose else native_stderr_silenced():  # LiteRT's "INFO: Created ..."
                timed = _predictor(out_dir / entry["file"], config.image_size)
                batch = _predictor(out_dir / entry["file"], config.image_size, num_threads=None)
            entry["latency_ms"] = latency_ms(timed, probe)
            probabilities, maps = batch.raw_outputs(gate.images)
            entry["evidence"] = agreement_evidence(gate.reference, probabilities, gate.labels, gate.reference_maps, maps)
        default, reason = choose_default(files, f"{len(gate.images)} train+val images and augmented views")
        evidence_split = gate.description
    else:
        default, reason = "float32", "no gate evidence given: the float32 reference is served"
        evidence_split = "none"
    score = None
    metrics: dict = {}
    if test is not None:
        from busi_classifier.evaluation.localisation import served_localisation
        from busi_classifier.evaluation.metrics import evaluate_predictions

        with contextlib.nullcontext() if verbose else native_stderr_silenced():
            served = _predictor(out_dir / files[default]["file"], config.image_size, num_threads=None)
        raw, maps = served.raw_outputs(test.images)
        score = ServedScore(default, files[default]["file"], raw, maps, test.masks,
                            evaluate_predictions(test.labels, raw, test.temperature, test.bootstrap_resamples,
                                                 test.seed, groups=test.groups))
        score.metrics["localisation"] = served_localisation(maps, raw, test.masks, test.groups,
                                                            test.bootstrap_resamples, test.seed)
        metrics = {
            "served": {"variant": default, "file": score.file, "test": headline(score.metrics)},
            "keras": {"file": "model.keras", "test": headline(test.keras_metrics)},
        }
    # model.json: the typed, versioned card (serving/card.py); every field is required
    for entry in files.values():
        entry.setdefault("latency_ms", None)  # measured only with gate evidence
        entry.setdefault("evidence", None)
    card = ModelCard.from_dict({
        "format_version": CARD_FORMAT_VERSION,
        "name": "busi-resnet50",
        "model_version": f"{__version__}+{digest[:12]}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASSES),
        "input": {
            "name": "image",
            "shape": [1, config.image_size, config.image_size, 3],
            "size": config.image_size,
            "dtype": MODEL_INPUT_DTYPE,
            "range": [0, 255],
            "color": "RGB",
        },
        "output": {"name": "probabilities", "shape": [1, len(CLASSES)], "activation": "softmax"},
        "explain": {"output": CAM_OUTPUT, "shape": map_shape, "method": CAM_METHOD},
        "preprocessing": preprocessing_description(),
        "variants": files,
        "default_variant": default,
        "default_variant_reason": reason,
        "variant_rule": {"max_macro_f1_loss": MAX_MACRO_F1_LOSS, "min_top1_agreement": MIN_TOP1_AGREEMENT,
                         "evidence_split": evidence_split, "speed": "median LiteRT invoke, 1 thread, at export"},
        "files": {
            **{entry["file"]: {"variant": name, "bytes": entry["bytes"], "sha256": entry["sha256"]}
               for name, entry in files.items()},
            "model.keras": {"bytes": (out_dir / "model.keras").stat().st_size},
        },
        "training": config.to_dict(),
        "dataset": dataset_info,
        "calibration": calibration or {"method": "none", "temperature": 1.0},
        "metrics": metrics,
        "packages": package_versions(),
    })
    card.write(out_dir)
    return card.to_dict(), score


def headline(metrics: dict) -> dict:
    """What model.json carries of a split's metrics: the numbers, their intervals, the
    confusion matrix; not the reliability table."""
    return {k: v for k, v in metrics.items() if k != "reliability"}
