"""Every sample event in events/ through the Lambda handler, with the answer
events/README.md promises. A new file there without an entry here fails."""

from __future__ import annotations

import json

import pytest
from api_stub import Context, body_of, stub_handler
from conftest import ROOT

from busi_classifier.serving.api import http_request
from busi_classifier.serving.constants import CLASSES

# the API's "lesion" object (tests/test_segment_api.py checks its values)
LESION_KEYS = {"found", "area_fraction", "regions", "bbox", "outline", "peak_probability", "threshold", "mask_png",
               "mask_size", "mask_media_type", "method", "covers"}

EVENTS = ROOT / "events"

# file -> (status through API Gateway or None for a direct invocation, what the body holds)
EXPECTED = {
    "direct-predict.json": (None, "prediction"),
    "direct-predict-batch.json": (None, "predictions"),
    "direct-url.json": (None, "url_not_allowed"),
    "rest-predict-json.json": (200, "prediction"),
    "rest-predict-png.json": (200, "prediction"),
    "rest-predict-jpeg.json": (200, "prediction"),
    "rest-predict-segment.json": (200, "prediction with lesion"),
    "rest-health.json": (200, "health"),
    "rest-predict-not-an-image.json": (400, "invalid_image"),
    "http-predict-json.json": (200, "prediction"),
    "http-predict-png.json": (200, "prediction"),
    "http-health.json": (200, "health"),
    "http-wrong-method.json": (405, "method_not_allowed"),
}


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.delenv("IMAGE_URL_ALLOWLIST", raising=False)  # the default deployment
    return stub_handler()


def test_every_event_file_has_an_expected_answer():
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    assert files == sorted(EXPECTED)
    readme = (EVENTS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files), "events/README.md must list every event"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_event_gets_its_answer(handler, name):
    event = json.loads((EVENTS / name).read_text())
    status, expected = EXPECTED[name]
    answer = handler(event, Context())
    if status is None:
        assert http_request(event) is None and "statusCode" not in answer
    else:
        assert http_request(event) is not None
        assert answer["statusCode"] == status
        assert answer["headers"]["Content-Type"] == "application/json"
    body = body_of(answer)
    if expected in ("prediction", "prediction with lesion"):
        assert body["prediction"] in CLASSES and list(body["probabilities"]) == list(CLASSES)
        assert ("lesion" in body) is (expected == "prediction with lesion")
        if "lesion" in body:
            assert set(body["lesion"]) == LESION_KEYS and isinstance(body["lesion"]["found"], bool)
    elif expected == "predictions":
        assert len(body["predictions"]) == len(event["images"])
        assert all(p["prediction"] in CLASSES for p in body["predictions"])
    elif expected == "health":
        assert body["status"] == "ok" and body["classes"] == list(CLASSES)
    else:
        assert body["error"]["code"] == expected


def test_raw_events_are_base64_with_an_image_content_type():
    for name in ("rest-predict-png.json", "rest-predict-jpeg.json", "http-predict-png.json"):
        event = json.loads((EVENTS / name).read_text())
        assert event["isBase64Encoded"] is True
        content_type = {k.lower(): v for k, v in event["headers"].items()}["content-type"]
        assert content_type in ("image/png", "image/jpeg")


def test_the_segment_event_asks_for_the_lesion_and_a_classify_only_model_answers_501():
    from api_stub import StubPredictor

    class ClassifyOnly(StubPredictor):
        segment_available = has_lesion = False

    event = json.loads((EVENTS / "rest-predict-segment.json").read_text())
    assert json.loads(event["body"])["segment"] is True
    answer = stub_handler(ClassifyOnly())(event, Context())
    assert answer["statusCode"] == 501 and body_of(answer)["error"]["code"] == "segment_unavailable"
