"""Run the exported TFLite model with LiteRT (ai-edge-litert). No TensorFlow here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .preprocessing import decode_image


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
    meta_path = model_path.with_name("model.json")
    if not meta_path.is_file():
        raise ModelLoadError(f"model.json not found beside {model_path} (export writes both files together)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model.json is not valid JSON: {exc}") from None


class Predictor:
    """One LiteRT interpreter, created once and reused for every image."""

    def __init__(self, model_path: str | os.PathLike, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelLoadError(
                f"model file not found: {self.model_path} (set MODEL_PATH, or train one with "
                "`python train.py --data DIR --out artifacts/model`)"
            )
        self.metadata = read_metadata(self.model_path)
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
        return apply_temperature(raw, self.temperature) if calibrated and self.temperature != 1.0 else raw

    def predict_bytes(self, data: bytes) -> dict:
        """Prediction for image bytes: the answer the API returns for one image."""
        probabilities = self.predict_array(decode_image(data, self.image_size))
        return {
            "prediction": self.classes[int(np.argmax(probabilities))],
            "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)},
        }
