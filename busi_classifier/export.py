"""Write the trained model: model.keras, model.tflite (float32), model.json."""

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
import tensorflow as tf

from . import __version__
from .config import CLASSES, PREPROCESSING_DESCRIPTION, TrainConfig

TRACKED_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pillow", "ai-edge-litert")


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "busi_classifier": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def convert_to_tflite(model: keras.Model) -> bytes:
    """float32 TFLite flatbuffer of the Keras model (input: raw RGB 0..255)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # The converter prints the whole SavedModel signature; keep the console readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def export_model(
    model: keras.Model,
    out_dir: Path,
    config: TrainConfig,
    dataset_info: dict,
    metrics: dict,
    calibration: dict | None = None,
) -> dict:
    """Write model.keras, model.tflite and model.json into ``out_dir``; return the metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inference_copy = keras.models.clone_model(model)  # uncompiled: no optimizer state in the file
    inference_copy.set_weights(model.get_weights())
    inference_copy.save(out_dir / "model.keras")
    tflite = convert_to_tflite(model)
    (out_dir / "model.tflite").write_bytes(tflite)
    digest = hashlib.sha256(tflite).hexdigest()
    meta = {
        "name": "busi-resnet50",
        "model_version": f"{__version__}+{digest[:12]}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASSES),
        "input": {
            "name": "image",
            "shape": [1, config.image_size, config.image_size, 3],
            "size": config.image_size,
            "dtype": "float32",
            "range": [0, 255],
            "color": "RGB",
        },
        "output": {"name": "probabilities", "shape": [1, len(CLASSES)], "activation": "softmax"},
        "preprocessing": PREPROCESSING_DESCRIPTION,
        "files": {
            "model.tflite": {"variant": "float32", "bytes": len(tflite), "sha256": digest},
            "model.keras": {"bytes": (out_dir / "model.keras").stat().st_size},
        },
        "training": config.to_dict(),
        "dataset": dataset_info,
        "calibration": calibration or {"method": "none", "temperature": 1.0},
        "metrics": metrics,
        "packages": package_versions(),
    }
    write_json(out_dir / "model.json", meta)
    return meta
