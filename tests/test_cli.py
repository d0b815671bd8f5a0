"""The command line as a user types it: subcommands, help, fail-fast checks, predict,
evaluate on a folder, the exported files (no optimizer state, only the variants asked for)."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import ROOT, synthetic_images
from PIL import Image

from busi_classifier.cli import COMMANDS, main, train_main
from busi_classifier.config import ConfigError, TrainConfig, parse_variants
from busi_classifier.serving.events import direct_event
from busi_classifier.training import preflight

FAST_FAILURE_S = 5.0  # a mistake must show in seconds, not after hashing every image


# --------------------------------------------------------------------------- commands and help


def test_unknown_command_is_named_and_the_commands_listed(capsys):
    assert main(["foo"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'foo'" in err
    for name in ("train", "audit", "split", "evaluate", "predict", "serve", "invoke", "synthesize"):
        assert name in err


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


class _Captured(Exception):
    pass


def _parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``command`` builds, caught when it starts parsing."""
    captured = {}

    def grab(self, args=None, namespace=None):
        captured["parser"] = self
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(_Captured):
        COMMANDS[command][0]([])
    monkeypatch.undo()
    return captured["parser"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help_text_that_shows_its_default(command, monkeypatch):
    """Every option of every subcommand (invoke's --per-class had neither)."""
    parser = _parser_of(command, monkeypatch)
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert flags
    for action in flags:
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if not action.required:
            text = formatter._expand_help(action)
            assert "default" in text, f"{command} {action.option_strings[0]}: {text!r} shows no default"


def test_train_parser_covers_every_setting_and_maps_back_without_loss(tmp_path):
    """The parser is built from TrainConfig's fields: every field is a flag, and parsing
    the defaults gives back the default config."""
    from dataclasses import fields

    from busi_classifier.cli import config_from_args, train_parser

    parser = train_parser()
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in fields(TrainConfig)} <= dests
    config = config_from_args(parser.parse_args(["--data", "d"]))
    assert config == TrainConfig(data_dir="d")
    config = config_from_args(parser.parse_args(["--data", "d", "--val-fraction", "0.2", "--test-fraction", "0.1",
                                                 "--augment", "flip", "--fine-tune-stages", "conv4_block1_1_conv",
                                                 "--variants", "int8_dynamic", "--bootstrap", "10"]))
    assert (config.val_fraction, config.test_fraction, config.augment, config.fine_tune_stages, config.variants,
            config.bootstrap_resamples) == (0.2, 0.1, ("flip",), ("conv4_block1_1_conv",),
                                            ("float32", "int8_dynamic"), 10)


def test_variants_parse_keeps_float32_the_reference():
    assert parse_variants("all") == ("float32", "float16", "int8_dynamic", "int8_full")
    assert parse_variants("int8_full,float32") == ("float32", "int8_full")
    assert parse_variants("int8_dynamic") == ("float32", "int8_dynamic")
    with pytest.raises(ConfigError, match="unknown variant"):
        parse_variants("int4")


@pytest.mark.parametrize("command", ["audit", "split"])
def test_commands_without_tensorflow_do_not_offer_its_log_lines(command, monkeypatch):
    parser = _parser_of(command, monkeypatch)
    [verbose] = [a for a in parser._actions if "--verbose" in a.option_strings]
    assert "TensorFlow's" not in verbose.help and "no effect" in verbose.help


def test_stage_names_are_the_real_resnet50_layer_names():
    keras = pytest.importorskip("keras")
    from busi_classifier.resnet50_layers import RESNET50_LAYER_NAMES

    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert tuple(layer.name for layer in base.layers[1:]) == RESNET50_LAYER_NAMES


# --------------------------------------------------------------------------- cheap checks first


def _fails_fast(argv: list[str], out, capsys) -> str:
    started = time.perf_counter()
    code = train_main(argv)
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code != 0
    assert elapsed < FAST_FAILURE_S, f"took {elapsed:.1f} s: {err}"
    assert not (out / "split.csv").exists(), "split.csv written before the check failed"
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_bad_stage_name_fails_at_once_naming_the_real_flag(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    err = _fails_fast(["--data", str(synthetic_dir), "--out", str(out), "--weights", "none",
                       "--fine-tune-stages", "conv5_block1_1_conv,conv4_block_1_conv"], out, capsys)
    assert "--fine-tune-stages" in err and "conv4_block_1_conv" in err and "--fine-tune-from" not in err


def test_missing_weights_file_fails_before_hashing(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    err = _fails_fast(["--data", str(synthetic_dir), "--out", str(out), "--weights", str(tmp_path / "nope.h5")],
                      out, capsys)
    assert "weights file not found" in err


def test_weights_file_that_is_not_hdf5_fails_before_hashing(synthetic_dir, tmp_path, capsys):
    out, bogus = tmp_path / "run", tmp_path / "weights.h5"
    bogus.write_text("not weights")
    err = _fails_fast(["--data", str(synthetic_dir), "--out", str(out), "--weights", str(bogus)], out, capsys)
    assert "not an HDF5 weights file" in err


def test_unreachable_imagenet_download_fails_before_hashing(synthetic_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/resnet50_notop.h5")
    monkeypatch.setattr(preflight, "keras_cache_candidates", lambda: [tmp_path / "cache" / "none.h5"])
    out = tmp_path / "run"
    err = _fails_fast(["--data", str(synthetic_dir), "--out", str(out), "--weights", "imagenet"], out, capsys)
    assert "cannot download the ImageNet weights" in err and "--weights none" in err


def _one_error_line(argv: list[str], out, env_changes: dict | None = None) -> str:
    """Run ``train.py ARGV`` as a user does; its stderr must be exactly one line starting
    with ``error:``, and split.csv not written. Returns that line."""
    env = {**os.environ, **(env_changes or {})}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (out / "split.csv").exists(), "split.csv written before the check failed"
    assert elapsed < 4 * FAST_FAILURE_S, f"took {elapsed:.1f} s: {result.stderr}"  # a fresh interpreter, no TensorFlow
    return lines[0]


@pytest.mark.parametrize("size", ["16", "31"])
def test_image_size_below_resnet50s_minimum_is_one_line_before_the_split(synthetic_dir, tmp_path, size):
    out = tmp_path / "run"
    result_line = _one_error_line(["--data", str(synthetic_dir), "--out", str(out), "--weights", "none",
                                   "--image-size", size], out)
    assert "--image-size" in result_line and "at least 32" in result_line


def test_image_size_check_is_a_usage_error_like_the_other_cheap_checks(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--data", str(synthetic_dir), "--out", str(out), "--image-size", "16"]) == 2
    assert train_main(["--data", str(synthetic_dir), "--out", str(out), "--dropout", "1.5"]) == 2
    assert not (out / "split.csv").exists()


def test_smallest_resnet50_input_passes_the_checks():
    TrainConfig(data_dir="d", image_size=32).check()
    with pytest.raises(ConfigError, match="--image-size must be at least 32"):
        TrainConfig(data_dir="d", image_size=31).check()


def test_imagenet_weights_without_internet_is_one_line(synthetic_dir, tmp_path):
    """No download possible (an unreachable proxy stands in for no internet) and nothing in
    the Keras cache: one line that names both ways out, before any hashing."""
    out, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    unreachable = "http://127.0.0.1:9"
    line = _one_error_line(["--data", str(synthetic_dir), "--out", str(out), "--weights", "imagenet"], out,
                           {"HOME": str(home), "KERAS_HOME": str(home / ".keras"), "https_proxy": unreachable,
                            "HTTPS_PROXY": unreachable, "http_proxy": unreachable, "HTTP_PROXY": unreachable,
                            "no_proxy": "", "NO_PROXY": ""})
    assert "cannot download the ImageNet weights" in line
    assert "--weights none" in line and "--weights PATH" in line


def test_missing_dataset_points_to_data_readme(tmp_path, capsys):
    out = tmp_path / "run"
    err = _fails_fast(["--data", str(tmp_path / "nowhere"), "--out", str(out), "--weights", "none"], out, capsys)
    assert "dataset folder not found" in err and "data/README.md" in err


def test_split_fractions_have_flags_and_the_error_names_them(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["split", "--data", str(synthetic_dir), "--out", str(out), "--val-fraction", "0.6",
                 "--test-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--val-fraction" in err and "--test-fraction" in err
    assert not (out / "split.csv").exists()


def test_split_and_audit_commands_write_no_carriage_returns_to_a_log(synthetic_dir, tmp_path, capsys):
    """stderr is not a terminal here (as in a log file or CI): no progress-bar updates."""
    assert main(["split", "--data", str(synthetic_dir), "--out", str(tmp_path / "s"), "--val-fraction", "0.2"]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "s" / "split.csv").is_file() and "split.csv" in captured.out
    assert "\r" not in captured.err
    assert main(["audit", "--data", str(synthetic_dir), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "a" / "audit.md").is_file() and "\r" not in captured.err


def test_converter_chatter_on_file_descriptor_2_is_silenced(capfd):
    import os

    from busi_classifier.console import native_stderr_silenced

    with native_stderr_silenced():
        os.write(2, b"W0000 converter chatter\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "chatter" not in err and "after" in err


# --------------------------------------------------------------------------- TensorFlow's own log lines

# What TensorFlow's shared libraries print while they load (absl writes them to stderr
# before its logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL says)
TF_CHATTER = ("absl::InitializeLog", "oneDNN", "I0000", "cpu_feature_guard")


def _user_env() -> dict:
    """The environment of a user who set nothing (conftest sets TF_CPP_MIN_LOG_LEVEL for
    the test process), with oneDNN switched on explicitly: its notice then prints on any
    x86 machine, not only on those where it is on by default."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")}
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return env


def test_importing_keras_after_quiet_tensorflow_prints_nothing_and_verbose_shows_it():
    code = ("import sys; from busi_classifier.console import quiet_tensorflow; quiet_tensorflow({verbose}); "
            "import keras, tensorflow as tf; assert tf.constant(2.0).numpy() == 2.0; "
            "print('python stderr still works', file=sys.stderr)")
    runs = {verbose: subprocess.run([sys.executable, "-c", code.format(verbose=verbose)], cwd=ROOT, env=_user_env(),
                                    capture_output=True, text=True, timeout=300)
            for verbose in (False, True)}
    quiet, verbose = runs[False], runs[True]
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr.strip() == "python stderr still works", quiet.stderr
    if platform.machine().lower() in ("x86_64", "amd64"):  # the control: the lines exist and --verbose shows them
        assert "oneDNN" in verbose.stderr, verbose.stderr


@pytest.mark.slow
def test_evaluate_of_model_keras_prints_no_tensorflow_log_lines(trained_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "busi_classifier", "evaluate", "--model",
                             str(trained_model / "model.keras"), "--out", str(tmp_path), "--bootstrap", "10", "--quiet"],
                            cwd=ROOT, env=_user_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if any(m in line for m in TF_CHATTER)], result.stderr
    assert "test split" in result.stdout


# --------------------------------------------------------------------------- serve


def test_serve_prints_a_model_that_does_not_load_once(tmp_path):
    """One `error:` line, not also the handler's own "function not initialised" log line."""
    result = subprocess.run([sys.executable, "-m", "busi_classifier", "serve", "--model", str(tmp_path / "none"),
                             "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: model not found"), lines


@pytest.mark.slow
def test_serve_prints_no_litert_info_line(trained_model):
    """As predict and invoke: no "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."; and a
    Ctrl-C right after the "serving" line ends it quietly."""
    import signal

    def as_from_a_terminal():
        # A child inherits its parent's ignored or blocked SIGINT, and then no Ctrl-C reaches it:
        # inside the suite the test process may have either (seen: the serve below never stopped),
        # so the child gets what a shell gives a command typed at a terminal.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen([sys.executable, "-m", "busi_classifier", "serve", "--model", str(trained_model),
                                "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_from_a_terminal)
    try:
        before = []
        while not before or "serving" not in before[-1]:
            line = process.stderr.readline()
            assert line, f"serve stopped before serving: {before}"
            before.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[1]
    err = "".join(before) + rest
    assert "XNNPACK" not in err and "INFO:" not in err, err
    assert [line for line in err.splitlines() if line.strip()][0].startswith("serving "), err
    # Ctrl-C the moment the line is out (as here) stops as quietly as later: no traceback, status 0
    assert process.returncode == 0 and "Traceback" not in err, err


# --------------------------------------------------------------------------- predict


@pytest.mark.slow
def test_predict_prints_one_row_per_file_with_the_handlers_class(trained_model, synthetic_dir, lambda_module,
                                                                  tmp_path, capsys):
    files = []
    for i, (_, data) in enumerate(synthetic_images(synthetic_dir, 1)):
        path = tmp_path / f"scan {i}.png"
        path.write_bytes(data)
        files.append((path, lambda_module.lambda_handler(direct_event(data), None)["prediction"]))
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    missing = tmp_path / "missing.png"
    capsys.readouterr()  # the handler's own log lines
    code = main(["predict", "--model", str(trained_model), *(str(p) for p, _ in files), str(not_image), str(missing)])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "prediction", "normal", "benign", "malignant", "input", "check"]
    assert len(lines) == 1 + len(files) + 2
    for (path, expected), line in zip(files, lines[1:], strict=False):
        assert line.startswith(str(path)), line
        fields = line[len(str(path)):].split()
        assert fields[0] == expected and fields[-1] in ("ok", "FLAGGED")
        assert sum(float(v) for v in fields[1:-1]) == pytest.approx(1.0, abs=2e-3)
    assert lines[-2].startswith(str(not_image)) and "error:" in lines[-2]
    assert lines[-1].startswith(str(missing)) and "error: cannot read" in lines[-1]
    assert code == 1 and "Traceback" not in out


@pytest.mark.slow
def test_predict_json_and_no_tensorflow_import(trained_model, synthetic_dir, tmp_path):
    label, data = synthetic_images(synthetic_dir, 1)[0]
    image = tmp_path / "scan.png"
    image.write_bytes(data)
    code = ("import sys; from busi_classifier.cli import main; "
            f"rc = main(['predict', '--json', '--model', {str(trained_model)!r}, {str(image)!r}]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'; "
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["file"] == str(image) and row["prediction"] in row["probabilities"]


def _card_folder(tmp_path):
    from test_settings import card_folder  # a model folder whose card names three variant files

    return card_folder(tmp_path)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_an_unknown_variant_names_the_flag_the_user_typed(command, tmp_path, monkeypatch, capsys):
    """--variant float64: the message names --variant (and what there is), not the
    function's MODEL_VARIANT setting, which the user did not set."""
    monkeypatch.delenv("MODEL_VARIANT", raising=False)
    folder = _card_folder(tmp_path)
    argv = (["evaluate", "--model", str(folder), "--variant", "float64"] if command == "evaluate"
            else ["predict", "--model", str(folder), "--variant=float64", str(tmp_path / "scan.png")])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --variant 'float64'") and "MODEL_VARIANT" not in err
    assert "float32, int8_dynamic, int8_full" in err and len(err.strip().splitlines()) == 1


def test_flag_values_are_read_in_both_spellings():
    from busi_classifier.cli import _flag_values

    assert _flag_values(["--model", "m", "--variant=v"], "--model", "--variant") == ["m", "v"]
    assert _flag_values(["--subset", "val"], "--model", "--variant") == [None, None]


def test_predict_without_a_model_is_one_line(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "none"), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


# --------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_accepts_a_model_folder_and_figures_name_the_subset(trained_model, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained_model), "--subset", "val", "--out", str(out), "--quiet"]) == 0
    assert "val split" in capsys.readouterr().out
    served = json.loads((trained_model / "model.json").read_text())["default_variant"]
    reports = list(out.glob("evaluation-*-tflite-val.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text())["subset"] == "val"
    titles = {p.name: Image.open(p).info.get("Title", "") for p in out.glob("*.png")}
    assert len(titles) == 3, titles
    for name, title in titles.items():
        assert "val split" in title and "test" not in title, (name, title)
    assert served


def test_figure_titles_name_the_split(tmp_path):
    from busi_classifier.evaluation.figures import write_evaluation_figures
    from busi_classifier.evaluation.metrics import evaluate_predictions

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    p = rng.dirichlet(np.ones(3), size=len(y))
    metrics = evaluate_predictions(y, p, 1.0, 20, 0)
    figures = write_evaluation_figures(metrics, y, p, 1.0, tmp_path, prefix="x-", split="train")
    for name, path in figures.items():
        title = Image.open(path).info["Title"]
        assert "train split" in title, (name, title)


# --------------------------------------------------------------------------- export


def _tiny_model(size: int = 32):
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tiny")


def test_variants_flag_writes_only_those_variants(tmp_path):
    pytest.importorskip("tensorflow")
    from busi_classifier.export.variants import VARIANT_FILES
    from busi_classifier.training.loop import export_model

    out = tmp_path / "model"
    out.mkdir()
    (out / VARIANT_FILES["float16"]).write_bytes(b"stale")  # from an earlier run with every variant
    config = TrainConfig(image_size=32, variants=parse_variants("float32,int8_dynamic"))
    meta, score = export_model(_tiny_model(), out, config, {}, representative=np.zeros((4, 32, 32, 3), np.uint8),
                               progress=False)
    written = sorted(p.name for p in out.glob("*.tflite"))
    assert written == sorted([VARIANT_FILES["float32"], VARIANT_FILES["int8_dynamic"]])
    assert set(meta["variants"]) == {"float32", "int8_dynamic"}
    assert meta["explain"]["shape"] == [1, 30, 30, 3] and score is None  # no test data given: no served score


def _optimizer_datasets(keras_file) -> tuple[list[str], int]:
    import h5py

    with zipfile.ZipFile(keras_file) as archive:
        weights = archive.read("model.weights.h5")
    names: list[str] = []
    with h5py.File(io.BytesIO(weights), "r") as h5:
        h5.visit(lambda k: names.append(k) if isinstance(h5[k], h5py.Dataset) else None)
    return [n for n in names if n.startswith("optimizer")], len(weights)


@pytest.mark.slow
def test_model_keras_holds_no_optimizer_state(trained_model, tmp_path):
    """model.keras is for inference: no Adam moments (they tripled the file)."""
    from busi_classifier.training.model import load_keras_model

    optimizer_vars, size = _optimizer_datasets(trained_model / "model.keras")
    assert optimizer_vars == []
    import keras

    model = load_keras_model(trained_model / "model.keras")
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "with_optimizer.keras")
    with_vars, with_size = _optimizer_datasets(tmp_path / "with_optimizer.keras")
    assert with_vars and size < 0.5 * with_size


def test_train_py_is_the_train_command(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--variants" in result.stdout and "--val-fraction" in result.stdout
    result = subprocess.run([sys.executable, "-m", "busi_classifier", "train", "--data", str(tmp_path / "x"),
                             "--weights", "none", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "data/README.md" in result.stderr and "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
