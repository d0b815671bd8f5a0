"""Training options, determinism, fast head training and the evaluation command, each
on a tiny synthetic run (32 px, a few images, one epoch a phase)."""

import json

import numpy as np
import pytest

from busi_classifier.cli import train_main

pytestmark = pytest.mark.slow

TINY = ["--image-size", "32", "--max-per-class", "6", "--batch-size", "4", "--bootstrap", "50", "--variants", "float32", "--quiet"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A ResNet50 no-top weights file (random values): exercises the pretrained code path
    (frozen base, cached features, gradual unfreezing) without downloading ImageNet."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    return path


def run(data, out, *extra) -> dict:
    assert train_main(["--data", str(data), "--out", str(out), *TINY, *extra]) == 0
    return json.loads((out / "model.json").read_text())


def history_of(out) -> dict:
    return json.loads((out / "history.json").read_text())


def test_pretrained_head_on_cached_features_then_gradual_unfreezing(synthetic_dir, weights_file, tmp_path):
    """Also under mixed precision: the export is float32 whatever the training policy."""
    import keras

    out = tmp_path / "run"
    try:
        meta = run(synthetic_dir, out, "--weights", str(weights_file), "--epochs-head", "1", "--epochs-fine-tune",
                   "1", "--fine-tune-stages", "conv5_block1_1_conv,conv4_block1_1_conv", "--feature-views", "3",
                   "--augment", "all", "--lr-schedule", "plateau", "--early-stopping", "3", "--mixed-precision",
                   "--task", "classify")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history_of(out)["phase"] == ["1-head", "2-fine-tune-1", "2-fine-tune-2"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "1-head features" in metrics["timings_s"]
    training = meta["training"]
    assert training["fine_tune_stages"] == ["conv5_block1_1_conv", "conv4_block1_1_conv"]
    assert training["cache_features"] is True and training["feature_views"] == 3
    assert training["augment"] == ["flip", "rotate", "zoom", "brightness", "contrast", "speckle"]
    for name in ("training_curves.png", "confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (out / name).stat().st_size > 5000, name
    assert training["mixed_precision"] is True
    # LiteRT loads the float32 export and it sums to one
    from busi_classifier.serving.predictor import Predictor

    p = Predictor(out / "model.tflite").predict_array(np.zeros((32, 32, 3), dtype=np.uint8))
    assert p.shape == (3,) and p.sum() == pytest.approx(1.0, abs=1e-5)


def test_multitask_with_pretrained_weights_gradual_unfreezing_mixed_precision_and_mirrored(synthetic_dir, weights_file,
                                                                                        tmp_path):
    """The lesion decoder trains on every code path of the classifier: the frozen base
    (through it: no cached features), gradual unfreezing, mixed_float16, MirroredStrategy;
    the export is float32 with the lesion map as an output of every variant."""
    import keras

    out = tmp_path / "run"
    try:
        meta = run(synthetic_dir, out, "--weights", str(weights_file), "--epochs-head", "1", "--epochs-fine-tune",
                   "1", "--fine-tune-stages", "conv5_block1_1_conv", "--mixed-precision", "--distribute", "mirrored",
                   "--seg-weight", "2", "--variants", "float32,int8_dynamic")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    training = meta["training"]
    assert (training["task"], training["seg_weight"], training["cache_features"]) == ("multitask", 2.0, False)
    history = history_of(out)
    assert history["phase"] == ["1-head", "2-fine-tune-1"]
    assert len(history["lesion_loss"]) == 2 and "val_macro_f1" in history and "val_probabilities_macro_f1" not in history
    assert "1-head features" not in json.loads((out / "metrics.json").read_text())["timings_s"]
    lesion = meta["lesion"]
    assert lesion["shape"] == [1, 8, 8, 1] and lesion["stride"] == 4 and 0 < lesion["threshold"] < 1
    assert "dice" in lesion["metrics"]
    from busi_classifier.serving.predictor import Predictor

    for variant in ("float32", "int8_dynamic"):
        assert Predictor(out, variant).has_lesion, variant


def test_loss_schedule_selection_and_strategy_options_are_used_and_recorded(synthetic_dir, tmp_path):
    """One run with the non-default loss, schedule, selection and augmentation options and
    MirroredStrategy: each is used and recorded. (Mixed precision runs in the pretrained
    test: its dynamic loss scaling skips the first steps, which would move the schedule.)"""
    out = tmp_path / "run"
    meta = run(synthetic_dir, out, "--weights", "none", "--epochs-head", "2", "--epochs-fine-tune", "0",
               "--loss", "focal", "--focal-gamma", "1.5", "--label-smoothing", "0.1", "--lr-schedule", "cosine",
               "--warmup-epochs", "1", "--monitor", "val_macro_auc", "--no-class-weights", "--augment",
               "flip,speckle", "--early-stopping", "0", "--no-deterministic", "--distribute", "mirrored")
    t = meta["training"]
    assert (t["loss"], t["focal_gamma"], t["label_smoothing"], t["lr_schedule"], t["monitor"]) == (
        "focal", 1.5, 0.1, "cosine", "val_macro_auc")
    assert t["class_weights"] is False and t["augment"] == ["flip", "speckle"] and t["deterministic"] is False
    assert t["distribute"] == "mirrored"
    history = history_of(out)
    assert len(history["loss"]) == 2 and "val_macro_auc" in history
    # cosine with one warm-up epoch: at the peak after epoch 1, decayed to 1 % of it at the end
    assert history["learning_rate"] == pytest.approx([1e-3, 1e-5], rel=1e-3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["monitor"] == "val_macro_auc"


def test_bad_option_is_a_clear_error(synthetic_dir, tmp_path, capsys):
    assert train_main(["--data", str(synthetic_dir), "--out", str(tmp_path), "--augment", "flip,blur"]) == 2
    assert "unknown augmentation(s) blur" in capsys.readouterr().err
    assert train_main(["--data", str(synthetic_dir), "--out", str(tmp_path), "--label-smoothing", "1.5"]) == 2


def test_same_seed_gives_the_same_model(synthetic_dir, trained_model, tmp_path):
    """Training again with the session model's settings gives a byte-identical float32
    model (model_version carries the SHA-256 of model.tflite) and the same split."""
    from conftest import TRAINED_MODEL_ARGS

    assert train_main(["--data", str(synthetic_dir), "--out", str(tmp_path / "again"), *TRAINED_MODEL_ARGS,
                       "--variants", "float32"]) == 0
    again = json.loads((tmp_path / "again" / "model.json").read_text())
    first = json.loads((trained_model / "model.json").read_text())
    assert again["model_version"] == first["model_version"]
    assert (tmp_path / "again" / "split.csv").read_text() == (trained_model / "split.csv").read_text()


def test_cached_features_give_the_same_head_as_running_the_base(synthetic_dir, weights_file, tmp_path):
    """Fast head training is an optimisation, not a different method: without
    augmentation and with one view, the head trains to the same weights. (The training
    phases only: evaluation and export are the same code either way.)"""
    import keras

    from busi_classifier.cli import config_from_args, train_parser
    from busi_classifier.training import loop

    common = ["--data", str(synthetic_dir), *TINY, "--weights", str(weights_file), "--epochs-head", "2",
              "--epochs-fine-tune", "0", "--augment", "none", "--feature-views", "1", "--early-stopping", "0",
              "--lr-schedule", "constant", "--task", "classify"]
    heads, histories = [], []
    for flag in ("--cache-features", "--no-cache-features"):
        config = config_from_args(train_parser().parse_args([*common, "--out", str(tmp_path / flag), flag]))
        data = loop.prepare_data(config, progress=False)
        model, runner = loop.train_model(config, data, loop.configure_runtime(config), progress=False)
        heads.append(model.get_layer("probabilities").get_weights())
        histories.append(runner.history)
        assert ("1-head features" in runner.timings) == (flag == "--cache-features")
    for a, b in zip(*heads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], rtol=1e-3)
    keras.backend.clear_session()


def test_evaluate_command_reproduces_what_training_wrote(trained_model, capsys):
    from busi_classifier.evaluation.scoring import main

    written = json.loads((trained_model / "metrics.json").read_text())["test"]
    assert main(["--model", str(trained_model / "model.keras"), "--quiet"]) == 0
    assert "test split" in capsys.readouterr().out
    again = json.loads((trained_model / "evaluation-model-keras-test.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "temperature"):
        assert again[key] == pytest.approx(written[key], abs=1e-6), key
    assert again["confusion_matrix"] == written["confusion_matrix"]
    assert again["ci95"]["accuracy"] == pytest.approx(written["ci95"]["accuracy"], abs=1e-6)
    # the TFLite model (LiteRT) on the same split: same predictions, probabilities within 1e-4
    assert main(["--model", str(trained_model / "model.tflite"), "--quiet"]) == 0
    tflite = json.loads((trained_model / "evaluation-model-tflite-test.json").read_text())
    assert tflite["confusion_matrix"] == written["confusion_matrix"]
    assert tflite["macro_auc"] == pytest.approx(written["macro_auc"], abs=1e-3)


def test_preprocess_layer_is_resnet50_caffe_preprocessing():
    """The layer inside the model equals keras.applications.resnet50.preprocess_input."""
    import keras

    from busi_classifier.training.model import ResNet50Preprocess

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ResNet50Preprocess()(x)), expected, atol=1e-4)
