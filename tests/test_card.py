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


def card_dict() -> dict:
    """A complete current-format card (what export writes, small)."""
    def variant(file):
        return {"file": file, "bytes": 10, "sha256": "0" * 64, "latency_ms": 1.5, "evidence": {"top1_agreement": 1.0}}

    return {
        "format_version": FORMAT_VERSION, "name": "busi-resnet50", "model_version": "0.1.0+abc",
        "created_at": "2026-01-01T00:00:00+00:00", "classes": list(CLASSES),
        "input": {"name": "image", "shape": [1, 64, 64, 3], "size": 64, "dtype": "float32", "range": [0, 255],
                  "color": "RGB"},
        "output": {"name": "probabilities", "shape": [1, 3], "activation": "softmax"},
        "explain": {"output": "class_maps", "shape": [1, 2, 2, 3], "method": "class activation map"},
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


def fields_of(data: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in data.items():
        names.append(prefix + key)
        if key in ("input", "output", "explain", "calibration") and isinstance(value, dict):
            names += fields_of(value, prefix + key + ".")
    return names


@pytest.mark.parametrize("field", [f for f in fields_of(card_dict()) if f != "format_version"])
def test_every_missing_field_is_named(field):
    data = copy.deepcopy(card_dict())
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
    with pytest.raises(ModelLoadError, match="format_version 4"):
        ModelCard.from_dict({**card_dict(), "format_version": 4})


def test_a_format_2_card_still_reads_as_a_model_without_class_maps():
    """Model folders exported before the class maps keep working: version 2 had no
    "explain" field, and reads as "no maps"; the field in a version-2 card is refused."""
    old = {k: v for k, v in card_dict().items() if k != "explain"}
    card = ModelCard.from_dict({**old, "format_version": 2})
    assert card.explain is None and card.format_version == 2
    with pytest.raises(ModelLoadError, match="unknown field 'explain'"):
        ModelCard.from_dict({**card_dict(), "format_version": 2})
    with pytest.raises(ModelLoadError, match="missing field 'explain'"):
        ModelCard.from_dict(old)  # version 3 requires it (null when there are no maps)
    with pytest.raises(ModelLoadError, match="explain.shape"):
        ModelCard.from_dict({**card_dict(), "explain": {**card_dict()["explain"], "shape": [1, 2, 2, 5]}})


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
    assert card.preprocessing == preprocessing_description()
    assert card.calibration.method in ("temperature", "none")
