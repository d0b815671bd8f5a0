"""Run the exported TFLite model with LiteRT (ai-edge-litert). No TensorFlow here.

The served graph's outputs are told apart by shape, not position (the converter orders
them by name): the probabilities ``[1, classes]``, the class maps ``[1, h, w, classes]``
(explain), the lesion map ``[1, h, w, 1]`` (segment) and the pooled features ``[1, F]``
with F != classes (the input check). model.json must describe every output the file has,
and the file must have every output model.json describes. Where model.json has an
``input_check``, its file (``input_check.npz`` beside the .tflite files) is loaded and
checked at init (sha256, method, dims, threshold, feature size): any problem is a
ModelLoadError naming the file; every answer then carries ``input_check`` (score,
threshold, in_distribution) from the same invoke.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .card import ModelCard, ModelLoadError
from .decode import SWAPPING_ORIENTATIONS, Intake, decode_image, inspect_image
from .input_check import InputCheck, InputCheckError
from .lesion import MAP_STRIDE, lesion_answer

__all__ = ["ExplainUnavailableError", "ModelLoadError", "Predictor", "SegmentUnavailableError", "apply_temperature",
           "available_cpus", "input_check_answer", "resolve_model_file", "upright_size"]


class ExplainUnavailableError(RuntimeError):
    """An explanation was asked of a model exported without the class-map output."""


class SegmentUnavailableError(RuntimeError):
    """A lesion outline was asked of a model without a lesion output (or without the
    model.json threshold that turns its map into an outline)."""


def upright_size(intake: Intake) -> tuple[int, int]:
    """(width, height) of the image upright, EXIF orientation applied: the header's size,
    swapped for orientations 5-8 (what decode_image's transpose does)."""
    if intake.orientation in SWAPPING_ORIENTATIONS:
        return intake.height, intake.width
    return intake.width, intake.height


def input_check_answer(check: InputCheck, features: np.ndarray) -> dict:
    """The answer's ``input_check``: ``{"score", "threshold", "in_distribution"}`` for one
    image's features. A score that is not a finite number (features with NaN or infinity)
    counts as flagged and is sent as null: JSON has no NaN."""
    with np.errstate(all="ignore"):  # NaN or infinite features: a NaN score, flagged below (no warning line)
        answer = check.answer(features)
    score = answer["score"]
    if not math.isfinite(score):
        return {"score": None, "threshold": answer["threshold"], "in_distribution": False}
    return {"score": float(score), "threshold": float(answer["threshold"]),
            "in_distribution": bool(answer["in_distribution"])}


def available_cpus() -> int:
    """The CPUs this process may use (interpreter threads when none are asked for)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of softmax outputs: softmax(logits / T) computed from
    softmax(logits) as p^(1/T), renormalised. T > 1 softens, T < 1 sharpens; the
    predicted class never changes."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def resolve_model_file(model_path: Path, card: ModelCard, variant: str | None = None) -> tuple[Path, str]:
    """(the .tflite file to load, its variant name). A path given is the path used:

    * a folder serves ``variant`` if given, else the card's default_variant;
    * a .tflite file is served as is (its variant is looked up by file name, "custom"
      when the card does not list it); asking for another variant is an error."""
    if model_path.is_dir():
        name = variant or card.default_variant
        if name not in card.variants:
            raise ModelLoadError(f"model variant {name!r} (MODEL_VARIANT) is not in model.json; "
                                 f"available: {', '.join(card.variants)}")
        return model_path / card.variants[name].file, name
    own = card.variant_of_file(model_path.name) or "custom"
    if variant is not None and variant != own:
        raise ModelLoadError(f"model variant {variant!r} (MODEL_VARIANT) asked for, but {model_path.name} is one "
                             f"file (variant {own}): give the model folder to choose a variant")
    return model_path, own


class Predictor:
    """One LiteRT interpreter, created once and reused for every image."""

    def __init__(self, model_path: str | os.PathLike, variant: str | None = None, num_threads: int | None = None,
                 *, card: ModelCard | None = None, metadata: dict | None = None):
        """``model_path``: a model folder (model.json and the .tflite variants) or one
        .tflite file with model.json beside it; see ``resolve_model_file``.
        ``num_threads``: interpreter threads (default: the CPUs this process may use).
        ``card`` stands in for model.json. ``metadata`` ({"classes", "input": {"size"}})
        is for a .tflite file that has no model.json yet (the export scores it before
        writing one): served uncalibrated, as is; prefer ``Predictor.for_file``."""
        path = Path(model_path)
        if not path.exists():
            raise ModelLoadError(
                f"model not found: {path} (expected a model folder or a .tflite file; train one with "
                "`python train.py --data DIR --out artifacts/model`)"
            )
        if metadata is not None:
            if path.is_dir() or variant is not None:
                raise ModelLoadError("metadata= is for one .tflite file without model.json")
            self.card = None
            self.model_path, self.variant = path, "custom"
            self.classes: list[str] = list(metadata["classes"])
            self.image_size: int = int(metadata["input"]["size"])
            self.model_version: str = "unexported"
            self.temperature: float = 1.0
        else:
            self.card = card if card is not None else ModelCard.read(path)
            self.model_path, self.variant = resolve_model_file(path, self.card, variant)
            self.classes = list(self.card.classes)
            self.image_size = self.card.input.size
            self.model_version = self.card.model_version
            # temperature fitted on the validation split (model.json "calibration")
            self.temperature = self.card.temperature
        if not self.model_path.is_file():
            raise ModelLoadError(f"model file not found: {self.model_path} (variant {self.variant})")
        self.num_threads = num_threads or available_cpus()
        self._load()

    @classmethod
    def for_file(cls, model_file: str | os.PathLike, classes, image_size: int,
                 num_threads: int | None = 1) -> Predictor:
        """A predictor of a .tflite file that has no model.json yet (uncalibrated);
        ``num_threads`` None: the CPUs this process may use."""
        return cls(model_file, num_threads=num_threads,
                   metadata={"classes": list(classes), "input": {"size": int(image_size)}})

    def _load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.num_threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"LiteRT could not load {self.model_path}: {exc}") from None
        self._input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        # by shape, not position: the converter orders a model's outputs by name
        n_classes = len(self.classes)
        probabilities = [o for o in outputs if list(o["shape"]) == [1, n_classes]]
        maps = [o for o in outputs if len(o["shape"]) == 4 and int(o["shape"][-1]) == n_classes]
        lesion = [o for o in outputs if len(o["shape"]) == 4 and int(o["shape"][-1]) == 1]
        features = [o for o in outputs if len(o["shape"]) == 2 and int(o["shape"][0]) == 1
                    and int(o["shape"][1]) not in (n_classes, 0)]
        if (len(probabilities) != 1 or len(maps) > 1 or len(lesion) > 1 or len(features) > 1
                or len(outputs) != 1 + len(maps) + len(lesion) + len(features)):
            raise ModelLoadError(f"{self.model_path.name}: expected an output of shape [1, {n_classes}] (and "
                                 f"optionally class maps [1, h, w, {n_classes}], a lesion map [1, h, w, 1] and "
                                 f"pooled features [1, F]), got {[[int(v) for v in o['shape']] for o in outputs]}")
        self._output = probabilities[0]
        self._maps = maps[0] if maps else None
        self._lesion = lesion[0] if lesion else None
        self._features = features[0] if features else None
        self.input_check: InputCheck | None = None
        if self.card is not None and self.card.explain is not None and self._maps is None:
            raise ModelLoadError(f"model.json says the model has class maps, but {self.model_path.name} has no "
                                 "such output")
        if self.card is not None:
            self._check_lesion(self.card)
            self.input_check = self._load_input_check(self.card)
        expected = [1, self.image_size, self.image_size, 3]
        if list(self._input["shape"]) != expected:
            raise ModelLoadError(f"model input shape {list(self._input['shape'])} does not match model.json {expected}")
        self._buffer = np.empty(expected, dtype=self._input["dtype"])

    def _check_lesion(self, card: ModelCard) -> None:
        """model.json and the file agree on the lesion output: both have it, with one
        shape, or neither has it."""
        name = self.model_path.name
        shape = None if self._lesion is None else [int(v) for v in self._lesion["shape"]]
        if card.lesion is not None and shape is None:
            raise ModelLoadError(f"model.json says the model has a lesion map {list(card.lesion.shape)}, but {name} "
                                 "has no such output (a [1, h, w, 1] output)")
        if card.lesion is None and shape is not None:
            raise ModelLoadError(f"{name} has a lesion map output {shape}, but model.json (format_version "
                                 f"{card.format_version}) does not describe it (no lesion field, or null): re-export "
                                 "the model with this version")
        if card.lesion is not None and shape != list(card.lesion.shape):
            raise ModelLoadError(f"{name}'s lesion map has shape {shape}, model.json says {list(card.lesion.shape)}")
        if card.lesion is not None and card.lesion.stride != MAP_STRIDE:
            raise ModelLoadError(f"model.json's lesion map has stride {card.lesion.stride}; this version serves lesion "
                                 f"maps of stride {MAP_STRIDE} (one cell per {MAP_STRIDE} x {MAP_STRIDE} input pixels)")

    def _load_input_check(self, card: ModelCard) -> InputCheck | None:
        """model.json and the file agree on the features output, and the check file beside
        the model is the one the card describes (None: neither has a check)."""
        name, spec = self.model_path.name, card.input_check
        dim = None if self._features is None else int(self._features["shape"][1])
        if spec is None:
            if dim is not None:
                raise ModelLoadError(f"{name} has a features output [1, {dim}], but model.json (format_version "
                                     f"{card.format_version}) does not describe it (no input_check field, or null): "
                                     "re-export the model with this version")
            return None
        if dim is None:
            raise ModelLoadError(f"model.json says the model has an input check on its {spec.feature_output!r} "
                                 f"output, but {name} has no features output (a [1, F] output)")
        path = self.model_path.parent / spec.file
        try:
            check = InputCheck.load(path, spec.sha256, feature_dim=dim)
        except InputCheckError as exc:
            raise ModelLoadError(f"input check file {spec.file}: {exc}") from None
        for field, card_value, file_value in (("method", spec.method, check.method), ("dims", spec.dims, check.dims),
                                              ("threshold", spec.threshold, check.threshold)):
            if card_value != file_value:
                raise ModelLoadError(f"input check file {spec.file}: its {field} is {file_value!r}, model.json's "
                                     f"input_check.{field} is {card_value!r} (the file is not the one exported with "
                                     "this model.json)")
        if path.stat().st_size != spec.bytes:
            raise ModelLoadError(f"input check file {spec.file}: {path.stat().st_size} bytes, model.json says "
                                 f"{spec.bytes}")
        return check

    @property
    def has_input_check(self) -> bool:
        """Whether every answer carries ``input_check`` (model.json describes the check and
        its file was loaded)."""
        return self.input_check is not None

    @property
    def has_features(self) -> bool:
        """Whether the model file has the pooled-features output (raw_all returns it)."""
        return self._features is not None

    @property
    def has_maps(self) -> bool:
        """Whether the model has the class activation maps output (explain)."""
        return self._maps is not None

    @property
    def has_lesion(self) -> bool:
        """Whether the model file has the lesion map output (raw_all returns it)."""
        return self._lesion is not None

    @property
    def lesion_threshold(self) -> float | None:
        """model.json's lesion threshold; None without a card (``for_file``) or a lesion output."""
        return self.card.lesion.threshold if self.card is not None and self.card.lesion is not None else None

    @property
    def segment_available(self) -> bool:
        """Whether ``predict_bytes(..., segment=True)`` works: the lesion output and the
        threshold model.json chose for it (a ``for_file`` predictor has no threshold)."""
        return self.has_lesion and self.lesion_threshold is not None

    def _invoke(self, image: np.ndarray) -> None:
        self._buffer[0] = image
        self.interpreter.set_tensor(self._input["index"], self._buffer)
        self.interpreter.invoke()

    def predict_array(self, image: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Probabilities for one preprocessed uint8 image (size, size, 3), temperature-
        scaled unless ``calibrated`` is False."""
        self._invoke(image)
        return self._probabilities(calibrated)

    def predict_with_maps(self, image: np.ndarray, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class maps (h, w, classes)) from one invoke; the maps are the
        raw activation maps (see serving/explain.py)."""
        if self._maps is None:
            raise ExplainUnavailableError(f"{self.model_path.name} has no class-map output")
        probabilities, maps, _, _ = self._run(image, calibrated, maps=True)
        return probabilities, maps

    def raw_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uncalibrated probabilities, class maps), one row per preprocessed image."""
        pairs = [self.predict_with_maps(image, calibrated=False) for image in images]
        if not pairs:
            return np.zeros((0, len(self.classes))), np.zeros((0, 1, 1, len(self.classes)))
        return np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])

    def raw_all(self, images: np.ndarray) -> dict:
        """Every output, uncalibrated, one invoke per preprocessed uint8 image:
        ``{"probabilities": (N, classes), "class_maps": (N, h, w, classes) or None,
        "lesion": (N, h, w) probabilities or None, "features": (N, F) float32 or None}``
        (None: the model has no such output)."""
        n_classes = len(self.classes)
        probabilities, maps, lesion, features = [], [], [], []
        for image in images:
            p, m, g, f = self._run(image, calibrated=False, maps=self.has_maps, lesion=self.has_lesion,
                                   features=self.has_features)
            probabilities.append(p)
            maps.append(m)
            lesion.append(g)
            features.append(f)

        def stacked(rows, detail):
            if detail is None:
                return None
            return np.stack(rows) if rows else np.zeros((0, *detail))

        return {
            "probabilities": np.stack(probabilities) if probabilities else np.zeros((0, n_classes)),
            "class_maps": stacked(maps, None if self._maps is None else (*self._maps["shape"][1:3], n_classes)),
            "lesion": stacked(lesion, None if self._lesion is None else tuple(self._lesion["shape"][1:3])),
            "features": stacked(features, None if self._features is None else (int(self._features["shape"][1]),)),
        }

    def _run(self, image: np.ndarray, calibrated: bool = True, maps: bool = False, lesion: bool = False,
             features: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(probabilities, class maps (h, w, classes) or None, lesion map (h, w) or None,
        pooled features (F,) float32 or None) from one invoke."""
        self._invoke(image)
        class_maps = np.array(self.interpreter.get_tensor(self._maps["index"])[0], dtype=np.float64) if maps else None
        grid = np.array(self.interpreter.get_tensor(self._lesion["index"])[0, ..., 0], dtype=np.float64) if lesion else None
        pooled = (np.array(self.interpreter.get_tensor(self._features["index"])[0], dtype=np.float32)
                  if features else None)
        return self._probabilities(calibrated), class_maps, grid, pooled

    def _probabilities(self, calibrated: bool) -> np.ndarray:
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

    def predict_bytes(self, data: bytes | Intake, explain: bool = False, segment: bool = False) -> dict:
        """Prediction for image bytes (or what ``inspect_image`` made of them): the answer
        the API returns for one image; with ``explain``, the predicted class's activation
        map and an overlay PNG as well; with ``segment``, the ``lesion`` object (outline,
        area, mask in the uploaded image's own upright pixels: serving/lesion.py); where the
        model has the input check, always its ``input_check`` (``input_check_answer``). One
        invoke either way."""
        if explain and self._maps is None:
            raise ExplainUnavailableError(f"{self.model_path.name} has no class-map output")
        if segment and not self.segment_available:
            raise SegmentUnavailableError(f"{self.model_path.name} has no lesion output with a model.json threshold")
        intake = inspect_image(data)  # an Intake is returned as it is: inspected once
        image = decode_image(intake, self.image_size)  # decoded once
        check = self.input_check
        probabilities, maps, grid, features = self._run(image, maps=explain, lesion=segment, features=check is not None)
        index = int(np.argmax(probabilities))
        answer = {
            "prediction": self.classes[index],
            "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)},
        }
        if check is not None:
            answer["input_check"] = input_check_answer(check, features)
        if explain:
            from .explain import explanation

            answer["explanation"] = explanation(maps, index, self.classes, image)
        if segment:
            width, height = upright_size(intake)
            answer["lesion"] = lesion_answer(grid, self.lesion_threshold, width, height, self.image_size)
        return answer
