"""AWS Lambda event handling: event shapes in, JSON answers out.

Accepted events:
* direct invocation, console test event, API Gateway non-proxy integration:
  ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``;
* API Gateway REST API proxy events (payload 1.0) and HTTP API events (payload 2.0):
  ``POST /predict`` whose body is that JSON, or the raw PNG/JPEG bytes
  (``isBase64Encoded: true``); ``GET /health``.
Client errors are 4xx with ``{"error": {"code", "message"}}``; never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time

from .preprocessing import InvalidImageError

MAX_BATCH = 16
JSON_HEADERS = {"Content-Type": "application/json"}
ROUTES = {"/predict": "POST", "/health": "GET"}

logger = logging.getLogger("busi_classifier")


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# --- event shapes -----------------------------------------------------------------

def http_request(event: dict) -> tuple[str, str] | None:
    """(method, path) for API Gateway proxy events; None for a direct invocation."""
    if event.get("version") == "2.0" and isinstance(event.get("requestContext", {}).get("http"), dict):
        http = event["requestContext"]["http"]
        return str(http.get("method", "")).upper(), str(event.get("rawPath") or http.get("path") or "/")
    if "httpMethod" in event:
        return str(event["httpMethod"]).upper(), str(event.get("path") or event.get("resource") or "/")
    return None


def route(method: str, path: str) -> str:
    """The route a request path ends in (stage prefixes such as /prod are allowed)."""
    clean = "/" + path.strip("/")
    for name, allowed in ROUTES.items():
        if clean == name or clean.endswith(name):
            if method != allowed:
                raise RequestError(405, "method_not_allowed", f"{name} accepts {allowed}, not {method}",
                                   headers={"Allow": allowed})
            return name
    raise RequestError(404, "not_found", f"no route for {method} {path}; use POST /predict or GET /health")


def _header(event: dict, name: str) -> str:
    headers = event.get("headers") or {}
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return ""


def decode_base64(text: str, what: str = "image") -> bytes:
    if text.startswith("data:") and "," in text:  # data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "invalid_base64", f"{what} is not valid base64") from None


def parse_json_payload(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "invalid_json", "body is neither JSON nor an image") from None


def images_from_payload(payload: object) -> tuple[list[bytes], bool]:
    """(image bytes, is_batch) from ``{"image": b64}`` or ``{"images": [b64, ...]}``."""
    if not isinstance(payload, dict):
        raise RequestError(400, "invalid_request",
                           f'expected a JSON object like {{"image": "<base64>"}}, got {type(payload).__name__}')
    if "image" in payload:
        if not isinstance(payload["image"], str):
            raise RequestError(400, "invalid_request", '"image" must be a base64 string')
        return [decode_base64(payload["image"])], False
    if "images" in payload:
        items = payload["images"]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise RequestError(400, "invalid_request", '"images" must be a list of base64 strings')
        if not 1 <= len(items) <= MAX_BATCH:
            raise RequestError(400, "invalid_request", f'"images" must hold 1 to {MAX_BATCH} images, got {len(items)}')
        return [decode_base64(item, f"images[{i}]") for i, item in enumerate(items)], True
    raise RequestError(400, "missing_image", 'no image: send {"image": "<base64 PNG or JPEG>"}')


def images_from_http_body(event: dict) -> tuple[list[bytes], bool]:
    body = event.get("body")
    if body is None or body == "":
        raise RequestError(400, "missing_image", 'empty body: send {"image": "<base64>"} or the raw image bytes')
    if not isinstance(body, str):
        raise RequestError(400, "invalid_request", "body must be a string")
    if event.get("isBase64Encoded"):
        raw = decode_base64(body, "body")
        content_type = _header(event, "content-type").lower()
        if content_type.startswith("application/json") or (not content_type.startswith("image/") and raw.lstrip()[:1] == b"{"):
            return images_from_payload(parse_json_payload(raw))
        return [raw], False
    return images_from_payload(parse_json_payload(body))


# --- answers ----------------------------------------------------------------------

def predict(predictor, images: list[bytes], batch: bool) -> dict:
    results = []
    for i, data in enumerate(images):
        try:
            results.append(predictor.predict_bytes(data))
        except InvalidImageError as exc:
            where = f"images[{i}]" if batch else "image"
            raise RequestError(400, "invalid_image", f"{where}: {exc}") from None
    if batch:
        return {"predictions": results, "model_version": predictor.model_version}
    return {**results[0], "model_version": predictor.model_version}


def health(predictor) -> dict:
    return {"status": "ok", "model_version": predictor.model_version, "classes": predictor.classes}


def api_response(status: int, body: dict, headers: dict | None = None) -> dict:
    return {"statusCode": status, "headers": {**JSON_HEADERS, **(headers or {})},
            "body": json.dumps(body), "isBase64Encoded": False}


def handle(event: object, context: object, predictor, load_error: str | None = None) -> dict:
    """Answer one Lambda event. ``predictor`` is None when the model failed to load
    (``load_error`` says why): every request then gets a 503 with that reason."""
    started = time.perf_counter()
    request = http_request(event) if isinstance(event, dict) else None
    status, headers = 200, {}
    try:
        if request is not None:
            name = route(*request)
            if predictor is None:
                raise RequestError(503, "model_unavailable", load_error or "model not loaded")
            body = health(predictor) if name == "/health" else predict(predictor, *images_from_http_body(event))
        else:
            if predictor is None:
                raise RequestError(503, "model_unavailable", load_error or "model not loaded")
            body = predict(predictor, *images_from_payload(event))
    except RequestError as exc:
        status, headers, body = exc.status, exc.headers, error_body(exc.code, exc.message)
    except Exception:  # a bug of ours: log it, answer without internals
        logger.exception("unhandled error")
        status, body = 500, error_body("internal_error", "the model could not process this request")
    log_request(context, request, status, body, started)
    return api_response(status, body, headers) if request is not None else body


def log_request(context, request, status: int, body: dict, started: float) -> None:
    record = {
        "request_id": getattr(context, "aws_request_id", None),
        "route": f"{request[0]} {request[1]}" if request else "direct",
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if "prediction" in body:
        record["prediction"] = body["prediction"]
    if "error" in body:
        record["error"] = body["error"]["code"]
    logger.info(json.dumps(record))
