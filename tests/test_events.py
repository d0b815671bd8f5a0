"""Every sample event in events/ through the Lambda handler, with the answer
events/README.md promises. A new file there without an entry here fails."""

from __future__ import annotations

import json

import pytest
from api_stub import Context, body_of, stub_handler
from conftest import ROOT

from busi_classifier.serving.api import http_request
from busi_classifier.serving.constants import CLASSES

EVENTS = ROOT / "events"

# file -> (status through API Gateway or None for a direct invocation, what the body holds)
EXPECTED = {
    "direct-predict.json": (None, "prediction"),
    "direct-predict-batch.json": (None, "predictions"),
    "direct-url.json": (None, "url_not_allowed"),
    "rest-predict-json.json": (200, "prediction"),
    "rest-predict-png.json": (200, "prediction"),
    "rest-predict-jpeg.json": (200, "prediction"),
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
    if expected == "prediction":
        assert body["prediction"] in CLASSES and list(body["probabilities"]) == list(CLASSES)
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
