"""Class activation maps: computed inside the exported graph (same invoke as the
probabilities), for every variant, returned by the API on request, and absent without
breaking anything from models exported before them."""

import base64
import io
import json
import shutil
import sys

import numpy as np
import pytest
from conftest import TEST_IMAGE_SIZE, fresh_lambda, synthetic_images
from PIL import Image

from busi_classifier.serving.events import http_v2_event
from busi_classifier.serving.explain import explanation, normalise_map, overlay_png


def test_normalise_map_clips_negative_evidence_and_scales_to_the_peak():
    cam = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(normalise_map(cam), [[0, 0], [0.25, 1.0]])
    assert not normalise_map(-np.ones((3, 3))).any()  # nothing positive: all zeros, no division by zero
    assert not normalise_map(np.full((2, 2), np.nan)).any()


def test_explanation_is_the_predicted_class_map_and_a_small_png():
    maps = np.zeros((7, 7, 3))
    maps[1, 5, 2] = 3.0  # class 2 peaks top right
    maps[6, 0, 0] = 9.0  # another class elsewhere: not shown
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    e = explanation(maps, 2, ["normal", "benign", "malignant"], image)
    assert e["class"] == "malignant" and e["grid_shape"] == [7, 7]
    grid = np.array(e["grid"])
    assert grid.max() == 1.0 and grid[1, 5] == 1.0 and grid[6, 0] == 0.0
    png = base64.b64decode(e["overlay_png"])
    with Image.open(io.BytesIO(png)) as overlay:
        assert overlay.format == "PNG" and overlay.size == (224, 224)
        # the heat map's bright corner is where the map peaks
        rgb = np.asarray(overlay.convert("RGB"), dtype=float)
        assert rgb[32:64, 160:192].mean() > rgb[192:, 0:32].mean() + 20
    with Image.open(io.BytesIO(overlay_png(np.zeros((600, 600, 3), np.uint8), grid, max_side=128))) as small:
        assert small.size == (128, 128)


def test_keras_class_maps_average_to_the_logits():
    """The map of class c is the last feature map times the dense layer's column c: its
    mean over the cells plus the bias is the logit, so softmax of those is the model's
    output. No gradients, one forward pass."""
    import keras

    from busi_classifier.config import TrainConfig
    from busi_classifier.training.model import CAM_OUTPUT, build_model, explain_model

    model, _ = build_model(TrainConfig(data_dir="d", out_dir="o", weights="none", image_size=64))
    served = explain_model(model)
    x = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    out = served.predict(x, verbose=0)
    assert out[CAM_OUTPUT].shape == (2, 2, 2, 3)
    np.testing.assert_allclose(out["probabilities"], model.predict(x, verbose=0), atol=1e-6)
    logits = out[CAM_OUTPUT].mean(axis=(1, 2)) + keras.ops.convert_to_numpy(model.get_layer("probabilities").bias)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), out["probabilities"], atol=1e-5)
    keras.backend.clear_session()


@pytest.mark.slow
def test_every_variant_has_class_maps_and_they_follow_the_keras_maps(trained_model, synthetic_dir):
    from busi_classifier.data.dataset import load_images, read_dataset
    from busi_classifier.serving.predictor import Predictor
    from busi_classifier.training.model import CAM_OUTPUT, explain_model, load_keras_model

    meta = json.loads((trained_model / "model.json").read_text())
    assert meta["format_version"] == 5 and meta["explain"]["output"] == CAM_OUTPUT
    h, w = meta["explain"]["shape"][1:3]
    images = load_images(read_dataset(synthetic_dir)[:6], TEST_IMAGE_SIZE, progress=False)
    keras_maps = explain_model(load_keras_model(trained_model / "model.keras")).predict(
        images.astype("float32"), verbose=0)[CAM_OUTPUT]
    for name, entry in meta["variants"].items():
        predictor = Predictor(trained_model, variant=name, num_threads=1)
        assert predictor.has_maps, name
        probabilities, maps = predictor.raw_outputs(images)
        assert maps.shape == (len(images), h, w, 3)
        # the same invoke: the probabilities with maps equal those without
        np.testing.assert_allclose(probabilities, predictor.raw_probabilities(images), atol=1e-7)
        evidence = entry["evidence"]
        assert {"map_mean_abs_diff", "map_peak_agreement"} <= set(evidence), name
        if name in ("float32", "float16"):
            np.testing.assert_allclose(maps, keras_maps, rtol=1e-2, atol=1e-2 * np.abs(keras_maps).max())
    served = meta["metrics"]["served"]["test"]["localisation"]
    assert served["dilate_1"]["n"] >= 1 and served["dilate_1"]["pointing_game"]["centre_baseline"] is not None


@pytest.mark.slow
def test_api_explains_on_request_and_answers_as_before_without(trained_model, synthetic_dir, monkeypatch):
    png = synthetic_images(synthetic_dir, 1)[2][1]
    try:
        module = fresh_lambda(monkeypatch, trained_model)
        plain = module.lambda_handler({"image": base64.b64encode(png).decode()}, None)
        assert "explanation" not in plain
        explained = module.lambda_handler({"image": base64.b64encode(png).decode(), "explain": True}, None)
        assert explained["probabilities"] == plain["probabilities"]
        e = explained["explanation"]
        meta = json.loads((trained_model / "model.json").read_text())
        assert e["class"] == explained["prediction"] and e["grid_shape"] == meta["explain"]["shape"][1:3]
        event = http_v2_event("POST", "/predict", raw=png)
        event["queryStringParameters"] = {"explain": "1"}
        answer = module.lambda_handler(event, None)
        assert answer["statusCode"] == 200 and json.loads(answer["body"])["explanation"]["grid"] == e["grid"]
        health = json.loads(module.lambda_handler(http_v2_event("GET", "/health"), None)["body"])
        assert health["explain"] is True
    finally:
        sys.modules.pop("lambda_function", None)


@pytest.mark.slow
def test_a_model_exported_before_the_maps_still_serves_and_refuses_only_explain(trained_model, tmp_path,
                                                                              synthetic_dir, monkeypatch):
    """A format-2 folder (one output): predictions as before, explain -> 501."""
    from busi_classifier.export.tflite import convert_to_tflite
    from busi_classifier.training.model import load_keras_model

    old = tmp_path / "old"
    old.mkdir()
    import keras

    model = load_keras_model(trained_model / "model.keras")  # multitask: keep the probabilities only, as format 2 had
    (old / "model.tflite").write_bytes(convert_to_tflite(keras.Model(model.inputs, model.output["probabilities"])))
    card = json.loads((trained_model / "model.json").read_text())
    card = {k: v for k, v in card.items() if k not in ("explain", "lesion", "input_check")}
    card.update(format_version=2, default_variant="float32", variants={"float32": card["variants"]["float32"]})
    (old / "model.json").write_text(json.dumps(card))
    png = synthetic_images(synthetic_dir, 1)[0][1]
    try:
        module = fresh_lambda(monkeypatch, old)
        assert module.lambda_handler.load_error is None and not module.lambda_handler.predictor.has_maps
        answer = module.lambda_handler({"image": base64.b64encode(png).decode()}, None)
        assert set(answer) == {"prediction", "probabilities", "model_version"}
        refused = module.lambda_handler({"image": base64.b64encode(png).decode(), "explain": True}, None)
        assert refused["error"]["code"] == "explain_unavailable"
        health = json.loads(module.lambda_handler(http_v2_event("GET", "/health"), None)["body"])
        assert health["explain"] is False
        # a current card that promises maps the file lacks is a load error, not a silent downgrade
        shutil.copy(trained_model / "model.json", old / "model.json")
        module = fresh_lambda(monkeypatch, old / "model.tflite")
        assert "class maps" in (module.lambda_handler.load_error or "")
    finally:
        sys.modules.pop("lambda_function", None)
