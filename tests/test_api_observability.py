"""Logs and metrics: one JSON request line with the request id (never the image), EMF
lines CloudWatch can read, nothing in the serving path that slows a cold start."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest
from api_stub import Context, stub_handler
from conftest import ROOT
from PIL import Image

from busi_classifier.serving import observability
from busi_classifier.serving.events import b64, direct_event, http_v2_event, rest_v1_event


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 40), 130).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png()


def lines(capsys) -> list[dict]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]  # every line is JSON


def request_lines(records):
    return [r for r in records if r.get("message") == "request"]


def emf_lines(records):
    return [r for r in records if "_aws" in r]


def test_one_request_line_with_the_request_ids(capsys):
    stub_handler()(rest_v1_event("POST", "/predict", raw=PNG), Context("lambda-req-42"))
    [line] = request_lines(lines(capsys))
    assert line["request_id"] == "lambda-req-42"
    assert line["api_request_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert line["status"] == 200 and line["route"] == "/predict" and line["event"] == "rest_v1"
    assert line["prediction"] in ("normal", "benign", "malignant") and line["image_bytes"] == [len(PNG)]
    assert line["latency_ms"] >= 0 and line["level"] == "INFO"


@pytest.mark.parametrize("event", [
    direct_event(PNG),
    rest_v1_event("POST", "/predict", raw=PNG),
    http_v2_event("POST", "/predict", {"image": b64(PNG)}),
    {"images": [b64(PNG), b64(PNG)]},
    rest_v1_event("POST", "/predict", raw=PNG[:50]),  # truncated: an error line
    {"image": b64(PNG) + "%"},
], ids=["direct", "rest-raw", "http-json", "batch", "truncated", "bad-base64"])
def test_logs_never_hold_the_image(capsys, event):
    stub_handler()(event, Context())
    out = capsys.readouterr().out
    encoded = b64(PNG)
    for piece in (encoded[:40], encoded[len(encoded) // 2:len(encoded) // 2 + 40], base64.b64encode(PNG[:50]).decode()[:40]):
        assert piece not in out
    assert "\\x89PNG" not in out and "IHDR" not in out


def test_errors_are_logged_with_their_code(capsys):
    stub_handler()(http_v2_event("GET", "/predict"), Context("r1"))
    [line] = request_lines(lines(capsys))
    assert line["status"] == 405 and line["error"] == "method_not_allowed" and line["request_id"] == "r1"


def validate_emf(record: dict) -> None:
    """The rules of CloudWatch's embedded metric format."""
    meta = record["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    for directive in meta["CloudWatchMetrics"]:
        assert directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(record[name], str) and record[name], name
        for metric in directive["Metrics"]:
            assert isinstance(record[metric["Name"]], (int, float)), metric
            assert metric["Unit"] in ("Milliseconds", "Count")


def test_emf_latency_and_predicted_class(capsys, monkeypatch):
    monkeypatch.setenv("METRICS_NAMESPACE", "TestNamespace")
    monkeypatch.setenv("SERVICE_NAME", "busi-test")
    stub_handler()(rest_v1_event("POST", "/predict", raw=PNG), Context("r2"))
    records = lines(capsys)
    [emf] = emf_lines(records)
    validate_emf(emf)
    [prediction] = request_lines(records)
    names = {m["Name"] for d in emf["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert names == {"Latency", "Predictions"}
    assert emf["Service"] == "busi-test" and emf["Route"] == "/predict" and emf["request_id"] == "r2"
    assert emf["PredictedClass"] == prediction["prediction"] and emf["Predictions"] == 1
    assert {d["Namespace"] for d in emf["_aws"]["CloudWatchMetrics"]} == {"TestNamespace"}


def test_emf_errors_and_mixed_batches(capsys):
    stub_handler()({"image": "???"}, Context())
    [emf] = emf_lines(lines(capsys))
    validate_emf(emf)
    assert emf["ErrorCode"] == "invalid_base64" and emf["Errors"] == 1 and "PredictedClass" not in emf
    records = observability.request_metrics("/predict", 200, 12.5, ["benign", "benign", "malignant"], None)
    for record in records:
        validate_emf(record)
    assert sorted((r.get("PredictedClass"), r.get("Predictions")) for r in records[1:]) == [("benign", 2), ("malignant", 1)]


def test_routes_are_a_fixed_vocabulary(capsys):
    """An attacker-chosen path must not become a metric dimension."""
    handler = stub_handler()
    for path in ("/a", "/b/c", "/" + "x" * 500):
        handler(http_v2_event("GET", path), Context())
    routes = {r["Route"] for r in emf_lines(lines(capsys))}
    assert routes == {"other"}


def test_metrics_and_info_logs_can_be_turned_off(capsys, monkeypatch):
    monkeypatch.setenv("EMF_METRICS", "off")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    stub_handler()(direct_event(PNG), Context())
    assert capsys.readouterr().out == ""


COLD_START_PROBE = """
import json, sys
import lambda_function
print(json.dumps({"modules": sorted(sys.modules)}))
"""


def test_the_serving_path_imports_nothing_heavy_or_lazy(tmp_path):
    """`import lambda_function` (model load failing fast on a missing file) pulls in no
    TensorFlow and none of the url input's ssl/http machinery; observability costs
    nothing beyond the standard library modules every Python has loaded."""
    env = {**os.environ, "MODEL_PATH": str(tmp_path / "none.tflite"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", COLD_START_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    modules = set(probe["modules"])
    assert not {"tensorflow", "keras", "sklearn", "matplotlib", "boto3", "botocore"} & modules
    assert "busi_classifier.serving.remote_image" not in modules and "ssl" not in modules and "http.client" not in modules
    import ast

    tree = ast.parse((ROOT / "busi_classifier" / "serving" / "observability.py").read_text())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "sys", "time", "dataclasses"}  # loaded by the settings anyway
