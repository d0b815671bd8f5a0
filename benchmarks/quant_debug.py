"""Where the full-integer model loses the answer, and what each published remedy buys back.

    python benchmarks/quant_debug.py --model artifacts/busi_mt224 --data ../shared/busi/Dataset_BUSI_with_GT \
        --out quant_debug.json

1. **Per-layer error** (``tf.lite.experimental.QuantizationDebugger``): the int8_full
   model of the served graph, instrumented with numeric-verify ops, run on ``--debug-images``
   gate images; per quantised tensor the RMSE between the float and the dequantised int8
   values, divided by the tensor's quantisation step (``scale``): about 0.29 (1/sqrt(12))
   is pure rounding, much more means the range or the weights lose the signal there.
   The ``--top`` worst tensors are printed and written.
2. **Remedies, one by one**, each converted, then compared with the Keras model on the gate
   images (every train and validation image of the run's ``split.csv`` and one augmented view
   of each, at most GATE_MAX_IMAGES, as export gates them; never a test image): top-1
   agreement, macro-F1 difference, the largest probability difference, the invoke's p50 on
   one thread, and the file size:

   * ``export``: what export does (REPRESENTATIVE_IMAGES random training images);
   * ``all train + views``: calibration on every training image and one augmented view of each;
   * ``per-tensor weights``: the same calibration with per-channel weight scales off (the
     converter's default is per-channel for convolutions: this shows what that default buys);
   * ``float for the worst K``: the same calibration with the K tensors of step 1 with the
     largest error kept in float (the debugger's ``denylisted_nodes``: selective quantisation),
     for each K in ``--denylist``.

   Bias correction and quantisation-aware training are not offered by the TFLite converter;
   they are not measured here.

The gate export applies is ``top1_agreement >= 0.99`` and ``macro_f1_diff >= -0.01``
(``busi_classifier.export.variants``); the table marks each row that passes it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train.py output folder (model.keras, split.csv, model.json)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder the run was trained on")
    parser.add_argument("--debug-images", type=int, default=16, help="gate images the debugger runs (default: 16)")
    parser.add_argument("--top", type=int, default=15, help="worst tensors to print (default: 15)")
    parser.add_argument("--denylist", default="5,10,20", help="K values: keep the K worst tensors in float (default: 5,10,20)")
    parser.add_argument("--repeats", type=int, default=20, help="timed invokes per file (default: 20)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def quiet():
    """The converter's stdout and native stderr out of the way."""
    from busi_classifier.console import native_stderr_silenced

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(native_stderr_silenced())
    return stack


def load_split(model_dir: Path, data_dir: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decoded train and val images of the run's split.csv (the function's own decoding)."""
    from busi_classifier.data.dataset import CLASSES
    from busi_classifier.serving.decode import decode_image

    out: dict[str, list] = {"train": ([], []), "val": ([], [])}
    with open(model_dir / "split.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] in out:
                out[row["split"]][0].append(decode_image((data_dir / row["path"]).read_bytes(), size))
                out[row["split"]][1].append(CLASSES.index(row["label"]))
    return {k: (np.stack(v[0]), np.array(v[1])) for k, v in out.items()}


def with_views(images: np.ndarray, seed: int) -> np.ndarray:
    """``images`` and one augmented view of each (all of the project's augmentations)."""
    from busi_classifier.config import AUGMENTATIONS
    from busi_classifier.training.augmentation import build_augmenter

    augmenter = build_augmenter(tuple(AUGMENTATIONS), seed + 1000)
    views = [np.clip(np.round(np.asarray(augmenter(images[i:i + 64].astype("float32"), training=True))), 0, 255)
             .astype(np.uint8) for i in range(0, len(images), 64)]
    return np.concatenate([images, *views])


def int8_converter(graph, calibration: np.ndarray, per_channel: bool = True):
    """The export's own int8_full converter (``busi_classifier.export.tflite``)."""
    from busi_classifier.export.tflite import int8_full_converter

    return int8_full_converter(graph, calibration, per_channel)


def probabilities_of(path: Path, size: int, images: np.ndarray) -> tuple[np.ndarray, float]:
    """(raw probabilities of every image, p50 ms of one invoke on one thread)."""
    from busi_classifier.data.dataset import CLASSES
    from busi_classifier.serving.predictor import Predictor

    with quiet():
        batch = Predictor.for_file(path, CLASSES, size, num_threads=None)
        timed = Predictor.for_file(path, CLASSES, size, num_threads=1)
    probabilities = np.stack([batch.predict_array(image, calibrated=False) for image in images])
    for _ in range(3):
        timed.predict_array(images[0], calibrated=False)
    times = []
    for i in range(ARGS.repeats):
        t0 = time.perf_counter()
        timed.predict_array(images[i % len(images)], calibrated=False)
        times.append((time.perf_counter() - t0) * 1000)
    return probabilities, float(np.median(times))


ARGS: argparse.Namespace


def short(tensor: str) -> str:
    """A fused op's tensor name, readable: its first part, without the model's scopes."""
    first = tensor.split(";")[0]
    return "/".join(part for part in first.split("/") if not part.startswith(("functional", "resnet50_1")))


def main(argv=None) -> int:
    global ARGS
    ARGS = args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from busi_classifier.export.variants import MAX_MACRO_F1_LOSS, MIN_TOP1_AGREEMENT, agreement_evidence
    from busi_classifier.training.loop import GATE_MAX_IMAGES, REPRESENTATIVE_IMAGES

    card = json.loads((args.model / "model.json").read_text())
    size = int(card["input"]["size"])
    seed = int(card.get("training", {}).get("seed", 42))
    started = time.time()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    split = load_split(args.model, args.data, size)
    x_train, y_train = split["train"]
    images = with_views(np.concatenate([x_train, split["val"][0]]), seed)
    labels = np.concatenate([y_train, split["val"][1], y_train, split["val"][1]])
    if len(images) > GATE_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:GATE_MAX_IMAGES])
        images, labels = images[keep], labels[keep]
    print(f"gate images: {len(images)} (train {len(x_train)}, val {len(split['val'][0])}, and one view each)")
    model = keras.models.load_model(args.model / "model.keras", compile=False)
    # the probabilities alone: the output the gate's top-1 and macro-F1 are about
    graph = keras.Model(model.inputs, model.get_layer("probabilities").output if "probabilities" in
                        [layer.name for layer in model.layers] else model.outputs[0])
    reference = np.asarray(graph.predict(images.astype("float32"), batch_size=16, verbose=0), dtype=np.float64)
    rng = np.random.default_rng(seed)
    export_calibration = x_train[np.sort(rng.permutation(len(x_train))[:REPRESENTATIVE_IMAGES])]
    full_calibration = with_views(x_train, seed + 7)

    # 1. per-layer error
    debug = images[np.random.default_rng(0).permutation(len(images))[:args.debug_images]]
    debugger_converter = int8_converter(graph, full_calibration)
    t0 = time.time()
    with quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=debugger_converter,
            debug_dataset=lambda: ([np.asarray(image, dtype=np.float32)[None]] for image in debug))
        debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    buffer.seek(0)
    layers = list(csv.DictReader(buffer))
    for row in layers:
        mse, scale = float(row["mean_squared_error"]), float(row["scale"])
        row["rmse_per_scale"] = float(np.sqrt(mse) / scale) if scale > 0 else float("nan")
    layers = [r for r in layers if np.isfinite(r["rmse_per_scale"])]
    layers.sort(key=lambda r: -r["rmse_per_scale"])
    print(f"\nper-tensor error of the int8 model ({len(layers)} quantised tensors, {len(debug)} images, "
          f"{time.time() - t0:.0f} s): RMSE / quantisation step, worst first (0.29 = rounding alone)")
    print("| tensor | op | RMSE / step | mean error | max abs error |\n|---|---|---:|---:|---:|")
    for r in layers[:args.top]:
        print(f"| {short(r['tensor_name'])} | {r['op_name']} | {r['rmse_per_scale']:.2f} | {float(r['mean_error']):+.4f} | "
              f"{float(r['max_abs_error']):.4f} |")

    # 2. the remedies
    remedies = [("export (REPRESENTATIVE_IMAGES training images)", lambda: int8_converter(graph, export_calibration).convert()),
                ("all train + views", lambda: int8_converter(graph, full_calibration).convert()),
                ("all train + views, per-tensor weights", lambda: int8_converter(graph, full_calibration, False).convert())]
    for k in [int(v) for v in args.denylist.split(",") if v.strip()]:
        nodes = [r["tensor_name"] for r in layers[:k]]

        def selective(nodes=nodes):
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
            d = tf.lite.experimental.QuantizationDebugger(
                converter=int8_converter(graph, full_calibration),
                debug_dataset=lambda: ([np.asarray(image, dtype=np.float32)[None]] for image in debug[:1]),
                debug_options=options)
            return d.get_nondebug_quantized_model()
        remedies.append((f"all train + views, float for the worst {k}", selective))
    rows = []
    with tempfile.TemporaryDirectory(prefix="quant-debug-") as tmp:
        with quiet():
            float_data = tf.lite.TFLiteConverter.from_keras_model(graph).convert()
        float_file = Path(tmp) / "float32.tflite"
        float_file.write_bytes(float_data)
        candidates = [("float32 (reference file)", float_file)]
        for name, make in remedies:
            t0 = time.time()
            with quiet():
                data = make()
            path = Path(tmp) / f"r{len(candidates)}.tflite"
            path.write_bytes(data)
            candidates.append((name, path))
            print(f"converted: {name} ({time.time() - t0:.0f} s)", flush=True)
        for name, path in candidates:
            probabilities, p50 = probabilities_of(path, size, images)
            evidence = agreement_evidence(reference, probabilities, labels)
            passed = (evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12
                      and evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12)
            rows.append({"remedy": name, "bytes": path.stat().st_size, "p50_ms": p50, "passes": passed,
                         **{k: evidence[k] for k in ("top1_agreement", "macro_f1_diff", "max_probability_diff")}})
    print(f"\nremedies, on {len(images)} gate images (probabilities output; the gate: top-1 agreement >= "
          f"{MIN_TOP1_AGREEMENT}, macro-F1 loss <= {MAX_MACRO_F1_LOSS})")
    print("| remedy | top-1 agreement | macro-F1 diff | largest probability diff | p50 (1 thread) | size | gate |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['remedy']} | {r['top1_agreement']:.3f} | {r['macro_f1_diff']:+.3f} | {r['max_probability_diff']:.3f} | "
              f"{r['p50_ms']:.1f} ms | {r['bytes'] / 1e6:.1f} MB | {'passes' if r['passes'] else 'fails'} |")
    print(f"\ndone in {time.time() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"command": f"python {shlex.join(sys.argv)}", "model": str(args.model),
                                        "model_version": card.get("model_version"), "size": size,
                                        "gate_images": int(len(images)), "debug_images": int(len(debug)),
                                        "layers": layers, "remedies": rows}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
