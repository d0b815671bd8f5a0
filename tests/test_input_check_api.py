"""The input check in serving (issue 21): the served graph's "features" output, scored by
``input_check.npz`` beside the model (serving/input_check.py), adds ``input_check`` (score,
threshold, in_distribution) to every answer of a model whose model.json describes it;
OOD_ACTION=refuse turns a flagged image into 422 ``out_of_distribution``; the card, the
check file and the graph must agree, else the model does not load (never a silent "no
check").

The predictor's tests run LiteRT on tiny TFLite graphs written here with TensorFlow
(skipped without it): a 16 px input and the four outputs of the served graph, whose
"features" are eight statistics of the image (channel means, spread, roughness, extremes);
the check is fitted on smooth, scan-like images with the project's own fitting code
(evaluation/input_check_fit.py), so noise lies far from them. The API's tests run the
handler around tests/api_stub.py's CheckedStubPredictor (the real decoding, a roughness
score)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
import yaml
from api_stub import (
    STUB_INPUT_CHECK_THRESHOLD,
    CheckedStubPredictor,
    Context,
    StubPredictor,
    body_of,
    leaks,
    stub_handler,
)
from conftest import ROOT
from PIL import Image

from busi_classifier.serving import api
from busi_classifier.serving.card import ModelCard, ModelLoadError
from busi_classifier.serving.events import http_v2_event, rest_v1_event
from busi_classifier.serving.input_check import FILE, InputCheck, file_sha256
from busi_classifier.serving.settings import ServingSettings

TINY = 16  # px: the tiny graphs' input
FEATURES = 8  # the tiny graphs' "features" output: [1, 8]
INPUT_CHECK_KEYS = {"score", "threshold", "in_distribution"}
OUT_OF_DISTRIBUTION = api.ERRORS["out_of_distribution"][1]

try:  # S3 on loopback (moto's server) for the S3 Batch test: test_s3_batch's fixtures
    from test_s3_batch import aws_env, bucket, moto_url, proxy, s3  # noqa: F401

    HAVE_S3 = True
except pytest.skip.Exception:
    HAVE_S3 = False


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def scan_like(seed: int, width: int = 120, height: int = 90) -> bytes:
    """A smooth grey image with a soft blob (as a scan is, at 16 px): in distribution."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, rng.uniform(10, 30)
    base = rng.uniform(50, 90) + 25 * yy / height
    gray = np.clip(base + rng.uniform(60, 120) * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))), 0, 255)
    return png_of(gray.astype(np.uint8))


def noise(seed: int, width: int = 120, height: int = 90) -> bytes:
    """Uniform colour noise: as far from a scan as an image gets."""
    return png_of(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def spec_validator(name: str):
    from openapi_schema_validator import OAS30Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    registry = Registry().with_resource("urn:spec", Resource(contents=spec, specification=DRAFT4))
    return OAS30Validator({"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry)


def assert_input_check(check: dict, threshold: float) -> None:
    """Exactly the contract's keys and types; in_distribution is score <= threshold."""
    assert set(check) == INPUT_CHECK_KEYS
    assert isinstance(check["in_distribution"], bool) and check["threshold"] == threshold
    assert check["score"] is None or isinstance(check["score"], float)
    assert check["in_distribution"] is (check["score"] is not None and check["score"] <= threshold)


# --------------------------------------------------------------------------- the API (stub predictor)


def test_every_answer_carries_the_input_check_and_a_flagged_image_is_still_answered():
    """OOD_ACTION unset = flag: the class as always, and input_check.in_distribution false."""
    handler = stub_handler(CheckedStubPredictor(), environ={})
    scan, rough = handler({"image": b64(scan_like(0))}, Context()), handler({"image": b64(noise(0))}, Context())
    for answer in (scan, rough):
        assert answer["prediction"] in StubPredictor.classes
        assert_input_check(answer["input_check"], STUB_INPUT_CHECK_THRESHOLD)
        spec_validator("Prediction").validate(answer)
    assert scan["input_check"]["in_distribution"] is True and rough["input_check"]["in_distribution"] is False
    batch = handler({"images": [b64(scan_like(0)), b64(noise(0))], "segment": True, "explain": True}, Context())
    assert [p["input_check"] for p in batch["predictions"]] == [scan["input_check"], rough["input_check"]]
    assert all("lesion" in p and "explanation" in p for p in batch["predictions"])
    spec_validator("BatchPrediction").validate(batch)
    # a model without the check answers as before: no input_check key at all
    assert "input_check" not in stub_handler(StubPredictor(), environ={})({"image": b64(noise(0))}, Context())


def test_refuse_answers_422_out_of_distribution_with_the_fixed_sentence():
    handler = stub_handler(CheckedStubPredictor(), environ={"OOD_ACTION": "refuse"})
    answer = handler(rest_v1_event("POST", "/predict", {"image": b64(noise(1))}), Context())
    assert answer["statusCode"] == 422
    body = body_of(answer)
    assert body == {"error": {"code": "out_of_distribution", "message": OUT_OF_DISTRIBUTION}}
    spec_validator("Error").validate(body)
    assert not leaks(answer["body"])
    # raw uploads, HTTP API events and direct invocations alike
    raw = handler(http_v2_event("POST", "/predict", raw=noise(1)), Context())
    assert raw["statusCode"] == 422 and body_of(raw)["error"]["code"] == "out_of_distribution"
    assert handler({"image": b64(noise(1))}, Context())["error"]["code"] == "out_of_distribution"
    # an image that passes is answered as always, with its input_check
    scan = handler({"image": b64(scan_like(1))}, Context())
    assert scan["input_check"]["in_distribution"] is True and "prediction" in scan


def test_in_a_batch_the_refusal_names_the_flagged_image():
    handler = stub_handler(CheckedStubPredictor(), environ={"OOD_ACTION": "refuse"})
    answer = handler({"images": [b64(scan_like(2)), b64(noise(2)), b64(noise(3))]}, Context())
    assert answer["error"] == {"code": "out_of_distribution", "message": f"images[1]: {OUT_OF_DISTRIBUTION}"}
    assert "predictions" in handler({"images": [b64(scan_like(2)), b64(scan_like(3))]}, Context())


def test_the_sentence_is_fixed_and_says_what_to_do():
    status, sentence = api.ERRORS["out_of_distribution"]
    assert status == 422
    assert "trained on" in sentence and "send a breast ultrasound image" in sentence and "{" not in sentence


def test_the_log_line_says_what_the_check_did(capsys):
    """flag: the request line counts the flagged images; refuse: the error code, and the
    score against the threshold in error_detail (for the log only)."""
    handler = stub_handler(CheckedStubPredictor(), environ={})
    capsys.readouterr()
    handler({"images": [b64(scan_like(4)), b64(noise(4))]}, Context())
    handler({"image": b64(scan_like(4))}, Context())
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    requests = [r for r in lines if r.get("message") == "request"]
    assert [r.get("input_check_flagged") for r in requests] == [1, None]
    refusing = stub_handler(CheckedStubPredictor(), environ={"OOD_ACTION": "refuse"})
    capsys.readouterr()
    refusing({"image": b64(noise(4))}, Context())
    [line] = [r for r in map(json.loads, capsys.readouterr().out.splitlines()) if r.get("message") == "request"]
    assert line["status"] == 422 and line["error"] == "out_of_distribution"
    assert "above the threshold 5.0" in line["error_detail"]


def test_a_bad_ood_action_is_a_settings_error_naming_the_choices(capsys):
    settings = ServingSettings.from_env({"OOD_ACTION": "block"})
    assert settings.ood_action == "flag" and len(settings.errors) == 1
    assert settings.errors[0].startswith("OOD_ACTION='block' is not valid: expected flag") and "refuse" in \
        settings.errors[0]
    handler = api.make_handler(settings, lambda *a, **k: CheckedStubPredictor())
    assert body_of(handler(http_v2_event("GET", "/health"), Context()))["error"]["code"] == "model_unavailable"
    assert "OOD_ACTION" in json.loads(capsys.readouterr().out.splitlines()[0])["reason"]


def test_a_score_that_is_not_a_number_is_flagged_and_sent_as_null():
    """NaN features (a broken input or model): flagged, and the answer is still valid JSON."""
    from busi_classifier.evaluation.input_check_fit import choose_threshold, fit_input_check
    from busi_classifier.serving.predictor import input_check_answer

    rng = np.random.default_rng(0)
    check = choose_threshold(fit_input_check(rng.normal(size=(30, 6)), np.arange(30) % 3, dims=3),
                             rng.normal(size=(20, 6)))
    for bad in (np.nan, np.inf):
        features = rng.normal(size=6)
        features[2] = bad
        answer = input_check_answer(check, features)
        assert answer == {"score": None, "threshold": check.threshold, "in_distribution": False}
        json.dumps(answer, allow_nan=False)
    good = input_check_answer(check, rng.normal(size=6))
    assert isinstance(good["score"], float) and isinstance(good["in_distribution"], bool)

    class NotANumber(CheckedStubPredictor):
        def predict_bytes(self, data, **flags):
            answer = super().predict_bytes(data, **flags)
            return {**answer, "input_check": {"score": None, "threshold": 5.0, "in_distribution": False}}

    assert stub_handler(NotANumber(), environ={"OOD_ACTION": "refuse"})(
        {"image": b64(scan_like(5))}, Context())["error"]["code"] == "out_of_distribution"
    spec_validator("Prediction").validate(stub_handler(NotANumber(), environ={})({"image": b64(scan_like(5))},
                                                                                 Context()))


def test_the_spec_documents_the_input_check_and_the_422():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    assert set(schemas["InputCheck"]["required"]) == INPUT_CHECK_KEYS
    assert schemas["Result"]["properties"]["input_check"] == {"$ref": "#/components/schemas/InputCheck"}
    assert spec["paths"]["/predict"]["post"]["responses"]["422"]["$ref"].endswith("/OutOfDistribution")
    assert "out_of_distribution" in schemas["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    summary = schemas["ModelSummary"]["properties"]["input_check"]
    assert summary["properties"]["action"]["enum"] == ["flag", "refuse"]
    broken = {"prediction": "benign", "probabilities": {"normal": 0.2, "benign": 0.5, "malignant": 0.3},
              "model_version": "x", "input_check": {"score": 1.0, "threshold": 2.0}}
    assert not spec_validator("Prediction").is_valid(broken)


@pytest.mark.skipif(not HAVE_S3, reason="needs boto3, moto and flask (the dev extra)")
def test_s3_batch_results_carry_the_input_check_and_refuse_fails_the_task(aws_env, s3, bucket, monkeypatch):  # noqa: F811
    """Flag: the result document holds input_check and resultString in_distribution;
    refuse: a flagged image is a PermanentFailure out_of_distribution, nothing written."""
    from test_s3_batch import batch_event, check_documented_answer

    s3.put_object(Bucket=bucket, Key="scans/scan.png", Body=scan_like(6))
    s3.put_object(Bucket=bucket, Key="scans/noise.png", Body=noise(6))
    monkeypatch.delenv("OOD_ACTION", raising=False)
    event = batch_event("2.0", bucket, ["scans/scan.png", "scans/noise.png"])
    results = check_documented_answer(stub_handler(CheckedStubPredictor())(event, Context()), event)
    assert [r["resultCode"] for r in results] == ["Succeeded", "Succeeded"]
    assert [r["resultString"]["in_distribution"] for r in results] == [True, False]
    written = {json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())["key"]:
               json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
               for o in s3.list_objects_v2(Bucket=bucket, Prefix="busi-results/")["Contents"]}
    expected = CheckedStubPredictor().predict_bytes(noise(6))["input_check"]
    assert written["scans/noise.png"]["input_check"] == expected and expected["in_distribution"] is False
    assert written["scans/scan.png"]["input_check"]["in_distribution"] is True

    s3.put_object(Bucket=bucket, Key="scans/noise-2.png", Body=noise(7))
    monkeypatch.setenv("OOD_ACTION", "refuse")
    event = batch_event("1.0", bucket, ["scans/noise-2.png"])
    [result] = check_documented_answer(stub_handler(CheckedStubPredictor())(event, Context()), event)
    assert result["resultCode"] == "PermanentFailure"
    assert result["resultString"] == {"error": "out_of_distribution", "message": OUT_OF_DISTRIBUTION}
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="busi-results/")["Contents"]) == 2


def test_health_says_whether_the_model_checks_its_input_and_the_action():
    from test_model_summary import CardStub, demo_card

    class CheckedCardStub(CardStub, CheckedStubPredictor):
        pass

    for environ, action in (({}, "flag"), ({"OOD_ACTION": "refuse"}, "refuse")):
        body = body_of(stub_handler(CheckedCardStub(demo_card(input_check=True)), environ=environ)(
            http_v2_event("GET", "/health"), Context()))
        assert body["model"]["input_check"] == {"available": True, "action": action, "method": "mahalanobis",
                                                "threshold": 41.5, "flag_rate": 0.05}
        spec_validator("Health").validate(body)


# --------------------------------------------------------------------------- the predictor on real TFLite files


def tiny_tflite(outputs: tuple[str, ...]) -> bytes:
    """A TFLite graph of a TINY px input whose outputs are ``outputs`` of: "probabilities"
    [1, 3], "class_maps" [1, 4, 4, 3], "lesion" [1, 4, 4, 1], "features" [1, FEATURES]
    (channel means, spread, horizontal and vertical roughness, brightest and darkest pixel,
    all of the 0..1 image)."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, TINY, TINY, 3], tf.float32, name="image")])
    def graph(x):
        x = x / 255.0
        gray = tf.reduce_mean(x, axis=3, keepdims=True)
        brightness = tf.nn.avg_pool2d(gray, 4, 4, "VALID")
        maps = tf.concat([1.0 - brightness, brightness, 0.5 * brightness], axis=3)
        mean = tf.reduce_mean(gray, axis=[1, 2, 3])
        spread = tf.sqrt(tf.reduce_mean(tf.square(gray - mean[:, None, None, None]), axis=[1, 2, 3]) + 1e-6)
        rough_x = tf.reduce_mean(tf.abs(gray[:, :, 1:] - gray[:, :, :-1]), axis=[1, 2, 3])
        rough_y = tf.reduce_mean(tf.abs(gray[:, 1:] - gray[:, :-1]), axis=[1, 2, 3])
        features = tf.concat([tf.reduce_mean(x, axis=[1, 2]), tf.stack([spread, rough_x, rough_y,
                              tf.reduce_max(gray, axis=[1, 2, 3]), tf.reduce_min(gray, axis=[1, 2, 3])], axis=1)],
                             axis=1)
        every = {"probabilities": tf.nn.softmax(tf.reduce_mean(maps, axis=[1, 2]) * 4.0), "class_maps": maps,
                 "lesion": tf.sigmoid((brightness - 0.5) * 12.0), "features": features}
        return {name: every[name] for name in outputs}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    return converter.convert()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny graphs (with and without "features") and an input check fitted on the
    served file's features of smooth images (threshold: 5 % of other smooth ones flagged)."""
    from busi_classifier.evaluation.input_check_fit import choose_threshold, fit_input_check
    from busi_classifier.serving.decode import decode_image
    from busi_classifier.serving.predictor import Predictor

    folder = tmp_path_factory.mktemp("tiny-check")
    files = {}
    for name, outputs in (("served", ("probabilities", "class_maps", "lesion", "features")),
                          ("before", ("probabilities", "class_maps", "lesion"))):
        files[name] = folder / f"{name}.tflite"
        files[name].write_bytes(tiny_tflite(outputs))
    predictor = Predictor.for_file(files["served"], ["normal", "benign", "malignant"], TINY)
    train = np.stack([decode_image(scan_like(1000 + i, 100 + i, 80 + i % 30), TINY) for i in range(60)])
    val = np.stack([decode_image(scan_like(2000 + i, 90 + i, 70 + i % 40), TINY) for i in range(40)])
    features = predictor.raw_all(train)["features"]
    check = choose_threshold(fit_input_check(features, np.arange(len(train)) % 3, dims=4),
                             predictor.raw_all(val)["features"], flag_rate=0.05)
    files["check"] = check
    files["npz"] = folder / FILE
    files["sha256"] = check.save(files["npz"])
    return files


def card_with_check(folder, tiny, *, check=None, spec=None, tflite="served", version=5, prepare=None):
    """A model folder: the tiny graph as model.tflite, the check file beside it (``check``,
    default: the fitted one; ``prepare(folder)`` may change it) and a card of format
    ``version`` describing it (``spec(default)``: the card's input_check, default: the file's)."""
    from test_card import card_dict, input_check_dict, lesion_dict

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(tiny[tflite].read_bytes())
    npz = folder / FILE
    if check is not None:
        check.save(npz)
    else:
        npz.write_bytes(tiny["npz"].read_bytes())
    if prepare is not None:
        prepare(folder)
    data = card_dict()
    data.update(input={**data["input"], "shape": [1, TINY, TINY, 3], "size": TINY},
                explain={**data["explain"], "shape": [1, 4, 4, 3]}, lesion=lesion_dict(TINY // 4, threshold=0.5),
                variants={"float32": data["variants"]["float32"]}, default_variant="float32",
                calibration={"method": "none", "temperature": 1.0}, format_version=version)
    used = check or tiny["check"]
    default_spec = input_check_dict(threshold=used.threshold, sha256=file_sha256(npz) if npz.exists() else "0" * 64,
                                    size=npz.stat().st_size if npz.exists() else 1, dims=used.dims,
                                    method=used.method)
    data["input_check"] = default_spec if spec is None else spec(default_spec)
    if version < 5:
        del data["input_check"]
    (folder / "model.json").write_text(json.dumps(data))
    return folder


def test_the_features_output_is_found_by_shape_and_scored_from_the_same_invoke(tiny, tmp_path, monkeypatch):
    from busi_classifier.serving.decode import decode_image
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor(card_with_check(tmp_path / "m", tiny), num_threads=1)
    assert predictor.has_features and predictor.has_input_check and predictor.has_lesion and predictor.has_maps
    assert predictor.input_check.threshold == tiny["check"].threshold
    images = np.stack([decode_image(scan_like(7), TINY), decode_image(noise(7), TINY)])
    raw = predictor.raw_all(images)
    assert set(raw) == {"probabilities", "class_maps", "lesion", "features"}
    assert raw["features"].shape == (2, FEATURES) and raw["features"].dtype == np.float32
    np.testing.assert_allclose(raw["features"][:, :3], images.mean(axis=(1, 2)) / 255.0, atol=1e-5)
    assert predictor.raw_all(images[:0])["features"].shape == (0, FEATURES)
    invokes = []
    original = predictor._invoke
    monkeypatch.setattr(predictor, "_invoke", lambda image: invokes.append(1) or original(image))
    for data, expected in ((scan_like(7), raw["features"][0]), (noise(7), raw["features"][1])):
        invokes.clear()
        answer = predictor.predict_bytes(data, explain=True, segment=True)
        assert len(invokes) == 1  # one invoke gives the class, the maps, the lesion and the features
        assert_input_check(answer["input_check"], tiny["check"].threshold)
        assert answer["input_check"]["score"] == pytest.approx(tiny["check"].score(expected), rel=1e-6)
        assert "explanation" in answer and "lesion" in answer
        assert predictor.predict_bytes(data)["input_check"] == answer["input_check"]


def test_smooth_images_mostly_pass_and_noise_is_flagged(tiny, tmp_path):
    """Images the check never saw, of the same two kinds: the served path end to end."""
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor(card_with_check(tmp_path / "m", tiny), num_threads=1)
    passed = [predictor.predict_bytes(scan_like(3000 + i, 110 + i, 85))["input_check"]["in_distribution"]
              for i in range(20)]
    flagged = [not predictor.predict_bytes(noise(3000 + i))["input_check"]["in_distribution"] for i in range(10)]
    assert sum(passed) >= 16 and all(flagged), (passed, flagged)


def test_the_handler_of_a_real_checked_model_flags_or_refuses(tiny, tmp_path, capsys):
    folder = card_with_check(tmp_path / "m", tiny)
    flagging = api.make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder)}))
    assert flagging.predictor is not None, flagging.load_error
    answer = flagging({"image": b64(noise(8))}, Context())
    assert answer["input_check"]["in_distribution"] is False and "prediction" in answer
    spec_validator("Prediction").validate(answer)
    refusing = api.make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder), "OOD_ACTION": "refuse"}))
    refused = refusing(rest_v1_event("POST", "/predict", {"images": [b64(noise(8))]}), Context())
    assert refused["statusCode"] == 422
    assert body_of(refused)["error"]["message"] == f"images[0]: {OUT_OF_DISTRIBUTION}"
    health = body_of(refusing(http_v2_event("GET", "/health"), Context()))
    assert health["model"]["input_check"] == {"available": True, "action": "refuse", "method": tiny["check"].method,
                                              "threshold": tiny["check"].threshold, "flag_rate": 0.05}


def test_a_format_4_model_without_features_serves_as_before(tiny, tmp_path):
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor(card_with_check(tmp_path / "m", tiny, tflite="before", version=4), num_threads=1)
    assert not predictor.has_features and not predictor.has_input_check
    assert predictor.card.input_check is None and predictor.card.format_version == 4
    assert "input_check" not in predictor.predict_bytes(noise(9))
    assert predictor.raw_all(np.zeros((1, TINY, TINY, 3), np.uint8))["features"] is None
    handler = api.make_handler(ServingSettings.from_env({"MODEL_PATH": str(tmp_path / "m"), "OOD_ACTION": "refuse"}))
    assert "prediction" in handler({"image": b64(noise(9))}, Context())  # nothing to refuse with
    assert body_of(handler(http_v2_event("GET", "/health"), Context()))["model"]["input_check"]["available"] is False


def test_a_file_without_a_card_has_the_features_but_no_check(tiny):
    """``for_file`` (the export scores a file before its card and check exist): raw_all
    returns the features, the answers carry no input_check."""
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor.for_file(tiny["served"], ["normal", "benign", "malignant"], TINY)
    assert predictor.has_features and not predictor.has_input_check
    assert predictor.raw_all(np.zeros((1, TINY, TINY, 3), np.uint8))["features"].shape == (1, FEATURES)
    assert "input_check" not in predictor.predict_bytes(noise(10))


def _truncated(folder):
    data = (folder / FILE).read_bytes()
    (folder / FILE).write_bytes(data[: len(data) // 2])


LOAD_ERRORS = {
    "the check file is missing": (lambda folder: (folder / FILE).unlink(), None, "the input check file is missing"),
    "the file is not the card's (sha256)": (None, lambda spec: {**spec, "sha256": "b" * 64}, "differs from the model card"),
    "a truncated file": (_truncated, None, "not a readable .npz file"),
    "another method in the card": (None, lambda spec: {**spec, "method": "knn"}, "its method is '"),
    "other dims in the card": (None, lambda spec: {**spec, "dims": 7}, "input_check.dims is 7"),
    "another threshold in the card": (None, lambda spec: {**spec, "threshold": 1e9}, "input_check.threshold"),
    "another size in the card": (None, lambda spec: {**spec, "bytes": spec["bytes"] + 1}, "bytes, model.json says"),
    "a check of other features": ("other-dim", None, "the model's features have 8 values"),
    "the card has a check, the file no features": ("before", None, "has no features output"),
    "the file has features, the card null": (None, lambda spec: None, "does not describe it"),
    "the file has features, a format-4 card": ("v4", None, "format_version 4"),
}


@pytest.mark.parametrize("case", list(LOAD_ERRORS))
def test_a_missing_or_mismatched_check_is_a_load_error_never_a_silent_no_check(tiny, tmp_path, case, capsys):
    from busi_classifier.evaluation.input_check_fit import choose_threshold, fit_input_check
    from busi_classifier.serving.predictor import Predictor

    change, spec, message = LOAD_ERRORS[case]
    if change == "other-dim":  # a valid check of 5 features, the card true to it, for an 8-feature file
        rng = np.random.default_rng(1)
        other = choose_threshold(fit_input_check(rng.normal(size=(30, 5)), np.arange(30) % 3, dims=3),
                                 rng.normal(size=(20, 5)))
        folder = card_with_check(tmp_path / "m", tiny, check=other)
    elif change == "before":
        folder = card_with_check(tmp_path / "m", tiny, tflite="before")
    elif change == "v4":
        folder = card_with_check(tmp_path / "m", tiny, version=4)
    else:
        folder = card_with_check(tmp_path / "m", tiny, spec=spec, prepare=change)
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Predictor(folder, num_threads=1)
    capsys.readouterr()
    handler = api.make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder)}))
    assert body_of(handler(http_v2_event("GET", "/health"), Context()))["error"]["code"] == "model_unavailable"
    reason = json.loads(capsys.readouterr().out.splitlines()[0])["reason"]
    assert message in reason
    if not case.startswith(("the card has", "the file has")):
        assert f"input check file {FILE}" in reason  # the file is named


def test_the_check_file_is_looked_for_beside_the_served_file(tiny, tmp_path):
    """A .tflite path given as MODEL_PATH: the check is the one beside it."""
    from busi_classifier.serving.predictor import Predictor

    folder = card_with_check(tmp_path / "m", tiny)
    predictor = Predictor(folder / "model.tflite", num_threads=1)
    assert predictor.has_input_check
    card = ModelCard.read(folder)
    assert card.input_check.file == FILE and (folder / card.input_check.file).is_file()


def test_the_check_is_loaded_once_at_init(tiny, tmp_path, monkeypatch):
    from busi_classifier.serving.predictor import Predictor

    calls = []
    original = InputCheck.load.__func__
    monkeypatch.setattr(InputCheck, "load", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    handler = api.make_handler(ServingSettings.from_env({"MODEL_PATH": str(card_with_check(tmp_path / "m", tiny))}),
                               Predictor)
    for seed in range(3):
        handler({"image": b64(scan_like(seed))}, Context())
    assert calls == [1]


# --------------------------------------------------------------------------- the local tools


@pytest.fixture
def checked_server():
    import threading

    from busi_classifier.local.server import make_server

    quiet = {"LOG_LEVEL": "ERROR", "EMF_METRICS": "off"}  # stdout: the client's answer alone
    server = make_server(stub_handler(CheckedStubPredictor(), environ=quiet), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_test_py_warns_on_stderr_when_the_image_is_flagged(checked_server, tmp_path, capsys):
    from busi_classifier.local.client import main

    (tmp_path / "scan.png").write_bytes(scan_like(11))
    (tmp_path / "noise.png").write_bytes(noise(11))
    assert main([str(tmp_path / "scan.png"), "--endpoint", checked_server.url]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["input_check"]["in_distribution"] is True and "warning" not in captured.err
    assert main([str(tmp_path / "noise.png"), "--endpoint", checked_server.url]) == 0  # still a prediction
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    [line] = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "does not look like the breast ultrasound images the model was trained on" in line
    assert f"score {answer['input_check']['score']:.1f}, above its threshold 5.0" in line


def test_the_local_servers_console_line_marks_a_flagged_answer():
    from busi_classifier.local.server import FLAGGED, summary

    flagged = {"prediction": "benign", "input_check": {"score": 9.0, "threshold": 5.0, "in_distribution": False}}
    passed = {"prediction": "benign", "input_check": {"score": 1.0, "threshold": 5.0, "in_distribution": True}}
    assert summary(json.dumps(flagged).encode()) == f"benign ({FLAGGED})"
    assert summary(json.dumps(passed).encode()) == "benign"
    assert summary(json.dumps({"predictions": [flagged, passed, flagged]}).encode()) == f"3 predictions (2 {FLAGGED})"
    assert summary(json.dumps({"error": {"code": "out_of_distribution"}}).encode()) == "out_of_distribution"


# --------------------------------------------------------------------------- the Lambda image


def test_the_image_ships_the_check_beside_the_served_variant(tiny, tmp_path):
    """The Dockerfile's model stage (docker/select_model.py) copies input_check.npz with the
    served variant, .dockerignore lets it through, and the task root's function answers
    with the check (the handler as lambda_function builds it, this Python)."""
    import subprocess
    import sys

    from container_layout import build_image, clean_env

    folder = card_with_check(tmp_path / "model", tiny)
    image = build_image(tmp_path / "image", {"MODEL_DIR": str(folder)})
    shipped = image.task_root / "model"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(["model.json", "model.tflite", FILE])
    assert (shipped / FILE).read_bytes() == (folder / FILE).read_bytes()
    probe = ("import json, sys; import lambda_function as f; "
             "print(json.dumps(f.lambda_handler({'image': sys.stdin.read()}, None)))")
    env = clean_env({**image.env, "PYTHONPATH": str(image.task_root), "LOG_LEVEL": "ERROR", "EMF_METRICS": "off"})
    result = subprocess.run([sys.executable, "-c", probe], cwd=image.task_root, env=env, input=b64(noise(12)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["input_check"]["in_distribution"] is False, answer


@pytest.mark.parametrize("case, message", [
    ("missing", "lacks input_check.npz, the input check model.json describes"),
    ("another file", "is not the input check model.json describes"),
])
def test_a_build_without_the_cards_check_file_fails_with_one_line(tiny, tmp_path, case, message):
    import subprocess
    import sys

    from container_layout import LayoutError, build_image

    folder = card_with_check(tmp_path / "model", tiny)
    if case == "missing":
        (folder / FILE).unlink()
    else:
        dataclasses.replace(tiny["check"], threshold=tiny["check"].threshold + 1).save(folder / FILE)
    with pytest.raises(LayoutError, match=message):
        build_image(tmp_path / "image", {"MODEL_DIR": str(folder)})
    result = subprocess.run([sys.executable, str(ROOT / "docker" / "select_model.py"), str(folder),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half copied
