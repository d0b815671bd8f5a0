"""AWS Lambda event handling: event shapes in, JSON answers out.

Accepted events:
* direct invocation, console test event, API Gateway non-proxy integration:
  ``{"image": "<base64>"}``, ``{"images": ["<base64>", ...]}`` or, where
  IMAGE_URL_ALLOWLIST enables it, ``{"url": "https://..."}``;
* API Gateway REST API proxy events (payload 1.0) and HTTP API events (payload 2.0):
  ``POST /predict`` whose body is that JSON, or the raw PNG/JPEG bytes
  (``isBase64Encoded: true``); ``GET /health`` (and ``HEAD``); ``OPTIONS`` (CORS preflight).

Any of them may ask for more than the prediction (FLAGS): ``"explain": true`` (the class
activation map) and ``"segment": true`` (the lesion outline, area and mask) in the JSON,
or ``?explain=1`` / ``?segment=1`` on an API Gateway request, raw uploads included.

A model with the input check (model.json ``input_check``) adds ``input_check`` (score,
threshold, in_distribution) to every prediction; with OOD_ACTION=refuse (settings), an
image it flags answers 422 ``out_of_distribution`` instead (in a batch: at images[i]).

The shape of Powertools' event-handler resolver without its import cost: the routes are
declared once (``@app.post("/predict")``), matched on the exact path after the stage
prefix; exceptions are mapped to answers in one place (``@app.exception_handler``); every
error answer is a code and a fixed sentence from ``ERRORS`` (plus the limit where one
applies). Exception names, reprs and paths go to the log line, never to the caller.

``make_handler(settings)`` builds the Lambda handler (lambda_function.py, the local
server and ``invoke`` all use it): the model is loaded once; a settings or load error
makes every request answer 503 ``model_unavailable`` and is logged once. Every request
writes one log line and CloudWatch EMF metric lines (observability); image bytes are
never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from .card import ModelLoadError
from .constants import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS
from .decode import ImageTooLargeError, InvalidImageError, inspect_image
from .observability import Telemetry
from .settings import ServingSettings

MAX_BATCH = 16
# A synchronous Lambda invocation takes at most 6 MB (6,291,456 bytes) of event, and a
# request body travels inside the event, base64-encoded when it is binary. So:
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
MAX_BODY_BYTES = LAMBDA_PAYLOAD_LIMIT  # request body as the event carries it
# Decoded image bytes per request (a batch's images together): 4,400,000 bytes is
# 5,866,668 characters of base64, which leaves ~400 KB of the 6 MB for the event around it.
MAX_IMAGE_BYTES = 4_400_000
MAX_URL_CHARS = 2048
# The request deadline: the Lambda context's remaining time less this margin (to write
# the answer and the log line). Before each image is decoded, the time it may take is
# estimated from its header and size (decode_estimate_s: per megapixel, for big flat or
# interlaced images, + per megabyte of file, for small dense ones; both rounded up from
# the slowest accepted cases benchmarks/intake_worst_case.py measures) plus the slowest
# model step seen so far (INVOKE_ESTIMATE_S until one has been seen); when the estimate
# does not fit in what is left, the request answers 504 deadline_exceeded instead of
# being killed. A segment request's model step is estimated apart (the lesion map's
# post-processing, serving/lesion.py, is part of what is timed): SEGMENT_ESTIMATE_S more
# than a plain one until one has been seen, never less than a plain one.
DEADLINE_MARGIN_S = 1.0
DEADLINE_MARGIN_FRACTION = 0.25  # at most this share of the time left (a function with a 1 s timeout still works)
DECODE_SECONDS_PER_MEGAPIXEL = 0.1
DECODE_SECONDS_PER_MEGABYTE = 0.1
INVOKE_ESTIMATE_S = 0.05  # until a model step has been seen: the first image of a cold function is not refused for a guess
SEGMENT_ESTIMATE_S = 0.05  # the lesion post-processing (outline, mask PNG), until a segment request has been seen

JSON_HEADERS = {"Content-Type": "application/json"}
CORS_HEADERS = "Content-Type,X-Api-Key"
PREDICTION_KEYS = ("image", "images", "url")
# What a request may ask beyond the prediction: a JSON boolean in the body, or the query
# parameter of the same name (QUERY_TRUE / QUERY_FALSE), raw uploads included.
EXPLAIN_KEY, SEGMENT_KEY = "explain", "segment"
FLAGS = (EXPLAIN_KEY, SEGMENT_KEY)
QUERY_TRUE, QUERY_FALSE = ("1", "true", "yes"), ("0", "false", "no")  # exactly these (openapi.yaml's enum)
MODEL_UNAVAILABLE = "the model is not loaded on this function; check MODEL_PATH and model.json (the logs say why)"

# --- the error table: code -> (status, the fixed sentence the caller gets) -------------
# "{limit}" is filled with the limit that applies. Our own validation may give a more
# precise sentence written here in the code (never an exception's text).
ERRORS: dict[str, tuple[int, str]] = {
    "missing_image": (400, 'no image: send {"image": "<base64 PNG or JPEG>"} or the raw image bytes'),
    "invalid_base64": (400, "the image is not valid base64"),
    "invalid_json": (400, "body is neither JSON nor an image"),
    "invalid_request": (400, 'expected a JSON object like {"image": "<base64>"}'),
    "invalid_image": (400, "not a readable image: send a PNG or JPEG file"),
    "url_not_allowed": (400, "this url may not be fetched: the url input must be on for this deployment and the url "
                             "https on port 443, without credentials, on an allowed host with a public address"),
    "url_fetch_failed": (400, "the image at this url could not be fetched"),
    "not_found": (404, "no such route; use POST /predict or GET /health"),
    "method_not_allowed": (405, "method not allowed on this route (the Allow header says which are)"),
    "payload_too_large": (413, "the request is too large; the limit is {limit} bytes (Lambda takes at most 6 MB per "
                               f"request and base64 makes an image a third larger: send at most {MAX_IMAGE_BYTES} "
                               "bytes of image, about 4.4 MB)"),
    "image_too_large": (413, ImageTooLargeError.message),
    "request_too_large": (413, "the images of this request have more pixels together than the limit of {limit} "
                               "pixels; send fewer or smaller images"),
    "out_of_distribution": (422, "this image does not look like the breast ultrasound images the model was trained "
                                 "on (its input check flagged it), so no class is given: send a breast ultrasound "
                                 "image (B-mode, as the scanner exports it)"),
    "internal_error": (500, "the model could not process this request"),
    "explain_unavailable": (501, "this model was exported without class activation maps: re-export it with this "
                                 "version to use explain, or leave explain out"),
    "segment_unavailable": (501, "this model was exported without a lesion map: train it with --task multitask (a "
                                 "dataset with masks) and export it with this version to use segment, or leave "
                                 "segment out"),
    "model_unavailable": (503, MODEL_UNAVAILABLE),
    "deadline_exceeded": (504, "the request would take longer than the time this function has left; send fewer "
                               "or smaller images"),
}


class RequestError(Exception):
    """An answer other than 200: ``code`` from ERRORS, its status and fixed sentence
    (or a more precise sentence of ours), the ``limit`` that applies, ``where`` in a batch."""

    def __init__(self, code: str, message: str | None = None, *, limit: int | None = None,
                 headers: dict | None = None, detail: str | None = None):
        self.status, sentence = ERRORS[code]
        self.code = code
        self.message = message or sentence.replace("{limit}", str(limit))
        self.headers = headers or {}
        self.detail = detail  # for the log only
        super().__init__(self.message)

    def at(self, where: str) -> RequestError:
        self.message = f"{where}: {self.message}"
        return self


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# --- the resolver ----------------------------------------------------------------------

@dataclass
class Request:
    event: object  # a dict, unless a direct invocation sent something else
    method: str  # "" for a direct invocation
    path: str  # after the stage prefix; "" for a direct invocation
    kind: str  # "direct", "rest_v1" or "http_v2"
    images: list[bytes] = field(default_factory=list)  # the image bytes, once read (for the log)
    deadline: Deadline | None = None  # when the answer must be given (from the Lambda context)


@dataclass
class Answer:
    """A route's answer other than a plain 200 JSON body."""

    status: int
    body: dict | None
    headers: dict = field(default_factory=dict)


Route = Callable[["Function", Request], "dict | Answer"]


@dataclass
class Resolver:
    """Routes (exact path -> method -> function) and exception handlers (type -> answer)."""

    routes: dict[str, dict[str, Route]] = field(default_factory=dict)
    handlers: dict[type, Callable[[Exception], RequestError]] = field(default_factory=dict)

    def route(self, method: str, path: str):
        def register(function: Route) -> Route:
            self.routes.setdefault(path, {})[method] = function
            return function
        return register

    def get(self, path: str):
        return self.route("GET", path)

    def post(self, path: str):
        return self.route("POST", path)

    def exception_handler(self, kind: type):
        def register(function):
            self.handlers[kind] = function
            return function
        return register

    def allowed(self, path: str) -> str:
        methods = list(self.routes[path])
        return ",".join(methods + (["HEAD"] if "GET" in methods else []) + ["OPTIONS"])

    def match(self, method: str, path: str) -> Route:
        methods = self.routes.get(path)
        if methods is None:
            raise RequestError("not_found")
        if method == "OPTIONS":
            return preflight
        function = methods.get("GET" if method == "HEAD" else method)
        if function is None:
            allowed = self.allowed(path)
            # the route's own path and methods only: nothing of the request is echoed
            raise RequestError("method_not_allowed", f"{path} accepts {allowed.split(',')[0]}",
                               headers={"Allow": allowed})
        return function

    def error_for(self, exc: Exception) -> RequestError | None:
        """The answer to an exception, from the most specific registered handler."""
        if isinstance(exc, RequestError):
            return exc
        for kind in type(exc).__mro__:
            if kind in self.handlers:
                answer = self.handlers[kind](exc)
                answer.detail = answer.detail or f"{type(exc).__name__}: {exc}"
                return answer
        return None


app = Resolver()


# decode's errors carry a fixed sentence of their own (``message``) and, for the log, a ``detail``
@app.exception_handler(ImageTooLargeError)
def _image_too_large(exc: Exception) -> RequestError:
    return RequestError("image_too_large", limit=MAX_IMAGE_PIXELS, detail=getattr(exc, "detail", None))


@app.exception_handler(InvalidImageError)
def _invalid_image(exc: Exception) -> RequestError:
    return RequestError("invalid_image", getattr(exc, "message", None), detail=getattr(exc, "detail", None))


# --- event shapes -----------------------------------------------------------------

def _strip_stage(path: str, stage: object) -> str:
    """The path after the stage prefix. A path that is a route as it stands is that route
    (a REST API's ``path`` has no stage in it: a stage named "predict" must not turn
    ``/predict`` into ``/``)."""
    if path in app.routes:
        return path
    if isinstance(stage, str) and stage and stage != "$default":
        prefix = "/" + stage
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
    return path


def http_request(event: dict) -> tuple[str, str] | None:
    """(method, path after the stage prefix) for API Gateway proxy events; None for a
    direct invocation."""
    context = event.get("requestContext")
    context = context if isinstance(context, dict) else {}
    if event.get("version") == "2.0" and isinstance(context.get("http"), dict):
        http = context["http"]
        path = event.get("rawPath") or http.get("path") or "/"
        return str(http.get("method", "")).upper(), _strip_stage(str(path), context.get("stage"))
    if "httpMethod" in event:
        path = str(event.get("path") or "/")
        return str(event["httpMethod"]).upper(), _strip_stage(path, context.get("stage"))
    return None


def event_kind(event: object, request) -> str:
    if request is None:
        return "direct"
    return "http_v2" if isinstance(event, dict) and event.get("version") == "2.0" else "rest_v1"


def _header(event: dict, name: str) -> str:
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return ""
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return ""


def decode_base64(text: str, what: str = "image", budget: int = MAX_IMAGE_BYTES) -> bytes:
    """Bytes of a base64 string (a data URL is fine; whitespace and line breaks are
    ignored), refused with 413 when they would exceed ``budget`` bytes: checked on the
    length before anything is decoded.

    A string without whitespace (what clients send) is decoded as it is, with no
    compacted copy, by binascii's strict mode (Python 3.11+: the standard alphabet, ``=``
    padding at the end only, checked while decoding in one pass; what
    ``base64.b64decode(validate=True)`` accepts, without its copy to bytes and its regular
    expression over the whole string). Strict decoding refuses whitespace: such a string
    is compacted and decoded again, so that the answers are what they always were."""
    strict = sys.version_info >= (3, 11)

    def decoded(candidate: str) -> bytes | None:
        try:
            if strict:
                return binascii.a2b_base64(candidate, strict_mode=True)
            return base64.b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII text
            return None

    if text.startswith("data:") and "," in text[:200]:  # data:image/png;base64,....
        text = text[text.index(",") + 1:]
    compact = None
    if len(text) * 3 // 4 - 2 > budget:  # over the budget as it is: perhaps not without its whitespace
        compact = "".join(text.split())
        if len(compact) * 3 // 4 - 2 > budget:
            raise RequestError("payload_too_large", limit=budget)
    data = decoded(text if compact is None else compact)
    if data is None and compact is None:  # whitespace, or not base64: what is left without whitespace
        compact = "".join(text.split())
        if compact != text:  # it held whitespace: decode what is left
            data = decoded(compact)
    if data is None:
        raise RequestError("invalid_base64", f"{what} is not valid base64")
    if len(data) > budget:
        raise RequestError("payload_too_large", limit=budget)
    return data


def parse_json_payload(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise RequestError("invalid_json") from None


def body_flags(payload: dict) -> dict[str, bool]:
    """FLAGS of a JSON request, e.g. ``"explain": true`` (absent: false); anything but a
    JSON boolean is refused."""
    flags = {}
    for key in FLAGS:
        value = payload.get(key, False)
        if not isinstance(value, bool):
            raise RequestError("invalid_request", f'"{key}" must be a JSON boolean (true or false)')
        flags[key] = value
    return flags


def query_flags(event: dict) -> dict[str, bool]:
    """FLAGS of an API Gateway request's query string: ``?explain=1`` (or true/yes;
    0/false/no; absent: false), ``?segment=1`` the same."""
    params = event.get("queryStringParameters") or {}
    flags = dict.fromkeys(FLAGS, False)
    if not isinstance(params, dict):
        return flags
    for key in FLAGS:
        if key not in params:
            continue
        value = params[key]
        if value in QUERY_TRUE:
            flags[key] = True
        elif value not in QUERY_FALSE:
            raise RequestError("invalid_request", f"the {key} query parameter must be 1 or 0 (true or false)")
    return flags


def images_from_payload(payload: object, settings: ServingSettings) -> tuple[list[bytes], bool]:
    """(image bytes, is_batch) from ``{"image": b64}``, ``{"images": [b64, ...]}`` or
    ``{"url": "https://..."}``."""
    if not isinstance(payload, dict):
        raise RequestError("invalid_request")
    given = [key for key in PREDICTION_KEYS if key in payload]
    if len(given) > 1:
        raise RequestError("invalid_request", "send exactly one of image, images or url")
    if "image" in payload:
        if not isinstance(payload["image"], str):
            raise RequestError("invalid_request", '"image" must be a base64 string')
        return [decode_base64(payload["image"])], False
    if "images" in payload:
        items = payload["images"]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise RequestError("invalid_request", '"images" must be a list of base64 strings')
        if not 1 <= len(items) <= MAX_BATCH:
            raise RequestError("invalid_request", f'"images" must hold 1 to {MAX_BATCH} images')
        images = [decode_base64(item, f"images[{i}]") for i, item in enumerate(items)]
        if sum(len(i) for i in images) > MAX_IMAGE_BYTES:
            raise RequestError("payload_too_large", limit=MAX_IMAGE_BYTES)
        return images, True
    if "url" in payload:
        return [image_from_url(payload["url"], settings)], False
    raise RequestError("missing_image")


def image_from_url(url: object, settings: ServingSettings) -> bytes:
    if not isinstance(url, str) or not url:
        raise RequestError("invalid_request", '"url" must be a non-empty string')
    if len(url) > MAX_URL_CHARS:
        raise RequestError("invalid_request", f'"url" is longer than {MAX_URL_CHARS} characters')
    if not settings.url_input_enabled:
        raise RequestError("url_not_allowed",
                           'the url input is off on this deployment; send the image itself as {"image": "<base64>"}')
    from . import remote_image  # lazy: only url requests pay for ssl and http.client

    cap = min(settings.url_max_bytes, MAX_IMAGE_BYTES)
    policy = remote_image.UrlPolicy(allowlist=settings.url_allowlist, max_bytes=cap, timeout_s=settings.url_timeout_s)
    try:
        return remote_image.fetch_image(url, policy)
    except remote_image.RemoteImageError as exc:
        # remote_image's messages are sentences of its own (what was refused, never a library's text)
        code = exc.code if exc.code in ERRORS else "url_fetch_failed"
        raise RequestError(code, exc.message, limit=cap, detail=getattr(exc, "detail", None)) from None


def is_base64_encoded(event: dict) -> bool:
    flag = event.get("isBase64Encoded")
    if flag is None:
        return False
    if not isinstance(flag, bool):
        raise RequestError("invalid_request", "isBase64Encoded must be a JSON boolean (true or false)")
    return flag


def images_from_http_body(event: dict, settings: ServingSettings) -> tuple[list[bytes], bool, dict[str, bool]]:
    """(image bytes, is_batch, FLAGS) of an API Gateway request: each flag from the JSON
    body or the query string (either asks)."""
    flags = query_flags(event)
    body = event.get("body")
    encoded = is_base64_encoded(event)
    if body is None or body == "":
        raise RequestError("missing_image")
    if not isinstance(body, str):
        raise RequestError("invalid_request", "body must be a string")
    if len(body) > MAX_BODY_BYTES:
        raise RequestError("payload_too_large", limit=MAX_BODY_BYTES)
    if encoded:
        raw = decode_base64(body, "body", MAX_BODY_BYTES)
        content_type = _header(event, "content-type").lower()
        if content_type.startswith("application/json") or (not content_type.startswith("image/") and raw.lstrip()[:1] == b"{"):
            return _json_request(parse_json_payload(raw), settings, flags)
        if len(raw) > MAX_IMAGE_BYTES:
            raise RequestError("payload_too_large", limit=MAX_IMAGE_BYTES)
        return [raw], False, flags
    return _json_request(parse_json_payload(body), settings, flags)


def _json_request(payload: object, settings: ServingSettings,
                  asked: dict[str, bool] | None = None) -> tuple[list[bytes], bool, dict[str, bool]]:
    images, batch = images_from_payload(payload, settings)
    flags = body_flags(payload)  # checked even when the query string already asks for them
    return images, batch, {key: flags[key] or bool((asked or {}).get(key)) for key in FLAGS}


# --- routes -----------------------------------------------------------------------

class Deadline:
    """When the request must have its answer: the Lambda context's remaining time
    (``get_remaining_time_in_millis``) less DEADLINE_MARGIN_S, or less a quarter of it
    (DEADLINE_MARGIN_FRACTION) when that is smaller; no deadline where the context has no
    such method (a test, a direct call)."""

    def __init__(self, context: object, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self.at = None
        if callable(remaining):
            try:
                left = float(remaining()) / 1000.0
                self.at = clock() + left - min(DEADLINE_MARGIN_S, DEADLINE_MARGIN_FRACTION * max(0.0, left))
            except (TypeError, ValueError):
                self.at = None

    def left(self) -> float:
        return float("inf") if self.at is None else self.at - self.clock()

    def require(self, seconds: float, detail: str) -> None:
        """Refuse the rest of the request when ``seconds`` of work do not fit in what is left."""
        left = self.left()
        if seconds > left:
            raise RequestError("deadline_exceeded", detail=f"{detail}: needs ~{seconds:.2f} s, {left:.2f} s left")


def decode_estimate_s(pixels: int, size_bytes: int = 0) -> float:
    """Seconds decoding an image of ``pixels`` (its header's) from ``size_bytes`` may take."""
    return pixels / 1e6 * DECODE_SECONDS_PER_MEGAPIXEL + size_bytes / 1e6 * DECODE_SECONDS_PER_MEGABYTE


def predict_images(function: Function, request: Request, images: list[bytes], batch: bool,
                   explain: bool = False, segment: bool = False) -> dict:
    """Every image is pre-scanned (inspect_image: format, structure, size, shape) before any
    is decoded, the request's pixels are checked against MAX_REQUEST_PIXELS, and each
    image is decoded only when its estimated time (its decode, the model step, the lesion
    post-processing with ``segment``) fits before the request's deadline. With OOD_ACTION
    refuse, an image the input check flags ends the request: 422 out_of_distribution."""
    request.images = images
    predictor = function.predictor
    refuse = function.settings.ood_action == "refuse"
    if explain and not getattr(predictor, "has_maps", False):
        raise RequestError("explain_unavailable")
    if segment and not getattr(predictor, "segment_available", False):
        raise RequestError("segment_unavailable")
    # only what is asked is passed: a predictor without the flag still answers plain requests
    asked = {key: True for key, on in ((EXPLAIN_KEY, explain), (SEGMENT_KEY, segment)) if on}

    def located(i: int, exc: Exception) -> RequestError:
        answer = app.error_for(exc)
        if answer is None:
            raise exc
        return answer.at(f"images[{i}]") if batch else answer

    intakes = []
    for i, data in enumerate(images):
        try:
            intakes.append(inspect_image(data))
        except InvalidImageError as exc:
            raise located(i, exc) from None
    total = sum(intake.pixels for intake in intakes)
    if total > MAX_REQUEST_PIXELS:
        raise RequestError("request_too_large", limit=MAX_REQUEST_PIXELS, detail=f"{total} pixels in {len(images)} images")
    deadline = request.deadline or Deadline(None)
    results = []
    for i, intake in enumerate(intakes):
        decode_s = decode_estimate_s(intake.pixels, intake.size)
        deadline.require(decode_s + function.estimate_s(segment), f"image {i}")
        started = time.perf_counter()
        try:
            result = predictor.predict_bytes(intake, **asked)
        except Exception as exc:
            raise located(i, exc) from None
        function.observe(time.perf_counter() - started - decode_s, segment)
        check = result.get("input_check")
        if refuse and isinstance(check, dict) and check.get("in_distribution") is False:
            refused = RequestError("out_of_distribution", detail=f"image {i}: input check score {check.get('score')} "
                                                                 f"above the threshold {check.get('threshold')}")
            raise refused.at(f"images[{i}]") if batch else refused
        results.append(result)
    if batch:
        return {"predictions": results, "model_version": predictor.model_version}
    return {**results[0], "model_version": predictor.model_version}


@app.post("/predict")
def predict(function: Function, request: Request) -> dict:
    images, batch, flags = images_from_http_body(request.event, function.settings)
    return predict_images(function, request, images, batch, **flags)


@app.get("/health")
def health(function: Function, request: Request) -> dict:
    """The model's version, classes, whether explain works, its test figures, whether
    segment works and whether the input check is on and what a flagged image gets
    (``model``: model_summary of its card and OOD_ACTION; null for a model without
    model.json, which can neither segment nor check its input: the thresholds are the
    card's) and the request limits a client should check before sending
    (``limits.image_bytes``: decoded image bytes per request)."""
    from .model_summary import model_summary

    predictor = function.predictor
    card = getattr(predictor, "card", None)
    return {"status": "ok", "model_version": predictor.model_version, "classes": list(predictor.classes),
            "explain": bool(getattr(predictor, "has_maps", False)),
            "model": model_summary(card, function.settings.ood_action) if card is not None else None,
            "limits": {"image_bytes": MAX_IMAGE_BYTES}}


def direct(function: Function, request: Request) -> dict:
    images, batch, flags = _json_request(request.event, function.settings)
    return predict_images(function, request, images, batch, **flags)


def preflight(function: Function, request: Request) -> Answer:
    """CORS preflight. API Gateway answers OPTIONS itself where template.yaml sets Cors;
    this answers it everywhere else (the local server, an API without Cors)."""
    allowed = app.allowed(request.path)
    return Answer(204, None, {"Allow": allowed, "Access-Control-Allow-Methods": allowed,
                              "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600"})


# --- the function -----------------------------------------------------------------

class Function:
    """The Lambda handler: ``function(event, context)``. Built by ``make_handler``."""

    def __init__(self, settings: ServingSettings, predictor=None, load_error: str | None = None,
                 telemetry: Telemetry | None = None):
        self.settings, self.predictor, self.load_error = settings, predictor, load_error
        self.telemetry = telemetry or telemetry_for(settings)
        if predictor is None and load_error is None:
            raise ValueError("a Function needs a predictor or the reason it has none")
        self.invoke_estimate_s = INVOKE_ESTIMATE_S  # the slowest model step seen, decays slowly
        self.segment_estimate_s = INVOKE_ESTIMATE_S + SEGMENT_ESTIMATE_S  # the same, of segment requests

    def estimate_s(self, segment: bool = False) -> float:
        """What one image's model step may take (beyond its decode), lesion post-processing
        included with ``segment``."""
        return self.segment_estimate_s if segment else self.invoke_estimate_s

    def observe(self, model_seconds: float, segment: bool = False) -> None:
        """One image's time beyond its decode estimate (the model, explain's overlay, with
        ``segment`` the lesion outline and mask)."""
        if segment:
            self.segment_estimate_s = max(INVOKE_ESTIMATE_S, model_seconds, 0.9 * self.segment_estimate_s)
        else:
            self.invoke_estimate_s = max(INVOKE_ESTIMATE_S, model_seconds, 0.9 * self.invoke_estimate_s)
        self.segment_estimate_s = max(self.segment_estimate_s, self.invoke_estimate_s)

    def __call__(self, event: object, context: object = None) -> dict:
        if isinstance(event, dict) and "invocationSchemaVersion" in event and "tasks" in event:
            from . import s3_batch  # lazy: only S3 Batch Operations invocations pay for boto3

            # s3_batch never imports this module: it gets the API's intake and error table from here
            deadline = Deadline(context)
            task = Request(event, "", "", s3_batch.ROUTE, deadline=deadline)
            return s3_batch.handle(self, event, context, deadline=deadline, error_for=app.error_for,
                                   intake=lambda data: predict_images(self, task, [data], False))
        started = time.perf_counter()
        request = http_request(event) if isinstance(event, dict) else None
        method, path = request or ("", "")
        req = Request(event, method, path, event_kind(event, request), deadline=Deadline(context))
        status, headers, body, detail = 200, {}, None, None
        metric_route = "direct" if request is None else "other"
        try:
            route = direct if request is None else app.match(method, path)
            metric_route = "direct" if request is None else path
            if route is not preflight and self.predictor is None:
                raise RequestError("model_unavailable")
            answer = route(self, req)
            if isinstance(answer, Answer):
                status, body, headers = answer.status, answer.body, answer.headers
            else:
                body = answer
        except Exception as exc:
            error = app.error_for(exc)
            if error is None:  # a bug of ours: log it, answer without internals
                error = RequestError("internal_error")
                self.telemetry.log("ERROR", "unhandled error", request_id=request_id(context),
                                   exception=type(exc).__name__, traceback=traceback.format_exc())
            status, headers, body, detail = error.status, error.headers, error_body(error.code, error.message), error.detail
        self.log_request(context, req, status, body, started, metric_route, detail)
        if request is None:
            return body
        if method == "HEAD":  # GET's status and headers, no body
            return self.api_response(status, None, headers, keep_type=True)
        return self.api_response(status, body, headers)

    def cors_headers(self) -> dict:
        origin = self.settings.cors_allow_origin
        return {"Access-Control-Allow-Origin": origin} if origin else {}

    def api_response(self, status: int, body: dict | None, headers: dict | None = None, keep_type: bool = False) -> dict:
        all_headers = {**JSON_HEADERS, **self.cors_headers(), **(headers or {})}
        if body is None and not keep_type:  # 204
            all_headers.pop("Content-Type")
        return {"statusCode": status, "headers": all_headers,
                "body": json.dumps(body) if body is not None else "", "isBase64Encoded": False}

    def log_request(self, context, request: Request, status: int, body: dict | None, started: float,
                    metric_route: str, detail: str | None) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        body = body or {}
        results = [body] if "prediction" in body else [p for p in body.get("predictions", []) if isinstance(p, dict)]
        predictions = [r["prediction"] for r in results]
        # images the input check flagged but answered (OOD_ACTION flag); a refused one is the error code
        flagged = sum(isinstance(r.get("input_check"), dict) and r["input_check"].get("in_distribution") is False
                      for r in results)
        error_code = body["error"]["code"] if "error" in body else None
        api_request_id = None
        if request.kind != "direct" and isinstance(request.event.get("requestContext"), dict):
            api_request_id = request.event["requestContext"].get("requestId")
        self.telemetry.log(
            "INFO" if status < 500 else "ERROR", "request",
            request_id=request_id(context), api_request_id=api_request_id if isinstance(api_request_id, str) else None,
            event=request.kind, route=metric_route, method=request.method[:16] or None, status=status,
            latency_ms=round(latency_ms, 2), image_bytes=[len(i) for i in request.images] or None,
            prediction=predictions[0] if len(predictions) == 1 else None,
            predictions=predictions if len(predictions) > 1 else None, input_check_flagged=flagged or None,
            error=error_code,
            error_message=body["error"]["message"] if error_code else None, error_detail=detail,
        )
        self.telemetry.emit_request_metrics(metric_route, status, latency_ms, predictions, error_code, request_id(context))


def request_id(context) -> str | None:
    return getattr(context, "aws_request_id", None)


def telemetry_for(settings: ServingSettings) -> Telemetry:
    return Telemetry(level=settings.log_level, format=settings.log_format, metrics=settings.emf_metrics,
                     namespace=settings.metrics_namespace, service=settings.service_name)


def make_handler(settings: ServingSettings, load_predictor: Callable | None = None) -> Function:
    """The Lambda handler for ``settings``: loads the model once (``load_predictor(path,
    variant=, num_threads=)``, default ``Predictor``) and logs one line, "function
    initialised" (INFO, with model_load_ms, variant, model_version) or "function not
    initialised" (ERROR, with the settings or load error). Never raises: a bad setting
    or model makes every request answer 503."""
    telemetry = telemetry_for(settings)
    started = time.perf_counter()
    predictor, load_error = None, None
    if settings.errors:
        load_error = "invalid settings: " + "; ".join(settings.errors)
    else:
        if load_predictor is None:
            from .predictor import Predictor as load_predictor
        try:
            predictor = load_predictor(settings.model_path, variant=settings.model_variant,
                                       num_threads=settings.num_threads)
        except ModelLoadError as exc:
            load_error = str(exc)
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    if predictor is not None:
        telemetry.log("INFO", "function initialised", model_load_ms=load_ms, variant=predictor.variant,
                      model_version=predictor.model_version, threads=predictor.num_threads)
    else:
        telemetry.log("ERROR", "function not initialised", model_load_ms=load_ms, reason=load_error)
    return Function(settings, predictor, load_error, telemetry)
