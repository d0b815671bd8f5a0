"""API routing as a table: exact paths after the stage prefix, HEAD for /health, OPTIONS
preflight, 404/405; isBase64Encoded only as a JSON boolean; every error answer a code and
a fixed sentence from one table, the exception's details in the log only. A stub
predictor (the real decoding), no TensorFlow."""

from __future__ import annotations

import io
import json

import pytest
from api_stub import Context, StubPredictor, body_of, leaks, stub_handler
from PIL import Image

from busi_classifier.serving import api
from busi_classifier.serving.constants import MAX_IMAGE_PIXELS
from busi_classifier.serving.decode import ImageTooLargeError, InvalidImageError
from busi_classifier.serving.events import b64, http_v2_event, rest_v1_event


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 30), 120).save(out, format="PNG")
    return out.getvalue()


def v2(method: str, raw_path: str, stage: str = "$default", **kwargs) -> dict:
    event = http_v2_event(method, raw_path, **kwargs)
    event["requestContext"]["stage"] = stage
    return event


def v1(method: str, path: str, stage: str = "prod", **kwargs) -> dict:
    return rest_v1_event(method, path, stage=stage, **kwargs)


ROUTES = [
    # (name, event, status)
    ("v1 GET /health", lambda: v1("GET", "/health"), 200),
    ("v1 POST /predict", lambda: v1("POST", "/predict", raw=png()), 200),
    ("v1 path with the stage in it", lambda: v1("GET", "/prod/health"), 200),
    ("v2 $default /health", lambda: v2("GET", "/health"), 200),
    ("v2 named stage /prod/health", lambda: v2("GET", "/prod/health", stage="prod"), 200),
    ("v2 named stage /prod/predict", lambda: v2("POST", "/prod/predict", stage="prod", raw=png()), 200),
    ("v1 POST /admin/predict", lambda: v1("POST", "/admin/predict", raw=png()), 404),
    ("v2 GET /x/health", lambda: v2("GET", "/x/health"), 404),
    ("v2 /prod/health on the $default stage", lambda: v2("GET", "/prod/health"), 404),
    ("v2 /dev/health on stage prod", lambda: v2("GET", "/dev/health", stage="prod"), 404),
    ("v1 /healthz", lambda: v1("GET", "/healthz"), 404),
    ("v1 /health/ (trailing slash)", lambda: v1("GET", "/health/"), 404),
    ("v1 /predict/extra", lambda: v1("POST", "/predict/extra", raw=png()), 404),
    ("v2 OPTIONS unknown path", lambda: v2("OPTIONS", "/nope"), 404),
    ("v1 GET /predict", lambda: v1("GET", "/predict"), 405),
    ("v2 POST /health", lambda: v2("POST", "/health", json_body={}), 405),
    ("v2 HEAD /predict", lambda: v2("HEAD", "/predict"), 405),
    ("v1 OPTIONS /predict", lambda: v1("OPTIONS", "/predict"), 204),
    ("v2 OPTIONS /prod/health", lambda: v2("OPTIONS", "/prod/health", stage="prod"), 204),
]


@pytest.mark.parametrize("make,status", [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES])
def test_routes_match_exact_paths_after_the_stage(make, status):
    answer = stub_handler()(make(), Context())
    assert answer["statusCode"] == status, answer["body"]
    if status >= 400 and answer["body"]:  # HEAD: no body
        assert body_of(answer)["error"]["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


def test_head_health_is_get_without_a_body():
    answer = stub_handler()(v2("HEAD", "/health"), Context())
    assert answer["statusCode"] == 200 and answer["body"] == ""
    assert answer["headers"]["Content-Type"] == "application/json"


def test_405_and_preflight_say_which_methods_a_route_takes():
    handler = stub_handler()
    wrong = handler(v1("GET", "/predict"), Context())
    assert wrong["headers"]["Allow"] == "POST,OPTIONS" and "POST" in body_of(wrong)["error"]["message"]
    wrong = handler(v1("DELETE", "/health"), Context())
    assert wrong["headers"]["Allow"] == "GET,HEAD,OPTIONS"
    preflight = handler(v1("OPTIONS", "/health"), Context())
    assert preflight["headers"]["Access-Control-Allow-Methods"] == "GET,HEAD,OPTIONS" and preflight["body"] == ""


def test_routes_are_declared_once_in_the_table():
    assert {path: sorted(methods) for path, methods in api.app.routes.items()} == {
        "/predict": ["POST"], "/health": ["GET"]}


@pytest.mark.parametrize("flag", ["false", "true", 1, 0, [], {}])
def test_is_base64_encoded_must_be_a_json_boolean(flag):
    event = {**v1("POST", "/predict", raw=png()), "isBase64Encoded": flag}
    answer = stub_handler()(event, Context())
    assert answer["statusCode"] == 400
    body = body_of(answer)
    assert body["error"]["code"] == "invalid_request" and "isBase64Encoded" in body["error"]["message"]


def test_is_base64_encoded_booleans_and_absence_work():
    handler = stub_handler()
    assert handler(v1("POST", "/predict", raw=png()), Context())["statusCode"] == 200  # true
    text = {**v1("POST", "/predict", json_body={"image": b64(png())}), "isBase64Encoded": False}
    assert handler(text, Context())["statusCode"] == 200
    text.pop("isBase64Encoded")
    assert handler(text, Context())["statusCode"] == 200


# --- the error table: each exception the predictor can raise -> (status, code, sentence)

class Raising(StubPredictor):
    def __init__(self, exc: Exception):
        super().__init__()
        self.exc = exc

    def predict_bytes(self, data: bytes) -> dict:
        raise self.exc


SECRET = "cannot identify image file <_io.BytesIO object at 0x7fd5c0ffee00> in /var/task/busi_classifier/x.py"
RAISED = [
    # (exception, status, code, what the message must hold)
    (InvalidImageError(), 400, "invalid_image", "PNG or JPEG"),
    (ImageTooLargeError(SECRET), 413, "image_too_large", str(MAX_IMAGE_PIXELS)),
    (ValueError(SECRET), 500, "internal_error", "could not process"),
    (MemoryError(SECRET), 500, "internal_error", "could not process"),
]


@pytest.mark.parametrize("exc,status,code,needle", RAISED, ids=[type(r[0]).__name__ for r in RAISED])
def test_exceptions_map_to_fixed_answers_and_details_go_to_the_log(exc, status, code, needle, capsys):
    if isinstance(exc, InvalidImageError):
        exc.detail = SECRET
    answer = stub_handler(Raising(exc))(v1("POST", "/predict", raw=png()), Context())
    assert answer["statusCode"] == status
    error = body_of(answer)["error"]
    assert error["code"] == code and needle in error["message"]
    assert error["message"] == api.RequestError(code, error["message"]).message
    assert leaks(answer["body"]) == [] and "0x7fd5" not in answer["body"] and type(exc).__name__ not in answer["body"]
    assert "0x7fd5" in capsys.readouterr().out  # what went wrong is in the log


def test_a_batch_error_names_the_image_but_nothing_internal():
    handler = stub_handler(Raising(InvalidImageError(None, detail=SECRET)))
    answer = handler({"images": [b64(png()), b64(png())]}, Context())
    assert answer["error"]["code"] == "invalid_image" and answer["error"]["message"].startswith("images[0]: ")
    assert "0x7fd5" not in json.dumps(answer)


def test_every_code_has_one_status_and_sentence():
    for code, (status, sentence) in api.ERRORS.items():
        assert 400 <= status < 600 and sentence and leaks(sentence) == [], code
    error = api.RequestError("payload_too_large", limit=123)
    assert error.status == 413 and "123" in error.message


def test_explain_flag_is_a_boolean_in_the_body_and_1_or_0_in_the_query():
    handler = stub_handler()
    image = png()
    assert "explanation" not in handler({"image": b64(image)})
    assert "explanation" in handler({"image": b64(image), "explain": True})
    assert "explanation" not in handler({"image": b64(image), "explain": False})
    for bad in ("yes", 1, None, {}):
        assert handler({"image": b64(image), "explain": bad})["error"]["code"] == "invalid_request", bad
    for value, has in (("1", True), ("true", True), ("0", False), ("no", False)):
        event = http_v2_event("POST", "/predict", raw=image)
        event["queryStringParameters"] = {"explain": value}
        assert ("explanation" in json.loads(handler(event)["body"])) is has, value
    event = http_v2_event("POST", "/predict", {"image": b64(image), "explain": {}})
    event["queryStringParameters"] = {"explain": "1"}  # the query asks for it: the bad body flag is still refused
    assert handler(event)["statusCode"] == 400
    event["queryStringParameters"] = {"explain": "maybe"}
    assert handler(event)["statusCode"] == 400


def test_explain_of_a_model_without_maps_is_501_and_the_rest_unchanged():
    class NoMaps(StubPredictor):
        has_maps = False

    handler = stub_handler(NoMaps())
    image = png()
    answer = handler({"image": b64(image), "explain": True})
    assert answer["error"]["code"] == "explain_unavailable"
    assert "prediction" in handler({"image": b64(image)})

