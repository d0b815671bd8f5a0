"""Run the exported TFLite model with LiteRT (ai-edge-litert). No TensorFlow here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .decode import decode_image


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(logits / T) computed from
    softmax(logits) as p^(1/T), renormalised. T > 1 softens, T < 1 sharpens; the
    predicted class never changes."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


class ModelLoadError(RuntimeError):
    """The model files are missing or do not fit together."""


def default_num_threads() -> int:
    """Threads for the interpreter: NUM_THREADS if set, else the CPUs this process may use."""
    value = os.environ.get("NUM_THREADS")
    if value:
        return max(1, int(value))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def read_metadata(model_path: Path) -> dict:
    """model.json of a model folder, or the one beside a .tflite file."""
    meta_path = model_path / "model.json" if model_path.is_dir() else model_path.with_name("model.json")
    if not meta_path.is_file():
        raise ModelLoadError(f"model.json not found in {meta_path.parent} (export writes it beside the .tflite files)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model.json is not valid JSON: {exc}") from None


def resolve_model_file(model_path: Path, metadata: dict, variant: str | None = None) -> tuple[Path, str]:
    """(the .tflite file to load, its variant name). A folder serves ``variant``, else
    MODEL_VARIANT, else model.json's default_variant; a file serves itself unless a
    variant is asked for, which is then looked up beside it."""
    folder = model_path if model_path.is_dir() else model_path.parent
    variants = metadata.get("variants") or {"float32": {"file": "model.tflite"}}
    requested = variant or os.environ.get("MODEL_VARIANT") or None
    if requested is None and model_path.is_dir():
        requested = metadata.get("default_variant", "float32")
    if requested is None:
        by_file = {entry["file"]: name for name, entry in variants.items()}
        return model_path, by_file.get(model_path.name, "custom")
    if requested not in variants:
        raise ModelLoadError(f"model variant {requested!r} (MODEL_VARIANT) is not in model.json; "
                             f"available: {', '.join(variants)}")
    return folder / variants[requested]["file"], requested


class Predictor:
    """One LiteRT interpreter, created once and reused for every image."""

    def __init__(self, model_path: str | os.PathLike, num_threads: int | None = None, variant: str | None = None,
                 metadata: dict | None = None):
        """``model_path``: a model folder (model.json and the .tflite variants) or one
        .tflite file with model.json beside it; see ``resolve_model_file``. ``metadata``
        stands in for model.json (the export uses it before model.json exists)."""
        from ai_edge_litert.interpreter import Interpreter

        path = Path(model_path)
        if not path.exists():
            raise ModelLoadError(
                f"model not found: {path} (set MODEL_PATH to a model folder or .tflite file, or train one with "
                "`python train.py --data DIR --out artifacts/model`)"
            )
        self.metadata = metadata if metadata is not None else read_metadata(path)
        self.model_path, self.variant = resolve_model_file(path, self.metadata, variant)
        if not self.model_path.is_file():
            raise ModelLoadError(f"model file not found: {self.model_path} (variant {self.variant})")
        self.classes: list[str] = list(self.metadata["classes"])
        self.image_size: int = int(self.metadata["input"]["size"])
        self.model_version: str = self.metadata.get("model_version", "unknown")
        # temperature fitted on the validation split (model.json "calibration"); 1.0 = none
        self.temperature: float = float((self.metadata.get("calibration") or {}).get("temperature", 1.0))
        self.num_threads = num_threads or default_num_threads()
        try:
            self.interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.num_threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"LiteRT could not load {self.model_path}: {exc}") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        expected = [1, self.image_size, self.image_size, 3]
        if list(self._input["shape"]) != expected:
            raise ModelLoadError(f"model input shape {list(self._input['shape'])} does not match model.json {expected}")
        self._buffer = np.empty(expected, dtype=self._input["dtype"])

    def predict_array(self, image: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Probabilities for one preprocessed uint8 image (size, size, 3), temperature-
        scaled unless ``calibrated`` is False."""
        self._buffer[0] = image
        self.interpreter.set_tensor(self._input["index"], self._buffer)
        self.interpreter.invoke()
        raw = np.array(self.interpreter.get_tensor(self._output["index"])[0], dtype=np.float64)
        total = raw.sum()
        if total > 0:  # a full-integer model's softmax comes in steps of 1/256 and sums only nearly to 1
            raw /= total
        return apply_temperature(raw, self.temperature) if calibrated and self.temperature != 1.0 else raw

    def raw_probabilities(self, images: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities, one row per preprocessed uint8 image (one invoke each)."""
        if not len(images):
            return np.zeros((0, len(self.classes)))
        return np.stack([self.predict_array(image, calibrated=False) for image in images])

    def predict_bytes(self, data: bytes) -> dict:
        """Prediction for image bytes: the answer the API returns for one image."""
        probabilities = self.predict_array(decode_image(data, self.image_size))
        return {
            "prediction": self.classes[int(np.argmax(probabilities))],
            "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)},
        }
