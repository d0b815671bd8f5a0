"""Train (tiny) -> export -> serve through every event shape, and train/serve parity."""

import csv
import json

import numpy as np
import pytest
from conftest import TEST_IMAGE_SIZE, synthetic_images

from busi_classifier.serving.api import MAX_IMAGE_BYTES
from busi_classifier.serving.card import ModelCard
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.events import b64, direct_event, http_v2_event, rest_v1_event
from busi_classifier.serving.model_summary import model_summary

pytestmark = pytest.mark.slow


def body_of(answer: dict) -> dict:
    return json.loads(answer["body"]) if "statusCode" in answer else answer


def assert_prediction(answer: dict) -> None:
    assert set(answer) >= {"prediction", "probabilities", "model_version"}
    probabilities = answer["probabilities"]
    assert list(probabilities) == list(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["prediction"] == max(probabilities, key=probabilities.get)


def test_training_writes_every_artifact(trained_model, synthetic_dir):
    for name in ("model.keras", "model.tflite", "model_float16.tflite", "model_int8_dynamic.tflite",
                 "model_int8_full.tflite", "model.json", "metrics.json", "split.csv", "history.json"):
        assert (trained_model / name).is_file(), name
    meta = json.loads((trained_model / "model.json").read_text())
    assert meta["classes"] == ["normal", "benign", "malignant"]
    assert meta["input"]["size"] == TEST_IMAGE_SIZE and meta["input"]["range"] == [0, 255]
    assert "preprocess_input" in meta["preprocessing"]["model_internal_normalization"]
    assert meta["training"]["weights"] == "none" and meta["training"]["seed"] == 0
    assert len(meta["dataset"]["fingerprint_sha256"]) == 64
    assert meta["packages"]["keras"] and meta["packages"]["numpy"]
    assert meta["model_version"].endswith(meta["files"]["model.tflite"]["sha256"][:12])
    assert meta["default_variant"] in meta["variants"] and meta["default_variant_reason"]
    metrics = json.loads((trained_model / "metrics.json").read_text())["test"]
    matrix = np.array(metrics["confusion_matrix"]["rows_true_cols_pred"])
    assert matrix.shape == (3, 3) and matrix.sum() == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert set(metrics["per_class"]) == set(CLASSES)
    with open(trained_model / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert all((synthetic_dir / r["path"]).is_file() and r["label"] in CLASSES for r in rows)
    assert sum(r["split"] == "test" for r in rows) == metrics["n"]


def staged(event: dict, stage: str) -> dict:
    """An HTTP API event on a named stage: its rawPath holds the stage."""
    return {**event, "requestContext": {**event["requestContext"], "stage": stage}}


@pytest.mark.parametrize("shape", ["direct", "rest-json", "rest-raw", "http-json", "http-raw", "http-stage-prefix"])
def test_every_event_shape_returns_a_prediction(lambda_module, synthetic_dir, shape):
    label, data = synthetic_images(synthetic_dir, 1)[2]
    event = {
        "direct": lambda: direct_event(data),
        "rest-json": lambda: rest_v1_event("POST", "/predict", {"image": b64(data)}),
        "rest-raw": lambda: rest_v1_event("POST", "/predict", raw=data),
        "http-json": lambda: http_v2_event("POST", "/predict", {"image": b64(data)}),
        "http-raw": lambda: http_v2_event("POST", "/predict", raw=data),
        "http-stage-prefix": lambda: staged(http_v2_event("POST", "/prod/predict", raw=data), "prod"),
    }[shape]()
    answer = lambda_module.lambda_handler(event, None)
    if shape != "direct":
        assert answer["statusCode"] == 200 and answer["headers"]["Content-Type"] == "application/json"
    assert_prediction(body_of(answer))


def test_batch_matches_single_requests(lambda_module, synthetic_dir):
    images = [data for _, data in synthetic_images(synthetic_dir, 1)]
    batch = lambda_module.lambda_handler({"images": [b64(d) for d in images]}, None)
    assert len(batch["predictions"]) == 3
    for data, answer in zip(images, batch["predictions"], strict=True):
        single = lambda_module.lambda_handler(direct_event(data), None)
        assert answer["probabilities"] == single["probabilities"]


@pytest.mark.parametrize("make", [rest_v1_event, http_v2_event], ids=["rest", "http"])
def test_health(lambda_module, trained_model, make):
    answer = lambda_module.lambda_handler(make("GET", "/health"), None)
    body = json.loads(answer["body"])
    meta = json.loads((trained_model / "model.json").read_text())
    assert answer["statusCode"] == 200
    assert body == {"status": "ok", "model_version": meta["model_version"], "classes": list(CLASSES), "explain": True,
                    "model": model_summary(ModelCard.read(trained_model)), "limits": {"image_bytes": MAX_IMAGE_BYTES}}


# Every error case has one home: tests/test_hostile_input.py and tests/test_routing.py
# (a stub predictor, the real decoding); here only what needs the real model.


def test_missing_model_gives_503_not_a_crash(monkeypatch, tmp_path):
    import importlib
    import sys

    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "nothing.tflite"))
    sys.modules.pop("lambda_function", None)
    module = importlib.import_module("lambda_function")
    try:
        answer = module.lambda_handler(http_v2_event("GET", "/health"), None)
        assert answer["statusCode"] == 503
        assert "MODEL_PATH" in json.loads(answer["body"])["error"]["message"]
        assert module.lambda_handler(direct_event(b"x"), None)["error"]["code"] == "model_unavailable"
    finally:
        sys.modules.pop("lambda_function", None)


def test_keras_and_lambda_agree_on_the_same_png_bytes(float32_lambda, trained_model, synthetic_dir):
    """Train/serve parity: Keras model fed through the shared preprocessing vs the
    Lambda handler running the float32 TFLite model with LiteRT (the quantised variants
    are held to their own gates, tests/test_variants.py)."""
    from busi_classifier.serving.decode import decode_image
    from busi_classifier.serving.predictor import apply_temperature
    from busi_classifier.training.model import load_keras_model

    model = load_keras_model(trained_model / "model.keras")
    temperature = json.loads((trained_model / "model.json").read_text())["calibration"]["temperature"]
    images = synthetic_images(synthetic_dir, 3)
    batch = np.stack([decode_image(data, TEST_IMAGE_SIZE) for _, data in images]).astype("float32")
    keras_outputs = model.predict(batch, verbose=0)
    assert set(keras_outputs) == {"probabilities", "lesion"}  # the session model is multitask
    keras_probabilities = apply_temperature(keras_outputs["probabilities"], temperature)
    served = np.array([
        list(float32_lambda.lambda_handler(direct_event(data), None)["probabilities"].values()) for _, data in images
    ])
    assert served.shape == keras_probabilities.shape == (9, 3)
    assert np.abs(served - keras_probabilities).max() < 1e-4
    # the lesion map too: the Keras decoder and the served file's lesion output, same input pixels
    served_maps = float32_lambda.lambda_handler.predictor.raw_all(batch.astype(np.uint8))["lesion"]
    assert served_maps.shape == keras_outputs["lesion"].shape[:3]
    assert np.abs(served_maps - keras_outputs["lesion"][..., 0]).max() < 1e-4
    # the comparison must mean something: the model is not saturated on every image
    assert ((served > 0.01) & (served < 0.99)).any()


def test_handler_applies_the_temperature_of_model_json(trained_model, synthetic_dir, tmp_path, monkeypatch):
    """Calibration travels with the model: the served probabilities are the raw TFLite
    output scaled by model.json's temperature (same class, softer or sharper)."""
    import importlib
    import shutil
    import sys

    from busi_classifier.serving.predictor import Predictor, apply_temperature

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.tflite", "model.json", "input_check.npz"):
        shutil.copy(trained_model / name, model_dir / name)
    meta = json.loads((model_dir / "model.json").read_text())
    meta["calibration"] = {"method": "temperature scaling", "temperature": 2.5}
    (model_dir / "model.json").write_text(json.dumps(meta))
    monkeypatch.setenv("MODEL_PATH", str(model_dir / "model.tflite"))
    monkeypatch.delenv("MODEL_VARIANT", raising=False)
    sys.modules.pop("lambda_function", None)
    try:
        module = importlib.import_module("lambda_function")
        raw_predictor = Predictor(trained_model / "model.tflite")
        from busi_classifier.serving.decode import decode_image

        for _, data in synthetic_images(synthetic_dir, 1):
            served = np.array(list(module.lambda_handler(direct_event(data), None)["probabilities"].values()))
            raw = raw_predictor.predict_array(decode_image(data, TEST_IMAGE_SIZE), calibrated=False)
            np.testing.assert_allclose(served, apply_temperature(raw, 2.5), atol=1e-9)
            assert served.max() < raw.max() or raw.max() > 0.999999
    finally:
        sys.modules.pop("lambda_function", None)
