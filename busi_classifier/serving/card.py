"""The model card: model.json beside the .tflite files, typed and versioned.

``ModelCard`` is the one class that writes and reads model.json (export writes it, the
function, the local tools and evaluation read it). Every field is required: reading a
file that lacks one, holds a value of the wrong type, has a field this version does not
know, or has another ``format_version`` raises ``ModelLoadError`` naming the field; the
function then answers 503 and logs why. Nothing is filled in with a default. The JSON
Schema ``schemas/model.schema.json`` is ``json_schema()`` written out (a test keeps the
two equal and validates a freshly exported model.json against it).

``preprocessing`` is generated from the constants decode_image uses (constants.py), so
the card cannot drift from the code. Standard library only (plus decode's name).
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path

from .constants import (
    MAX_IMAGE_PIXELS,
    MODEL_INPUT_DTYPE,
    MODEL_INTERNAL_NORMALIZATION,
    PAD_COLOR,
    RESIZE_METHOD,
    SIXTEEN_BIT_DIVISOR,
)

FORMAT_VERSION = 5
# Older versions this code still reads, and what each lacks (read as null; a card of that
# version that has the field anyway is refused as an unknown field). 2: no class-map output
# ("explain": the model answers without explanations); 2 and 3: no lesion output ("lesion":
# a classify-only model, segment requests answer 501); 2 to 4: no input check
# ("input_check": the answers carry no input_check, and the file must have no features output).
READABLE_VERSIONS = {2: {"explain": None, "lesion": None, "input_check": None},
                     3: {"lesion": None, "input_check": None},
                     4: {"input_check": None}}
CARD_FILE = "model.json"
SCHEMA_ID = "https://github.com/busi-classifier/schemas/model.schema.json"


class ModelLoadError(RuntimeError):
    """The model files are missing or do not fit together (model.json included)."""


def preprocessing_description(module: str = "busi_classifier.serving.decode") -> dict:
    """How decode_image makes the model input, from the constants it uses."""
    return {
        "function": f"{module}.decode_image",
        "exif_orientation": True,
        "color": "RGB",
        "alpha_composited_on": list(PAD_COLOR),
        "sixteen_bit_divisor": SIXTEEN_BIT_DIVISOR,
        "resize": RESIZE_METHOD,
        "keep_aspect_ratio": True,
        "pad_color": list(PAD_COLOR),
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "input_dtype": MODEL_INPUT_DTYPE,
        "input_range": [0, 255],
        "model_internal_normalization": MODEL_INTERNAL_NORMALIZATION,
    }


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: list[int]
    size: int
    dtype: str
    range: list[float]
    color: str


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: list[int]
    activation: str


@dataclass(frozen=True)
class VariantEntry:
    file: str
    bytes: int
    sha256: str
    latency_ms: float | None  # median LiteRT invoke at export; null without evaluation data
    evidence: dict | None  # agreement with the Keras model on the gate images (train+val, never test); null without them


@dataclass(frozen=True)
class ExplainSpec:
    output: str  # the TFLite output holding the class activation maps
    shape: list[int]  # [1, h, w, number of classes]
    method: str


@dataclass(frozen=True)
class LesionSpec:
    """The lesion-map output: a probability per map cell that it is lesion."""

    output: str  # the TFLite output holding the lesion map ("lesion")
    shape: list[int]  # [1, h, w, 1]; h * stride == w * stride == input.size
    stride: int  # model-input pixels per map cell (4): cell (r, c) covers [stride r, stride (r+1)) x [stride c, ...)
    activation: str  # "sigmoid"
    threshold: float  # probability at or above which a pixel is lesion, chosen on the validation split
    threshold_rule: str  # how the threshold was chosen (one sentence)
    metrics: dict  # segmentation metrics of the served file on the test split ({} when not scored)


@dataclass(frozen=True)
class InputCheckSpec:
    """The input check: how far an image's pooled features lie from the training images'
    (serving/input_check.py). Its file lies beside the .tflite files; Predictor loads it and
    checks it against this description (sha256, method, dims, threshold, the features
    output's size): a missing or mismatched file is a load error, never a silent "no check"."""

    file: str  # "input_check.npz", beside the .tflite files (a plain file name)
    sha256: str  # of that file; checked at load
    bytes: int
    method: str  # e.g. "mahalanobis"
    dims: int  # the PCA space the score is computed in
    feature_output: str  # the TFLite output the check scores ("features": the pooled ResNet50 features)
    threshold: float  # score above which an image is flagged (not like the training images)
    threshold_rule: str  # how the threshold was chosen (one sentence: validation split, flag rate)
    flag_rate: float  # the target share of in-distribution validation images flagged (0.05)
    metrics: dict  # {"in_distribution": {...}, "sets": {name: {"n", "auroc", "flag_rate"}}, ...} ({} unmeasured)


@dataclass(frozen=True)
class Calibration:
    method: str  # "temperature" or "none"
    temperature: float  # 1.0 with method "none"


@dataclass(frozen=True)
class ModelCard:
    """model.json, format_version 5 (2 to 4 are read too: see READABLE_VERSIONS)."""

    format_version: int
    name: str
    model_version: str
    created_at: str
    classes: list[str]
    input: InputSpec
    output: OutputSpec
    explain: ExplainSpec | None  # the class-map output; null: the model has none
    lesion: LesionSpec | None  # the lesion-map output; null: a classify-only model
    input_check: InputCheckSpec | None  # the features output and its check file; null: no input check
    preprocessing: dict
    variants: dict[str, VariantEntry]
    default_variant: str
    default_variant_reason: str
    variant_rule: dict
    files: dict
    training: dict
    dataset: dict
    calibration: Calibration
    metrics: dict
    packages: dict

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION and self.format_version not in READABLE_VERSIONS:
            raise ModelLoadError(f"model.json: format_version {self.format_version} is not {FORMAT_VERSION}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ModelLoadError("model.json: field 'classes' must list distinct class names")
        if self.default_variant not in self.variants:
            raise ModelLoadError(f"model.json: field 'default_variant' names {self.default_variant!r}, "
                                 f"which is not in 'variants' ({', '.join(self.variants)})")
        temperature = self.calibration.temperature
        if not (math.isfinite(temperature) and temperature > 0):
            raise ModelLoadError("model.json: field 'calibration.temperature' must be a positive number")
        if self.input.size < 1 or list(self.input.shape) != [1, self.input.size, self.input.size, 3]:
            raise ModelLoadError("model.json: field 'input.shape' must be [1, size, size, 3]")
        if list(self.output.shape) != [1, len(self.classes)]:
            raise ModelLoadError("model.json: field 'output.shape' must be [1, number of classes]")
        if self.explain is not None and (len(self.explain.shape) != 4 or self.explain.shape[0] != 1
                                         or self.explain.shape[3] != len(self.classes)):
            raise ModelLoadError("model.json: field 'explain.shape' must be [1, h, w, number of classes]")
        if self.lesion is not None:
            self._check_lesion(self.lesion)
        if self.input_check is not None:
            self._check_input_check(self.input_check)

    def _check_lesion(self, lesion: LesionSpec) -> None:
        shape, stride, size = list(lesion.shape), lesion.stride, self.input.size
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 1 or min(shape) < 1:
            raise ModelLoadError("model.json: field 'lesion.shape' must be [1, h, w, 1]")
        if stride < 1:
            raise ModelLoadError("model.json: field 'lesion.stride' must be at least 1")
        if shape[1] * stride != size or shape[2] * stride != size:
            raise ModelLoadError(f"model.json: field 'lesion.shape' {shape} with 'lesion.stride' {stride} does not "
                                 f"cover the {size} x {size} input (h x stride and w x stride must be {size})")
        if not (math.isfinite(lesion.threshold) and 0 < lesion.threshold < 1):
            raise ModelLoadError("model.json: field 'lesion.threshold' must be a number between 0 and 1 (exclusive)")

    @staticmethod
    def _check_input_check(check: InputCheckSpec) -> None:
        name = check.file
        if (not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip()
                or not name.isprintable()):
            raise ModelLoadError("model.json: field 'input_check.file' must be a plain file name beside the model "
                                 f"files (such as input_check.npz), not {name[:64]!r}")
        if len(check.sha256) != 64 or any(c not in "0123456789abcdef" for c in check.sha256):
            raise ModelLoadError("model.json: field 'input_check.sha256' must be 64 lowercase hexadecimal digits")
        if check.bytes < 1:
            raise ModelLoadError("model.json: field 'input_check.bytes' must be a positive integer")
        if check.dims < 1:
            raise ModelLoadError("model.json: field 'input_check.dims' must be at least 1")
        if not check.method:
            raise ModelLoadError("model.json: field 'input_check.method' must name the method")
        if not check.feature_output:
            raise ModelLoadError("model.json: field 'input_check.feature_output' must name the features output")
        if not math.isfinite(check.threshold):
            raise ModelLoadError("model.json: field 'input_check.threshold' must be a finite number")
        if not (math.isfinite(check.flag_rate) and 0 < check.flag_rate < 1):
            raise ModelLoadError("model.json: field 'input_check.flag_rate' must be a number between 0 and 1 "
                                 "(exclusive)")

    # --- reading ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: object) -> ModelCard:
        if not isinstance(data, dict):
            raise ModelLoadError("model.json: expected a JSON object")
        if "format_version" not in data:
            raise ModelLoadError(
                "model.json has no format_version: it was written by an older busi_classifier; "
                "re-export the model (train again with `python train.py ...`) to get a current model.json")
        version = data["format_version"]
        if version in READABLE_VERSIONS and not isinstance(version, bool):
            for name, value in READABLE_VERSIONS[version].items():
                if name in data:
                    raise ModelLoadError(f"model.json: unknown field {name!r} (not in format_version {version})")
                data = {**data, name: value}
        elif version != FORMAT_VERSION or isinstance(version, bool):
            readable = ", ".join(str(v) for v in sorted({FORMAT_VERSION, *READABLE_VERSIONS}))
            raise ModelLoadError(f"model.json has format_version {version!r}; this busi_classifier reads "
                                 f"format_version {readable}: re-export the model with this version")
        return _build(cls, data, "")

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        """The card of a model folder, or the one beside a .tflite file."""
        path = Path(path)
        card_path = path / CARD_FILE if path.is_dir() else path.with_name(CARD_FILE)
        if not card_path.is_file():
            raise ModelLoadError(f"{CARD_FILE} not found in {card_path.parent} (export writes it beside the .tflite files)")
        try:
            data = json.loads(card_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelLoadError(f"{card_path} is not readable JSON ({exc})") from None
        return cls.from_dict(data)

    # --- writing ------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, folder: str | os.PathLike) -> Path:
        """Write model.json into ``folder`` (atomically); return its path."""
        path = Path(folder) / CARD_FILE
        tmp = path.with_name(CARD_FILE + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    # --- use ----------------------------------------------------------------------

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    def variant_of_file(self, file_name: str) -> str | None:
        """The variant name whose file is ``file_name`` (None: not one of the card's)."""
        return next((name for name, entry in self.variants.items() if entry.file == file_name), None)


# --- the typed reader and the schema, from the dataclasses' type hints ---------------

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def _convert(kind, value, where: str):
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [k for k in options if k is not type(None)]
        return _convert(inner, value, where)
    if is_dataclass(kind):
        return _build(kind, value, where + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ModelLoadError(f"model.json: field {where!r} must be a list")
        (item,) = typing.get_args(kind)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ModelLoadError(f"model.json: field {where!r} must be an object")
        _, item = typing.get_args(kind)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ModelLoadError(f"model.json: field {where!r} must be {_JSON_TYPES.get(kind, _type_name(kind))}, "
                             f"not {type(value).__name__}")
    return value


def _build(cls, data, prefix: str):
    where = prefix.rstrip(".") or "model.json"
    if not isinstance(data, dict):
        raise ModelLoadError(f"model.json: field {where!r} must be an object")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for name in names:
        if name not in data:
            raise ModelLoadError(f"model.json: missing field {prefix + name!r}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ModelLoadError(f"model.json: unknown field {prefix + unknown[0]!r} (not in format_version {FORMAT_VERSION})")
    return cls(**{name: _convert(hints[name], data[name], prefix + name) for name in names})


def _schema(kind) -> dict:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [k for k in typing.get_args(kind) if k is not type(None)]
        return {"anyOf": [_schema(inner), {"type": "null"}]}
    if is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        names = [f.name for f in fields(kind)]
        return {"type": "object", "required": names, "additionalProperties": False,
                "properties": {name: _schema(hints[name]) for name in names}}
    if origin is list:
        return {"type": "array", "items": _schema(typing.get_args(kind)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(typing.get_args(kind)[1])}
    return {"type": _JSON_TYPES[kind]}


def json_schema() -> dict:
    """The JSON Schema of model.json (what schemas/model.schema.json holds)."""
    schema = _schema(ModelCard)
    schema["properties"]["format_version"] = {"const": FORMAT_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "busi_classifier model card (model.json)",
            "description": "Written and read by busi_classifier.serving.card.ModelCard; every field is required.",
            **schema}
