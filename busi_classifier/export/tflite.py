"""Write the trained model: model.keras, the TFLite variants (float32, float16, int8
dynamic range, int8 full integer; each with, beside the probabilities, the class
activation maps, the pooled ResNet50 features the input check scores, and a multitask
model's lesion map as outputs), and model.json, which describes them and the input
check file (input_check.npz, written beside the .tflite files by the export:
busi_classifier.serving.input_check).

Conversion and the card only: what the card says of the variants' speed and agreement,
of the served file's test metrics and of the input check (its file's sha256, threshold
and measurement) is measured by busi_classifier.evaluation.served and comes in as plain
data; the graphs to save and convert come from the caller (training builds them), so
nothing here imports training or evaluation."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from busi_classifier import __version__
from busi_classifier.config import TrainConfig
from busi_classifier.console import native_stderr_silenced
from busi_classifier.export.variants import (
    MAX_MACRO_F1_LOSS,
    MAX_MAP_DIFF,
    MIN_INPUT_CHECK_AGREEMENT,
    MIN_LESION_DICE,
    MIN_TOP1_AGREEMENT,
    VARIANT_FILES,
    VARIANTS,
)
from busi_classifier.serving.card import FORMAT_VERSION as CARD_FORMAT_VERSION
from busi_classifier.serving.card import ModelCard, preprocessing_description
from busi_classifier.serving.constants import CLASSES, MODEL_INPUT_DTYPE
from busi_classifier.serving.explain import METHOD as CAM_METHOD

TRACKED_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "ai-edge-litert")


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "busi_classifier": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def int8_full_converter(model: keras.Model, representative: np.ndarray | None,
                        per_channel: bool = True) -> tf.lite.TFLiteConverter:
    """The converter of the int8_full variant, not yet run: full-integer int8 kernels,
    activation ranges calibrated on ``representative`` images (uint8 or float, N x H x W x 3,
    fed one at a time as float32; float32 input and output kept). ``per_channel=False``
    turns the converter's per-channel weight scales of convolutions off (one scale per
    tensor; what ``benchmarks/quant_debug.py`` compares). The export and the benchmark both
    build it here, so what the benchmark measures is what the export writes."""
    if representative is None or not len(representative):
        raise ValueError("int8_full needs representative images")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # batch dimension fixed to 1
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def samples():
        for image in representative:
            yield [np.asarray(image, dtype=np.float32)[None]]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not per_channel:
        converter._experimental_disable_per_channel = True  # noqa: SLF001 (the converter's only switch for it)
    return converter


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
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "int8_full":
        converter = int8_full_converter(model, representative)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)  # batch dimension fixed to 1
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter prints the whole signature (Python stdout) and MLIR notes and warnings
    # (C++, straight to file descriptor 2); keep the console readable unless verbose.
    if verbose:
        return converter.convert()
    with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        return converter.convert()


def write_model_files(keras_model: keras.Model, served_graph: keras.Model, out_dir: Path,
                      variants: tuple[str, ...], representative: np.ndarray | None = None, progress: bool = True,
                      verbose: bool = False) -> dict[str, dict]:
    """Write model.keras and each TFLite variant asked for into ``out_dir``.

    Args:
        keras_model: saved as it is to model.keras (the caller passes an uncompiled copy:
            no optimizer state in the file).
        served_graph: converted to each variant (the probabilities and the class maps).
        out_dir: the model folder (created if missing); a variant file not asked for is
            deleted, so it cannot outlive an older run.
        variants: the variants to write (float32, the reference, should be among them).
        representative: uint8 training images for int8_full calibration (without them
            that variant is skipped).
        progress: a progress bar over the variants.
        verbose: show the TFLite converter's own output.

    Returns:
        variant name -> {"file", "bytes", "sha256"}, in VARIANTS order.
    """
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    keras_model.save(out_dir / "model.keras")
    for stale in set(VARIANT_FILES.values()) - {VARIANT_FILES[v] for v in variants}:
        (out_dir / stale).unlink(missing_ok=True)
    names = [v for v in VARIANTS if v in variants and (v != "int8_full" or representative is not None)]
    files: dict[str, dict] = {}
    for variant in tqdm(names, desc="TFLite variants", unit="variant", disable=not progress):
        data = convert_to_tflite(served_graph, variant, representative, verbose)
        (out_dir / VARIANT_FILES[variant]).write_bytes(data)
        files[variant] = {"file": VARIANT_FILES[variant], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return files


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_card(out_dir: Path, config: TrainConfig, dataset_info: dict, files: dict[str, dict], default: str,
               reason: str, evidence_split: str, explain: dict, calibration: dict | None = None,
               metrics: dict | None = None, lesion: dict | None = None, input_check: dict | None = None) -> dict:
    """Write model.json, the typed, versioned card (serving/card.py; every field is
    required), beside the files ``write_model_files`` wrote; return its content.

    Args:
        out_dir: the model folder.
        config: the run's settings (input size; recorded as ``training``).
        dataset_info: the dataset's root, fingerprint and split counts.
        files: ``write_model_files``' entries, with ``latency_ms`` and ``evidence`` where
            measured (``evaluation.served.gate_variants``; None where not).
        default, reason, evidence_split: the served variant, why, and on which images
            its evidence was measured.
        explain: {"output", "shape"} of the class-map output of the served graph.
        calibration: what serving applies ({"method", "temperature"}); None: none.
        metrics: the served file's and the Keras model's test headline
            (``evaluation.served.card_metrics``); None: not scored.
        lesion: the lesion output of a multitask model ({"output", "shape", "stride",
            "activation", "threshold", "threshold_rule", "metrics"}); None: classify only.
        input_check: the input check file beside the .tflite files ({"file", "sha256",
            "bytes", "method", "dims", "feature_output", "threshold", "threshold_rule",
            "flag_rate", "metrics"}; the card's ``InputCheckSpec``); None: the model has no
            input check (and its files no features output).

    Returns:
        model.json's content.
    """
    for entry in files.values():
        entry.setdefault("latency_ms", None)  # measured only with gate evidence
        entry.setdefault("evidence", None)
    digest = files["float32"]["sha256"]
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
        "explain": {"output": explain["output"], "shape": explain["shape"], "method": CAM_METHOD},
        "lesion": lesion,
        "input_check": input_check,
        "preprocessing": preprocessing_description(),
        "variants": files,
        "default_variant": default,
        "default_variant_reason": reason,
        "variant_rule": {"max_macro_f1_loss": MAX_MACRO_F1_LOSS, "min_top1_agreement": MIN_TOP1_AGREEMENT,
                         "max_map_diff": MAX_MAP_DIFF, "min_lesion_dice": MIN_LESION_DICE,
                         "min_input_check_agreement": MIN_INPUT_CHECK_AGREEMENT,
                         "evidence_split": evidence_split, "speed": "median LiteRT invoke, 1 thread, at export"},
        "files": {
            **{entry["file"]: {"variant": name, "bytes": entry["bytes"], "sha256": entry["sha256"]}
               for name, entry in files.items()},
            "model.keras": {"bytes": (out_dir / "model.keras").stat().st_size},
            **({input_check["file"]: {"bytes": input_check["bytes"], "sha256": input_check["sha256"]}}
               if input_check is not None else {}),
        },
        "training": config.to_dict(),
        "dataset": dataset_info,
        "calibration": calibration or {"method": "none", "temperature": 1.0},
        "metrics": metrics or {},
        "packages": package_versions(),
    })
    card.write(out_dir)
    return card.to_dict()
