"""The input check as the export writes it: fitted on the training split, thresholded on
the served file's validation features, written beside the .tflite files with its sha256
in the card, gated per variant, measured on the test split and the out-of-distribution
sets (a tiny multitask run, 32 px), and the pieces of evaluation.served on stubs."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_classifier.cli import train_main

TINY = ["--image-size", "32", "--max-per-class", "12", "--batch-size", "4", "--bootstrap", "50", "--variants",
        "float32,int8_dynamic", "--quiet", "--weights", "none", "--epochs-head", "2", "--epochs-fine-tune", "0",
        "--task", "multitask", "--val-fraction", "0.3", "--test-fraction", "0.3", "--seed", "0"]
FLAG_RATE = 0.25  # large enough that a handful of validation images shows it
OOD_IMAGES = 6


@pytest.fixture(scope="module")
def exported(synthetic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("input-check") / "run"
    assert train_main(["--data", str(synthetic_dir), "--out", str(out), *TINY, "--input-check-flag-rate",
                       str(FLAG_RATE), "--input-check-ood-images", str(OOD_IMAGES)]) == 0
    return out


def card_of(out: Path) -> dict:
    return json.loads((out / "model.json").read_text())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_the_export_writes_the_check_file_its_card_describes(exported):
    from busi_classifier.serving.input_check import FILE, InputCheck, file_sha256

    card = card_of(exported)
    spec = card["input_check"]
    assert card["format_version"] >= 5
    assert spec["file"] == FILE and (exported / FILE).is_file()
    assert spec["sha256"] == file_sha256(exported / FILE) and spec["bytes"] == (exported / FILE).stat().st_size
    assert card["files"][FILE] == {"bytes": spec["bytes"], "sha256": spec["sha256"]}
    assert spec["feature_output"] == "features" and spec["flag_rate"] == FLAG_RATE
    check = InputCheck.load(exported / FILE, spec["sha256"], feature_dim=2048)
    assert (check.method, check.dims, check.threshold) == (spec["method"], spec["dims"], spec["threshold"])
    assert check.threshold_rule == spec["threshold_rule"] and "validation" in spec["threshold_rule"]
    assert card["training"]["input_check_flag_rate"] == FLAG_RATE
    assert card["variant_rule"]["min_input_check_agreement"] == 0.98


@pytest.mark.slow
def test_the_threshold_flags_the_flag_rate_of_the_served_files_validation_features(exported, synthetic_dir):
    """Chosen on the served file's features of the validation split: recomputed here with
    LiteRT, the share of validation images above it is the flag rate, to one image."""
    from busi_classifier.data.dataset import load_images
    from busi_classifier.evaluation.scoring import read_split_with_groups
    from busi_classifier.serving.input_check import FILE, InputCheck
    from busi_classifier.serving.predictor import Predictor

    card = card_of(exported)
    samples, _ = read_split_with_groups(exported / "split.csv", synthetic_dir, "val")
    images = load_images(samples, 32, progress=False)
    served = Predictor(exported, num_threads=1)
    assert served.variant == card["default_variant"]
    features = served.raw_all(images)["features"]
    assert features.shape == (len(samples), 2048)
    check = InputCheck.load(exported / FILE, card["input_check"]["sha256"])
    scores = check.score(features)
    flagged = int((scores > check.threshold).sum())
    n = len(samples)
    assert flagged == n - math.ceil((1 - FLAG_RATE) * n)  # the inverted-CDF quantile: at most the rate
    assert abs(flagged / n - FLAG_RATE) <= 1 / n
    metrics = card["input_check"]["metrics"]
    assert metrics["validation"] == {"n": n, "flag_rate": pytest.approx(flagged / n)}


@pytest.mark.slow
def test_the_check_is_measured_on_the_test_split_and_the_sets_and_drawn(exported, synthetic_dir):
    from busi_classifier.evaluation.ood_sets import SYNTHETIC

    card = card_of(exported)
    metrics = card["input_check"]["metrics"]
    n_test = card["metrics"]["served"]["test"]["n"]
    assert metrics["in_distribution"]["n"] == n_test and 0 <= metrics["in_distribution"]["flag_rate"] <= 1
    assert metrics["n_per_set"] == OOD_IMAGES and metrics["method"] == card["input_check"]["method"]
    # the training data are the synthetic set: that set is in distribution, left out and said so
    assert SYNTHETIC not in metrics["sets"] and "in distribution" in metrics["left_out"][SYNTHETIC]
    for name in ("masks", "text screenshots", "noise", "gradients", "inverted", "cropped", "rotated 90"):
        entry = metrics["sets"][name]
        assert 1 <= entry["n"] <= OOD_IMAGES and 0 <= entry["auroc"] <= 1 and 0 <= entry["flag_rate"] <= 1, name
    assert metrics["mean_auroc"] == pytest.approx(np.mean([s["auroc"] for s in metrics["sets"].values()]))
    assert "timings_s" not in metrics  # in metrics.json, not the card
    run = json.loads((exported / "metrics.json").read_text())
    check = run["input_check"]
    assert check["threshold"] == card["input_check"]["threshold"] and check["sets"] == metrics["sets"]
    assert {"fit (features and check)", "building the sets", "scoring the sets"} <= set(check["timings_s"])
    figure = exported / "ood_scores.png"
    assert run["figures"]["input check"] == str(figure) and figure.stat().st_size > 5000
    with Image.open(figure) as image:
        assert "Input check" in image.info["Title"]


@pytest.mark.slow
def test_each_variant_is_gated_on_its_input_check_decisions(exported):
    card = card_of(exported)
    for name, entry in card["variants"].items():
        evidence = entry["evidence"]
        assert 0 <= evidence["input_check_agreement"] <= 1, name
        assert evidence["input_check_reference_threshold"] > 0 and evidence["input_check_threshold"] > 0, name
    # float32 is the Keras model to rounding: the same decisions on (nearly) every gate image
    assert card["variants"]["float32"]["evidence"]["input_check_agreement"] >= 0.98
    served = card["variants"][card["default_variant"]]["evidence"]
    assert served["input_check_threshold"] == pytest.approx(card["input_check"]["threshold"])
    if card["default_variant"] != "float32":
        assert "input-check agreement" in card["default_variant_reason"]


@pytest.mark.slow
def test_served_scores_of_an_ultrasound_image_a_noise_image_and_a_mask(exported, synthetic_dir):
    """What the function answers: the score, the threshold, the decision. The tiny model
    (two epochs of random-init training at 32 px) is not asked to be a good detector, but
    its pooled features of uniform noise and of a white blob on black lie much farther from
    the training images than a test ultrasound image's."""
    from busi_classifier.evaluation.scoring import read_split_with_groups
    from busi_classifier.serving.predictor import Predictor

    samples, _ = read_split_with_groups(exported / "split.csv", synthetic_dir, "test")
    served = Predictor(exported, num_threads=1)
    ultrasound = [served.predict_bytes(s.path.read_bytes())["input_check"] for s in samples]
    rng = np.random.default_rng(0)
    noise = served.predict_bytes(png(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)))["input_check"]
    mask = np.zeros((300, 400), np.uint8)
    mask[100:180, 150:260] = 255
    blob = served.predict_bytes(png(mask))["input_check"]
    threshold = card_of(exported)["input_check"]["threshold"]
    for answer in (*ultrasound, noise, blob):
        assert set(answer) == {"score", "threshold", "in_distribution"} and answer["threshold"] == threshold
        assert answer["in_distribution"] == (answer["score"] <= threshold)
    typical = float(np.median([a["score"] for a in ultrasound]))
    assert noise["score"] > typical and blob["score"] > typical


def test_a_flag_rate_outside_the_open_interval_is_refused(synthetic_dir, tmp_path, capsys):
    for rate in ("0", "0.5", "-0.1"):
        assert train_main(["--data", str(synthetic_dir), "--out", str(tmp_path), "--input-check-flag-rate", rate]) == 2
        assert "--input-check-flag-rate must be in (0, 0.5)" in capsys.readouterr().err


# --------------------------------------------------------------------------- on stubs (no network)


class FeatureStub:
    """A LiteRT predictor with a features output: an image's features are its mean colour
    and the spread of its pixels (8 values), so that noise lies far from smooth images."""

    def raw_all(self, images):
        images = np.asarray(images, dtype=np.float32)
        n = len(images)
        flat = images.reshape(n, -1, 3)
        features = np.concatenate([flat.mean(axis=1), flat.std(axis=1), np.abs(np.diff(images, axis=1)).mean(
            axis=(1, 2))[:, :2]], axis=1) if n else np.zeros((0, 8))
        return {"probabilities": np.tile([0.6, 0.3, 0.1], (n, 1)), "class_maps": None, "lesion": None,
                "features": features.astype(np.float32)}


def smooth(rng, n, size=16):
    base = rng.uniform(60, 120, (n, 1, 1, 1))
    return np.clip(base + rng.normal(0, 3, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_score_served_scores_the_test_split_and_each_set_from_bytes(monkeypatch):
    """Each set's images as bytes through the intake (a file the intake refuses is counted,
    not scored), the report per set, the clearly-not and near-miss means, the scores kept
    for the figure."""
    from busi_classifier.evaluation import served
    from busi_classifier.evaluation.input_check_fit import fit_input_check

    rng = np.random.default_rng(0)
    stub = FeatureStub()
    monkeypatch.setattr(served, "file_predictor", lambda *args, **kwargs: stub)
    check = fit_input_check(stub.raw_all(smooth(rng, 60))["features"], np.arange(60) % 3, dims=4)
    check, val_scores = served.served_threshold(stub, check, smooth(rng, 20), 0.1)
    assert check.has_threshold and len(val_scores) == 20 and np.mean(val_scores > check.threshold) <= 0.1
    noise = [png(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(5)]
    plan = served.InputCheckPlan(check, smooth(rng, 20), 0.1, {"noise": noise + [b"not an image"],
                                                               "inverted": [png(255 - smooth(rng, 1)[0])]},
                                 {"photographs": "skimage is not installed"}, 6, 0, {"building the sets": 1.0})
    test = served.TestSet(smooth(rng, 12), np.arange(12) % 3, None, {}, [None] * 12, 1.0, 20, 0)
    score = served.score_served(Path("model.tflite"), "float32", test, 16, input_check=check, ood=plan,
                                val_scores=val_scores)
    report = score.input_check
    assert report["sets"]["noise"]["n"] == 5 and report["refused_by_intake"] == {"noise": 1}
    assert report["sets"]["noise"]["auroc"] == 1.0 and report["sets"]["noise"]["flag_rate"] == 1.0
    assert report["mean_auroc_clearly_not"] == 1.0 and report["mean_auroc_near_misses"] == report["sets"][
        "inverted"]["auroc"]
    assert report["in_distribution"]["n"] == 12 and report["validation"]["n"] == 20
    assert report["left_out"] == {"photographs": "skimage is not installed"} and report["n_per_set"] == 6
    assert set(report["timings_s"]) == {"building the sets", "scoring the sets"}
    assert score.input_check_scores["test"].shape == (12,) and score.input_check_scores["sets"]["noise"].shape == (5,)
    # without a check: nothing of it
    assert served.score_served(Path("model.tflite"), "float32", test, 16).input_check is None
