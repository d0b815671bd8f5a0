"""Tests of the command-line client (busi_classifier/local/client.py, entry point test.py).

The CLI is driven as a user types it, against a local HTTP server on 127.0.0.1 that
records what it receives and answers like the Lambda runtime interface emulator or
API Gateway.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from busi_classifier.local import client
from busi_classifier.local.client import main

REPO_ROOT = Path(__file__).resolve().parents[1]
EMULATOR_PATH = "/2015-03-31/functions/function/invocations"

PREDICTION = {
    "prediction": "benign",
    "probabilities": {"normal": 0.1, "benign": 0.8, "malignant": 0.1},
    "model_version": "test-1",
}
ERROR = {"error": {"code": "INVALID_IMAGE", "message": "image could not be decoded"}}


# --------------------------------------------------------------------------- fixtures


class FakeServer:
    """A loopback HTTP server; ``routes`` maps a path to (status, body bytes, type)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        self.release = threading.Event()  # lets "slow" handlers finish at teardown
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _answer(self, body: bytes | None):
                fake.requests.append(
                    {"method": self.command, "path": self.path, "body": body,
                     "headers": {k.lower(): v for k, v in self.headers.items()}}
                )
                if self.path.startswith("/slow"):
                    fake.release.wait(10)
                status, data, ctype = fake.routes.get(
                    self.path, (200, json.dumps(PREDICTION).encode(), "application/json")
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self._answer(self.rfile.read(length))

            def do_GET(self):
                self._answer(None)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def route(self, path: str, status: int, body, ctype: str = "application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, data, ctype)

    def posted(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    image = Image.new("L", (12, 9))
    image.putdata([(i * 7) % 256 for i in range(12 * 9)])
    image.save(path)
    return path


def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def sent_image(request: dict) -> bytes:
    body = json.loads(request["body"])
    assert set(body) == {"image"}
    return base64.b64decode(body["image"], validate=True)


# --------------------------------------------------------------------------- emulator


def test_posts_base64_image_to_emulator_and_prints_answer(server, png, capsys):
    rc = main([str(png), "--endpoint", server.base + EMULATOR_PATH])
    out, err = capsys.readouterr()

    assert rc == 0
    [request] = server.posted()
    assert request["path"] == EMULATOR_PATH
    assert sent_image(request) == png.read_bytes()
    assert json.loads(out) == PREDICTION
    assert out == json.dumps(PREDICTION, indent=2) + "\n"
    assert err == ""


def test_cli_as_subprocess(server, png):
    proc = subprocess.run(
        [sys.executable, "test.py", str(png), "--endpoint", server.base + EMULATOR_PATH,
         "--timeout", "20"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == PREDICTION
    assert sent_image(server.posted()[0]) == png.read_bytes()


def test_emulator_error_answer_exits_1(server, png, capsys):
    server.route(EMULATOR_PATH, 200, ERROR)
    rc = main([str(png), "--endpoint", server.base + EMULATOR_PATH])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out) == ERROR
    assert "INVALID_IMAGE" in err and "Traceback" not in err


def test_unhandled_lambda_exception_exits_1(server, png, capsys):
    crash = {"errorMessage": "boom", "errorType": "RuntimeError", "stackTrace": []}
    server.route(EMULATOR_PATH, 200, crash)
    rc = main([str(png), "--endpoint", server.base + EMULATOR_PATH])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out) == crash
    assert "RuntimeError: boom" in err


# --------------------------------------------------------------------------- API Gateway


def test_api_gateway_base_url_posts_to_predict(server, png, capsys):
    rc = main([str(png), "--endpoint", server.base + "/prod"])
    assert rc == 0
    assert [r["path"] for r in server.posted()] == ["/prod/predict"]
    assert json.loads(capsys.readouterr().out) == PREDICTION


@pytest.mark.parametrize("suffix", ["/prod/", "/prod/predict", "/prod/predict/"])
def test_api_gateway_predict_not_doubled(server, png, suffix):
    assert main([str(png), "--endpoint", server.base + suffix]) == 0
    assert [r["path"] for r in server.posted()] == ["/prod/predict"]


def test_api_gateway_shaped_answer_is_unwrapped(server, png, capsys):
    wrapped = {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(PREDICTION),
    }
    server.route(EMULATOR_PATH, 200, wrapped)
    rc = main([str(png), "--endpoint", server.base + EMULATOR_PATH])
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == PREDICTION


def test_http_400_error_body_is_printed(server, png, capsys):
    server.route("/prod/predict", 400, ERROR)
    rc = main([str(png), "--endpoint", server.base + "/prod"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out) == ERROR
    assert "400" in err and "image could not be decoded" in err
    assert "Traceback" not in err


def test_http_error_with_non_json_body(server, png, capsys):
    server.route("/prod/predict", 502, b"<html>Bad Gateway</html>", "text/html")
    rc = main([str(png), "--endpoint", server.base + "/prod"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "502" in err and "Bad Gateway" in err


def test_non_json_answer(server, png, capsys):
    server.route(EMULATOR_PATH, 200, b"not json at all", "text/plain")
    rc = main([str(png), "--endpoint", server.base + EMULATOR_PATH])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "not JSON" in err and "not json at all" in err


# --------------------------------------------------------------------------- image source


def test_image_url_is_downloaded_and_sent(server, png, capsys):
    server.route("/images/scan.png", 200, png.read_bytes(), "image/png")
    rc = main([server.base + "/images/scan.png", "--endpoint", server.base + EMULATOR_PATH])
    assert rc == 0, capsys.readouterr().err
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("GET", "/images/scan.png"),
        ("POST", EMULATOR_PATH),
    ]
    assert sent_image(server.posted()[0]) == png.read_bytes()


def test_image_url_download_failure(server, capsys):
    server.route("/images/missing.png", 404, b"nope", "text/plain")
    url = server.base + "/images/missing.png"
    rc = main([url, "--endpoint", server.base + EMULATOR_PATH])
    err = capsys.readouterr().err
    assert rc == 1
    assert "could not download" in err and url in err and "404" in err
    assert server.posted() == []


def test_missing_image_file(server, tmp_path, capsys):
    missing = tmp_path / "nope.png"
    rc = main([str(missing), "--endpoint", server.base + EMULATOR_PATH])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "image file not found" in err and str(missing) in err
    assert "Traceback" not in err
    assert server.requests == []


# --------------------------------------------------------------------------- failures


def test_unreachable_endpoint(png, capsys):
    url = f"http://127.0.0.1:{closed_port()}{EMULATOR_PATH}"
    rc = main([str(png), "--endpoint", url, "--timeout", "5"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert url in err
    assert "docker run -p 9000:8080" in err
    assert "Traceback" not in err


def test_unreachable_endpoint_subprocess_has_no_traceback(png):
    url = f"http://127.0.0.1:{closed_port()}/prod"
    proc = subprocess.run(
        [sys.executable, "test.py", str(png), "--endpoint", url, "--timeout", "5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert url + "/predict" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_timeout(server, png, capsys):
    rc = main([str(png), "--endpoint", server.base + "/slow", "--timeout", "0.3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "timed out" in err and "/slow/predict" in err
    assert "Traceback" not in err


def test_resolve_url():
    base = "https://abc.execute-api.eu-west-1.amazonaws.com"
    assert client.resolve_url(client.DEFAULT_ENDPOINT) == client.DEFAULT_ENDPOINT
    assert client.resolve_url(base) == base + "/predict"
    assert client.resolve_url(base + "/") == base + "/predict"
    assert client.resolve_url(base + "/prod") == base + "/prod/predict"
    assert client.resolve_url(base + "/prod/predict") == base + "/prod/predict"
    with pytest.raises(client.ClientError):
        client.resolve_url("localhost:9000")


# --------------------------------------------------------------------------- --function


class FakeLambda:
    def __init__(self, answer: bytes, extra: dict | None = None, error=None):
        self.answer, self.extra, self.error = answer, extra or {}, error
        self.calls: list[dict] = []

    def invoke(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return {"StatusCode": 200, "Payload": io.BytesIO(self.answer), **self.extra}


def install_fake_boto3(monkeypatch, fake_lambda: FakeLambda) -> list:
    clients: list = []

    def make_client(service, **kwargs):
        clients.append((service, kwargs))
        return fake_lambda

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=make_client))
    return clients


def test_function_invokes_lambda_with_boto3(monkeypatch, png, capsys):
    fake = FakeLambda(json.dumps(PREDICTION).encode())
    clients = install_fake_boto3(monkeypatch, fake)

    rc = main([str(png), "--function", "busi-classifier", "--region", "eu-west-1"])
    out, err = capsys.readouterr()

    assert rc == 0, err
    assert [(service, kw["region_name"]) for service, kw in clients] == [
        ("lambda", "eu-west-1")
    ]
    [call] = fake.calls
    assert call["FunctionName"] == "busi-classifier"
    payload = json.loads(call["Payload"])
    assert base64.b64decode(payload["image"]) == png.read_bytes()
    assert json.loads(out) == PREDICTION


def test_function_api_gateway_shaped_payload_is_unwrapped(monkeypatch, png, capsys):
    wrapped = {"statusCode": 200, "headers": {}, "body": json.dumps(PREDICTION)}
    install_fake_boto3(monkeypatch, FakeLambda(json.dumps(wrapped).encode()))
    assert main([str(png), "--function", "f"]) == 0
    assert json.loads(capsys.readouterr().out) == PREDICTION


def test_function_unhandled_error(monkeypatch, png, capsys):
    crash = {"errorMessage": "out of memory", "errorType": "Runtime.ExitError"}
    install_fake_boto3(
        monkeypatch, FakeLambda(json.dumps(crash).encode(), {"FunctionError": "Unhandled"})
    )
    rc = main([str(png), "--function", "f"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert json.loads(out) == crash
    assert "Unhandled" in err and "out of memory" in err


def test_function_boto_error_is_one_line(monkeypatch, png, capsys):
    class ResourceNotFoundException(Exception):
        pass

    error = ResourceNotFoundException(
        "An error occurred (ResourceNotFoundException) when calling the Invoke "
        "operation: Function not found: arn:aws:lambda:eu-west-1:123:function:nope"
    )
    install_fake_boto3(monkeypatch, FakeLambda(b"", error=error))
    rc = main([str(png), "--function", "nope"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "Function not found" in err and "nope" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_function_without_boto3(monkeypatch, png, capsys):
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    rc = main([str(png), "--function", "f"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "pip install boto3" in err


# --------------------------------------------------------------------------- --stack (moto)


def stack_template(outputs: dict[str, str]) -> str:
    """A plain CloudFormation template (moto does not run the SAM transform) whose
    outputs are named like template.yaml's."""
    return json.dumps({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    })


@pytest.fixture
def aws(monkeypatch):
    """moto's in-memory AWS: no network, no credentials needed."""
    moto = pytest.importorskip("moto")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv(client.API_KEY_ENV, raising=False)
    with moto.mock_aws():
        import boto3

        yield boto3.client("cloudformation", region_name="eu-west-1")


def test_stack_posts_to_the_api_url_output(aws, server, png, capsys):
    outputs = {"ApiUrl": server.base + "/prod", "FunctionName": "busi-classifier-Fn",
               "FunctionArn": "arn:aws:lambda:eu-west-1:123456789012:function:busi-classifier-Fn"}
    aws.create_stack(StackName="busi-classifier", TemplateBody=stack_template(outputs))

    rc = main([str(png), "--stack", "busi-classifier", "--region", "eu-west-1", "--api-key", "s3cret"])
    out, err = capsys.readouterr()

    assert rc == 0, err
    [request] = server.posted()
    assert request["path"] == "/prod/predict"
    assert request["headers"]["x-api-key"] == "s3cret"
    assert sent_image(request) == png.read_bytes()
    assert json.loads(out) == PREDICTION


def test_api_key_from_the_environment(monkeypatch, server, png):
    monkeypatch.setenv(client.API_KEY_ENV, "from-env")
    assert main([str(png), "--endpoint", server.base + "/prod"]) == 0
    assert server.posted()[0]["headers"]["x-api-key"] == "from-env"


def test_no_api_key_header_by_default(monkeypatch, server, png):
    monkeypatch.delenv(client.API_KEY_ENV, raising=False)
    assert main([str(png), "--endpoint", server.base + "/prod"]) == 0
    assert "x-api-key" not in server.posted()[0]["headers"]


def test_stack_without_api_url_output(aws, server, png, capsys):
    aws.create_stack(StackName="other", TemplateBody=stack_template({"BucketName": "b"}))
    rc = main([str(png), "--stack", "other", "--region", "eu-west-1"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "no ApiUrl output" in err and "BucketName" in err and "template.yaml" in err
    assert server.requests == []


def test_missing_stack_is_one_line(aws, png, capsys):
    rc = main([str(png), "--stack", "nope", "--region", "eu-west-1"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "cannot read stack nope" in err and "does not exist" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_stack_and_endpoint_are_exclusive(png, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(png), "--stack", "s", "--endpoint", "http://127.0.0.1:1/prod"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --------------------------------------------------------------------------- --explain


def _overlay_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def explained(png_bytes: bytes) -> dict:
    return {**PREDICTION, "explanation": {"method": "class activation map", "class": "benign",
                                          "grid": [[0.0, 1.0], [0.5, 0.2]], "grid_shape": [2, 2],
                                          "overlay_png": base64.b64encode(png_bytes).decode("ascii"),
                                          "overlay_media_type": "image/png"}}


def test_explain_asks_for_the_map_and_writes_the_overlay(server, png, tmp_path, capsys):
    overlay = _overlay_png()
    server.route("/prod/predict", 200, explained(overlay))
    out_file = tmp_path / "maps" / "map.png"
    out_file.parent.mkdir()
    rc = main([str(png), "--endpoint", server.base + "/prod", "--explain", "--overlay-out", str(out_file)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    body = json.loads(server.posted()[0]["body"])
    assert body["explain"] is True and base64.b64decode(body["image"]) == png.read_bytes()
    assert out_file.read_bytes() == overlay
    printed = json.loads(out)
    assert printed["prediction"] == "benign" and printed["explanation"]["grid_shape"] == [2, 2]
    assert str(out_file) in printed["explanation"]["overlay_png"]  # the file, not 100 KB of base64
    assert f"overlay written to {out_file}" in err


def test_explain_writes_beside_the_image_by_default(server, png, capsys):
    server.route(EMULATOR_PATH, 200, explained(_overlay_png()))
    assert main([str(png), "--endpoint", server.base + EMULATOR_PATH, "--explain"]) == 0
    assert (png.parent / "scan.overlay.png").read_bytes() == _overlay_png()
    assert png.read_bytes() != _overlay_png()  # the image itself untouched


def test_overlay_out_alone_implies_explain(server, png, tmp_path, capsys):
    server.route("/prod/predict", 200, explained(_overlay_png()))
    out_file = tmp_path / "o.png"
    assert main([str(png), "--endpoint", server.base + "/prod", "--overlay-out", str(out_file)]) == 0
    assert json.loads(server.posted()[0]["body"])["explain"] is True and out_file.is_file()


def test_without_explain_nothing_is_asked_or_written(server, png, capsys):
    assert main([str(png), "--endpoint", server.base + "/prod"]) == 0
    assert "explain" not in json.loads(server.posted()[0]["body"])
    assert not (png.parent / "scan.overlay.png").exists()


def test_explain_answer_without_an_overlay_is_shown_with_one_error_line(server, png, capsys):
    server.route("/prod/predict", 200, PREDICTION)  # a server that ignores "explain"
    rc = main([str(png), "--endpoint", server.base + "/prod", "--explain"])
    out, err = capsys.readouterr()
    assert rc == 1 and json.loads(out) == PREDICTION
    assert err.startswith("error: ") and "overlay_png" in err and len(err.strip().splitlines()) == 1
    assert not (png.parent / "scan.overlay.png").exists()


def test_explain_unavailable_error_answer_writes_nothing(server, png, capsys):
    unavailable = {"error": {"code": "explain_unavailable", "message": "model exported without class maps"}}
    server.route("/prod/predict", 501, unavailable)
    assert main([str(png), "--endpoint", server.base + "/prod", "--explain"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == unavailable and "explain_unavailable" in err
    assert not (png.parent / "scan.overlay.png").exists()


def test_overlay_out_may_not_be_the_image(server, png, capsys):
    assert main([str(png), "--endpoint", server.base + "/prod", "--overlay-out", str(png)]) == 2
    assert "is the image itself" in capsys.readouterr().err and server.requests == []


def test_default_overlay_path_of_a_url_is_in_the_current_folder():
    assert client.default_overlay_path("https://example.org/a/scan%201.jpg") == Path("scan 1.overlay.png")
    assert client.default_overlay_path("https://example.org/") == Path("image.overlay.png")


# --------------------------------------------------------------------------- help


def test_every_client_flag_has_help_that_shows_its_default():
    parser = client.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        assert "default" in formatter._expand_help(action), f"{action.option_strings[0]} shows no default"


def test_test_py_usage_names_every_flag():
    import ast

    doc = ast.get_docstring(ast.parse((REPO_ROOT / "test.py").read_text()))
    for action in client.build_parser()._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert max(action.option_strings, key=len) in doc, action.option_strings


# --------------------------------------------------------------------------- --segment


def lesion(found: bool = True, width: int = 12, height: int = 9) -> dict:
    """A lesion object of the API's shape for a width x height image."""
    if not found:
        return {"found": False, "area_fraction": 0.0, "regions": 0, "bbox": None, "outline": [],
                "peak_probability": 0.31, "threshold": 0.45, "mask_png": "", "mask_size": [width, height],
                "mask_media_type": "image/png", "method": "lesion map", "covers": "the uploaded image"}
    return {"found": True, "area_fraction": 0.0423, "regions": 2, "bbox": [2, 1, 9, 7],
            "outline": [[2.0, 1.0], [9.0, 1.0], [9.0, 7.0], [2.0, 7.0]], "peak_probability": 0.93,
            "threshold": 0.45, "mask_png": "", "mask_size": [width, height], "mask_media_type": "image/png",
            "method": "lesion map", "covers": "the uploaded image"}


def test_segment_asks_for_the_lesion_and_prints_found_area_and_bbox(server, png, capsys):
    answer = {**PREDICTION, "lesion": lesion()}
    server.route("/prod/predict", 200, answer)
    rc = main([str(png), "--endpoint", server.base + "/prod", "--segment"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    body = json.loads(server.posted()[0]["body"])
    assert body["segment"] is True and "explain" not in body and base64.b64decode(body["image"]) == png.read_bytes()
    assert json.loads(out) == answer  # stdout: the answer's JSON, as always
    assert err.strip() == "lesion: found, 4.2 % of the image, 2 regions, largest in x 2 to 9, y 1 to 7 (bbox [2, 1, 9, 7])"


def test_segment_says_when_no_lesion_was_found(server, png, capsys):
    server.route("/prod/predict", 200, {**PREDICTION, "lesion": lesion(found=False)})
    assert main([str(png), "--endpoint", server.base + "/prod", "--segment"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "lesion: no lesion found (peak probability 0.31, below the threshold 0.45)"


def test_without_segment_nothing_is_asked(server, png, capsys):
    assert main([str(png), "--endpoint", server.base + "/prod"]) == 0
    assert "segment" not in json.loads(server.posted()[0]["body"])


def test_segment_out_draws_the_outline_into_the_image(server, png, tmp_path, capsys):
    server.route("/prod/predict", 200, {**PREDICTION, "lesion": lesion()})
    out_file = tmp_path / "outline.png"
    rc = main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)])  # implies --segment
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(server.posted()[0]["body"])["segment"] is True
    drawn = Image.open(out_file)
    assert drawn.format == "PNG" and drawn.size == (12, 9) and drawn.mode == "RGB"
    pixels = drawn.load()
    assert pixels[5, 1] == client.OUTLINE_COLOUR and pixels[2, 4] == client.OUTLINE_COLOUR  # on the polygon
    assert pixels[0, 8] != client.OUTLINE_COLOUR and pixels[11, 0] != client.OUTLINE_COLOUR  # off it
    assert f"the image with the outline written to {out_file}" in err


def test_segment_out_without_a_lesion_writes_the_image_and_says_so(server, png, tmp_path, capsys):
    server.route("/prod/predict", 200, {**PREDICTION, "lesion": lesion(found=False)})
    out_file = tmp_path / "outline.png"
    assert main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)]) == 0
    assert "without an outline (no lesion found)" in capsys.readouterr().err
    drawn = Image.open(out_file).convert("L")
    assert list(drawn.getdata()) == list(Image.open(png).getdata())  # the image itself, untouched


def test_segment_out_is_upright_for_an_exif_rotated_image(server, tmp_path, capsys):
    """The lesion's coordinates are of the upright image: so is the PNG drawn with them."""
    stored = Image.new("L", (9, 12), 90)  # stored 9 x 12, orientation 6: upright 12 x 9
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif.tobytes())
    server.route("/prod/predict", 200, {**PREDICTION, "lesion": lesion(width=12, height=9)})
    out_file = tmp_path / "outline.png"
    assert main([str(path), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)]) == 0
    assert Image.open(out_file).size == (12, 9)


def test_an_answer_of_another_image_shape_is_one_error_line(server, png, tmp_path, capsys):
    server.route("/prod/predict", 200, {**PREDICTION, "lesion": lesion(width=9, height=12)})
    out_file = tmp_path / "outline.png"
    assert main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "another shape" in err and len(err.strip().splitlines()) == 1
    assert not out_file.exists()


def test_segment_answer_without_a_lesion_is_shown_with_one_error_line(server, png, tmp_path, capsys):
    server.route("/prod/predict", 200, PREDICTION)  # a server that ignores "segment"
    out_file = tmp_path / "outline.png"
    rc = main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)])
    out, err = capsys.readouterr()
    assert rc == 1 and json.loads(out) == PREDICTION
    assert err.startswith("error: ") and "no lesion" in err and len(err.strip().splitlines()) == 1
    assert not out_file.exists()


def test_segment_unavailable_error_answer_writes_nothing(server, png, tmp_path, capsys):
    unavailable = {"error": {"code": "segment_unavailable", "message": "this model was exported without a lesion map"}}
    server.route("/prod/predict", 501, unavailable)
    out_file = tmp_path / "outline.png"
    assert main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(out_file)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == unavailable and "segment_unavailable" in err
    assert not out_file.exists()


def test_segment_out_may_not_be_the_image_nor_the_overlay(server, png, tmp_path, capsys):
    assert main([str(png), "--endpoint", server.base + "/prod", "--segment-out", str(png)]) == 2
    assert "--segment-out" in capsys.readouterr().err and server.requests == []
    same = tmp_path / "same.png"
    assert main([str(png), "--endpoint", server.base + "/prod", "--overlay-out", str(same),
                 "--segment-out", str(same)]) == 2
    assert server.requests == []


def test_segment_against_the_local_server_outlines_the_bright_blob(tmp_path, capsys):
    """The client against `serve`'s server around the stub (the real decoding and
    serving/lesion.py): the outline lands on the bright rectangle of the image."""
    import numpy as np
    from api_stub import stub_handler

    from busi_classifier.local.server import make_server

    pixels = np.full((150, 231), 30, dtype=np.uint8)
    pixels[30:90, 120:200] = 250
    image = tmp_path / "blob.png"
    Image.fromarray(pixels, mode="L").save(image)
    srv = make_server(stub_handler(environ={"LOG_LEVEL": "WARNING", "EMF_METRICS": "off"}), port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        out_file = tmp_path / "outline.png"
        rc = main([str(image), "--endpoint", srv.url, "--segment", "--segment-out", str(out_file), "--explain",
                   "--overlay-out", str(tmp_path / "overlay.png")])
        out, err = capsys.readouterr()
        assert rc == 0, err
    finally:
        srv.shutdown()
        srv.server_close()
    answer = json.loads(out)
    assert answer["lesion"]["found"] and "lesion: found, " in err
    drawn = np.asarray(Image.open(out_file))
    red = np.all(drawn == client.OUTLINE_COLOUR, axis=2)
    ys, xs = np.nonzero(red)
    assert red.any() and drawn.shape[:2] == (150, 231)
    assert abs(xs.min() - 120) <= 16 and abs(xs.max() - 199) <= 16 and abs(ys.min() - 30) <= 16 \
        and abs(ys.max() - 89) <= 16, (xs.min(), xs.max(), ys.min(), ys.max())
