"""A local HTTP endpoint for the Lambda handler: no Docker, no AWS.

``python -m busi_classifier serve --port 8000`` listens on 127.0.0.1, turns each HTTP
request into the API Gateway proxy event that the deployed API would send (REST API
payload 1.0 by default, HTTP API payload 2.0 with ``--event-format http``), calls the
handler the function uses (``busi_classifier.serving.api.make_handler``, with the same
settings from the environment; ``--model`` overrides MODEL_PATH) and turns its answer
back into an HTTP response:

    curl -s localhost:8000/health
    curl -s -X POST localhost:8000/predict -H 'Content-Type: image/png' --data-binary @scan.png

Like the deployed API (template.yaml), bodies of the binary media types (image/png,
image/jpeg) arrive base64-encoded with ``isBase64Encoded: true``; so does any body that
is not UTF-8 text.

Before a body is read, its framing is checked: one Content-Length of ASCII digits, or one
``Transfer-Encoding: chunked`` and nothing else (two Content-Length headers, both
headers together, any other transfer coding or a malformed header line is a 400 that
closes the connection, so that no bytes of a refused request are taken for a second
one). Bodies over the handler's 6 MB cap are refused with 413 before they are read. At
most MAX_IN_FLIGHT requests with a body are in flight at once (so bodies cannot pile up
in memory); one more is answered 503 ``busy`` with ``Retry-After`` before its body is
read, while requests without a body (``GET /health``) are never refused. Only a POST,
the one method that can run the model, takes the model lock: one POST runs the handler
at a time (a Lambda instance serves one request at a time too), while GET, HEAD and
OPTIONS never wait for it, and reading bodies and writing answers happen in parallel.
Every answer the server gives itself (400, 405, 413, 503) is a fixed sentence that never
repeats what the request sent. The console shows one short line per request;
``--json-logs`` prints the function's JSON log and EMF lines instead.

``GET /`` (and ``/index.html``, ``/app.js``, ``/style.css``) answers the page in
``static/`` (docs/page.md) without going through the handler; every other request goes
to the handler.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import errno
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from busi_classifier.serving.api import MAX_BODY_BYTES, make_handler
from busi_classifier.serving.settings import ServingSettings

BINARY_MEDIA_TYPES = ("image/png", "image/jpeg")  # the BinaryMediaTypes of template.yaml
STAGE = "local"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
SOCKET_TIMEOUT_S = 30
DISCARD_LIMIT = 64 * 1024 * 1024
MAX_SIZE_DIGITS = 16  # a Content-Length or chunk size longer than this is refused unread
MAX_IN_FLIGHT = 4  # requests with a body read or being answered at once; one more is a 503
RETRY_AFTER_S = 1  # the Retry-After of that 503, in seconds
MAX_CHUNK_LINE = 1024  # a chunk-size line (size and extensions) longer than this is a 400
MAX_TRAILER_LINES = 16  # trailer lines after a chunked body, at most
MAX_TRAILER_BYTES = 8192  # and their bytes, CRLFs included, at most
OWS = " \t"  # the whitespace HTTP allows around a header value
DEFAULT_MODEL = "artifacts/model"
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# The page (GET /): request path -> file in STATIC_DIR, and the media type of each suffix
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
STATIC_HEADERS = [
    ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
    # the page's own script and style only; it may call any API (?api=)
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                                "connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


def parse_content_length(text: str) -> int | None:
    """Content-Length as an int: ASCII digits only (no sign, no "\xb2", no spaces
    inside, only spaces and tabs around); None when it is not one."""
    text = text.strip(OWS)
    if not text or len(text) > MAX_SIZE_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_chunk_size(line: bytes) -> int | None:
    """A chunked body's size line (hex digits, an optional ;extension) as an int; None
    when it is not one (a sign, "0x", spaces inside, too many digits)."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > MAX_SIZE_DIGITS or not set(size) <= HEX_DIGITS:
        return None
    return int(size, 16)


class LocalContext:
    """The parts of the Lambda context object the handler reads."""

    function_name = "busi-classifier-local"
    memory_limit_in_mb = 2048

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + 30

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def encode_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """(event body, isBase64Encoded) as API Gateway would pass ``body``."""
    if not body:
        return None, False
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in BINARY_MEDIA_TYPES:
        return base64.b64encode(body).decode("ascii"), True
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def request_event(method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                  source_ip: str = "127.0.0.1", event_format: str = "rest") -> dict:
    """The API Gateway proxy event for one HTTP request."""
    parts = urlsplit(target)
    path = parts.path or "/"
    query = parse_qsl(parts.query, keep_blank_values=True)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    event_body, is_b64 = encode_body(body, content_type)
    request_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    if event_format == "http":
        joined: dict[str, str] = {}
        for key, value in headers:
            key = key.lower()
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        params: dict[str, str] = {}
        for key, value in query:
            params[key] = f"{params[key]},{value}" if key in params else value
        event = {
            "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": parts.query,
            "headers": joined,
            "requestContext": {
                "accountId": "000000000000", "apiId": "local", "domainName": "localhost", "domainPrefix": "localhost",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                         "userAgent": joined.get("user-agent", "")},
                "requestId": request_id, "routeKey": "$default", "stage": "$default", "timeEpoch": now,
            },
            "isBase64Encoded": is_b64,
        }
        if params:
            event["queryStringParameters"] = params
        if event_body is not None:
            event["body"] = event_body
        return event
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in headers:
        single[key] = value
        multi.setdefault(key, []).append(value)
    single_query = dict(query) or None
    multi_query: dict[str, list[str]] = {}
    for key, value in query:
        multi_query.setdefault(key, []).append(value)
    return {
        "resource": path, "path": path, "httpMethod": method,
        "headers": single, "multiValueHeaders": multi,
        "queryStringParameters": single_query, "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {
            "accountId": "000000000000", "apiId": "local", "resourcePath": path, "httpMethod": method,
            "path": path, "stage": STAGE, "requestId": request_id, "requestTimeEpoch": now,
            "identity": {"sourceIp": source_ip, "userAgent": single.get("User-Agent")}, "protocol": "HTTP/1.1",
        },
        "body": event_body, "isBase64Encoded": is_b64,
    }


def response_parts(answer: object) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a proxy integration answer, as API Gateway sends it."""
    if not isinstance(answer, dict) or not isinstance(answer.get("statusCode"), int):
        # API Gateway answers a malformed integration response with 502
        return 502, [("Content-Type", "application/json")], json.dumps(
            {"error": {"code": "bad_gateway", "message": "the function returned a malformed response"}}).encode()
    headers = [(str(k), str(v)) for k, v in (answer.get("headers") or {}).items()]
    for key, values in (answer.get("multiValueHeaders") or {}).items():
        headers += [(str(key), str(v)) for v in values]
    body = answer.get("body") or ""
    data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode("utf-8")
    return answer["statusCode"], headers, data


def _error_json(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


# The server's own answers: fixed sentences (our limits may appear, never the request's content)
BUSY_MESSAGE = "the server is busy with other requests; try again after the seconds in Retry-After"
HTTP_ERROR_MESSAGES = {414: "malformed HTTP request: the request line is too long",
                       431: "malformed HTTP request: the header lines are too long or too many"}
MALFORMED_REQUEST = "malformed HTTP request: the request line is not METHOD /path HTTP/1.1"
MALFORMED_HEADERS = "malformed HTTP request: a header line is not 'Name: value' on one line"
MALFORMED_CHUNKED = "malformed chunked body"
TRAILERS_TOO_LARGE = (f"the chunked body's trailers are over {MAX_TRAILER_LINES} lines "
                      f"or {MAX_TRAILER_BYTES} bytes")


class Refusal(Exception):
    """A request the server answers itself, before the handler sees it: the status, the
    error code and a fixed sentence; the connection is closed after the answer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def framing_error(message: str) -> Refusal:
    return Refusal(400, "invalid_request", message)


class LambdaRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "busi-classifier-local"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - one line per request comes from _forward
        pass

    def handle(self) -> None:
        """One connection; a client that goes away is one line, not a traceback."""
        try:
            super().handle()
        except DISCONNECTS as exc:
            self.close_connection = True
            self.server.say(f"{self.client_address[0]} disconnected ({exc.strerror or type(exc).__name__})")
        except TimeoutError:
            self.close_connection = True
            self.server.say(f"{self.client_address[0]} timed out after {SOCKET_TIMEOUT_S} s")

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, header too long, unknown
        method) as JSON in the API's error shape, with a fixed sentence: its ``message``
        repeats the request line, which is never sent back."""
        if code == 501:  # a method http.server has no do_ method for
            code, name, text = 405, "method_not_allowed", "method not allowed; use POST /predict or GET /health"
        else:  # malformed request line or headers, URI or header line too long
            code, name, text = 400, "invalid_request", HTTP_ERROR_MESSAGES.get(code, MALFORMED_REQUEST)
        if self.request_version == "HTTP/0.9":  # the version did not parse: still answer a status line
            self.request_version = self.protocol_version
        self._send(code, [("Content-Type", "application/json")], _error_json(name, text), close=True)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, close: bool = False) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _body_length(self) -> int | None:
        """The body's length from its one Content-Length (0 without one), or None for a
        chunked body; raises Refusal (400) for any framing that two parsers could read
        two ways, and (413) for a length over the cap, whose body is then discarded."""
        if self.headers.defects or any("\r" in v or "\n" in v for v in self.headers.values()):
            # "Name : value" (the lines after it would be taken for the body) or an obs-fold
            raise framing_error(MALFORMED_HEADERS)
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if len(encodings) > 1:
            raise framing_error("more than one Transfer-Encoding header")
        if len(lengths) > 1:
            raise framing_error("more than one Content-Length header")
        if encodings and lengths:
            raise framing_error("Transfer-Encoding and Content-Length together")
        if encodings:
            if encodings[0].strip(OWS).lower() != "chunked":
                raise framing_error("the only Transfer-Encoding accepted is chunked")
            return None
        if not lengths:
            return 0
        length = parse_content_length(lengths[0])
        if length is None:
            raise framing_error("Content-Length is not a number of bytes")
        if length > self.server.max_body:
            self._discard(length)
            raise self._too_large()
        return length

    def _skip(self, length: int) -> int:
        """Read and drop ``length`` bytes, 64 KB at a time; how many there were."""
        done = 0
        while done < length:
            chunk = self.rfile.read(min(length - done, 1 << 16))
            if not chunk:
                break
            done += len(chunk)
        return done

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to DISCARD_LIMIT), so that the client, which
        is still sending it, reads the answer instead of a reset connection."""
        if length <= DISCARD_LIMIT:
            self._skip(length)

    def _read_chunked(self, keep: bool = True) -> bytes:
        """A chunked body (``keep=False``: read and dropped); raises Refusal for a size
        line, a chunk's CRLF or trailers that are not what RFC 9112 says, or a total over
        the cap, and ConnectionAbortedError when the body stops before its end."""
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE)
            size = parse_chunk_size(line[:-2]) if line.endswith(b"\r\n") else None
            if size is None:
                raise framing_error(MALFORMED_CHUNKED)
            if size == 0:
                self._read_trailers()
                return b"".join(chunks)
            total += size
            if total > self.server.max_body:
                raise self._too_large()
            if keep:
                chunk = self.rfile.read(size)
                chunks.append(chunk)
                done = len(chunk)
            else:
                done = self._skip(size)
            if done < size:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the request body ended early")
            if self.rfile.read(2) != b"\r\n":  # the CRLF after the chunk, and nothing else
                raise framing_error(MALFORMED_CHUNKED)

    def _read_trailers(self) -> None:
        """The trailer lines after the last chunk, up to the empty line: read and dropped,
        at most MAX_TRAILER_LINES lines and MAX_TRAILER_BYTES bytes."""
        lines = used = 0
        while True:
            line = self.rfile.readline(MAX_TRAILER_BYTES - used + 2)  # room for the last CRLF
            if line == b"\r\n":
                return
            lines, used = lines + 1, used + len(line)
            if lines > MAX_TRAILER_LINES or used > MAX_TRAILER_BYTES:
                raise framing_error(TRAILERS_TOO_LARGE)
            if not line.endswith(b"\r\n"):
                raise framing_error(MALFORMED_CHUNKED)

    def _too_large(self) -> Refusal:
        return Refusal(413, "payload_too_large", f"the request body is over the limit of {self.server.max_body} "
                                                 "bytes (Lambda takes at most 6 MB per request)")

    def _refuse(self, refusal: Refusal, started: float, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(refusal.status, [("Content-Type", "application/json"), *headers],
                   _error_json(refusal.code, refusal.message), close=True)
        self._log(refusal.status, refusal.code, started)

    def _log(self, status: int, what: str, started: float) -> None:
        self.server.say(f"{self.command} {self.path[:200]} {status} {what} "
                        f"({(time.perf_counter() - started) * 1000:.0f} ms)", request=True)

    def _with_body(self, respond) -> None:
        """Check the request's framing, take a place in flight for its body (none for a
        request without one), read it and call ``respond(body, started)``; the place is
        given back when the answer is written."""
        started = time.perf_counter()
        try:
            length = self._body_length()
        except Refusal as refusal:
            self._refuse(refusal, started)
            return
        if length == 0:
            respond(b"", started)
            return
        if not self.server.take_place():
            self._refuse(Refusal(503, "busy", BUSY_MESSAGE), started, (("Retry-After", str(RETRY_AFTER_S)),))
            try:  # so that the client, still sending, reads the 503 rather than a reset (64 KB at a time)
                self._read_chunked(keep=False) if length is None else self._skip(length)
            except Refusal:
                pass
            return
        try:
            try:
                body = self._read_chunked() if length is None else self.rfile.read(length)
            except Refusal as refusal:
                self._refuse(refusal, started)
                return
            if len(body) < (length or 0):
                raise ConnectionAbortedError(errno.ECONNABORTED, "the request body ended early")
            respond(body, started)
        finally:
            self.server.give_back_place()

    def _call_handler(self, body: bytes, started: float) -> None:
        event = request_event(self.command, self.path, list(self.headers.items()), body,
                              self.client_address[0], self.server.event_format)
        # only a POST can run the model: GET /health and the rest never wait behind one
        with self.server.lock if self.command == "POST" else contextlib.nullcontext():
            answer = self.server.handler(event, LocalContext())
        status, headers, data = response_parts(answer)
        self._send(status, headers, data)
        self._log(status, summary(data), started)

    def _page(self, name: str, started: float) -> None:
        try:
            status, data = 200, (STATIC_DIR / name).read_bytes()
            headers = [("Content-Type", STATIC_TYPES[Path(name).suffix]), *STATIC_HEADERS]
        except OSError:
            status, headers = 500, [("Content-Type", "application/json")]
            data = _error_json("internal_error", f"the page is not installed ({name} is missing)")
        self._send(status, headers, data)
        self._log(status, "page", started)

    def _forward(self) -> None:
        self._with_body(self._call_handler)

    def _get(self) -> None:
        """GET and HEAD: the page's files are answered here, anything else by the handler."""
        name = STATIC_FILES.get(urlsplit(self.path).path)
        if name is None:
            self._forward()
        else:
            self._with_body(lambda _body, started: self._page(name, started))

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _forward
    do_GET = do_HEAD = _get


class LambdaHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, event_format: str = "rest", max_body: int = MAX_BODY_BYTES,
                 request_lines: bool = False, max_in_flight: int = MAX_IN_FLIGHT):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        super().__init__(address, LambdaRequestHandler)
        self.handler, self.event_format, self.max_body = handler, event_format, max_body
        self.request_lines = request_lines  # one readable line per request on stderr
        self.lock = threading.Lock()  # one POST through the handler (the model) at a time
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # requests with a body between take_place and give_back_place
        self._places = threading.Lock()

    def take_place(self) -> bool:
        """One of the max_in_flight places for a request with a body, without waiting:
        False when none is free (a counting semaphore whose count can be read)."""
        with self._places:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def give_back_place(self) -> None:
        with self._places:
            self.in_flight -= 1

    def say(self, line: str, request: bool = False) -> None:
        if self.request_lines or not request:
            print(line, file=sys.stderr, flush=True)

    def handle_error(self, request, client_address) -> None:
        """An error outside a request handler: one line, not a traceback."""
        exc = sys.exc_info()[1]
        self.say(f"{client_address[0]}: connection error ({type(exc).__name__})")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


FLAGGED = "NOT LIKE THE TRAINING IMAGES"  # the console's mark of an answer the input check flagged


def summary(data: bytes) -> str:
    """What a request log line says about an answer: the prediction (marked where the input
    check flagged the image), or the error code."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    def flagged(result) -> bool:
        check = result.get("input_check") if isinstance(result, dict) else None
        return isinstance(check, dict) and check.get("in_distribution") is False

    if "prediction" in body:
        return str(body["prediction"]) + (f" ({FLAGGED})" if flagged(body) else "")
    if "predictions" in body and isinstance(body["predictions"], list):
        count = sum(flagged(p) for p in body["predictions"])
        return f"{len(body['predictions'])} predictions" + (f" ({count} {FLAGGED})" if count else "")
    error = body.get("error")
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def make_server(handler, host: str = "127.0.0.1", port: int = 8000, event_format: str = "rest",
                request_lines: bool = False, max_in_flight: int = MAX_IN_FLIGHT) -> LambdaHTTPServer:
    """A server calling ``handler(event, context)`` for each request (port 0: any free
    port), with at most ``max_in_flight`` requests with a body in flight at once."""
    if event_format not in ("rest", "http"):
        raise ValueError(f"event_format must be 'rest' or 'http', not {event_format!r}")
    return LambdaHTTPServer((host, port), handler, event_format, request_lines=request_lines,
                            max_in_flight=max_in_flight)


def local_settings(model: str | None, json_logs: bool = False, environ=None) -> ServingSettings:
    """The function's settings from the environment, serving ``model`` when given (a path
    given is the path used), else MODEL_PATH, else artifacts/model."""
    settings = ServingSettings.from_env(environ, default_model=DEFAULT_MODEL)
    if model:
        settings = settings.with_model(model)
    return dataclasses.replace(settings, model_path=settings.model_path.resolve(),
                               log_format="json" if json_logs else "text")


def serve_main(argv=None) -> int:
    """Serve the Lambda handler over HTTP on this machine."""
    parser = argparse.ArgumentParser(prog="python -m busi_classifier serve", description=serve_main.__doc__)
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--model", default=None,
                        help="model folder (serves its default variant, or MODEL_VARIANT) or one .tflite file, "
                             f"served as is (default: MODEL_PATH, else {DEFAULT_MODEL})")
    parser.add_argument("--event-format", choices=("rest", "http"), default="rest",
                        help="REST API payload 1.0 (default) or HTTP API payload 2.0 events")
    parser.add_argument("--json-logs", action="store_true",
                        help="print the function's JSON log and EMF metric lines (as CloudWatch gets them) instead "
                             "of one short line per request (default: off)")
    args = parser.parse_args(argv)

    settings = local_settings(args.model, args.json_logs)
    from busi_classifier.console import native_stderr_silenced

    # as predict and invoke: no LiteRT "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." line, and a
    # model that does not load is the one error line below, not also the handler's own log line about it
    with native_stderr_silenced():
        handler = make_handler(settings)
    if handler.predictor is None:
        print(f"error: {handler.load_error}", file=sys.stderr)
        return 1
    try:
        server = make_server(handler, args.host, args.port, args.event_format, request_lines=not args.json_logs)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:  # a Ctrl-C as soon as the line is out (a script that waits for it) stops as quietly as later
        print(f"serving {settings.model_path} ({handler.predictor.variant}) on {server.url} (the page: open "
              f"{server.url}/ in a browser; POST /predict, GET /health; {args.event_format} events); Ctrl-C stops",
              file=sys.stderr, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
