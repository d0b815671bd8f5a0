"""The model card (model.json): one typed, versioned class writes and reads it; every field
is required and a missing or unknown one is named; no silent defaults; the preprocessing
it states is what decode_image does; schemas/model.schema.json is its schema and a
freshly exported model.json validates against it."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from api_stub import Context, body_of
from conftest import ROOT
from PIL import Image

from busi_classifier.serving.card import (
    FORMAT_VERSION,
    ModelCard,
    ModelLoadError,
    json_schema,
    preprocessing_description,
)
from busi_classifier.serving.constants import CLASSES, PAD_COLOR, RESIZE_METHOD, SIXTEEN_BIT_DIVISOR
from busi_classifier.serving.events import http_v2_event

SCHEMA_FILE = ROOT / "schemas" / "model.schema.json"


def lesion_dict(side: int = 16, threshold: float = 0.45) -> dict:
    """The card's lesion field of a multitask model whose input is ``4 * side`` pixels."""
    return {"output": "lesion", "shape": [1, side, side, 1], "stride": 4, "activation": "sigmoid",
            "threshold": threshold, "threshold_rule": "the threshold of the best mean Dice on the validation images",
            "metrics": {"dice": {"mean": 0.7}}}


def input_check_dict(threshold: float = 41.5, sha256: str = "a" * 64, size: int = 270_000, dims: int = 32,
                     method: str = "mahalanobis") -> dict:
    """The card's input_check field (the file's own sha256 and size where a test writes one)."""
    return {"file": "input_check.npz", "sha256": sha256, "bytes": size, "method": method, "dims": dims,
            "feature_output": "features", "threshold": threshold,
            "threshold_rule": "the 95th percentile of the 80 validation images' scores: 5 % of in-distribution "
                              "images are flagged",
            "flag_rate": 0.05,
            "metrics": {"in_distribution": {"split": "test", "n": 40, "flag_rate": 0.05},
                        "sets": {"noise": {"n": 40, "auroc": 1.0, "flag_rate": 1.0}}}}


def card_dict() -> dict:
    """A complete current-format card (what export writes, small; without an input check:
    ``input_check_dict`` is the field of a model with one)."""
    def variant(file):
        return {"file": file, "bytes": 10, "sha256": "0" * 64, "latency_ms": 1.5, "evidence": {"top1_agreement": 1.0}}

    return {
        "format_version": FORMAT_VERSION, "name": "busi-resnet50", "model_version": "0.1.0+abc",
        "created_at": "2026-01-01T00:00:00+00:00", "classes": list(CLASSES),
        "input": {"name": "image", "shape": [1, 64, 64, 3], "size": 64, "dtype": "float32", "range": [0, 255],
                  "color": "RGB"},
        "output": {"name": "probabilities", "shape": [1, 3], "activation": "softmax"},
        "explain": {"output": "class_maps", "shape": [1, 2, 2, 3], "method": "class activation map"},
        "lesion": lesion_dict(),
        "input_check": None,
        "preprocessing": preprocessing_description(),
        "variants": {"float32": variant("model.tflite"), "int8_dynamic": variant("model_int8_dynamic.tflite"),
                     "int8_full": {**variant("model_int8_full.tflite"), "latency_ms": None, "evidence": None}},
        "default_variant": "float32", "default_variant_reason": "test", "variant_rule": {},
        "files": {}, "training": {"seed": 0}, "dataset": {"root": "/data"},
        "calibration": {"method": "temperature", "temperature": 1.7}, "metrics": {}, "packages": {},
    }


def test_a_complete_card_round_trips(tmp_path):
    card = ModelCard.from_dict(card_dict())
    assert card.to_dict() == card_dict()
    card.write(tmp_path)
    again = ModelCard.read(tmp_path / "model.tflite")  # the card beside a file
    assert again == card and again.temperature == 1.7 and again.input.size == 64
    assert again.variants["int8_full"].latency_ms is None
    checked = {**card_dict(), "input_check": input_check_dict()}
    card = ModelCard.from_dict(checked)
    assert card.to_dict() == checked and card.input_check.threshold == 41.5 and card.input_check.dims == 32
    card.write(tmp_path)
    assert ModelCard.read(tmp_path) == card


def fields_of(data: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in data.items():
        names.append(prefix + key)
        if key in ("input", "output", "explain", "lesion", "input_check", "calibration") and isinstance(value, dict):
            names += fields_of(value, prefix + key + ".")
    return names


def checked_card_dict() -> dict:
    return {**card_dict(), "input_check": input_check_dict()}


@pytest.mark.parametrize("field", [f for f in fields_of(checked_card_dict()) if f != "format_version"])
def test_every_missing_field_is_named(field):
    data = copy.deepcopy(checked_card_dict())
    *parents, last = field.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    del target[last]
    with pytest.raises(ModelLoadError, match=f"missing field '{field}'"):
        ModelCard.from_dict(data)


def test_a_missing_variant_entry_field_is_named():
    data = card_dict()
    del data["variants"]["float32"]["sha256"]
    with pytest.raises(ModelLoadError, match="variants.float32.sha256"):
        ModelCard.from_dict(data)


def test_an_old_card_asks_to_re_export():
    data = card_dict()
    del data["format_version"]
    with pytest.raises(ModelLoadError, match="re-export"):
        ModelCard.from_dict(data)
    with pytest.raises(ModelLoadError, match="format_version 6"):
        ModelCard.from_dict({**card_dict(), "format_version": 6})
    with pytest.raises(ModelLoadError, match="reads format_version 2, 3, 4, 5"):
        ModelCard.from_dict({**card_dict(), "format_version": 1})


def test_a_format_2_card_still_reads_as_a_model_without_class_maps():
    """Model folders exported before the class maps keep working: version 2 had no
    "explain" (nor "lesion") field, and reads as "no maps, no lesion map"; either field in
    a version-2 card is refused."""
    old = {k: v for k, v in card_dict().items() if k not in ("explain", "lesion", "input_check")}
    card = ModelCard.from_dict({**old, "format_version": 2})
    assert card.explain is None and card.lesion is None and card.format_version == 2
    with pytest.raises(ModelLoadError, match="unknown field 'explain'"):
        ModelCard.from_dict({**old, "explain": card_dict()["explain"], "format_version": 2})
    with pytest.raises(ModelLoadError, match="unknown field 'lesion'"):
        ModelCard.from_dict({**old, "lesion": None, "format_version": 2})
    with pytest.raises(ModelLoadError, match="missing field 'explain'"):
        ModelCard.from_dict({**old, "lesion": None, "input_check": None})  # the current version requires it
    with pytest.raises(ModelLoadError, match="explain.shape"):
        ModelCard.from_dict({**card_dict(), "explain": {**card_dict()["explain"], "shape": [1, 2, 2, 5]}})


def test_a_format_3_card_still_reads_as_a_classify_only_model():
    """Model folders exported before the lesion map (format_version 3) keep working: they
    read as "no lesion map" (segment requests answer 501); a version-3 card that has a
    "lesion" field, even null, is refused like any field its version did not have."""
    three = {k: v for k, v in card_dict().items() if k not in ("lesion", "input_check")}
    card = ModelCard.from_dict({**three, "format_version": 3})
    assert card.lesion is None and card.format_version == 3 and card.explain is not None
    for lesion in (None, lesion_dict()):
        with pytest.raises(ModelLoadError, match="unknown field 'lesion'"):
            ModelCard.from_dict({**three, "lesion": lesion, "format_version": 3})
    with pytest.raises(ModelLoadError, match="missing field 'lesion'"):
        ModelCard.from_dict({**three, "input_check": None})  # version 5 requires it (null for a classify-only model)


def test_a_format_4_card_still_reads_as_a_model_without_an_input_check():
    """Model folders exported before the input check (format_version 4) keep working: they
    read as "no input check" (the answers carry no input_check); a version-4 card that has
    an "input_check" field, even null, is refused like any field its version did not have."""
    four = {k: v for k, v in card_dict().items() if k != "input_check"}
    card = ModelCard.from_dict({**four, "format_version": 4})
    assert card.input_check is None and card.format_version == 4 and card.lesion is not None
    for version in (2, 3, 4):
        for check in (None, input_check_dict()):
            older = {k: v for k, v in four.items() if version >= 4 or k not in ("lesion",) + (("explain",) if
                                                                                               version == 2 else ())}
            with pytest.raises(ModelLoadError, match=f"unknown field 'input_check' \\(not in format_version {version}"):
                ModelCard.from_dict({**older, "input_check": check, "format_version": version})
    with pytest.raises(ModelLoadError, match="missing field 'input_check'"):
        ModelCard.from_dict(four)  # version 5 requires it (null: no input check)


def test_a_format_5_card_describes_the_input_check_or_says_null(tmp_path):
    card = ModelCard.from_dict({**card_dict(), "input_check": input_check_dict()})
    assert card.format_version == FORMAT_VERSION == 5
    spec = card.input_check
    assert (spec.file, spec.method, spec.dims, spec.feature_output) == ("input_check.npz", "mahalanobis", 32, "features")
    assert spec.flag_rate == 0.05 and spec.metrics["sets"]["noise"]["auroc"] == 1.0
    assert ModelCard.from_dict(card_dict()).input_check is None
    # an integer-valued threshold written as a JSON integer is still a number
    assert ModelCard.from_dict({**card_dict(), "input_check": input_check_dict(threshold=40)}).input_check.threshold == 40.0


@pytest.mark.parametrize("change,named", [
    ({"file": "../input_check.npz"}, "input_check.file"),
    ({"file": "/tmp/input_check.npz"}, "input_check.file"),
    ({"file": ""}, "input_check.file"),
    ({"file": ".."}, "input_check.file"),
    ({"sha256": "abc"}, "input_check.sha256"),
    ({"sha256": "A" * 64}, "input_check.sha256"),
    ({"bytes": 0}, "input_check.bytes"),
    ({"dims": 0}, "input_check.dims"),
    ({"dims": 32.0}, "input_check.dims"),
    ({"method": ""}, "input_check.method"),
    ({"feature_output": ""}, "input_check.feature_output"),
    ({"threshold": float("nan")}, "input_check.threshold"),
    ({"threshold": float("inf")}, "input_check.threshold"),
    ({"threshold": "41"}, "input_check.threshold"),
    ({"flag_rate": 0.0}, "input_check.flag_rate"),
    ({"flag_rate": 1.0}, "input_check.flag_rate"),
    ({"metrics": []}, "input_check.metrics"),
    ({"colour": "red"}, "input_check.colour"),
], ids=["parent-dir", "absolute", "empty-file", "dotdot", "short-sha", "upper-sha", "bytes-0", "dims-0", "float-dims",
        "no-method", "no-output", "threshold-nan", "threshold-inf", "threshold-string", "flag-rate-0", "flag-rate-1",
        "metrics-list", "unknown-field"])
def test_wrong_input_check_values_are_named(change, named):
    with pytest.raises(ModelLoadError, match=named.replace(".", r"\.")):
        ModelCard.from_dict({**card_dict(), "input_check": {**input_check_dict(), **change}})


def test_a_format_4_card_describes_the_lesion_map_or_says_null(tmp_path):
    card = ModelCard.from_dict(card_dict())
    assert card.format_version == FORMAT_VERSION
    assert card.lesion.shape == [1, 16, 16, 1] and card.lesion.stride == 4 and card.lesion.threshold == 0.45
    assert card.lesion.metrics == {"dice": {"mean": 0.7}}
    card.write(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["lesion"] == lesion_dict()
    assert ModelCard.read(tmp_path).lesion == card.lesion
    classify_only = ModelCard.from_dict({**card_dict(), "lesion": None})
    assert classify_only.lesion is None and classify_only.to_dict()["lesion"] is None
    # a threshold written as an integer-valued JSON number is still a number
    with pytest.raises(ModelLoadError, match=r"lesion\.threshold"):
        ModelCard.from_dict({**card_dict(), "lesion": {**lesion_dict(), "threshold": 1}})


@pytest.mark.parametrize("change,named", [
    ({"shape": [1, 16, 16, 3]}, "lesion.shape"),
    ({"shape": [16, 16, 1]}, "lesion.shape"),
    ({"shape": [2, 16, 16, 1]}, "lesion.shape"),
    ({"shape": [1, 0, 0, 1]}, "lesion.shape"),
    ({"shape": [1, 8, 8, 1]}, "lesion.shape"),  # 8 cells x stride 4 do not cover the 64 px input
    ({"shape": [1, 16, 8, 1]}, "lesion.shape"),
    ({"stride": 0}, "lesion.stride"),
    ({"stride": 8}, "lesion.shape"),  # a stride that does not fit the shape and the input
    ({"threshold": 0.0}, "lesion.threshold"),
    ({"threshold": 1.0}, "lesion.threshold"),
    ({"threshold": -0.2}, "lesion.threshold"),
    ({"threshold": float("nan")}, "lesion.threshold"),
    ({"threshold": "0.5"}, "lesion.threshold"),
    ({"stride": 4.0}, "lesion.stride"),
    ({"metrics": []}, "lesion.metrics"),
    ({"colour": "red"}, "lesion.colour"),
], ids=["classes-last", "3-d", "batch-2", "empty", "too-coarse", "not-square", "stride-0", "stride-8", "threshold-0",
        "threshold-1", "threshold-negative", "threshold-nan", "threshold-string", "float-stride", "metrics-list",
        "unknown-field"])
def test_wrong_lesion_values_are_named(change, named):
    with pytest.raises(ModelLoadError, match=named.replace(".", r"\.")):
        ModelCard.from_dict({**card_dict(), "lesion": {**lesion_dict(), **change}})


@pytest.mark.parametrize("change,named", [
    ({"calibration": {"method": "temperature", "temperature": "1.7"}}, "calibration.temperature"),
    ({"classes": "normal,benign,malignant"}, "classes"),
    ({"input": {**card_dict()["input"], "size": 64.0}}, "input.size"),
    ({"default_variant": "int4"}, "default_variant"),
    ({"calibration": {"method": "temperature", "temperature": 0}}, "calibration.temperature"),
    ({"notes": "hand edited"}, "notes"),
], ids=["string-temperature", "classes-not-list", "float-size", "unknown-default", "zero-temperature", "unknown-field"])
def test_wrong_values_are_named(change, named):
    with pytest.raises(ModelLoadError, match=named.replace(".", r"\.")):
        ModelCard.from_dict({**card_dict(), **change})


def test_no_silent_defaults_the_function_answers_503(tmp_path, capsys):
    """A card without calibration (or variants) used to serve temperature 1 (or
    model.tflite as float32) without a word: now the function answers 503 and the log
    names the field."""
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.settings import ServingSettings

    for missing in ("calibration", "variants"):
        data = card_dict()
        del data[missing]
        (tmp_path / "model.json").write_text(json.dumps(data))
        (tmp_path / "model.tflite").write_bytes(b"x")
        handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(tmp_path)}))
        assert body_of(handler(http_v2_event("GET", "/health"), Context()))["error"]["code"] == "model_unavailable"
        init = json.loads(capsys.readouterr().out.splitlines()[0])
        assert init["message"] == "function not initialised" and f"missing field '{missing}'" in init["reason"]


def test_the_committed_schema_is_the_cards_schema():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "regenerate: python -c 'import json; from busi_classifier.serving.card import json_schema; "
        "print(json.dumps(json_schema(), indent=2))' > schemas/model.schema.json")


def test_the_schema_agrees_with_the_reader():
    import jsonschema

    jsonschema.validate(card_dict(), json_schema())
    jsonschema.validate({**card_dict(), "lesion": None}, json_schema())
    jsonschema.validate({**card_dict(), "input_check": input_check_dict()}, json_schema())
    for broken_check in ({k: v for k, v in input_check_dict().items() if k != "sha256"}, {**input_check_dict(), "x": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**card_dict(), "input_check": broken_check}, json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in card_dict().items() if k != "input_check"}, json_schema())
    for broken_lesion in ({k: v for k, v in lesion_dict().items() if k != "threshold"}, {**lesion_dict(), "x": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**card_dict(), "lesion": broken_lesion}, json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in card_dict().items() if k != "lesion"}, json_schema())
    broken = card_dict()
    del broken["calibration"]["temperature"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json_schema())


def test_the_preprocessing_description_is_what_decode_image_does():
    from busi_classifier.serving.decode import decode_image

    description = preprocessing_description()
    assert description["resize"] == RESIZE_METHOD and description["pad_color"] == list(PAD_COLOR)
    assert description["function"] == f"{decode_image.__module__}.{decode_image.__name__}"
    # a 40x20 picture: resized with the stated filter, centred on the stated canvas
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8), "RGB")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    expected = Image.new("RGB", (16, 16), tuple(PAD_COLOR))
    expected.paste(picture.resize((16, 8), Image.Resampling[RESIZE_METHOD.upper()]), (0, 4))
    assert np.array_equal(decode_image(out.getvalue(), 16), np.asarray(expected))
    # 16-bit grayscale is divided by the stated divisor
    sixteen = Image.fromarray(np.full((16, 16), 100 * SIXTEEN_BIT_DIVISOR, np.uint16), "I;16")
    out = io.BytesIO()
    sixteen.save(out, format="PNG")
    assert decode_image(out.getvalue(), 16).min() == decode_image(out.getvalue(), 16).max() == 100


@pytest.mark.slow
def test_a_freshly_exported_model_json_validates_against_the_schema(trained_model):
    import jsonschema

    data = json.loads((trained_model / "model.json").read_text())
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    card = ModelCard.read(trained_model)
    assert card.format_version == FORMAT_VERSION and card.classes == list(CLASSES)
    # the session model trains multitask (the synthetic set has masks): its card describes the lesion map
    size = card.input.size
    assert card.lesion is not None and card.lesion.output == "lesion" and card.lesion.activation == "sigmoid"
    assert card.lesion.shape == [1, size // 4, size // 4, 1] and card.lesion.stride == 4
    assert 0 < card.lesion.threshold < 1 and card.lesion.threshold_rule
    assert card.preprocessing == preprocessing_description()
    assert card.calibration.method in ("temperature", "none")
    # the export fits the input check (issue 21): its file beside the model, as the card describes it
    check = card.input_check
    assert check is not None and check.feature_output == "features" and check.file == "input_check.npz"
    assert (trained_model / check.file).stat().st_size == check.bytes and 0 < check.flag_rate < 1
    from busi_classifier.serving.input_check import file_sha256

    assert file_sha256(trained_model / check.file) == check.sha256 and check.threshold_rule
