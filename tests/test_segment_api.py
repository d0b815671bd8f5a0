"""The lesion outline in the API (issue 20): ``"segment": true`` or ``?segment=1`` adds a
``lesion`` object to every result, in the uploaded image's own upright pixels; a model
without a lesion map answers 501 segment_unavailable; the card and the .tflite file must
agree on the lesion output (Predictor); /health's model summary says whether segment works.

Most tests run the handler around tests/api_stub.py's stub (the real decoding, a lesion
map that follows the image's brightness, the real serving/lesion.py); the predictor's
tests run LiteRT on tiny TFLite graphs written here with TensorFlow (skipped without it),
and the slow ones on the session's trained multitask model."""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
import pytest
import yaml
from api_stub import STUB_LESION_THRESHOLD, STUB_SIZE, Context, StubPredictor, body_of, leaks, stub_handler
from conftest import ROOT
from PIL import Image

from busi_classifier.serving import api
from busi_classifier.serving.card import ModelCard, ModelLoadError
from busi_classifier.serving.events import http_v2_event, rest_v1_event

# the API's "lesion" object: exactly these keys (the shared contract, openapi.yaml's Lesion)
LESION_KEYS = {"found", "area_fraction", "regions", "bbox", "outline", "peak_probability", "threshold", "mask_png",
               "mask_size", "mask_media_type", "method", "covers"}
SEGMENT_UNAVAILABLE = api.ERRORS["segment_unavailable"][1]
CELL = 4  # model-input pixels per lesion-map cell


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def blob_png(width: int = 301, height: int = 187, box=(170, 40, 250, 120), exif_orientation: int | None = None,
             fmt: str = "PNG") -> bytes:
    """A dark image of odd size with one bright rectangle ``box`` = (x0, y0, x1, y1), max
    exclusive: the stub's lesion map sees the rectangle and nothing else."""
    pixels = np.full((height, width), 40, dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 250
    image = Image.fromarray(pixels, mode="L")
    out = io.BytesIO()
    if exif_orientation is None:
        image.save(out, fmt)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(out, fmt, exif=exif.tobytes())
    return out.getvalue()


def dark_png(width: int = 50, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 30).save(out, "PNG")
    return out.getvalue()


def assert_lesion_object(lesion: dict, width: int, height: int, threshold: float = STUB_LESION_THRESHOLD) -> None:
    """Exactly the contract's keys, of the contract's types, in the image's own pixels."""
    assert set(lesion) == LESION_KEYS
    assert isinstance(lesion["found"], bool) and isinstance(lesion["regions"], int)
    assert 0.0 <= lesion["area_fraction"] <= 1.0 and 0.0 <= lesion["peak_probability"] <= 1.0
    assert lesion["threshold"] == threshold
    assert lesion["mask_media_type"] == "image/png" and lesion["method"] and lesion["covers"].startswith("the uploaded")
    mask = Image.open(io.BytesIO(base64.b64decode(lesion["mask_png"], validate=True)))
    assert mask.format == "PNG" and mask.mode == "L" and list(mask.size) == lesion["mask_size"]
    if max(width, height) <= 256:  # the image's own size, or the longer side 256
        assert lesion["mask_size"] == [width, height]
    else:
        longer = max(width, height)
        assert lesion["mask_size"] == [round(width * 256 / longer), round(height * 256 / longer)]
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert len(lesion["outline"]) <= 64
    if lesion["found"]:
        assert lesion["regions"] >= 1 and lesion["area_fraction"] > 0 and lesion["peak_probability"] >= threshold
        x0, y0, x1, y1 = lesion["bbox"]
        assert all(isinstance(v, int) for v in lesion["bbox"])
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert len(lesion["outline"]) >= 3
        for x, y in lesion["outline"]:
            assert x0 <= x <= x1 and y0 <= y <= y1
    else:
        assert lesion["bbox"] is None and lesion["outline"] == [] and lesion["regions"] == 0
        assert lesion["area_fraction"] == 0.0 and lesion["peak_probability"] < threshold


def spec_validator(name: str):
    from openapi_schema_validator import OAS30Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    registry = Registry().with_resource("urn:spec", Resource(contents=spec, specification=DRAFT4))
    return OAS30Validator({"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry)


class ClassifyOnly(StubPredictor):
    """A model without a lesion map (classify-only, or a format-3 card)."""

    has_lesion = False
    segment_available = False
    lesion_threshold = None


# --------------------------------------------------------------------------- the flag


def test_segment_true_adds_the_lesion_in_the_images_own_pixels():
    """The known rectangle of an odd-size image comes back where it is: the letterbox is
    undone (bbox within one lesion-map cell of the rectangle, in image pixels)."""
    width, height, box = 301, 187, (170, 40, 250, 120)
    data = blob_png(width, height, box)
    handler = stub_handler()
    plain = handler({"image": b64(data)}, Context())
    answer = handler({"image": b64(data), "segment": True}, Context())
    assert "lesion" not in plain and "lesion" in answer
    assert answer["probabilities"] == plain["probabilities"] and answer["prediction"] == plain["prediction"]
    lesion = answer["lesion"]
    assert_lesion_object(lesion, width, height)
    assert lesion["found"] is True and lesion["regions"] == 1
    cell = CELL * max(width, height) / STUB_SIZE  # one map cell in image pixels
    assert np.abs(np.subtract(lesion["bbox"], box)).max() <= cell, (lesion["bbox"], box)
    box_area = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    assert abs(lesion["area_fraction"] - box_area) < 0.5 * box_area
    # the mask (scaled: 301 px > 256) is lesion where the box is, not in a corner
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(lesion["mask_png"]))))
    mw, mh = lesion["mask_size"]
    cx, cy = (box[0] + box[2]) / 2 * mw / width, (box[1] + box[3]) / 2 * mh / height
    assert mask[int(cy), int(cx)] == 255 and mask[2, 2] == 0
    spec_validator("Prediction").validate({**answer})


def test_no_lesion_in_a_dark_image_says_not_found():
    answer = stub_handler()({"image": b64(dark_png(50, 40)), "segment": True}, Context())
    lesion = answer["lesion"]
    assert_lesion_object(lesion, 50, 40)
    assert lesion["found"] is False and lesion["mask_size"] == [50, 40]  # a small image's mask is its own size
    spec_validator("Prediction").validate(answer)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_an_exif_rotated_image_gets_the_lesion_in_its_upright_pixels(orientation):
    """The stored image is turned so that its EXIF orientation makes it the upright one:
    the answer is about the upright image (orientations 5-8 swap the header's sides)."""
    from busi_classifier.serving.decode import apply_orientation

    upright_w, upright_h, box = 151, 233, (20, 150, 90, 210)
    upright = blob_png(upright_w, upright_h, box)
    stored = Image.open(io.BytesIO(upright))
    inverse = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    if inverse[orientation] is not None:
        stored = stored.transpose(inverse[orientation])
    assert np.array_equal(np.asarray(apply_orientation(stored, orientation)), np.asarray(Image.open(io.BytesIO(upright))))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "PNG", exif=exif.tobytes())
    lesion = stub_handler()({"image": b64(out.getvalue()), "segment": True}, Context())["lesion"]
    assert_lesion_object(lesion, upright_w, upright_h)
    assert lesion["mask_size"] == [upright_w, upright_h]
    cell = CELL * max(upright_w, upright_h) / STUB_SIZE
    assert np.abs(np.subtract(lesion["bbox"], box)).max() <= cell, (orientation, lesion["bbox"], box)


@pytest.mark.parametrize("bad", [1, 0, "true", "yes", None, [], {}], ids=repr)
def test_segment_must_be_a_json_boolean(bad):
    answer = stub_handler()({"image": b64(dark_png()), "segment": bad}, Context())
    assert answer["error"] == {"code": "invalid_request", "message": '"segment" must be a JSON boolean (true or false)'}


def test_segment_false_is_the_plain_answer():
    handler = stub_handler()
    data = blob_png()
    plain = handler({"image": b64(data)}, Context())
    assert handler({"image": b64(data), "segment": False}, Context()) == plain
    assert set(plain) == {"prediction", "probabilities", "model_version"}


@pytest.mark.parametrize("value, has", [("1", True), ("true", True), ("yes", True), ("0", False), ("false", False),
                                        ("no", False)])
@pytest.mark.parametrize("make", [rest_v1_event, http_v2_event], ids=["rest", "http"])
def test_the_segment_query_takes_the_explain_querys_values(make, value, has):
    handler = stub_handler()
    for event in (make("POST", "/predict", raw=blob_png()), make("POST", "/predict", {"image": b64(blob_png())})):
        event["queryStringParameters"] = {"segment": value}
        answer = handler(event, Context())
        assert answer["statusCode"] == 200, answer["body"]
        assert ("lesion" in body_of(answer)) is has, value


@pytest.mark.parametrize("value", ["maybe", "TRUE", "", "2", "on"])
def test_other_segment_query_values_are_refused(value):
    event = http_v2_event("POST", "/predict", raw=blob_png())
    event["queryStringParameters"] = {"segment": value}
    answer = stub_handler()(event, Context())
    assert answer["statusCode"] == 400
    assert body_of(answer)["error"] == {"code": "invalid_request",
                                        "message": "the segment query parameter must be 1 or 0 (true or false)"}


def test_the_query_and_the_body_flag_together():
    handler = stub_handler()
    event = http_v2_event("POST", "/predict", {"image": b64(blob_png()), "segment": "yes"})
    event["queryStringParameters"] = {"segment": "1"}  # the query asks: the bad body flag is still refused
    assert handler(event, Context())["statusCode"] == 400
    event = http_v2_event("POST", "/predict", {"image": b64(blob_png()), "segment": True})
    event["queryStringParameters"] = {"segment": "0"}  # either asks
    assert "lesion" in body_of(handler(event, Context()))
    event = http_v2_event("POST", "/predict", {"image": b64(blob_png())})
    event["queryStringParameters"] = {"segment": "1", "explain": "1"}
    body = body_of(handler(event, Context()))
    assert "lesion" in body and "explanation" in body


def test_explain_and_segment_share_one_flag_reader():
    """One code path for both flags (api.FLAGS): the same refusals, key for key."""
    assert api.FLAGS == ("explain", "segment")
    for key in api.FLAGS:
        with pytest.raises(api.RequestError, match=f'"{key}" must be a JSON boolean'):
            api.body_flags({"image": "", key: "1"})
        with pytest.raises(api.RequestError, match=f"the {key} query parameter must be 1 or 0"):
            api.query_flags({"queryStringParameters": {key: "maybe"}})
    assert api.query_flags({"queryStringParameters": None}) == {"explain": False, "segment": False}
    assert api.query_flags({"queryStringParameters": {"segment": "yes"}}) == {"explain": False, "segment": True}


def test_every_image_of_a_batch_gets_its_lesion():
    images = [blob_png(301, 187), dark_png(50, 40), blob_png(120, 300, box=(10, 10, 60, 90), fmt="JPEG")]
    answer = stub_handler()({"images": [b64(i) for i in images], "segment": True}, Context())
    predictions = answer["predictions"]
    assert len(predictions) == 3
    for prediction, (width, height) in zip(predictions, [(301, 187), (50, 40), (120, 300)], strict=True):
        assert_lesion_object(prediction["lesion"], width, height)
    assert [p["lesion"]["found"] for p in predictions] == [True, False, True]
    spec_validator("BatchPrediction").validate(answer)
    event = rest_v1_event("POST", "/predict", {"images": [b64(i) for i in images]})
    event["queryStringParameters"] = {"segment": "1"}
    assert all("lesion" in p for p in body_of(stub_handler()(event, Context()))["predictions"])


# --------------------------------------------------------------------------- a model without a lesion map


@pytest.mark.parametrize("how", ["body", "query", "batch", "direct"])
def test_segment_of_a_classify_only_model_is_501_with_the_fixed_sentence(how):
    handler = stub_handler(ClassifyOnly())
    data = blob_png()
    if how == "direct":
        answer = handler({"image": b64(data), "segment": True}, Context())
        assert answer["error"] == {"code": "segment_unavailable", "message": SEGMENT_UNAVAILABLE}
    else:
        if how == "query":
            event = rest_v1_event("POST", "/predict", raw=data)
            event["queryStringParameters"] = {"segment": "1"}
        elif how == "batch":
            event = rest_v1_event("POST", "/predict", {"images": [b64(data), b64(data)], "segment": True})
        else:
            event = rest_v1_event("POST", "/predict", {"image": b64(data), "segment": True})
        answer = handler(event, Context())
        assert answer["statusCode"] == 501
        assert body_of(answer)["error"] == {"code": "segment_unavailable", "message": SEGMENT_UNAVAILABLE}
    # everything else as before
    assert "prediction" in handler({"image": b64(data)}, Context())
    assert "explanation" in handler({"image": b64(data), "explain": True}, Context())
    assert "lesion" not in handler({"image": b64(data), "segment": False}, Context())


def test_the_501_sentence_is_fixed_and_says_what_to_do():
    status, sentence = api.ERRORS["segment_unavailable"]
    assert status == 501 and leaks(sentence) == []
    assert "segment" in sentence and "--task multitask" in sentence
    # a predictor that only lacks the flag (an older stand-in) never gets segment=
    class Older:
        model_version, classes, card = "old-1", ["normal", "benign", "malignant"], None

        def predict_bytes(self, data):
            return {"prediction": "normal", "probabilities": {"normal": 1.0, "benign": 0.0, "malignant": 0.0}}

    handler = stub_handler(Older())
    assert handler({"image": b64(dark_png())}, Context())["prediction"] == "normal"
    assert handler({"image": b64(dark_png()), "segment": True}, Context())["error"]["code"] == "segment_unavailable"


# --------------------------------------------------------------------------- the deadline


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Remaining:
    def __init__(self, ms: float):
        self.ms = ms
        self.aws_request_id = "req-deadline"

    def get_remaining_time_in_millis(self):
        return self.ms


def test_the_deadline_estimate_includes_the_lesion_post_processing():
    handler = stub_handler()
    assert handler.estimate_s(True) == pytest.approx(api.INVOKE_ESTIMATE_S + api.SEGMENT_ESTIMATE_S)
    assert handler.estimate_s(False) == api.INVOKE_ESTIMATE_S
    # what was seen: a segment request's whole model step, post-processing included (observe)
    handler({"image": b64(blob_png()), "segment": True}, Context())
    assert handler.estimate_s(True) >= handler.estimate_s(False)
    handler.observe(0.8, segment=True)
    assert handler.estimate_s(True) == 0.8 and handler.estimate_s(False) == api.INVOKE_ESTIMATE_S
    handler.observe(1.2)  # a plain step slower than any segment step seen: segment is never estimated below it
    assert handler.estimate_s(False) == 1.2 and handler.estimate_s(True) == 1.2
    # 2 s left (2.667 s less a quarter): a 1 s plain step fits, a 3 s segment step does not
    handler.invoke_estimate_s, handler.segment_estimate_s = 1.0, 3.0
    data = b64(dark_png())
    assert "prediction" in handler({"image": data}, Remaining(2667))
    handler.invoke_estimate_s, handler.segment_estimate_s = 1.0, 3.0
    refused = handler({"image": data, "segment": True}, Remaining(2667))
    assert refused["error"]["code"] == "deadline_exceeded"


# --------------------------------------------------------------------------- /health


def test_health_says_whether_segment_works():
    from test_model_summary import CardStub, demo_card

    def health(predictor):
        answer = stub_handler(predictor)(http_v2_event("GET", "/health"), Context())
        return body_of(answer)

    assert health(CardStub(demo_card()))["model"]["segment"] is True
    assert health(CardStub(demo_card(lesion=False)))["model"]["segment"] is False
    assert health(StubPredictor())["model"] is None  # no card, no threshold: the page does not ask
    validator = spec_validator("Health")
    for predictor in (CardStub(demo_card()), CardStub(demo_card(lesion=False)), StubPredictor()):
        validator.validate(health(predictor))


def test_the_spec_documents_segment():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    post = spec["paths"]["/predict"]["post"]
    query = {p["name"]: p for p in post["parameters"]}
    assert query["segment"]["schema"]["enum"] == query["explain"]["schema"]["enum"]
    assert set(query["segment"]["schema"]["enum"]) == set(api.QUERY_TRUE + api.QUERY_FALSE)
    assert set(spec["components"]["schemas"]["Lesion"]["required"]) == LESION_KEYS
    assert set(spec["components"]["schemas"]["Lesion"]["properties"]) == LESION_KEYS
    for request in ("ImageRequest", "BatchRequest", "UrlRequest"):
        assert spec["components"]["schemas"][request]["properties"]["segment"]["$ref"].endswith("SegmentFlag")
    assert "segment_unavailable" in spec["components"]["responses"]["NotAvailableForThisModel"]["description"]
    example = post["requestBody"]["content"]["application/json"]["examples"]["segment"]["value"]
    answer = stub_handler()(rest_v1_event("POST", "/predict", example), Context())
    assert answer["statusCode"] == 200 and set(body_of(answer)["lesion"]) == LESION_KEYS


# --------------------------------------------------------------------------- the predictor on real TFLite files

TINY = 16  # px: a 4x4 lesion map


def tiny_tflite(outputs: tuple[str, ...], stride: int = CELL) -> bytes:
    """A TFLite graph of a TINY px input whose outputs are ``outputs`` of: "probabilities"
    [1, 3], "class_maps" [1, 4, 4, 3], "lesion" [1, TINY / stride, TINY / stride, 1]
    (sigmoid of the brightness of each stride x stride cell: bright = lesion)."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, TINY, TINY, 3], tf.float32, name="image")])
    def graph(x):
        gray = tf.reduce_mean(x, axis=3, keepdims=True) / 255.0
        brightness = tf.nn.avg_pool2d(gray, CELL, CELL, "VALID")
        maps = tf.concat([1.0 - brightness, brightness, 0.5 * brightness], axis=3)
        every = {"probabilities": tf.nn.softmax(tf.reduce_mean(maps, axis=[1, 2]) * 4.0), "class_maps": maps,
                 "lesion": tf.sigmoid((tf.nn.avg_pool2d(gray, stride, stride, "VALID") - 0.5) * 12.0)}
        return {name: every[name] for name in outputs}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    return converter.convert()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny")
    files = {}
    for name, outputs, stride in (("multitask", ("probabilities", "class_maps", "lesion"), CELL),
                                  ("classify", ("probabilities", "class_maps"), CELL),
                                  ("stride-2", ("probabilities", "class_maps", "lesion"), 2)):
        files[name] = folder / f"{name}.tflite"
        files[name].write_bytes(tiny_tflite(outputs, stride))
    return files


def tiny_card(tmp_path, tflite: bytes, lesion="default", version: int = 4):
    """A model folder: ``tflite`` as model.tflite and a card of format ``version``."""
    from test_card import card_dict, lesion_dict

    data = card_dict()
    data.update(input={**data["input"], "shape": [1, TINY, TINY, 3], "size": TINY},
                explain={**data["explain"], "shape": [1, 4, 4, 3]},
                variants={"float32": data["variants"]["float32"]}, default_variant="float32",
                calibration={"method": "none", "temperature": 1.0}, format_version=version)
    data["lesion"] = lesion_dict(TINY // CELL, threshold=0.5) if lesion == "default" else lesion
    if version < 4:
        del data["lesion"]
    if version < 5:  # format 5 added the input check (tests/test_input_check_api.py)
        del data["input_check"]
    (tmp_path / "model.tflite").write_bytes(tflite)
    (tmp_path / "model.json").write_text(json.dumps(data))
    return tmp_path


def test_the_lesion_output_is_found_by_shape(tiny_files, tmp_path):
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor(tiny_card(tmp_path, tiny_files["multitask"].read_bytes()), num_threads=1)
    assert predictor.has_lesion and predictor.has_maps and predictor.segment_available
    assert predictor.lesion_threshold == 0.5
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, TINY, TINY, 3), dtype=np.uint8)
    images[0, :8, :8] = 255  # a bright top-left quarter
    raw = predictor.raw_all(images)
    assert set(raw) == {"probabilities", "class_maps", "lesion", "features"} and raw["features"] is None
    assert raw["probabilities"].shape == (3, 3) and raw["class_maps"].shape == (3, 4, 4, 3)
    assert raw["lesion"].shape == (3, 4, 4)
    np.testing.assert_allclose(raw["probabilities"], predictor.raw_probabilities(images), atol=1e-7)
    brightness = images.mean(axis=3).reshape(3, 4, 4, 4, 4).mean(axis=(2, 4)) / 255.0
    np.testing.assert_allclose(raw["lesion"], 1 / (1 + np.exp(-(brightness - 0.5) * 12.0)), atol=1e-5)
    empty = predictor.raw_all(images[:0])
    assert empty["probabilities"].shape == (0, 3) and empty["lesion"].shape == (0, 4, 4)
    assert empty["class_maps"].shape == (0, 4, 4, 3)


def test_predict_bytes_segments_from_the_same_invoke(tiny_files, tmp_path):
    from busi_classifier.serving.predictor import Predictor

    predictor = Predictor(tiny_card(tmp_path, tiny_files["multitask"].read_bytes()), num_threads=1)
    # a 90 x 60 image, bright in its left half: the lesion is the left half, in image pixels
    pixels = np.full((60, 90), 10, dtype=np.uint8)
    pixels[:, :45] = 255
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, "PNG")
    plain = predictor.predict_bytes(out.getvalue())
    answer = predictor.predict_bytes(out.getvalue(), segment=True)
    both = predictor.predict_bytes(out.getvalue(), explain=True, segment=True)
    assert answer["probabilities"] == plain["probabilities"] == both["probabilities"]
    assert "lesion" not in plain and "explanation" in both and both["lesion"] == answer["lesion"]
    lesion = answer["lesion"]
    assert_lesion_object(lesion, 90, 60, threshold=0.5)
    assert lesion["found"] and lesion["bbox"][0] == 0 and 30 <= lesion["bbox"][2] <= 60
    # the API around it
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.settings import ServingSettings

    handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(tmp_path)}))
    assert handler.predictor is not None, handler.load_error
    served = handler({"image": b64(out.getvalue()), "segment": True}, Context())
    assert served["lesion"] == lesion
    health = body_of(handler(http_v2_event("GET", "/health"), Context()))
    assert health["model"]["segment"] is True


def test_the_predictor_inspects_and_decodes_each_image_once(tiny_files, tmp_path, monkeypatch):
    """predict_bytes gets the API's Intake (inspected once, in the pre-scan) and decodes it
    once, explain and segment together included."""
    from busi_classifier.serving import decode
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.settings import ServingSettings

    handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(tiny_card(
        tmp_path, tiny_files["multitask"].read_bytes()))}))
    calls = {"inspect_png": 0, "load_image": 0}
    for name in calls:
        original = getattr(decode, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(decode, name, counted)
    answer = handler({"image": b64(blob_png()), "segment": True, "explain": True}, Context())
    assert "lesion" in answer and "explanation" in answer
    assert calls == {"inspect_png": 1, "load_image": 1}


def test_a_classify_only_file_with_a_classify_only_card_serves_and_refuses_segment(tiny_files, tmp_path):
    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.predictor import Predictor, SegmentUnavailableError
    from busi_classifier.serving.settings import ServingSettings

    classify = tiny_files["classify"].read_bytes()
    for version, folder in ((4, tmp_path / "v4"), (3, tmp_path / "v3")):
        folder.mkdir()
        tiny_card(folder, classify, lesion=None, version=version)
        predictor = Predictor(folder, num_threads=1)
        assert not predictor.has_lesion and not predictor.segment_available and predictor.has_maps
        assert predictor.raw_all(np.zeros((2, TINY, TINY, 3), np.uint8))["lesion"] is None
        with pytest.raises(SegmentUnavailableError):
            predictor.predict_bytes(dark_png(), segment=True)
        handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder)}))
        assert handler({"image": b64(dark_png()), "segment": True}, Context())["error"]["code"] == "segment_unavailable"
        assert "prediction" in handler({"image": b64(dark_png())}, Context())
        assert body_of(handler(http_v2_event("GET", "/health"), Context()))["model"]["segment"] is False


@pytest.mark.parametrize("case, message", [
    ("card says lesion, file has none", "model.json says the model has a lesion map"),
    ("file has lesion, card says null", "does not describe it"),
    ("shapes differ", "lesion map has shape [1, 4, 4, 1], model.json says [1, 8, 8, 1]"),
])
def test_a_card_and_a_file_that_disagree_on_the_lesion_are_a_load_error(tiny_files, tmp_path, case, message, capsys):
    from test_card import lesion_dict

    from busi_classifier.serving.api import make_handler
    from busi_classifier.serving.predictor import Predictor
    from busi_classifier.serving.settings import ServingSettings

    if case == "card says lesion, file has none":
        folder = tiny_card(tmp_path, tiny_files["classify"].read_bytes())
    elif case == "file has lesion, card says null":
        folder = tiny_card(tmp_path, tiny_files["multitask"].read_bytes(), lesion=None)
    else:  # a valid card (8 cells x stride 2 = 16 px) that is not this file's
        folder = tiny_card(tmp_path, tiny_files["multitask"].read_bytes(), lesion={**lesion_dict(8), "stride": 2})
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Predictor(folder, num_threads=1)
    capsys.readouterr()
    handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder)}))
    assert body_of(handler(http_v2_event("GET", "/health"), Context()))["error"]["code"] == "model_unavailable"
    assert message in json.loads(capsys.readouterr().out.splitlines()[0])["reason"]


def test_a_lesion_map_of_another_stride_is_a_load_error(tiny_files, tmp_path):
    """A card and a file that agree on an 8x8 map at 16 px (stride 2): the card is valid,
    but serving/lesion.py maps stride-4 cells only, so the load fails (not every request)."""
    from test_card import lesion_dict

    from busi_classifier.serving.predictor import Predictor

    folder = tiny_card(tmp_path, tiny_files["stride-2"].read_bytes(), lesion={**lesion_dict(8), "stride": 2})
    assert ModelCard.read(folder).lesion.stride == 2
    with pytest.raises(ModelLoadError, match="stride 2; this version serves lesion maps of stride 4"):
        Predictor(folder, num_threads=1)


def test_a_format_3_card_with_a_lesion_file_is_a_load_error(tiny_files, tmp_path):
    from busi_classifier.serving.predictor import Predictor

    with pytest.raises(ModelLoadError, match="format_version 3"):
        Predictor(tiny_card(tmp_path, tiny_files["multitask"].read_bytes(), version=3), num_threads=1)


def test_a_file_without_a_card_has_the_lesion_map_but_no_threshold(tiny_files):
    """``for_file`` (the export scores a file before its card exists): raw_all returns the
    map, segment is unavailable (the threshold is the card's)."""
    from busi_classifier.serving.predictor import Predictor, SegmentUnavailableError

    predictor = Predictor.for_file(tiny_files["multitask"], ["normal", "benign", "malignant"], TINY)
    assert predictor.has_lesion and predictor.lesion_threshold is None and not predictor.segment_available
    assert predictor.raw_all(np.zeros((1, TINY, TINY, 3), np.uint8))["lesion"].shape == (1, 4, 4)
    assert "prediction" in predictor.predict_bytes(dark_png())
    with pytest.raises(SegmentUnavailableError):
        predictor.predict_bytes(dark_png(), segment=True)
    plain = Predictor.for_file(tiny_files["classify"], ["normal", "benign", "malignant"], TINY)
    assert not plain.has_lesion and plain.raw_all(np.zeros((1, TINY, TINY, 3), np.uint8))["lesion"] is None


# --------------------------------------------------------------------------- the session's trained (multitask) model


def test_every_variant_of_the_trained_model_has_the_lesion_map(trained_model, synthetic_dir):
    from busi_classifier.data.dataset import load_images, read_dataset
    from busi_classifier.serving.predictor import Predictor

    card = ModelCard.read(trained_model)
    assert card.lesion is not None, "the session model should be multitask (the synthetic set has masks)"
    size = card.input.size
    images = load_images(read_dataset(synthetic_dir)[:4], size, progress=False)
    for name in card.variants:
        predictor = Predictor(trained_model, variant=name, num_threads=1)
        assert predictor.has_lesion and predictor.segment_available, name
        raw = predictor.raw_all(images)
        assert raw["lesion"].shape == (len(images), size // 4, size // 4), name
        assert ((raw["lesion"] >= 0) & (raw["lesion"] <= 1)).all(), name
        np.testing.assert_allclose(raw["probabilities"], predictor.raw_probabilities(images), atol=1e-7)


def test_the_trained_model_answers_segment_requests(trained_model, synthetic_dir, monkeypatch):
    from conftest import fresh_lambda, synthetic_images

    card = ModelCard.read(trained_model)
    png = synthetic_images(synthetic_dir, 1)[2][1]  # a malignant synthetic image (it has a mask)
    width, height = Image.open(io.BytesIO(png)).size
    try:
        module = fresh_lambda(monkeypatch, trained_model)
        plain = module.lambda_handler({"image": b64(png)}, None)
        answer = module.lambda_handler({"image": b64(png), "segment": True}, None)
        assert answer["probabilities"] == plain["probabilities"]
        assert_lesion_object(answer["lesion"], width, height, threshold=card.lesion.threshold)
        spec_validator("Prediction").validate(answer)
        batch = module.lambda_handler({"images": [b64(png), b64(png)], "segment": True}, None)
        assert [p["lesion"] for p in batch["predictions"]] == [answer["lesion"]] * 2
        event = http_v2_event("POST", "/predict", raw=png)
        event["queryStringParameters"] = {"segment": "1"}
        assert json.loads(module.lambda_handler(event, None)["body"])["lesion"] == answer["lesion"]
        health = json.loads(module.lambda_handler(http_v2_event("GET", "/health"), None)["body"])
        assert health["model"]["segment"] is True
    finally:
        sys.modules.pop("lambda_function", None)
