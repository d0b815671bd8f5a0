"""Hostile and odd input through the Lambda handler: every bad request ends in the
documented 4xx with the API's error object, nothing crashes, nothing internal leaks;
odd but valid images get a prediction.

Each case runs once, its one home: with a stub predictor (fast; the real decoding,
deterministic probabilities). Routing and isBase64Encoded are in tests/test_routing.py.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from api_stub import Context, body_of, leaks, stub_handler
from PIL import Image

from busi_classifier.serving.api import MAX_BATCH, MAX_BODY_BYTES, MAX_IMAGE_BYTES, http_request
from busi_classifier.serving.constants import CLASSES, MAX_IMAGE_PIXELS
from busi_classifier.serving.events import b64, direct_event, http_v2_event, rest_v1_event


@pytest.fixture
def handler():
    """The handler around a stub predictor that runs the real decoding: every error case
    has its one home here (test_end_to_end keeps what needs the real model)."""
    return stub_handler()


# --------------------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def speckle(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 40.0, (height, width))).clip(0, 255).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (1-bit gray) with a tiny IDAT: a few
    hundred bytes that would decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen size
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (8, 8), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(speckle(seed=i), "L").convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(Image.fromarray(speckle(120, 60), "L").convert("RGB"), "JPEG", exif=exif, quality=90)


def near_cap_png() -> bytes:
    """Noise does not compress: a valid PNG just under the image cap."""
    side = int((MAX_IMAGE_BYTES - 60_000) ** 0.5)
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8), "L"),
                  compress_level=1)
    assert MAX_IMAGE_BYTES - 200_000 < len(data) <= MAX_IMAGE_BYTES, len(data)
    return data


GRAY = speckle()
VALID_PNG = encode(Image.fromarray(GRAY, "L"))


# --------------------------------------------------------------------------- hostile cases

def rest_raw(data: bytes, content_type: str = "image/png") -> dict:
    return rest_v1_event("POST", "/predict", raw=data, content_type=content_type)


def rest_body(text, is_b64: bool = False) -> dict:
    return {**rest_v1_event("POST", "/predict"), "body": text, "isBase64Encoded": is_b64}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE = {
    # size caps (the limit is in the message)
    "raw-image-over-cap": (lambda: rest_raw(b"\x89PNG" + b"\0" * MAX_IMAGE_BYTES), 413, "payload_too_large", str(MAX_IMAGE_BYTES)),
    "json-image-over-cap": (lambda: rest_v1_event("POST", "/predict", {"image": b64(b"\0" * (MAX_IMAGE_BYTES + 3))}),
                            413, "payload_too_large", str(MAX_IMAGE_BYTES)),
    "direct-image-over-cap": (lambda: {"image": b64(b"\0" * (MAX_IMAGE_BYTES + 3))}, 413, "payload_too_large", "4.4 MB"),
    "body-over-6mb": (lambda: rest_body("x" * (MAX_BODY_BYTES + 1)), 413, "payload_too_large", str(MAX_BODY_BYTES)),
    "batch-over-cap-together": (lambda: {"images": [b64(b"\0" * (MAX_IMAGE_BYTES // 2 + 10))] * 2},
                                413, "payload_too_large", str(MAX_IMAGE_BYTES)),
    # decompression bombs: the header claims huge dimensions
    "png-bomb-20000x20000": (lambda: rest_raw(png_header_only(20000, 20000)), 413, "image_too_large", str(MAX_IMAGE_PIXELS)),
    "png-bomb-7000x7000": (lambda: rest_raw(png_header_only(7000, 7000)), 413, "image_too_large", str(MAX_IMAGE_PIXELS)),
    "png-bomb-1x2e9": (lambda: rest_raw(png_header_only(1, 2_000_000_000)), 413, "image_too_large", str(MAX_IMAGE_PIXELS)),
    # GIF is not decoded at all (PNG and JPEG only): its bombs are refused as a format
    "gif-bomb-65535x65535": (lambda: {"image": b64(gif_claiming(65535, 65535))}, 400, "invalid_image", None),
    "jpeg-bomb-60000x60000": (lambda: rest_raw(jpeg_claiming(60000, 60000), "image/jpeg"), 413, "image_too_large",
                              str(MAX_IMAGE_PIXELS)),
    # truncated, corrupt, not images
    "truncated-png": (lambda: rest_raw(VALID_PNG[: len(VALID_PNG) // 2]), 400, "invalid_image", None),
    "truncated-jpeg": (lambda: rest_raw(encode(Image.fromarray(GRAY, "L"), "JPEG")[:300], "image/jpeg"), 400, "invalid_image", None),
    "png-signature-only": (lambda: rest_raw(b"\x89PNG\r\n\x1a\n"), 400, "invalid_image", None),
    "png-zero-size": (lambda: rest_raw(png_header_only(0, 0)), 400, "invalid_image", None),
    "corrupt-png-data": (lambda: rest_raw(VALID_PNG[:60] + bytes(b ^ 0x5A for b in VALID_PNG[60:-12]) + VALID_PNG[-12:]),
                         400, "invalid_image", None),
    "random-bytes": (lambda: rest_raw(np.random.default_rng(2).bytes(5000), "image/jpeg"), 400, "invalid_image", None),
    "pdf-bytes": (lambda: {"image": b64(b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF")}, 400, "invalid_image", None),
    "svg-text": (lambda: rest_raw(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), 400, "invalid_image", None),
    "text-raw-body": (lambda: rest_raw(b"hello, not an image", "text/plain"), 400, "invalid_image", None),
    "empty-image": (lambda: {"image": ""}, 400, "invalid_image", None),
    # bodies
    "empty-body": (lambda: rest_body(""), 400, "missing_image", None),
    "null-body": (lambda: rest_body(None), 400, "missing_image", None),
    "text-body": (lambda: rest_body("hello"), 400, "invalid_json", None),
    "body-not-json": (lambda: rest_body("{image: x}"), 400, "invalid_json", None),
    "body-deeply-nested": (lambda: rest_body(nested(100_000)), 400, "invalid_json", None),
    "body-huge-integer": (lambda: rest_body("9" * 5000), 400, "invalid_json", None),
    "body-bad-utf8-json": (lambda: rest_body(b64(b'{"image": "\xff\xfe"}'), True), 400, "invalid_json", None),
    "body-bad-base64": (lambda: rest_body("@@@", True), 400, "invalid_base64", None),
    "body-is-a-dict": (lambda: rest_body({"image": "x"}), 400, "invalid_request", None),
    # JSON of the wrong type or shape
    "json-number": (lambda: rest_v1_event("POST", "/predict", 42), 400, "invalid_request", None),
    "json-string": (lambda: rest_body('"iVBORw0KGgo="'), 400, "invalid_request", None),
    "json-null": (lambda: rest_body("null"), 400, "invalid_request", None),
    "json-array": (lambda: rest_v1_event("POST", "/predict", [b64(VALID_PNG)]), 400, "invalid_request", None),
    "image-not-string": (lambda: {"image": 42}, 400, "invalid_request", None),
    "image-null": (lambda: {"image": None}, 400, "invalid_request", None),
    "image-object": (lambda: rest_v1_event("POST", "/predict", {"image": {"data": "x"}}), 400, "invalid_request", None),
    "images-not-list": (lambda: {"images": b64(VALID_PNG)}, 400, "invalid_request", None),
    "images-of-numbers": (lambda: {"images": [1, 2]}, 400, "invalid_request", None),
    "images-empty": (lambda: {"images": []}, 400, "invalid_request", None),
    "images-too-many": (lambda: {"images": [b64(VALID_PNG)] * (MAX_BATCH + 1)}, 400, "invalid_request", str(MAX_BATCH)),
    "image-and-images": (lambda: {"image": b64(VALID_PNG), "images": [b64(VALID_PNG)]}, 400, "invalid_request", None),
    "image-and-url": (lambda: {"image": b64(VALID_PNG), "url": "https://x.org/a.png"}, 400, "invalid_request", None),
    "no-image-key": (lambda: {"picture": b64(VALID_PNG)}, 400, "missing_image", None),
    "bad-base64": (lambda: {"image": "not base64 at all!"}, 400, "invalid_base64", None),
    "non-ascii-base64": (lambda: {"image": "iVBOR\u00e9w0KGgo="}, 400, "invalid_base64", None),
    "url-input-off": (lambda: {"url": "https://images.example.org/scan.png"}, 400, "url_not_allowed", None),
    "url-not-string": (lambda: {"url": ["https://a.org"]}, 400, "invalid_request", None),
    # odd event shapes
    "event-is-a-string": (lambda: "hello", 400, "invalid_request", None),
    "event-is-null": (lambda: None, 400, "invalid_request", None),
    "event-is-a-list": (lambda: [1, 2, 3], 400, "invalid_request", None),
    "headers-are-a-list": (lambda: {**rest_raw(b"nope"), "headers": ["Content-Type"]}, 400, "invalid_image", None),
    "request-context-not-object": (lambda: {**http_v2_event("POST", "/predict", raw=b"x"), "requestContext": "x"},
                                   400, "missing_image", None),
    # wrong method, wrong path
    "get-predict": (lambda: rest_v1_event("GET", "/predict"), 405, "method_not_allowed", "POST"),
    "post-health": (lambda: http_v2_event("POST", "/health", {}), 405, "method_not_allowed", "GET"),
    "delete-predict": (lambda: http_v2_event("DELETE", "/predict"), 405, "method_not_allowed", None),
    "put-predict": (lambda: rest_v1_event("PUT", "/predict", {"image": b64(VALID_PNG)}), 405, "method_not_allowed", None),
    "unknown-path": (lambda: rest_v1_event("POST", "/classify", {"image": b64(VALID_PNG)}), 404, "not_found", None),
    "root-path": (lambda: http_v2_event("GET", "/"), 404, "not_found", None),
    "path-below-predict": (lambda: http_v2_event("POST", "/predict/../../etc/passwd", {}), 404, "not_found", None),
    "admin-path": (lambda: rest_v1_event("GET", "/admin/.env"), 404, "not_found", None),
}


def is_http(event) -> bool:
    """An API Gateway proxy event (a 2.0 event without requestContext.http is not one:
    it is answered as a direct invocation)."""
    return isinstance(event, dict) and http_request(event) is not None


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_gets_the_documented_4xx(handler, name):
    make, status, code, in_message = HOSTILE[name]
    event = make()
    answer = handler(event, Context())
    body = body_of(answer)
    if is_http(event):
        assert answer["statusCode"] == status
        assert answer["headers"]["Content-Type"] == "application/json"
    else:
        assert "statusCode" not in answer  # direct invocations get the object itself
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    if in_message:
        assert in_message in body["error"]["message"]
    text = answer["body"] if is_http(event) else json.dumps(body)
    assert leaks(text) == [], f"internal details in the answer: {leaks(text)}"


def test_405_names_the_allowed_method(handler):
    answer = handler(rest_v1_event("GET", "/predict"), Context())
    assert answer["headers"]["Allow"].startswith("POST")


def test_size_cap_comes_before_decoding(handler, monkeypatch):
    """A body over the cap is refused on its length: the base64 is never decoded."""
    import base64

    calls = []
    real = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    answer = handler({"image": "A" * (MAX_IMAGE_BYTES * 4 // 3 + 100)}, Context())
    assert answer["error"]["code"] == "payload_too_large" and calls == []


def test_an_image_just_under_the_cap_is_accepted(handler):
    data = near_cap_png()
    event = rest_raw(data)
    assert len(json.dumps(event)) < MAX_BODY_BYTES  # fits Lambda's 6 MB with its event
    answer = handler(event, Context())
    assert answer["statusCode"] == 200, answer["body"]


# --------------------------------------------------------------------------- odd but valid


def odd_images() -> dict[str, tuple[bytes, str]]:
    gray = Image.fromarray(GRAY, "L")
    rgba = np.dstack([GRAY, GRAY, GRAY, np.full_like(GRAY, 200)])
    palette_transparent = gray.convert("P")
    palette_transparent.info["transparency"] = 0
    return {
        "16-bit-grayscale-png": (encode(Image.fromarray(GRAY.astype(np.uint16) * 257, "I;16")), "image/png"),
        "palette-png": (encode(gray.convert("P")), "image/png"),
        "palette-png-with-transparency": (encode(palette_transparent, transparency=0), "image/png"),
        "rgba-png": (encode(Image.fromarray(rgba, "RGBA")), "image/png"),
        "gray-alpha-png": (encode(gray.convert("LA")), "image/png"),
        "1-bit-png": (encode(gray.convert("1")), "image/png"),
        "cmyk-jpeg": (encode(gray.convert("RGB").convert("CMYK"), "JPEG"), "image/jpeg"),
        "grayscale-jpeg": (encode(gray, "JPEG"), "image/jpeg"),
        "progressive-jpeg": (encode(gray.convert("RGB"), "JPEG", progressive=True), "image/jpeg"),
        "exif-rotated-jpeg": (exif_rotated_jpeg(), "image/jpeg"),
        "animated-png": (animated("PNG"), "image/png"),
        "1x1-png": (encode(Image.new("L", (1, 1), 77)), "image/png"),
        "4x40-strip": (encode(Image.new("L", (4, 40), 120)), "image/png"),  # the narrowest shape accepted
        "4000x400-strip": (encode(Image.new("L", (4000, 400), 120)), "image/png"),
        "6000x6000-png-36-megapixels": (encode(Image.new("L", (6000, 6000), 90)), "image/png"),
    }


def other_formats() -> dict[str, bytes]:
    """Valid images of formats the API does not decode (only PNG and JPEG)."""
    gray = Image.fromarray(GRAY, "L")
    return {"animated-gif": animated("GIF"), "bmp": encode(gray, "BMP"), "webp": encode(gray.convert("RGB"), "WEBP"),
            "16-bit-tiff": encode(Image.fromarray(GRAY.astype(np.uint16) * 257, "I;16"), "TIFF")}


ODD = odd_images()


@pytest.mark.parametrize("name", list(ODD))
def test_odd_but_valid_images_get_a_prediction(handler, name):
    data, content_type = ODD[name]
    # the binary media types come raw (as API Gateway passes them); others as base64 JSON
    if content_type in ("image/png", "image/jpeg"):
        event = rest_raw(data, content_type)
    else:
        event = http_v2_event("POST", "/predict", {"image": b64(data)})
    answer = handler(event, Context())
    assert answer["statusCode"] == 200, answer["body"]
    body = json.loads(answer["body"])
    assert list(body["probabilities"]) == list(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)


@pytest.mark.parametrize("name", ["animated-gif", "bmp", "webp", "16-bit-tiff"])
def test_other_formats_are_refused_with_a_fixed_sentence(handler, name):
    answer = handler({"image": b64(other_formats()[name])}, Context())
    assert answer["error"]["code"] == "invalid_image"
    assert "PNG or JPEG" in answer["error"]["message"] and leaks(answer["error"]["message"]) == []


def test_exif_rotation_changes_what_the_model_sees(handler):
    """The EXIF-rotated JPEG is predicted as its displayed (rotated) picture."""
    from busi_classifier.serving.decode import decode_image

    data = exif_rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (120, 60)
    shown = decode_image(data, 32)
    assert shown[:, :8].max() == 0 and shown[:, 24:].max() == 0  # 60x120 portrait, letterboxed left/right
    assert handler(direct_event(data), Context())["prediction"] in CLASSES


def test_direct_batch_with_odd_images(handler):
    names = ["16-bit-grayscale-png", "cmyk-jpeg", "animated-png", "1x1-png"]
    answer = handler({"images": [b64(ODD[n][0]) for n in names]}, Context())
    assert len(answer["predictions"]) == len(names)


def test_unexpected_exception_is_a_500_without_internals(capsys):
    class Broken:
        classes, model_version = list(CLASSES), "broken"

        def predict_bytes(self, data):
            raise RuntimeError("boom in /var/task/busi_classifier/inference.py line 77")

    answer = stub_handler(Broken())(rest_raw(VALID_PNG), Context("req-500"))
    assert answer["statusCode"] == 500
    body = json.loads(answer["body"])
    assert body == {"error": {"code": "internal_error", "message": "the model could not process this request"}}
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    error = next(r for r in logged if r.get("message") == "unhandled error")
    assert error["request_id"] == "req-500" and error["exception"] == "RuntimeError"
    assert "Traceback" in error["traceback"]  # the details go to the logs only


def test_model_unavailable_does_not_leak_the_model_path():
    load_error = "model file not found: /var/task/model/model.tflite (set MODEL_PATH ...)"
    handler = stub_handler(None, load_error)
    for event in (http_v2_event("GET", "/health"), rest_raw(VALID_PNG)):
        answer = handler(event, Context())
        assert answer["statusCode"] == 503
        assert json.loads(answer["body"])["error"]["code"] == "model_unavailable"
        assert "/var/task" not in answer["body"] and leaks(answer["body"]) == []
    assert handler(direct_event(VALID_PNG), Context())["error"]["code"] == "model_unavailable"
