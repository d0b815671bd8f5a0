"""AWS Lambda event handling: event shapes in, JSON answers out.

Accepted events:
* direct invocation, console test event, API Gateway non-proxy integration:
  ``{"image": "<base64>"}``, ``{"images": ["<base64>", ...]}`` or, where
  IMAGE_URL_ALLOWLIST enables it, ``{"url": "https://..."}``;
* API Gateway REST API proxy events (payload 1.0) and HTTP API events (payload 2.0):
  ``POST /predict`` whose body is that JSON, or the raw PNG/JPEG bytes
  (``isBase64Encoded: true``); ``GET /health``; ``OPTIONS`` (CORS preflight).
Client errors are 4xx with ``{"error": {"code", "message"}}``; never a traceback, never
an internal path. Every request writes one JSON log line and CloudWatch EMF metric lines
(busi_classifier.serving.observability); image bytes are never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import traceback

from . import observability
from .decode import ImageTooLargeError, InvalidImageError

MAX_BATCH = 16
# A synchronous Lambda invocation takes at most 6 MB (6,291,456 bytes) of event, and a
# request body travels inside the event, base64-encoded when it is binary. So:
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
MAX_BODY_BYTES = LAMBDA_PAYLOAD_LIMIT  # request body as the event carries it
# Decoded image bytes per request (a batch's images together): 4,400,000 bytes is
# 5,866,668 characters of base64, which leaves ~400 KB of the 6 MB for the event around it.
MAX_IMAGE_BYTES = 4_400_000
MAX_URL_CHARS = 2048

JSON_HEADERS = {"Content-Type": "application/json"}
ROUTES = {"/predict": "POST", "/health": "GET"}
CORS_METHODS = "GET,POST,OPTIONS"
CORS_HEADERS = "Content-Type,X-Api-Key"
PREDICTION_KEYS = ("image", "images", "url")
# The load error names files on the server: it goes to the logs (at init), not to the caller.
MODEL_UNAVAILABLE = "the model is not loaded on this function; check MODEL_PATH and model.json (the logs say why)"
# absolute file paths (two or more segments) in messages that come from libraries
_PATH_PATTERN = re.compile(r"(?<![\w:/])/(?:[\w.+-]+/)+[\w.+-]*")


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def scrub(text: str) -> str:
    """A library's message without file paths in it."""
    return _PATH_PATTERN.sub("<path>", text)


def too_large(what: str, size: int, limit: int) -> RequestError:
    return RequestError(
        413, "payload_too_large",
        f"{what} is {size} bytes; the limit is {limit} bytes (Lambda takes at most 6 MB per request and "
        f"base64 makes an image a third larger: send at most {MAX_IMAGE_BYTES} bytes of image, about 4.4 MB)",
    )


# --- event shapes -----------------------------------------------------------------

def http_request(event: dict) -> tuple[str, str] | None:
    """(method, path) for API Gateway proxy events; None for a direct invocation."""
    context = event.get("requestContext")
    if event.get("version") == "2.0" and isinstance(context, dict) and isinstance(context.get("http"), dict):
        http = context["http"]
        return str(http.get("method", "")).upper(), str(event.get("rawPath") or http.get("path") or "/")
    if "httpMethod" in event:
        return str(event["httpMethod"]).upper(), str(event.get("path") or event.get("resource") or "/")
    return None


def event_kind(event: object, request) -> str:
    if request is None:
        return "direct"
    return "http_v2" if isinstance(event, dict) and event.get("version") == "2.0" else "rest_v1"


def route(method: str, path: str) -> str:
    """The route a request path ends in (stage prefixes such as /prod are allowed)."""
    clean = "/" + path.strip("/")
    for name, allowed in ROUTES.items():
        if clean == name or clean.endswith(name):
            if method == "OPTIONS":
                return "OPTIONS " + name
            if method != allowed:
                raise RequestError(405, "method_not_allowed", f"{name} accepts {allowed}, not {method[:16]}",
                                   headers={"Allow": f"{allowed},OPTIONS"})
            return name
    raise RequestError(404, "not_found", "no such route; use POST /predict or GET /health")


def _header(event: dict, name: str) -> str:
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return ""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return ""


def decode_base64(text: str, what: str = "image", budget: int = MAX_IMAGE_BYTES) -> bytes:
    """Bytes of a base64 string (a data URL is fine), refused with 413 when they would
    exceed ``budget`` bytes: checked on the length before anything is decoded."""
    if text.startswith("data:") and "," in text[:200]:  # data:image/png;base64,....
        text = text.split(",", 1)[1]
    compact = "".join(text.split())
    if len(compact) * 3 // 4 - 2 > budget:
        raise too_large(what, len(compact) * 3 // 4, budget)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "invalid_base64", f"{what} is not valid base64") from None
    if len(data) > budget:
        raise too_large(what, len(data), budget)
    return data


def parse_json_payload(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise RequestError(400, "invalid_json", "body is neither JSON nor an image") from None


def _check_one_input(payload: dict) -> None:
    given = [key for key in PREDICTION_KEYS if key in payload]
    if len(given) > 1:
        raise RequestError(400, "invalid_request", f"send exactly one of image, images or url, not {' and '.join(given)}")


def images_from_payload(payload: object) -> tuple[list[bytes], bool]:
    """(image bytes, is_batch) from ``{"image": b64}``, ``{"images": [b64, ...]}`` or
    ``{"url": "https://..."}``."""
    if not isinstance(payload, dict):
        raise RequestError(400, "invalid_request",
                           f'expected a JSON object like {{"image": "<base64>"}}, got {type(payload).__name__}')
    _check_one_input(payload)
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
        images = [decode_base64(item, f"images[{i}]") for i, item in enumerate(items)]
        total = sum(len(i) for i in images)
        if total > MAX_IMAGE_BYTES:
            raise too_large(f"the {len(images)} images together", total, MAX_IMAGE_BYTES)
        return images, True
    if "url" in payload:
        return [image_from_url(payload["url"])], False
    raise RequestError(400, "missing_image", 'no image: send {"image": "<base64 PNG or JPEG>"}')


def image_from_url(url: object) -> bytes:
    if not isinstance(url, str) or not url:
        raise RequestError(400, "invalid_request", '"url" must be a non-empty string')
    if len(url) > MAX_URL_CHARS:
        raise RequestError(400, "invalid_request", f'"url" is longer than {MAX_URL_CHARS} characters')
    if not os.environ.get("IMAGE_URL_ALLOWLIST", "").strip():
        raise RequestError(400, "url_not_allowed",
                           'the url input is off on this deployment; send the image itself as {"image": "<base64>"}')
    from . import remote_image  # lazy: only url requests pay for ssl and http.client

    policy = remote_image.policy_from_env(MAX_IMAGE_BYTES)
    try:
        return remote_image.fetch_image(url, policy)
    except remote_image.RemoteImageError as exc:
        raise RequestError(exc.status, exc.code, exc.message) from None


def images_from_http_body(event: dict) -> tuple[list[bytes], bool]:
    body = event.get("body")
    if body is None or body == "":
        raise RequestError(400, "missing_image", 'empty body: send {"image": "<base64>"} or the raw image bytes')
    if not isinstance(body, str):
        raise RequestError(400, "invalid_request", "body must be a string")
    if len(body) > MAX_BODY_BYTES:
        raise too_large("the request body", len(body), MAX_BODY_BYTES)
    if event.get("isBase64Encoded"):
        raw = decode_base64(body, "body", MAX_BODY_BYTES)
        content_type = _header(event, "content-type").lower()
        if content_type.startswith("application/json") or (not content_type.startswith("image/") and raw.lstrip()[:1] == b"{"):
            return images_from_payload(parse_json_payload(raw))
        if len(raw) > MAX_IMAGE_BYTES:
            raise too_large("the image", len(raw), MAX_IMAGE_BYTES)
        return [raw], False
    return images_from_payload(parse_json_payload(body))


# --- answers ----------------------------------------------------------------------

def predict(predictor, images: list[bytes], batch: bool) -> dict:
    results = []
    for i, data in enumerate(images):
        where = f"images[{i}]: " if batch else ""
        try:
            results.append(predictor.predict_bytes(data))
        except ImageTooLargeError as exc:
            raise RequestError(413, "image_too_large", where + scrub(str(exc))) from None
        except InvalidImageError as exc:
            raise RequestError(400, "invalid_image", where + scrub(str(exc))) from None
    if batch:
        return {"predictions": results, "model_version": predictor.model_version}
    return {**results[0], "model_version": predictor.model_version}


def health(predictor) -> dict:
    return {"status": "ok", "model_version": predictor.model_version, "classes": predictor.classes}


def cors_headers() -> dict:
    origin = os.environ.get("CORS_ALLOW_ORIGIN", "*")
    return {"Access-Control-Allow-Origin": origin} if origin else {}


def api_response(status: int, body: dict | None, headers: dict | None = None) -> dict:
    all_headers = {**JSON_HEADERS, **cors_headers(), **(headers or {})}
    if body is None:  # 204
        all_headers.pop("Content-Type")
    return {"statusCode": status, "headers": all_headers,
            "body": json.dumps(body) if body is not None else "", "isBase64Encoded": False}


def preflight(name: str) -> tuple[int, None, dict]:
    """CORS preflight. API Gateway answers OPTIONS itself where template.yaml sets Cors;
    this answers it everywhere else (the local server, an API without Cors)."""
    return 204, None, {"Allow": f"{ROUTES[name]},OPTIONS", "Access-Control-Allow-Methods": CORS_METHODS,
                       "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600"}


def handle(event: object, context: object, predictor, load_error: str | None = None) -> dict:
    """Answer one Lambda event. ``predictor`` is None when the model failed to load
    (``load_error`` says why; lambda_function logs it at init and it is never sent to
    the caller): every request then gets a 503."""
    started = time.perf_counter()
    request = http_request(event) if isinstance(event, dict) else None
    status, headers, images = 200, {}, []
    metric_route = "direct" if request is None else "other"
    try:
        name = route(*request) if request is not None else None
        if name is not None:
            metric_route = name.split()[-1]
        if name is not None and name.startswith("OPTIONS "):
            status, body, headers = preflight(metric_route)
        elif predictor is None:
            raise RequestError(503, "model_unavailable", MODEL_UNAVAILABLE)
        elif name == "/health":
            body = health(predictor)
        else:
            images, batch = images_from_http_body(event) if name is not None else images_from_payload(event)
            body = predict(predictor, images, batch)
    except RequestError as exc:
        status, headers, body = exc.status, exc.headers, error_body(exc.code, exc.message)
    except Exception as exc:  # a bug of ours: log it, answer without internals
        status, body = 500, error_body("internal_error", "the model could not process this request")
        observability.log("ERROR", "unhandled error", request_id=request_id(context),
                          exception=type(exc).__name__, traceback=traceback.format_exc())
    log_request(context, event, request, status, body, images, started, metric_route)
    if request is None:
        return body
    return api_response(status, body, headers)


def request_id(context) -> str | None:
    return getattr(context, "aws_request_id", None)


def log_request(context, event, request, status: int, body: dict | None, images: list[bytes],
                started: float, metric_route: str) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    body = body or {}
    predictions = [body["prediction"]] if "prediction" in body else [p["prediction"] for p in body.get("predictions", [])]
    error_code = body["error"]["code"] if "error" in body else None
    api_request_id = None
    if request is not None and isinstance(event.get("requestContext"), dict):
        api_request_id = event["requestContext"].get("requestId")
    observability.log(
        "INFO" if status < 500 else "ERROR", "request",
        request_id=request_id(context), api_request_id=api_request_id if isinstance(api_request_id, str) else None,
        event=event_kind(event, request), route=metric_route,
        method=request[0][:16] if request else None, status=status, latency_ms=round(latency_ms, 2),
        image_bytes=[len(i) for i in images] or None, prediction=predictions[0] if len(predictions) == 1 else None,
        predictions=predictions if len(predictions) > 1 else None, error=error_code,
        error_message=body["error"]["message"] if error_code else None,
    )
    observability.emit_request_metrics(metric_route, status, latency_ms, predictions, error_code, request_id(context))
