"""How good the served model is, said where its answers are seen: model_summary of the
card (busi_classifier/serving/model_summary.py), GET /health's "model" and "limits", and
`predict`'s output. The page's side is in tests/test_page.py."""

from __future__ import annotations

import ast
import copy
import json
import sys

import pytest
import yaml
from api_stub import Context, StubPredictor, body_of, leaks, stub_handler
from conftest import ROOT

from busi_classifier.cli import main
from busi_classifier.serving.api import MAX_IMAGE_BYTES
from busi_classifier.serving.card import ModelCard
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.events import http_v2_event
from busi_classifier.serving.model_summary import DEMO_NOTICE, REPORT, model_summary, summary_line

DEMO_TEXT = ("Test accuracy 0.72 (95 % CI 0.60-0.84) on 43 images, macro-F1 0.70 (95 % CI 0.57-0.82); "
             "random initialisation")


NO_CHECK = {"available": False, "action": "flag", "method": None, "threshold": None, "flag_rate": None}


def card_data(*, root="/home/me/busi/data/synthetic", weights="none", test=True, lesion=True,
              input_check=False) -> dict:
    """A complete card as export writes it (small; test_card's card_dict with a 96 px demo
    run's fields), trained on ``root`` from ``weights``; ``lesion``: multitask (a 24x24
    lesion map), else classify-only; ``input_check``: with the input check's field."""
    from test_card import card_dict, input_check_dict, lesion_dict

    def variant(file):
        return {"file": file, "bytes": 10, "sha256": "0" * 64, "latency_ms": 1.5, "evidence": None}

    served_test = {"n": 43, "accuracy": 0.7209, "macro_f1": 0.7031, "macro_auc": 0.85, "bootstrap_unit":
                   "near-duplicate group", "ci95": {"accuracy": [0.6047, 0.8372], "macro_f1": [0.5714, 0.8249],
                                                    "macro_auc": [0.7, 0.9]}}
    data = card_dict()
    data.update({
        "model_version": "0.1.0+abc123",
        "input": {**data["input"], "shape": [1, 96, 96, 3], "size": 96},
        "explain": {**data["explain"], "shape": [1, 3, 3, 3]},
        "lesion": lesion_dict(24) if lesion else None,
        "input_check": input_check_dict() if input_check else None,
        "variants": {"float32": variant("model.tflite"), "int8_dynamic": variant("model_int8_dynamic.tflite")},
        "default_variant": "int8_dynamic",
        "training": {"weights": weights, "data_dir": root, "image_size": 96, "seed": 0},
        "dataset": {"root": root, "fingerprint_sha256": "f" * 64, "images": 300, "split": "grouped"},
        "calibration": {"method": "none", "temperature": 1.0},
        "metrics": {"served": {"variant": "int8_dynamic", "file": "model_int8_dynamic.tflite", "test": served_test},
                    "keras": {"file": "model.keras", "test": served_test}} if test else {},
    })
    return data


def demo_card(**kwargs) -> ModelCard:
    return ModelCard.from_dict(card_data(**kwargs))


class CardStub(StubPredictor):
    """The stub predictor with a model card, as the real Predictor has."""

    def __init__(self, card: ModelCard | None = None):
        super().__init__()
        self.card = card if card is not None else demo_card()


# --------------------------------------------------------------------------- model_summary


def test_a_demo_models_summary_says_its_figures_and_that_it_is_a_demo():
    summary = model_summary(demo_card())
    assert summary == {
        "model_version": "0.1.0+abc123", "variant": "int8_dynamic",
        "test": {"split": "test", "images": 43, "accuracy": 0.7209, "accuracy_ci95": [0.6047, 0.8372],
                 "macro_f1": 0.7031, "macro_f1_ci95": [0.5714, 0.8249], "bootstrap_unit": "near-duplicate group"},
        "weights": "none", "initialisation": "random initialisation",
        "synthetic": True, "synthetic_basis": 'the dataset folder (dataset.root) has "synthetic" in its name',
        "segment": True, "input_check": NO_CHECK, "notice": DEMO_NOTICE, "text": DEMO_TEXT, "report": REPORT,
    }
    assert DEMO_NOTICE == "demo model, synthetic data: not a classifier of real scans"
    assert json.loads(json.dumps(summary)) == summary
    assert not leaks(json.dumps(summary))  # no path of the training machine
    assert summary_line(summary) == (f"model 0.1.0+abc123: {DEMO_TEXT}. DEMO MODEL, SYNTHETIC DATA: NOT A "
                                     f"CLASSIFIER OF REAL SCANS. Full report: docs/evaluation.md")


@pytest.mark.parametrize("weights, initialisation, shown", [
    ("imagenet", "started from ImageNet weights", "imagenet"),
    ("/home/me/weights/resnet50_notop.h5", "started from the weights in resnet50_notop.h5", "resnet50_notop.h5"),
    ("none", "random initialisation", "none"),
])
def test_a_real_data_model_has_no_demo_notice(weights, initialisation, shown):
    summary = model_summary(demo_card(root="/home/me/data/Dataset_BUSI_with_GT", weights=weights))
    assert summary["synthetic"] is False and summary["notice"] is None
    assert summary["weights"] == shown and summary["initialisation"] == initialisation
    assert summary["text"].endswith(f"; {initialisation}") and "/home" not in json.dumps(summary)
    assert "does not record where the images came from" in summary["synthetic_basis"]


def test_the_card_can_say_synthetic_itself_and_a_card_without_test_figures_says_so():
    data = card_data(root="/data/busi")
    data["dataset"]["synthetic"] = True  # a card that records it wins over the folder name
    summary = model_summary(ModelCard.from_dict(data))
    assert summary["synthetic"] is True and summary["synthetic_basis"] == "model.json dataset.synthetic"
    data = card_data()
    data["dataset"]["synthetic"] = False
    assert model_summary(ModelCard.from_dict(data))["notice"] is None
    bare = model_summary(demo_card(test=False))
    assert bare["test"] is None and bare["variant"] == "int8_dynamic"
    assert bare["text"] == "No test figures in model.json (exported without evaluation data); random initialisation"
    # an interval that could not be computed is left out of the text, not made up
    data = card_data()
    data["metrics"]["served"]["test"]["ci95"]["macro_f1"] = None
    summary = model_summary(ModelCard.from_dict(data))
    assert summary["test"]["macro_f1_ci95"] is None and summary["text"].startswith(
        "Test accuracy 0.72 (95 % CI 0.60-0.84) on 43 images, macro-F1 0.70; ")


def test_the_summary_says_whether_the_model_outlines_lesions():
    """"segment": the card describes a lesion map (format_version 4, multitask); false for a
    classify-only card and for one written before the lesion map (format_version 3)."""
    assert model_summary(demo_card())["segment"] is True
    assert model_summary(demo_card(lesion=False))["segment"] is False
    three = {k: v for k, v in card_data().items() if k not in ("lesion", "input_check")}
    assert model_summary(ModelCard.from_dict({**three, "format_version": 3}))["segment"] is False
    # nothing else of the summary depends on it
    with_lesion, without = model_summary(demo_card()), model_summary(demo_card(lesion=False))
    assert {k: v for k, v in with_lesion.items() if k != "segment"} == \
        {k: v for k, v in without.items() if k != "segment"}


def test_the_summary_says_whether_the_model_checks_its_input_and_what_a_flagged_image_gets():
    """"input_check": the card's check (method, threshold, flag rate) and OOD_ACTION; for a
    model without one (a format-4 card, or null) "available" is false and the rest null but
    the action; nothing else of the summary depends on it."""
    checked = model_summary(demo_card(input_check=True))
    assert checked["input_check"] == {"available": True, "action": "flag", "method": "mahalanobis",
                                      "threshold": 41.5, "flag_rate": 0.05}
    assert model_summary(demo_card(input_check=True), "refuse")["input_check"]["action"] == "refuse"
    assert model_summary(demo_card())["input_check"] == NO_CHECK
    four = {k: v for k, v in card_data().items() if k != "input_check"}
    assert model_summary(ModelCard.from_dict({**four, "format_version": 4}))["input_check"] == NO_CHECK
    assert model_summary(demo_card(), "refuse")["input_check"] == {**NO_CHECK, "action": "refuse"}
    assert {k: v for k, v in checked.items() if k != "input_check"} == \
        {k: v for k, v in model_summary(demo_card()).items() if k != "input_check"}
    with pytest.raises(ValueError, match="ood_action 'block'"):
        model_summary(demo_card(), "block")


def test_health_says_the_input_check_and_the_ood_action_of_the_function():
    card = demo_card(input_check=True)
    assert health_of(stub_handler(CardStub(card)))["model"]["input_check"]["action"] == "flag"
    refusing = health_of(stub_handler(CardStub(card), environ={"OOD_ACTION": "refuse"}))
    assert refusing["model"] == model_summary(card, "refuse") and refusing["model"]["input_check"]["available"]


def test_model_summary_imports_only_the_standard_library_and_serving():
    tree = ast.parse((ROOT / "busi_classifier" / "serving" / "model_summary.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1 or node.module.split(".")[0] in sys.stdlib_module_names | {"__future__"}, \
                node.module
        elif isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)


# --------------------------------------------------------------------------- GET /health


def health_of(handler) -> dict:
    answer = handler(http_v2_event("GET", "/health"), Context())
    assert answer["statusCode"] == 200
    return body_of(answer)


def test_health_carries_the_model_summary_and_the_image_limit():
    card = demo_card()
    body = health_of(stub_handler(CardStub(card)))
    assert body["model"] == model_summary(card) and body["limits"] == {"image_bytes": MAX_IMAGE_BYTES}
    assert body["model"]["notice"] == DEMO_NOTICE
    # a model served without model.json (the stub has none): null, and still the limit
    plain = health_of(stub_handler())
    assert plain["model"] is None and plain["limits"]["image_bytes"] == 4_400_000


def test_health_answers_match_openapi_yaml():
    from openapi_schema_validator import OAS30Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    registry = Registry().with_resource("urn:spec", Resource(contents=spec, specification=DRAFT4))
    schema = {"$ref": "urn:spec#/components/schemas/Health"}
    validator = OAS30Validator(schema, registry=registry)
    for handler in (stub_handler(CardStub()), stub_handler(CardStub(demo_card(test=False))),
                    stub_handler(CardStub(demo_card(lesion=False))), stub_handler(),
                    stub_handler(CardStub(demo_card(input_check=True)), environ={"OOD_ACTION": "refuse"})):
        body = health_of(handler)
        validator.validate(body)
    broken = copy.deepcopy(health_of(stub_handler(CardStub())))
    del broken["model"]["text"]
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(health_of(stub_handler(CardStub())))
    broken["model"]["segment"] = "yes"
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(health_of(stub_handler(CardStub())))
    broken["model"]["input_check"]["action"] = "block"
    assert not validator.is_valid(broken)


# --------------------------------------------------------------------------- predict


class FakePredictor(CardStub):
    """What predict needs of Predictor, without a TFLite file."""

    def __init__(self, model_path=None, variant=None, num_threads=None):
        super().__init__()


def test_predict_prints_the_summary_after_its_table_and_in_each_json_line(tmp_path, monkeypatch, capsys):
    from busi_classifier.serving import predictor

    monkeypatch.setattr(predictor, "Predictor", FakePredictor)
    from PIL import Image

    image = tmp_path / "scan.png"
    Image.new("L", (80, 60), 90).save(image)
    assert main(["predict", "--model", str(tmp_path), str(image)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].split()[:5] == ["file", "prediction", *CLASSES] and len(lines) == 2  # stdout: the table alone
    err = captured.err.strip().splitlines()
    assert err[-2] == summary_line(model_summary(demo_card()))  # after the table, before the run's summary
    assert err[-1].startswith("1 classified, 0 refused")
    assert "DEMO MODEL, SYNTHETIC DATA" in captured.err
    assert main(["predict", "--json", "--model", str(tmp_path), str(image)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["file"] == str(image) and row["model"] == model_summary(demo_card())


# --------------------------------------------------------------------------- the real exported card


def test_the_summary_of_a_real_exported_model(trained_model, tmp_path, capsys):
    """train.py's model.json (synthetic data, random init): the figures are the card's own,
    /health of the model served as `serve` serves it carries them, `predict` prints them."""
    from busi_classifier.local.server import local_settings
    from busi_classifier.serving.api import make_handler

    card = ModelCard.read(trained_model)
    served = card.metrics["served"]["test"]
    summary = model_summary(card)
    assert summary["test"] == {
        "split": "test", "images": served["n"], "accuracy": served["accuracy"],
        "accuracy_ci95": served["ci95"]["accuracy"], "macro_f1": served["macro_f1"],
        "macro_f1_ci95": served["ci95"]["macro_f1"], "bootstrap_unit": served["bootstrap_unit"]}
    assert summary["variant"] == card.default_variant == card.metrics["served"]["variant"]
    assert summary["weights"] == "none" and summary["initialisation"] == "random initialisation"
    assert card.dataset["synthetic"] is True  # training read the marker file synthesize writes
    assert summary["synthetic"] is True and summary["notice"] == DEMO_NOTICE
    assert summary["synthetic_basis"] == "model.json dataset.synthetic"
    assert summary["segment"] is (card.lesion is not None) is True  # the session model is multitask
    assert summary["input_check"]["available"] is (card.input_check is not None) is True  # the export fits one
    assert summary["text"].startswith(f"Test accuracy {served['accuracy']:.2f} (95 % CI ")
    assert f" on {served['n']} images, macro-F1 {served['macro_f1']:.2f}" in summary["text"]
    assert not leaks(json.dumps(summary))

    handler = make_handler(local_settings(str(trained_model)))
    assert handler.predictor is not None, handler.load_error
    body = health_of(handler)
    assert body["model"] == summary and body["limits"] == {"image_bytes": MAX_IMAGE_BYTES}

    from PIL import Image

    image = tmp_path / "scan.png"
    Image.new("L", (120, 90), 70).save(image)
    capsys.readouterr()
    assert main(["predict", "--model", str(trained_model), str(image)]) == 0
    captured = capsys.readouterr()
    assert summary_line(summary) in captured.err.splitlines()
    assert captured.out.strip().splitlines()[0].split()[:2] == ["file", "prediction"]
