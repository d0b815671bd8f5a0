"""What issue 24's benchmark scripts compute, checked on models whose answer is known:
the multiply-adds of benchmarks/floor.py against the arithmetic of the layers, which ops
XNNPACK takes, the accumulated error of benchmarks/quant_debug.py (a file against itself
has none; an int8 file some, in graph order), and benchmarks/end_to_end.py's run on the
session model. No timing is asserted: the timings are the scripts' output."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import floor  # noqa: E402
import quant_debug  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A conv -> conv -> pool -> dense -> softmax model, as float32 and int8_full .tflite files."""
    import keras

    from busi_classifier.export.tflite import convert_to_tflite

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs / 255.0)  # 16x16x8, 3x3x3
    x = keras.layers.Conv2D(4, 1, strides=2, name="b")(x)  # 8x8x4, 1x1x8
    x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))  # 3 x 4, as the model's head
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "float32.tflite").write_bytes(convert_to_tflite(model, "float32"))
    (folder / "int8_full.tflite").write_bytes(convert_to_tflite(model, "int8_full", images))
    return folder, images


def test_multiply_adds_are_the_layers_arithmetic(tiny_files):
    folder, _ = tiny_files
    work = floor.macs_of(folder / "float32.tflite")
    conv = 16 * 16 * 8 * 3 * 3 * 3 + 8 * 8 * 4 * 1 * 1 * 8
    assert work["by_op"] == {"CONV_2D": conv, "FULLY_CONNECTED": 3 * 4}
    assert work["total"] == conv + 3 * 4
    assert floor.macs_of(folder / "int8_full.tflite")["total"] == work["total"]  # the same graph, quantised


def test_xnnpack_takes_every_float_op_and_all_but_the_int8_softmax(tiny_files):
    folder, _ = tiny_files
    plain = floor.kernels_of(folder / "float32.tflite")
    assert plain["litert_kernel_ops"] == {} and plain["xnnpack_ops"] == plain["ops"] and plain["partitions"] == 1
    quantised = floor.kernels_of(folder / "int8_full.tflite")
    assert quantised["litert_kernel_ops"] == {"SOFTMAX": 1}
    assert quantised["xnnpack_op_types"]["CONV_2D"] == 2


def test_the_cpu_reading_names_the_extensions_that_pick_the_kernels():
    info = floor.cpu()
    assert set(info["extensions"]) >= {"avx2", "avx512_vnni", "avx_vnni"}
    assert all(isinstance(v, bool) for v in info["extensions"].values())


def test_accumulated_error_is_none_against_itself_and_grows_in_the_int8_file(tiny_files):
    folder, images = tiny_files
    same = quant_debug.accumulated_error(folder / "float32.tflite", folder / "float32.tflite", images[:4])
    assert same and all(r["sqnr_db"] > 100 for r in same)  # identical tensors: only the 1e-30 floor
    rows = quant_debug.accumulated_error(folder / "float32.tflite", folder / "int8_full.tflite", images[:4])
    ops = [r["op_name"] for r in rows]
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops and "DELEGATE" not in ops
    assert ops.index("CONV_2D") < ops.index("FULLY_CONNECTED")  # graph order
    conv = [r for r in rows if r["op_name"] == "CONV_2D"]
    assert all(0 < r["sqnr_db"] < 80 for r in conv)  # int8: some error, far from none
    assert all(r["drop_db"] is None or np.isfinite(r["drop_db"]) for r in rows)


@pytest.mark.slow
def test_end_to_end_runs_the_function_and_the_original_on_held_back_images(trained_model, synthetic_dir, tmp_path):
    out = tmp_path / "e2e.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--model", str(trained_model),
                           "--data", str(synthetic_dir), "--images", "3", "--rounds", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    card = json.loads((trained_model / "model.json").read_text())
    assert result["variant"] == card["default_variant"] and result["images"] == 3
    assert result["function_p50_ms"] > 0 and result["original_p50_ms"] > 0
    assert result["ratio"] == pytest.approx(result["original_p50_ms"] / result["function_p50_ms"])
    assert "ratio (original p50 / function p50)" in done.stdout
