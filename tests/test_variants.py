"""TFLite variants: each loads with the pinned LiteRT, the recorded evidence is what LiteRT
gives, the rule picks correctly, and MODEL_VARIANT / NUM_THREADS are honoured."""

import csv
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TEST_IMAGE_SIZE, fresh_lambda, synthetic_images

from busi_classifier.export.variants import (
    MIN_INPUT_CHECK_AGREEMENT,
    MIN_LESION_DICE,
    VARIANT_FILES,
    agreement_evidence,
    choose_default,
    input_check_agreement,
    lesion_agreement,
    passes_gates,
)
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


def lesion_grid(top: int, left: int, cells: int = 4, side: int = 16) -> np.ndarray:
    """A (side, side) lesion map: probability 1 on a square of ``cells`` cells, 0 elsewhere."""
    grid = np.zeros((side, side))
    grid[top:top + cells, left:left + cells] = 1.0
    return grid


def test_lesion_agreement_by_hand():
    square = lesion_grid(4, 4)
    nothing = np.zeros((16, 16))
    e = lesion_agreement(np.stack([nothing, square, square]), np.stack([nothing, nothing, square]), 0.5)
    assert e["lesion_dice_min"] == 0.0 and e["lesion_dice_mean"] == pytest.approx(2 / 3)  # 1 (both empty), 0, 1
    assert e["lesion_found_agreement"] == pytest.approx(2 / 3) and e["lesion_threshold"] == 0.5
    assert e["lesion_max_abs_diff"] == 1.0
    # shifted by one 4 px cell: a 16 px square overlaps its shifted self on 12 of 16 columns, Dice 0.75
    # (less the corner pixels the bilinear blur rounds off)
    shifted = lesion_agreement(square[None], np.roll(square, 1, axis=1)[None], 0.5)
    assert shifted["lesion_dice_mean"] == pytest.approx(0.75, abs=0.01) and shifted["lesion_peak_agreement"] == 0.0
    same = lesion_agreement(square[None, ..., None], square[None, ..., None], 0.5)  # Keras's (N, h, w, 1) too
    assert same["lesion_dice_mean"] == same["lesion_dice_p05"] == 1.0 and same["lesion_peak_agreement"] == 1.0
    assert lesion_agreement(np.zeros((0, 16, 16)), np.zeros((0, 16, 16)), 0.5)["lesion_dice_mean"] == 1.0
    with pytest.raises(ValueError, match="shapes"):
        lesion_agreement(square[None], np.zeros((1, 8, 8)), 0.5)


def test_the_lesion_gate_fails_a_variant_whose_lesion_map_disagrees_though_its_probabilities_agree():
    y = np.array([0, 1, 2, 1, 2, 0])
    probabilities = np.eye(3)[y] * 0.7 + 0.1
    reference_lesion = np.stack([np.zeros((16, 16))] + [lesion_grid(2 + i, 3 + i) for i in range(4)]
                                + [np.zeros((16, 16))])
    moved = np.roll(reference_lesion, 2, axis=2)  # every outline 8 px off to the right
    good = agreement_evidence(probabilities, probabilities.copy(), y, reference_lesion=reference_lesion,
                              candidate_lesion=reference_lesion.copy(), lesion_threshold=0.5)
    bad = agreement_evidence(probabilities, probabilities.copy(), y, reference_lesion=reference_lesion,
                             candidate_lesion=moved, lesion_threshold=0.5)
    assert good["top1_agreement"] == bad["top1_agreement"] == 1.0 and bad["macro_f1_diff"] == 0.0
    assert good["lesion_dice_mean"] == 1.0 and passes_gates(good)
    assert bad["lesion_dice_mean"] < MIN_LESION_DICE and not passes_gates(bad)
    variants = {"float32": {"latency_ms": 100.0, "evidence": good}, "float16": {"latency_ms": 60.0, "evidence": good},
                "int8_dynamic": {"latency_ms": 30.0, "evidence": bad}}
    name, reason = choose_default(variants)
    assert name == "float16" and f"lesion-map Dice >= {MIN_LESION_DICE:.2f}" in reason and "lesion-map Dice 1.000" in reason
    # without a threshold (or a lesion map on either side) nothing is measured: the evidence is as before
    assert "lesion_dice_mean" not in agreement_evidence(probabilities, probabilities, y,
                                                        reference_lesion=reference_lesion, candidate_lesion=moved)
    assert "lesion_dice_mean" not in agreement_evidence(probabilities, probabilities, y, candidate_lesion=moved,
                                                        lesion_threshold=0.5)


def test_evidence_without_lesion_keys_is_gated_and_explained_as_before():
    old = {**evidence(agreement=0.995, f1_diff=-0.005), "map_mean_abs_diff": 0.05, "map_max_abs_diff": 0.2,
           "map_peak_agreement": 0.9}
    assert passes_gates(old) and passes_gates(evidence())
    name, reason = choose_default({"float32": {"latency_ms": 50.0, "evidence": evidence()},
                                   "int8_dynamic": {"latency_ms": 20.0, "evidence": old}})
    assert name == "int8_dynamic" and "lesion" not in reason
    assert reason == ("fastest variant (20.0 ms per image at export) with macro-F1 loss <= 0.01, top-1 agreement >= "
                      "99% and class-map difference <= 0.10 on train+val images (agreement 0.995, macro-F1 diff "
                      "-0.005)")
    assert passes_gates({**old, "lesion_dice_mean": None})  # not measured
    assert passes_gates({**old, "lesion_dice_mean": MIN_LESION_DICE})  # exactly on the gate
    assert not passes_gates({**old, "lesion_dice_mean": MIN_LESION_DICE - 0.001})


def test_input_check_agreement_by_hand_and_its_gate():
    # each side at its own threshold: image 3 flagged by both, image 2 by the candidate only
    e = input_check_agreement(np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.1, 2.1, 5.5, 9.0]), 5.0, 5.2)
    assert e["input_check_agreement"] == 0.75 and e["input_check_flagged"] == 0.5
    assert e["input_check_reference_flagged"] == 0.25 and e["input_check_threshold"] == 5.2
    assert e["input_check_reference_threshold"] == 5.0
    assert e["input_check_score_rel_diff_median"] == pytest.approx(np.median([0.02, 0.02, 0.5, 0.2]))
    # a score that is not a number is flagged (as InputCheck.answer decides)
    nan = input_check_agreement(np.array([1.0, 9.0]), np.array([np.nan, 9.0]), 5.0, 5.0)
    assert nan["input_check_agreement"] == 0.5 and nan["input_check_flagged"] == 1.0
    assert input_check_agreement(np.zeros(0), np.zeros(0), 1.0, 1.0)["input_check_agreement"] == 1.0
    with pytest.raises(ValueError, match="3 reference"):
        input_check_agreement(np.zeros(3), np.zeros(2), 1.0, 1.0)
    base = evidence()
    assert passes_gates({**base, "input_check_agreement": None})  # not measured
    assert passes_gates({**base, "input_check_agreement": MIN_INPUT_CHECK_AGREEMENT})  # exactly on the gate
    assert not passes_gates({**base, "input_check_agreement": MIN_INPUT_CHECK_AGREEMENT - 0.001})
    y = np.array([0, 1, 2, 1])
    probabilities = np.eye(3)[y] * 0.7 + 0.1
    agreeing = agreement_evidence(probabilities, probabilities, y, input_check={
        "reference_scores": np.arange(4.0), "candidate_scores": np.arange(4.0) + 0.01, "reference_threshold": 2.5,
        "candidate_threshold": 2.5})
    assert agreeing["input_check_agreement"] == 1.0 and "input_check_agreement" not in agreement_evidence(
        probabilities, probabilities, y)
    variants = {"float32": {"latency_ms": 50.0, "evidence": agreeing},
                "int8_dynamic": {"latency_ms": 20.0, "evidence": {**agreeing, "input_check_agreement": 0.9}}}
    name, reason = choose_default(variants)
    assert name == "float32" and "input-check agreement >= 98%" in reason and "input-check agreement 1.000" in reason


class FeatureStub:
    """A LiteRT predictor of one variant file with a features output: each image's
    features are its first pixels (so the scores depend on the image), moved by ``shift``."""

    def __init__(self, latency: float, shift: float = 0.0, features: bool = True):
        self.latency, self.shift, self.features, self.calls = latency, shift, features, []

    def raw_all(self, images):
        images = np.asarray(images)
        self.calls.append(len(images))
        n = len(images)
        return {"probabilities": np.tile([0.6, 0.3, 0.1], (n, 1)), "class_maps": None, "lesion": None,
                "features": (images.reshape(n, -1)[:, :8].astype(np.float32) + self.shift) if self.features else None}


def test_gate_variants_gates_each_file_on_its_input_check_decisions(monkeypatch, tmp_path):
    """Each variant's decisions (its features at the threshold chosen on its own validation
    features, as it would be served) against the Keras model's: a variant whose features
    move fails the gate though its probabilities agree."""
    from busi_classifier.evaluation import served
    from busi_classifier.evaluation.input_check_fit import choose_threshold, fit_input_check

    rng = np.random.default_rng(0)
    train = rng.integers(0, 120, (40, 4, 4, 3), dtype=np.uint8)
    val = rng.integers(0, 120, (20, 4, 4, 3), dtype=np.uint8)
    gate_images = np.concatenate([rng.integers(0, 120, (30, 4, 4, 3)), rng.integers(150, 256, (10, 4, 4, 3))]
                                 ).astype(np.uint8)  # 10 far from the training images
    as_features = FeatureStub(0.0).raw_all
    check = choose_threshold(fit_input_check(as_features(train)["features"], np.arange(40) % 3, dims=6),
                             as_features(val)["features"], 0.05)
    y = np.zeros(len(gate_images), int)
    probabilities = np.tile([0.6, 0.3, 0.1], (len(gate_images), 1))
    stubs = {"model.tflite": FeatureStub(80.0), "model_int8_dynamic.tflite": FeatureStub(20.0, shift=0.02),
             "model_float16.tflite": FeatureStub(30.0, shift=60.0)}
    monkeypatch.setattr(served, "file_predictor", lambda path, *args, **kwargs: stubs[Path(path).name])
    monkeypatch.setattr(served, "latency_ms", lambda predictor, image: predictor.latency)
    gate = served.GateEvidence(gate_images, y, probabilities, None, "train+val", reference_features=as_features(
        gate_images)["features"], input_check=check, check_images=val, flag_rate=0.05)
    entries = {"float32": {"file": "model.tflite"}, "float16": {"file": "model_float16.tflite"},
               "int8_dynamic": {"file": "model_int8_dynamic.tflite"}}
    default, reason, _ = served.gate_variants(tmp_path, entries, gate, 4)
    assert default == "int8_dynamic" and "input-check agreement" in reason
    float32, moved = entries["float32"]["evidence"], entries["float16"]["evidence"]
    assert float32["input_check_agreement"] == 1.0 and float32["input_check_threshold"] == pytest.approx(check.threshold)
    assert float32["input_check_reference_flagged"] >= 10 / 40  # the far images are flagged
    assert moved["top1_agreement"] == 1.0 and moved["input_check_agreement"] < MIN_INPUT_CHECK_AGREEMENT
    assert not passes_gates(moved) and passes_gates(entries["int8_dynamic"]["evidence"])
    assert stubs["model.tflite"].calls.count(len(val)) == 1  # the validation images, once per file
    # a file without the features output, for a model with an input check: an export error, said at once
    stubs["model.tflite"].features = False
    with pytest.raises(ValueError, match="no features output"):
        served.gate_variants(tmp_path, {"float32": {"file": "model.tflite"}}, gate, 4)
    with pytest.raises(ValueError, match="features of the gate images"):
        served.gate_variants(tmp_path, {"float32": {"file": "model.tflite"}},
                             served.GateEvidence(gate_images, y, probabilities, None, "x", input_check=check), 4)


class StubPredictor:
    """What evaluation.served asks of a LiteRT predictor of one variant file."""

    def __init__(self, probabilities, maps, lesion, latency):
        self.outputs = {"probabilities": probabilities, "class_maps": maps, "lesion": lesion}
        self.latency, self.seen = latency, None

    def raw_all(self, images):
        self.seen = np.asarray(images)
        return dict(self.outputs)


def test_gate_variants_gates_each_file_on_all_its_outputs_from_one_call(monkeypatch, tmp_path):
    from busi_classifier.evaluation import served

    y = np.array([0, 1, 2, 1])
    probabilities = np.eye(3)[y] * 0.7 + 0.1
    maps = np.random.default_rng(0).normal(size=(4, 2, 2, 3))
    lesion = np.stack([np.zeros((16, 16))] + [lesion_grid(2 + 2 * i, 4) for i in range(3)])
    images = np.zeros((4, 64, 64, 3), np.uint8)
    stubs = {"model.tflite": StubPredictor(probabilities, maps, lesion, 80.0),
             "model_int8_dynamic.tflite": StubPredictor(probabilities, maps, np.roll(lesion, 3, axis=1), 20.0)}
    monkeypatch.setattr(served, "file_predictor", lambda path, *args, **kwargs: stubs[Path(path).name])
    monkeypatch.setattr(served, "latency_ms", lambda predictor, image: predictor.latency)

    def files():
        return {"float32": {"file": "model.tflite"}, "int8_dynamic": {"file": "model_int8_dynamic.tflite"}}

    gate = served.GateEvidence(images, y, probabilities, maps, "train+val: 4 images; no test image",
                               reference_lesion=lesion, lesion_threshold=0.5)
    entries = files()
    default, reason, described = served.gate_variants(tmp_path, entries, gate, 64)
    assert default == "float32" and described == gate.description  # int8 is faster, its lesion map is off
    assert entries["float32"]["evidence"]["lesion_dice_mean"] == 1.0
    assert entries["int8_dynamic"]["evidence"]["lesion_dice_mean"] < MIN_LESION_DICE
    assert entries["int8_dynamic"]["evidence"]["top1_agreement"] == 1.0
    assert np.array_equal(stubs["model.tflite"].seen, images)  # the gate images, all outputs in one call
    # a classify-only model (no lesion map on either side): gated as before, int8 served
    for stub in stubs.values():
        stub.outputs["lesion"] = None
    entries = files()
    classify = served.GateEvidence(images, y, probabilities, maps, "train+val")
    assert served.gate_variants(tmp_path, entries, classify, 64)[0] == "int8_dynamic"
    assert not any(key.startswith("lesion") for key in entries["int8_dynamic"]["evidence"])
    # the Keras model has a lesion map and a file does not: the export is broken, said at once
    with pytest.raises(ValueError, match="no lesion output"):
        served.gate_variants(tmp_path, files(), gate, 64)
    with pytest.raises(ValueError, match="threshold"):
        served.gate_variants(tmp_path, files(), served.GateEvidence(images, y, probabilities, maps, "x",
                                                                     reference_lesion=lesion), 64)


def test_gate_evidence_is_train_and_val_with_augmented_views_never_a_test_image():
    """The variant gates are measured on every train and val image and one augmented view
    of each (capped), with the Keras model's probabilities as the reference; no test image
    reaches them (the test split only reports)."""
    from busi_classifier.config import TrainConfig
    from busi_classifier.training import loop

    rng = np.random.default_rng(0)
    x = {name: rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for name, n in
         (("train", 7), ("val", 3), ("test", 4))}
    y = {name: np.arange(len(images)) % 3 for name, images in x.items()}
    data = loop.PreparedData(None, [], None, {}, x, y)

    class RecordingModel:
        def predict(self, images, batch_size=None, verbose=0):
            self.seen = np.asarray(images)
            return {"probabilities": np.tile([0.2, 0.3, 0.5], (len(images), 1)),
                    "class_maps": np.ones((len(images), 2, 2, 3))}

    model = RecordingModel()
    gate = loop.gate_evidence(model, data, TrainConfig(data_dir="d", out_dir="o", image_size=16))
    assert len(gate.images) == 2 * 10 and gate.images.dtype == np.uint8
    np.testing.assert_array_equal(model.seen, gate.images.astype("float32"))
    originals = {img.tobytes() for img in np.concatenate([x["train"], x["val"]])}
    assert sum(img.tobytes() in originals for img in gate.images) == 10  # the other 10 are augmented views
    assert not {img.tobytes() for img in x["test"]} & {img.tobytes() for img in gate.images}
    np.testing.assert_array_equal(gate.labels, np.concatenate([y["train"], y["val"]] * 2))
    assert "no test image" in gate.description and gate.reference_maps.shape == (20, 2, 2, 3)
    # capped: a large dataset costs at most GATE_MAX_IMAGES predictions per variant
    big = loop.PreparedData(None, [], None, {}, {**x, "train": np.zeros((loop.GATE_MAX_IMAGES, 16, 16, 3), np.uint8),
                                                 "val": x["val"]},
                            {**y, "train": np.zeros(loop.GATE_MAX_IMAGES, int)})
    assert len(loop.gate_evidence(model, big, TrainConfig(data_dir="d", out_dir="o", image_size=16)).images) == (
        loop.GATE_MAX_IMAGES)


@pytest.mark.slow
def test_every_variant_loads_with_the_pinned_litert_and_the_served_metrics_are_its_own(trained_model, synthetic_dir):
    """model.json's headline is the served file's own test metrics (with group-aware
    intervals and model.json's temperature), recomputed here from LiteRT's output; the
    Keras model's are beside them."""
    from busi_classifier.data.dataset import load_images
    from busi_classifier.evaluation.metrics import evaluate_predictions
    from busi_classifier.evaluation.scoring import read_split_with_groups
    from busi_classifier.serving.predictor import Predictor

    pinned = next(line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith("ai-edge-litert=="))
    assert metadata.version("ai-edge-litert") == pinned
    meta = json.loads((trained_model / "model.json").read_text())
    assert set(meta["variants"]) == set(VARIANT_FILES)
    sizes = {name: v["bytes"] for name, v in meta["variants"].items()}
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["int8_dynamic"] < 0.35 * sizes["float32"]
    samples, groups = read_split_with_groups(trained_model / "split.csv", synthetic_dir, "test")
    images = load_images(samples, TEST_IMAGE_SIZE, progress=False)
    labels = np.array([s.label_index for s in samples])
    for name, entry in meta["variants"].items():
        predictor = Predictor(trained_model, num_threads=1, variant=name)
        assert predictor.variant == name and predictor.model_path.name == entry["file"]
        probabilities = np.stack([predictor.predict_array(image, calibrated=False) for image in images])
        assert np.allclose(probabilities.sum(1), 1.0, atol=1e-4)
    # the lossless-enough variants pass their gates on any model; float16 is nearly exact
    for name in ("float32", "float16"):
        assert passes_gates(meta["variants"][name]["evidence"]), name
    assert meta["variants"]["float16"]["evidence"]["max_probability_diff"] < 1e-2
    assert meta["default_variant"] == choose_default(meta["variants"])[0]
    served = meta["metrics"]["served"]
    assert served["variant"] == meta["default_variant"] and served["file"] == VARIANT_FILES[served["variant"]]
    raw = Predictor(trained_model).raw_probabilities(images)
    again = evaluate_predictions(labels, raw, meta["calibration"]["temperature"],
                                 meta["training"]["bootstrap_resamples"], meta["training"]["seed"], groups=groups)
    for key in ("n", "accuracy", "macro_f1", "ece", "bootstrap_units"):
        assert served["test"][key] == pytest.approx(again[key], abs=1e-6), key
    assert served["test"]["ci95"]["accuracy"] == pytest.approx(again["ci95"]["accuracy"], abs=1e-6)
    assert served["test"]["bootstrap_unit"] == "near-duplicate group"
    assert meta["metrics"]["keras"]["test"]["n"] == len(labels)


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


def test_gate_evidence_size_is_train_plus_val_and_their_views(trained_model):
    from busi_classifier.training.loop import GATE_MAX_IMAGES

    meta = json.loads((trained_model / "model.json").read_text())
    with open(trained_model / "split.csv") as handle:
        n_fit = sum(row["split"] in ("train", "val") for row in csv.DictReader(handle))
    expected = min(2 * n_fit, GATE_MAX_IMAGES)
    assert all(v["evidence"]["n"] == expected for v in meta["variants"].values())
    assert "no test image" in meta["variant_rule"]["evidence_split"]


def test_int8_full_converter_is_the_export_s_and_its_per_channel_switch_changes_the_weight_scales():
    """The export's int8_full file and benchmarks/quant_debug.py's come from the same
    converter function; per-channel weight scales (the converter's default) give a
    convolution's weights one scale per output channel, per_channel=False one in all."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from busi_classifier.export.tflite import convert_to_tflite, int8_full_converter

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import quant_debug
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(8, 3, name="conv")(inputs / 255.0)
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(features))))
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)

    def conv_weight_scales(data: bytes) -> list[int]:
        interpreter = Interpreter(model_content=data)
        return [len(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()
                if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] == 8]

    assert conv_weight_scales(convert_to_tflite(model, "int8_full", images)) == [8]
    assert conv_weight_scales(quant_debug.int8_converter(model, images).convert()) == [8]
    assert conv_weight_scales(int8_full_converter(model, images, per_channel=False).convert()) == [1]
    with pytest.raises(ValueError, match="representative"):
        int8_full_converter(model, None)
    with pytest.raises(ValueError, match="unknown variant"):
        convert_to_tflite(model, "int4")
