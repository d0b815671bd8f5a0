"""A stand-in for the LiteRT Predictor that runs the REAL decoding (decode_image) and
returns deterministic probabilities, so that the API tests run in seconds without a
trained model. The same tests also run against the real model (marked slow)."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from busi_classifier.serving.api import Function
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.decode import decode_image, inspect_image

STUB_SIZE = 64
STUB_LESION_THRESHOLD = 0.5  # the stub's "model.json" threshold: cells brighter than half white are lesion
# The stub's input check (CheckedStubPredictor): the score is the mean absolute difference of
# horizontally neighbouring pixels of the 64 px model input: a smooth scan ~1, noise of a few hundred px 7-40
STUB_INPUT_CHECK_THRESHOLD = 5.0


def stub_input_score(pixels: np.ndarray) -> float:
    """The stub's input-check score of a model input (size, size, 3): its pixel-to-pixel roughness."""
    return float(np.abs(np.diff(pixels.astype(np.float64), axis=1)).mean())


def stub_lesion_grid(pixels: np.ndarray) -> np.ndarray:
    """The stub's lesion map: the model input's brightness (0..1) averaged over 4x4-pixel
    cells, (size/4, size/4) as the real map (stride 4). A bright blob is a "lesion"."""
    side = pixels.shape[0] // 4
    return pixels.mean(axis=2).reshape(side, 4, side, 4).mean(axis=(1, 3)) / 255.0


class StubPredictor:
    """predict_bytes/model_version/classes as busi_classifier.serving.predictor.Predictor."""

    model_version = "stub-1"
    classes = list(CLASSES)
    image_size = STUB_SIZE
    variant = "stub"
    num_threads = 1
    has_maps = True  # explain works: a 4x4 map that follows the image's brightness
    has_lesion = True  # segment works: a (size/4)^2 map that follows the brightness (stub_lesion_grid)
    segment_available = True
    lesion_threshold = STUB_LESION_THRESHOLD
    has_input_check = False  # CheckedStubPredictor: every answer carries input_check

    def __init__(self, model_path=None, variant=None, num_threads=None):
        """The signature of Predictor, so that ``make_handler(settings, StubPredictor)`` works."""
        self.model_path = model_path

    def predict_bytes(self, data: bytes, explain: bool = False, segment: bool = False) -> dict:
        intake = inspect_image(data)
        pixels = decode_image(intake, self.image_size)
        mean = float(pixels.mean()) / 255.0
        logits = np.array([1.0 - mean, mean, 0.5])
        probabilities = np.exp(logits) / np.exp(logits).sum()
        index = int(np.argmax(probabilities))
        answer = {
            "prediction": self.classes[index],
            "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)},
        }
        if explain:
            from busi_classifier.serving.explain import explanation

            cells = pixels.mean(axis=2).reshape(4, self.image_size // 4, 4, self.image_size // 4).mean(axis=(1, 3))
            maps = np.stack([cells * (k + 1) for k in range(len(self.classes))], axis=-1)
            answer["explanation"] = explanation(maps, index, self.classes, pixels)
        if segment:
            from busi_classifier.serving.lesion import lesion_answer
            from busi_classifier.serving.predictor import upright_size

            width, height = upright_size(intake)
            answer["lesion"] = lesion_answer(stub_lesion_grid(pixels), self.lesion_threshold, width, height,
                                             self.image_size)
        if self.has_input_check:
            score = stub_input_score(pixels)
            answer["input_check"] = {"score": score, "threshold": STUB_INPUT_CHECK_THRESHOLD,
                                     "in_distribution": score <= STUB_INPUT_CHECK_THRESHOLD}
        return answer


class CheckedStubPredictor(StubPredictor):
    """The stub with an input check (as a Predictor whose model.json has input_check): every
    answer carries ``input_check``; an image of noise is flagged, a smooth scan is not."""

    has_input_check = True


def stub_handler(predictor=None, load_error=None, environ=None):
    """The Lambda handler around ``predictor`` (default: a StubPredictor), its settings
    from ``environ`` (default: the environment now)."""
    from busi_classifier.serving.settings import ServingSettings

    predictor = StubPredictor() if predictor is None and load_error is None else predictor
    settings = ServingSettings.from_env(os.environ if environ is None else environ, default_model="stub")
    return Function(settings, predictor, load_error)


class Context:
    function_name = "busi-classifier-test"

    def __init__(self, request_id: str = "req-0001"):
        self.aws_request_id = request_id


def body_of(answer: dict) -> dict:
    return json.loads(answer["body"]) if isinstance(answer, dict) and "statusCode" in answer else answer


# An absolute file path (two segments or more), a Python traceback, an object repr
LEAK_PATTERNS = [re.compile(r"(?<![\w:/])/(?:[\w.+-]+/)+[\w.+-]*"), re.compile("Traceback"),
                 re.compile(r'File "'), re.compile(r" object at 0x"), re.compile(r"site-packages"),
                 re.compile(r"\.py\b")]


def leaks(text: str) -> list[str]:
    """What in ``text`` looks like an internal detail (empty when nothing)."""
    return [m.group(0) for pattern in LEAK_PATTERNS for m in pattern.finditer(text)]
