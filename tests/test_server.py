"""The local HTTP endpoint (python -m busi_classifier serve), driven over loopback: HTTP
requests become API Gateway events, the handler's answers become HTTP responses."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from api_stub import stub_handler
from conftest import ROOT, ServeProcess
from PIL import Image

from busi_classifier.local.server import BUSY_MESSAGE, encode_body, make_server, request_event, response_parts
from busi_classifier.serving.api import MAX_BODY_BYTES, http_request


def png_bytes(size=(48, 40), value=100) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


class Recorder:
    """The stub handler, recording every event it receives."""

    def __init__(self):
        self.events = []
        self.inner = stub_handler()

    def __call__(self, event, context):
        self.events.append(event)
        return self.inner(event, context)


@pytest.fixture(params=["rest", "http"])
def server(request):
    recorder = Recorder()
    srv = make_server(recorder, port=0, event_format=request.param)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.recorder = recorder
    yield srv
    srv.shutdown()
    srv.server_close()


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def test_health(server):
    status, headers, data = call(server, "GET", "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(data) == {"status": "ok", "model_version": "stub-1", "classes": ["normal", "benign", "malignant"],
                                "explain": True, "model": None, "limits": {"image_bytes": 4_400_000}}
    assert headers["access-control-allow-origin"] == "*"
    [event] = server.recorder.events
    assert http_request(event) == ("GET", "/health")


def test_raw_png_arrives_base64_encoded_like_api_gateway_sends_it(server):
    status, _, data = call(server, "POST", "/predict", PNG, {"Content-Type": "image/png"})
    assert status == 200 and json.loads(data)["prediction"] in ("normal", "benign", "malignant")
    [event] = server.recorder.events
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == PNG


def test_json_body_arrives_as_text(server):
    payload = json.dumps({"image": base64.b64encode(PNG).decode()}).encode()
    status, _, data = call(server, "POST", "/predict", payload, {"Content-Type": "application/json"})
    assert status == 200 and "probabilities" in json.loads(data)
    [event] = server.recorder.events
    assert event["isBase64Encoded"] is False and json.loads(event["body"])["image"]


def test_errors_keep_status_and_error_object(server):
    status, headers, data = call(server, "GET", "/predict")
    assert status == 405 and headers["allow"].startswith("POST")
    assert json.loads(data)["error"]["code"] == "method_not_allowed"
    status, _, data = call(server, "POST", "/nope", b"{}", {"Content-Type": "application/json"})
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    status, _, data = call(server, "POST", "/predict", b"hello", {"Content-Type": "text/plain"})
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_json"


def test_body_over_the_cap_is_refused_before_the_handler(server):
    body = b"\0" * (MAX_BODY_BYTES + 1)
    status, headers, data = call(server, "POST", "/predict", body, {"Content-Type": "image/png"})
    assert status == 413 and headers["connection"] == "close"
    error = json.loads(data)["error"]
    assert error["code"] == "payload_too_large" and str(MAX_BODY_BYTES) in error["message"]
    assert server.recorder.events == []


def test_claimed_length_over_the_cap_is_refused_without_reading(server):
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 999999999999\r\n\r\n")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer
    assert server.recorder.events == []


def test_chunked_upload(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.request("POST", "/predict", body=iter([PNG[:30], PNG[30:]]),
                       headers={"Content-Type": "image/png", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    connection.close()
    assert base64.b64decode(server.recorder.events[0]["body"]) == PNG


def test_preflight_and_head(server):
    status, headers, data = call(server, "OPTIONS", "/predict")
    assert status == 204 and data == b""
    assert "POST" in headers["access-control-allow-methods"] and "x-api-key" in headers["access-control-allow-headers"].lower()
    status, headers, data = call(server, "HEAD", "/health")
    assert status == 200 and data == b""


def test_malformed_requests_get_json_errors(server):
    for raw, status, code in [(b"FOO /predict HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
                              (b"GET /a b HTTP/1.1\r\n\r\n", 400, "invalid_request"),
                              (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "invalid_request")]:
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(raw)
            answer = sock.makefile("rb").read()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()) or head.startswith(f"HTTP/1.0 {status}".encode()), head
        assert json.loads(body)["error"]["code"] == code


def test_query_strings_and_multi_value_headers_reach_the_event(server):
    call(server, "GET", "/health?a=1&a=2&b=", None, {"X-Test": "yes"})
    [event] = server.recorder.events
    if event.get("version") == "2.0":
        assert event["rawQueryString"] == "a=1&a=2&b=" and event["queryStringParameters"]["a"] == "1,2"
        assert event["headers"]["x-test"] == "yes"
    else:
        assert event["multiValueQueryStringParameters"]["a"] == ["1", "2"]
        assert event["headers"]["X-Test"] == "yes" and event["multiValueHeaders"]["X-Test"] == ["yes"]


def test_event_shapes_are_what_the_handler_reads():
    rest = request_event("POST", "/predict?x=1", [("Content-Type", "image/jpeg")], b"\xff\xd8", "10.1.2.3", "rest")
    assert http_request(rest) == ("POST", "/predict") and rest["isBase64Encoded"] is True
    assert rest["requestContext"]["identity"]["sourceIp"] == "10.1.2.3"
    http = request_event("GET", "/health", [], b"", event_format="http")
    assert http_request(http) == ("GET", "/health") and "body" not in http


def test_binary_media_types_match_the_template():
    import yaml

    from busi_classifier.local.server import BINARY_MEDIA_TYPES

    text = (ROOT / "template.yaml").read_text()
    declared = re.findall(r"^\s+- (image~1\w+)\s*$", text, re.MULTILINE)
    assert sorted(t.replace("~1", "/") for t in declared) == sorted(BINARY_MEDIA_TYPES)
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    raw_types = set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) - {"application/json"}
    assert raw_types == set(BINARY_MEDIA_TYPES)
    assert encode_body(b"\xff\x00", "text/plain") == (base64.b64encode(b"\xff\x00").decode(), True)
    assert encode_body(b'{"a": 1}', "application/json; charset=utf-8") == ('{"a": 1}', False)


def test_malformed_handler_answer_is_a_502():
    status, _, body = response_parts({"body": "x"})
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"


def raw_exchange(server, request: bytes, then_wait: float = 10) -> bytes:
    """Send ``request`` and read the answer while keeping the connection open (a server
    that waited for more body would time out the read instead of answering)."""
    with socket.create_connection(server.server_address[:2], timeout=then_wait) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):  # a reset after the answer: the server closed unread bytes
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("length", ["\u00b2", "\u0663", "-5", "+5", "1_0", "0x10", "5 5", "9" * 40])
def test_content_length_must_be_ascii_digits(server, length):
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode("latin-1", "replace")
    answer = raw_exchange(server, head + b"hello")
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid_request" in answer, answer[:200]
    assert server.recorder.events == []


@pytest.mark.parametrize("size", [b"-1", b"+10", b"0x10", b"1 0", b"", b"f" * 40])
def test_chunk_sizes_must_be_hex_digits_and_are_refused_unread(server, size):
    """A size line of -1 used to read the socket to EOF: now 400 at once, the connection
    still open on the client's side."""
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + size + b"\r\nabc", then_wait=5)
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed chunked body" in answer, answer[:200]


def test_chunked_total_is_checked_against_the_cap_before_reading(server):
    size = f"{MAX_BODY_BYTES + 1:x}".encode()
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + size + b"\r\nabc", then_wait=5)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_client_that_goes_away_is_one_line_not_a_traceback(server, capfd):
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc")
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:  # reset mid-request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    assert call(server, "GET", "/health")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_request_lines_are_readable_and_json_logs_are_a_flag(capfd):
    from api_stub import StubPredictor

    from busi_classifier.local.server import local_settings
    from busi_classifier.serving.api import make_handler

    for json_logs in (False, True):
        settings = local_settings("stub-model", json_logs=json_logs, environ={})
        srv = make_server(make_handler(settings, StubPredictor), port=0, request_lines=not json_logs)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            call(srv, "POST", "/predict", PNG, {"Content-Type": "image/png"})
            call(srv, "GET", "/nope")
        finally:
            srv.shutdown()
            srv.server_close()
        captured = capfd.readouterr()
        json_lines = [line for line in captured.out.splitlines() if line.startswith("{")]
        if json_logs:
            assert any('"message":"request"' in line for line in json_lines)
            assert any('"_aws"' in line for line in json_lines)
            assert "POST /predict 200" not in captured.err
        else:
            assert json_lines == []
            assert re.search(r"^POST /predict 200 \w+ \(\d+ ms\)$", captured.err, re.MULTILINE), captured.err
            assert re.search(r"^GET /nope 404 not_found", captured.err, re.MULTILINE)


def test_serve_builds_the_handler_from_the_package_not_lambda_function():
    source = (ROOT / "busi_classifier" / "local" / "server.py").read_text()
    source += (ROOT / "busi_classifier" / "local" / "invoke.py").read_text()
    assert "lambda_function" not in source and "sys.path" not in source and "os.environ" not in source


# --------------------------------------------------------------------------- hardening (issue 19)


class BlockingHandler:
    """The stub handler, except that a POST waits for ``release`` (a slow model)."""

    def __init__(self):
        self.inner = stub_handler()
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, event, context):
        if http_request(event)[0] == "POST":
            self.entered.set()
            self.release.wait(20)
        return self.inner(event, context)


@contextlib.contextmanager
def serving(handler, **options):
    srv = make_server(handler, port=0, **options)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        handler.release.set()
        srv.shutdown()
        srv.server_close()


def in_background(server, method, path, body=None, headers=None):
    """``call`` in a thread; the answer lands in the returned list."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call(server, method, path, body, headers)), daemon=True)
    thread.start()
    return thread, result


def wait_until(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_health_does_not_wait_behind_a_slow_predict():
    handler = BlockingHandler()
    with serving(handler) as srv:
        thread, result = in_background(srv, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        assert handler.entered.wait(10)  # the POST holds the model lock now
        for method in ("GET", "HEAD", "OPTIONS"):
            started = time.monotonic()
            status = call(srv, method, "/health" if method != "OPTIONS" else "/predict")[0]
            assert status in (200, 204) and time.monotonic() - started < 2, (method, status)
        assert result == []  # the POST is still waiting for the model
        handler.release.set()
        thread.join(10)
        assert result[0][0] == 200


def test_requests_with_a_body_beyond_the_limit_get_503_and_bodiless_ones_are_served():
    handler = BlockingHandler()
    with serving(handler, max_in_flight=2) as srv:
        first, first_result = in_background(srv, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        assert handler.entered.wait(10)
        second, second_result = in_background(srv, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        wait_until(lambda: srv.in_flight == 2)  # the second has read its body and waits for the model
        for body, headers in [(PNG, {"Content-Type": "image/png"}),
                              (iter([PNG[:30], PNG[30:]]), {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})]:
            connection = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
            connection.request("POST", "/predict", body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            assert response.status == 503 and response.getheader("Connection") == "close"
            assert int(response.getheader("Retry-After")) >= 1
            assert json.loads(data) == {"error": {"code": "busy", "message": BUSY_MESSAGE}}
        # requests without a body are never refused, whatever is in flight
        assert call(srv, "GET", "/health")[0] == 200
        assert call(srv, "GET", "/health", None, {"Content-Length": "0"})[0] == 200
        assert call(srv, "OPTIONS", "/predict")[0] == 204
        assert call(srv, "GET", "/")[0] == 200
        assert srv.in_flight == 2
        handler.release.set()
        first.join(10)
        second.join(10)
        assert first_result[0][0] == second_result[0][0] == 200
        wait_until(lambda: srv.in_flight == 0)  # given back (after the answer is sent), and a new POST is served
        assert call(srv, "POST", "/predict", PNG, {"Content-Type": "image/png"})[0] == 200


def test_max_in_flight_is_at_least_one():
    with pytest.raises(ValueError, match="max_in_flight"):
        make_server(stub_handler(), port=0, max_in_flight=0)


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def status_lines(answer: bytes) -> list[bytes]:
    return re.findall(rb"(?:^|\r\n)(HTTP/1\.[01] \d{3})", answer)


@pytest.mark.parametrize("headers, body", [
    (b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    (b"Content-Length: 0\r\nContent-Length: 5\r\n", b"hello"),
    (b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"),
    (CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"),
    (CHUNKED + CHUNKED, b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunkedx\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"),  # a vertical tab is not whitespace in HTTP
    (b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),  # a space before the colon
    (b"X-A: 1\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),  # an obsolete line folding
    (b"Content-Length: \x0c5\r\n", b"hello"),
    (CHUNKED, b"5\r\nhelloXY0\r\n\r\n"),  # the chunk is not followed by CRLF
    (CHUNKED, b"5\r\nhello\n0\r\n\r\n"),
    (CHUNKED, b"5\nhello\r\n0\r\n\r\n"),  # a size line ended by a bare LF
    (CHUNKED, b"0\r\n" + b"".join(b"X-T%d: 1\r\n" % i for i in range(17)) + b"\r\n"),  # 17 trailer lines
    (CHUNKED, b"0\r\nX-T: " + b"a" * 8200 + b"\r\n\r\n"),  # over 8192 bytes of trailers
    (CHUNKED, b"0\r\nX-T: 1\n\r\n"),
], ids=lambda value: value[:40].decode("latin-1").replace("\r\n", "|") if isinstance(value, bytes) else None)
def test_ambiguous_framing_is_a_400_that_closes_the_connection(server, headers, body):
    """Two parsers must never read one request two ways: the bytes after a refused
    request are not answered as a second request (today's GET /health behind it)."""
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body + SMUGGLED)
    assert status_lines(answer) == [b"HTTP/1.1 400"], answer[:300]
    head, _, data = answer.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head
    assert json.loads(data)["error"]["code"] == "invalid_request"
    assert server.recorder.events == []  # neither the POST nor the smuggled GET reached the handler
    assert server.in_flight == 0


def test_trailer_limits_are_the_constants():
    from busi_classifier.local.server import MAX_IN_FLIGHT, MAX_TRAILER_BYTES, MAX_TRAILER_LINES

    assert (MAX_TRAILER_LINES, MAX_TRAILER_BYTES, MAX_IN_FLIGHT) == (16, 8192, 4)


@pytest.mark.parametrize("encoding", [b"chunked", b"Chunked", b" CHUNKED\t"])
def test_strict_chunked_bodies_with_trailers_are_served(server, encoding):
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 400) for i in range(16))  # 16 lines, under 8192 bytes
    body = b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n%s\r\n" % (30, PNG[:30], len(PNG) - 30, PNG[30:], trailers)
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                  b"Transfer-Encoding:" + encoding + b"\r\nConnection: close\r\n\r\n" + body)
    assert status_lines(answer) == [b"HTTP/1.1 200"], answer[:300]
    assert base64.b64decode(server.recorder.events[0]["body"]) == PNG


@pytest.mark.parametrize("raw", [
    b"GET /health HTTP/<script>\r\nHost: x\r\n\r\n",
    b"GET /health <SCRIPT>alert(1)</SCRIPT>\r\nHost: x\r\n\r\n",
    b"GET /a <script> HTTP/1.1\r\nHost: x\r\n\r\n",
    b"<script>alert(1)</script> /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"<script> /health\r\n\r\n",
    b"<script>\r\n\r\n",
    b"GET /<script>" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A: <script>" + b"a" * 70000 + b"\r\n\r\n",
], ids=["version", "version-upper", "four-words", "method", "http09-method", "one-word", "long-uri", "long-header"])
def test_the_servers_own_errors_never_repeat_the_request(server, raw):
    answer = raw_exchange(server, raw)
    head, _, data = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 (400|405) ", head), answer[:300]  # a status line, also for a version that did not parse
    assert b"<script>" not in answer.lower()
    assert json.loads(data)["error"]["code"] in ("invalid_request", "method_not_allowed")
    assert server.recorder.events == []


def test_413_does_not_repeat_the_claimed_length(server):
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 987654321012\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"987654321012" not in answer
    size = MAX_BODY_BYTES + 12345
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n" + CHUNKED + b"\r\n%x\r\nabc" % size, then_wait=5)
    assert answer.startswith(b"HTTP/1.1 413") and str(size).encode() not in answer
    assert str(MAX_BODY_BYTES).encode() in answer  # our limit may appear


# --------------------------------------------------------------------------- the command


def test_serve_command_without_a_model_exits_with_a_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "busi_classifier", "serve", "--port", "0",
                             "--model", str(tmp_path / "none.tflite")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert "model not found" in result.stderr and "Traceback" not in result.stderr
    assert "MODEL_PATH" not in result.stderr  # --model was given: no advice about the environment


@pytest.mark.slow
def test_serve_command_answers_curl_like_requests(trained_model, tmp_path):
    """`python -m busi_classifier serve` as a user runs it, with the trained model."""
    server = ServeProcess([sys.executable, "-m", "busi_classifier", "serve", "--port", "0",
                           "--model", str(trained_model / "model.tflite")], cwd=ROOT)
    host, port = server.host, server.port
    try:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", "/predict", body=PNG, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        assert response.status == 200
        assert set(json.loads(response.read())["probabilities"]) == {"normal", "benign", "malignant"}
        connection.close()
        client = subprocess.run([sys.executable, "test.py", str(write(tmp_path / "scan.png", PNG)),
                                 "--endpoint", f"http://{host}:{port}"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert client.returncode == 0, client.stderr
        assert json.loads(client.stdout)["prediction"] in ("normal", "benign", "malignant")
    finally:
        out, err = server.stop()
    # readable by default: one short line per request on stderr, no JSON or EMF lines
    assert re.search(r"^POST /predict 200 (normal|benign|malignant)( \(NOT LIKE THE TRAINING IMAGES\))? \(\d+ ms\)$", err,
                     re.MULTILINE), err
    assert not any(line.startswith("{") for line in out.splitlines() + err.splitlines())
    assert "Traceback" not in err


def write(path, data: bytes):
    path.write_bytes(data)
    return path
