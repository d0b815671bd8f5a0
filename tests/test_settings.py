"""ServingSettings: the one reader of the environment. Every value validated once, at init;
a bad value never crashes init, it makes every request answer 503 and is logged once;
nothing reads the environment per request; a path given is the path used. Stub
predictor, no TensorFlow."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from api_stub import Context, StubPredictor, body_of
from conftest import ROOT

from busi_classifier.serving.api import MODEL_UNAVAILABLE, make_handler
from busi_classifier.serving.events import http_v2_event
from busi_classifier.serving.settings import ServingSettings


def test_defaults():
    settings = ServingSettings.from_env({}, default_model="/opt/model")
    assert settings.errors == ()
    assert settings.model_path == Path("/opt/model") and settings.model_variant is None
    assert settings.num_threads is None and settings.log_level == "INFO" and settings.emf_metrics
    assert settings.service_name == "busi-classifier" and settings.metrics_namespace == "BusiClassifier"
    assert settings.url_allowlist == () and not settings.url_input_enabled
    assert settings.url_timeout_s == 5.0 and settings.url_max_bytes == 4_400_000
    assert settings.cors_allow_origin == "*"
    assert settings.ood_action == "flag"  # a flagged image is answered, with input_check.in_distribution false


def test_every_variable_is_read():
    settings = ServingSettings.from_env({
        "MODEL_PATH": "/m", "MODEL_VARIANT": "int8_dynamic", "NUM_THREADS": "3", "LOG_LEVEL": "warning",
        "AWS_LAMBDA_FUNCTION_NAME": "fn", "EMF_METRICS": "off", "METRICS_NAMESPACE": "Ns/1",
        "IMAGE_URL_ALLOWLIST": " Images.Example.org, *.cdn.net ,", "IMAGE_URL_TIMEOUT_S": "2.5",
        "IMAGE_URL_MAX_BYTES": "1000", "CORS_ALLOW_ORIGIN": "", "OOD_ACTION": " Refuse ",
    })
    assert settings.errors == ()
    assert (settings.model_path, settings.model_variant, settings.num_threads) == (Path("/m"), "int8_dynamic", 3)
    assert (settings.log_level, settings.service_name, settings.emf_metrics) == ("WARNING", "fn", False)
    assert settings.metrics_namespace == "Ns/1"
    assert settings.url_allowlist == ("images.example.org", "*.cdn.net")
    assert (settings.url_timeout_s, settings.url_max_bytes, settings.cors_allow_origin) == (2.5, 1000, "")
    assert settings.ood_action == "refuse"
    assert ServingSettings.from_env({"OOD_ACTION": "FLAG"}).ood_action == "flag"
    assert ServingSettings.from_env({"SERVICE_NAME": "svc", "AWS_LAMBDA_FUNCTION_NAME": "fn"}).service_name == "svc"


BAD = [
    ("NUM_THREADS", "two"), ("NUM_THREADS", "0"), ("NUM_THREADS", "-1"), ("NUM_THREADS", "\u00b2"),
    ("LOG_LEVEL", "loud"), ("EMF_METRICS", "maybe"), ("METRICS_NAMESPACE", "a\nb"),
    ("IMAGE_URL_ALLOWLIST", "https://x.org/"), ("IMAGE_URL_ALLOWLIST", "exa mple.org"),
    ("IMAGE_URL_TIMEOUT_S", "soon"), ("IMAGE_URL_TIMEOUT_S", "nan"), ("IMAGE_URL_TIMEOUT_S", "0"),
    ("IMAGE_URL_TIMEOUT_S", "600"), ("IMAGE_URL_MAX_BYTES", "1e6"), ("IMAGE_URL_MAX_BYTES", "99999999"),
    ("CORS_ALLOW_ORIGIN", "https://a.org\r\nSet-Cookie: x=1"), ("MODEL_VARIANT", "../etc/passwd"),
    ("OOD_ACTION", "block"), ("OOD_ACTION", "warn"), ("OOD_ACTION", "refuse,flag"),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_value_is_a_settings_error_not_a_crash(name, value, capsys):
    settings = ServingSettings.from_env({name: value})
    assert len(settings.errors) == 1 and settings.errors[0].startswith(name)
    loaded = []
    handler = make_handler(settings, lambda *a, **k: loaded.append(a) or StubPredictor())
    assert loaded == []  # the model is not even loaded
    init = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["message"] for r in init] == ["function not initialised"]
    assert name in init[0]["reason"]
    for event in (http_v2_event("GET", "/health"), http_v2_event("POST", "/predict", raw=b"x"), {"image": "eA=="}):
        answer = body_of(handler(event, Context()))
        assert answer["error"] == {"code": "model_unavailable", "message": MODEL_UNAVAILABLE}


def test_init_logs_one_line_with_the_load_time(capsys):
    handler = make_handler(ServingSettings.from_env({}), StubPredictor)
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["level"] == "INFO" and line["message"] == "function initialised"
    assert line["model_load_ms"] >= 0 and line["variant"] == "stub" and line["model_version"] == "stub-1"
    assert handler(http_v2_event("GET", "/health"), Context())["statusCode"] == 200


def test_the_environment_is_read_once_not_per_request(monkeypatch, capsys):
    monkeypatch.delenv("CORS_ALLOW_ORIGIN", raising=False)
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    handler = make_handler(ServingSettings.from_env(), StubPredictor)
    monkeypatch.setenv("CORS_ALLOW_ORIGIN", "https://changed.example")
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    monkeypatch.setenv("NUM_THREADS", "two")
    capsys.readouterr()
    answer = handler(http_v2_event("GET", "/health"), Context())
    assert answer["statusCode"] == 200 and answer["headers"]["Access-Control-Allow-Origin"] == "*"
    assert any(json.loads(line)["message"] == "request" for line in capsys.readouterr().out.splitlines())


def test_only_settings_reads_the_environment():
    """No serving module but settings.py touches os.environ / getenv."""
    readers = []
    for path in sorted((ROOT / "busi_classifier" / "serving").glob("*.py")) + [ROOT / "lambda_function.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                readers.append(path.name)
    assert set(readers) <= {"settings.py"}, readers


def test_lambda_function_is_settings_and_a_handler():
    source = (ROOT / "lambda_function.py").read_text()
    assert "ServingSettings.from_env(" in source and "make_handler(" in source and "os.environ" not in source
    code = [line for line in source.splitlines() if line.strip() and not line.startswith(("#", '"', "from", "import"))]
    assert len([line for line in code if not line.startswith(" ")]) <= 4, code


# --- a path given is the path used --------------------------------------------------

def card_folder(tmp_path: Path) -> Path:
    from test_card import card_dict

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(card_dict()))
    for name in ("model.tflite", "model_int8_dynamic.tflite", "model_int8_full.tflite"):
        (folder / name).write_bytes(b"not really a model")
    return folder


@pytest.fixture
def no_litert(monkeypatch):
    from busi_classifier.serving.predictor import Predictor

    monkeypatch.setattr(Predictor, "_load", lambda self: None)
    return Predictor


def test_an_explicit_tflite_file_is_served_as_is(tmp_path, monkeypatch, no_litert):
    folder = card_folder(tmp_path)
    monkeypatch.setenv("MODEL_VARIANT", "int8_dynamic")  # read by settings only, never by the predictor
    predictor = no_litert(folder / "model_int8_full.tflite")
    assert predictor.model_path == folder / "model_int8_full.tflite" and predictor.variant == "int8_full"
    assert no_litert(folder).variant == "float32"  # the card's default
    assert no_litert(folder, variant="int8_dynamic").model_path.name == "model_int8_dynamic.tflite"


def test_a_variant_with_a_file_is_refused_and_settings_drop_it(tmp_path, no_litert):
    from busi_classifier.serving.predictor import ModelLoadError

    folder = card_folder(tmp_path)
    with pytest.raises(ModelLoadError, match="give the model folder"):
        no_litert(folder / "model_int8_full.tflite", variant="int8_dynamic")
    settings = ServingSettings.from_env({"MODEL_VARIANT": "int8_dynamic"})
    assert settings.with_model(folder / "model_int8_full.tflite").model_variant is None
    assert settings.with_model(folder).model_variant == "int8_dynamic"
    handler = make_handler(ServingSettings.from_env({"MODEL_PATH": str(folder), "MODEL_VARIANT": "int8_full"}),
                           no_litert)
    assert handler.predictor.model_path.name == "model_int8_full.tflite"
