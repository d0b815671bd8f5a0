"""TFLite variants: each loads with the pinned LiteRT, the recorded evidence is what LiteRT
gives, the rule picks correctly, and MODEL_VARIANT / NUM_THREADS are honoured."""

import csv
import json
import sys
from importlib import metadata

import numpy as np
import pytest
from conftest import ROOT, TEST_IMAGE_SIZE, fresh_lambda, synthetic_images

from busi_classifier.export.variants import VARIANT_FILES, agreement_evidence, choose_default, passes_gates
from busi_classifier.serving.events import direct_event, http_v2_event


def evidence(agreement=1.0, f1_diff=0.0):
    return {"top1_agreement": agreement, "macro_f1_diff": f1_diff, "macro_auc_diff": 0.0, "max_probability_diff": 0.0}


def test_rule_picks_the_fastest_variant_that_passes_both_gates():
    variants = {
        "float32": {"latency_ms": 100.0, "evidence": evidence()},
        "float16": {"latency_ms": 90.0, "evidence": evidence(f1_diff=-0.004)},
        "int8_dynamic": {"latency_ms": 35.0, "evidence": evidence(agreement=0.995, f1_diff=-0.009)},
        "int8_full": {"latency_ms": 20.0, "evidence": evidence(agreement=0.98)},  # fails agreement
    }
    assert choose_default(variants)[0] == "int8_dynamic"
    variants["int8_dynamic"]["evidence"] = evidence(f1_diff=-0.02)  # now fails the macro-F1 gate
    assert choose_default(variants)[0] == "float16"
    variants["int8_full"]["evidence"] = evidence(agreement=0.99, f1_diff=-0.01)  # exactly on both gates
    assert choose_default(variants)[0] == "int8_full"
    for v in variants.values():
        v["evidence"] = evidence(agreement=0.5)
    name, reason = choose_default(variants)
    assert name == "float32" and "no variant passed" in reason
    assert not passes_gates(evidence(agreement=0.989)) and passes_gates(evidence(f1_diff=+0.05))


def test_agreement_evidence_by_hand():
    y = np.array([0, 1, 2, 2])
    ref = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.5, 0.4]])
    cand = ref.copy()
    cand[3] = [0.1, 0.3, 0.6]  # one flip, now correct
    e = agreement_evidence(ref, cand, y)
    assert e["top1_agreement"] == 0.75 and e["max_probability_diff"] == pytest.approx(0.2)
    assert e["macro_f1_diff"] > 0


@pytest.mark.slow
def test_every_variant_loads_with_the_pinned_litert_and_its_evidence_holds(trained_model, synthetic_dir):
    from busi_classifier.data.dataset import load_images
    from busi_classifier.evaluation.scoring import read_split
    from busi_classifier.serving.predictor import Predictor
    from busi_classifier.training.model import load_keras_model

    pinned = next(line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("ai-edge-litert=="))
    assert metadata.version("ai-edge-litert") == pinned
    meta = json.loads((trained_model / "model.json").read_text())
    assert set(meta["variants"]) == set(VARIANT_FILES)
    sizes = {name: v["bytes"] for name, v in meta["variants"].items()}
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8_dynamic"] < 0.35 * sizes["float32"]
    samples = read_split(trained_model / "split.csv", synthetic_dir, "test")
    images = load_images(samples, TEST_IMAGE_SIZE, progress=False)
    labels = np.array([s.label_index for s in samples])
    reference = load_keras_model(trained_model / "model.keras").predict(images.astype("float32"), verbose=0)
    for name, entry in meta["variants"].items():
        predictor = Predictor(trained_model, num_threads=1, variant=name)
        assert predictor.variant == name and predictor.model_path.name == entry["file"]
        probabilities = np.stack([predictor.predict_array(image, calibrated=False) for image in images])
        assert np.allclose(probabilities.sum(1), 1.0, atol=1e-4)
        recomputed = agreement_evidence(reference, probabilities, labels)
        assert recomputed["top1_agreement"] == pytest.approx(entry["evidence"]["top1_agreement"])
        assert recomputed["max_probability_diff"] == pytest.approx(entry["evidence"]["max_probability_diff"], abs=1e-5)
    # the lossless-enough variants pass their gates on any model; float16 is nearly exact
    for name in ("float32", "float16"):
        assert passes_gates(meta["variants"][name]["evidence"]), name
    assert meta["variants"]["float16"]["evidence"]["max_probability_diff"] < 1e-2
    assert meta["default_variant"] == choose_default(meta["variants"])[0]


def test_model_folder_serves_the_default_variant_and_model_variant_overrides(trained_model, monkeypatch):
    meta = json.loads((trained_model / "model.json").read_text())
    try:
        module = fresh_lambda(monkeypatch, trained_model)
        assert module.lambda_handler.predictor.variant == meta["default_variant"]
        for name in VARIANT_FILES:
            module = fresh_lambda(monkeypatch, trained_model, name)
            assert module.lambda_handler.predictor.variant == name
            assert module.lambda_handler.predictor.model_path.name == VARIANT_FILES[name]
        module = fresh_lambda(monkeypatch, trained_model, "int4")
        answer = module.lambda_handler(http_v2_event("GET", "/health"), None)
        assert answer["statusCode"] == 503
        assert json.loads(answer["body"])["error"]["code"] == "model_unavailable"
        # the reason (for the logs) names the variant asked for and those available
        assert "int4" in module.lambda_handler.load_error and "int8_dynamic" in module.lambda_handler.load_error
    finally:
        sys.modules.pop("lambda_function", None)


def test_thread_count_follows_num_threads_or_the_cpus_the_process_may_use(trained_model, monkeypatch):
    import os

    try:
        monkeypatch.delenv("NUM_THREADS", raising=False)
        module = fresh_lambda(monkeypatch, trained_model)
        assert module.lambda_handler.predictor.num_threads == len(os.sched_getaffinity(0))
        monkeypatch.setenv("NUM_THREADS", "1")
        module = fresh_lambda(monkeypatch, trained_model)
        assert module.lambda_handler.predictor.num_threads == 1
    finally:
        sys.modules.pop("lambda_function", None)


def test_every_variant_answers_through_the_handler(trained_model, synthetic_dir, monkeypatch):
    images = [data for _, data in synthetic_images(synthetic_dir, 1)]
    try:
        for name in VARIANT_FILES:
            module = fresh_lambda(monkeypatch, trained_model, name)
            for data in images:
                answer = module.lambda_handler(direct_event(data), None)
                assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5), name
    finally:
        sys.modules.pop("lambda_function", None)


def test_split_csv_test_rows_match_the_evidence_size(trained_model):
    meta = json.loads((trained_model / "model.json").read_text())
    with open(trained_model / "split.csv") as handle:
        n_test = sum(row["split"] == "test" for row in csv.DictReader(handle))
    assert all(v["evidence"]["n"] == n_test for v in meta["variants"].values())
