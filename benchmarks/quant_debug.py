"""Where the full-integer model loses the answer, and what each published remedy buys back.

    python benchmarks/quant_debug.py --model artifacts/busi_mt128 --data ../shared/busi/Dataset_BUSI_with_GT \
        --out quant_debug.json

1. **Per-layer error** (``tf.lite.experimental.QuantizationDebugger``): the int8_full
   model of the served graph, instrumented with numeric-verify ops, run on ``--debug-images``
   gate images; per quantised tensor the RMSE between the float and the dequantised int8
   values, divided by the tensor's quantisation step (``scale``): about 0.29 (1/sqrt(12))
   is pure rounding, much more means the range or the weights lose the signal there.
   The ``--top`` worst tensors are printed and written. Each layer is fed the int8 model's
   own input there, so this shows a layer's own rounding, not what it does to the error it
   receives.
2. **Accumulated error**: both files (float32 and int8, the same graph) run on the same
   images with every intermediate tensor kept; per op output the SQNR of the int8 tensor
   against the float one (dB), and the op's **drop** (the SQNR of its worst input minus
   that of its output). The ops with the largest drops are where the answer is lost.
3. **Remedies, one by one**, each converted, then compared with the Keras model on the gate
   images (every train and validation image of the run's ``split.csv`` and one augmented view
   of each, at most GATE_MAX_IMAGES, as export gates them; never a test image): top-1
   agreement, macro-F1 difference, the largest probability difference, the invoke's p50 on
   one thread, and the file size:

   * ``export``: what export does (REPRESENTATIVE_IMAGES random training images);
   * ``all train, no views``: calibration on every training image;
   * ``all train + views``: calibration on every training image and one augmented view of each;
   * ``per-tensor weights``: the same calibration with per-channel weight scales off (the
     converter's default is per-channel for convolutions: this shows what that default buys);
   * ``float for the K largest drops``: the K ops of step 2 with the largest drops kept in
     float (the debugger's ``denylisted_nodes``: selective quantisation), for each K in
     ``--denylist``, on the calibration ``--denylist-base`` names.

   ``--remedies`` picks the rows (all by default).

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

REMEDIES = ("export", "train", "train_views", "per_tensor", "denylist")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train.py output folder (model.keras, split.csv, model.json)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder the run was trained on")
    parser.add_argument("--debug-images", type=int, default=16, help="gate images the debugger runs (default: 16)")
    parser.add_argument("--top", type=int, default=15, help="worst tensors to print (default: 15)")
    parser.add_argument("--denylist", default="5,10,20", help="K values: keep the K worst tensors in float (default: 5,10,20)")
    parser.add_argument("--repeats", type=int, default=20, help="timed invokes per file (default: 20)")
    parser.add_argument("--remedies", default=",".join(REMEDIES),
                        help=f"the rows to convert and measure, from {', '.join(REMEDIES)} (default: all)")
    parser.add_argument("--denylist-base", choices=("export", "train_views"), default="train_views",
                        help="the calibration of the denylist rows: export's REPRESENTATIVE_IMAGES training images or "
                             "every training image and a view of each (default: train_views)")
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


def gate_images(model_dir: Path, data_dir: Path, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(gate images, their labels, the training images, the number of validation images):
    export's selection (train + val of split.csv and one augmented view each, at most
    GATE_MAX_IMAGES, picked with the run's seed). benchmarks/peers.py uses it too."""
    from busi_classifier.training.loop import GATE_MAX_IMAGES

    split = load_split(model_dir, data_dir, size)
    x_train, y_train = split["train"]
    images = with_views(np.concatenate([x_train, split["val"][0]]), seed)
    labels = np.concatenate([y_train, split["val"][1], y_train, split["val"][1]])
    if len(images) > GATE_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:GATE_MAX_IMAGES])
        images, labels = images[keep], labels[keep]
    return images, labels, x_train, len(split["val"][0])


def probabilities_graph(model_dir: Path):
    """The run's Keras model cut at its ``probabilities`` output (the output the gate's top-1
    and macro-F1 are about), loaded with the project's loader."""
    import keras

    from busi_classifier.model_file import load_keras_model

    model = load_keras_model(model_dir / "model.keras")
    return keras.Model(model.inputs, model.get_layer("probabilities").output if "probabilities" in
                       [layer.name for layer in model.layers] else model.outputs[0])


def int8_converter(graph, calibration: np.ndarray, per_channel: bool = True):
    """The export's own int8_full converter (``busi_classifier.export.tflite``)."""
    from busi_classifier.export.tflite import int8_full_converter

    return int8_full_converter(graph, calibration, per_channel)


def float_ops(path: Path) -> int:
    """Multiply-add ops (CONV_2D, FULLY_CONNECTED, ...) of a .tflite file that compute in
    float: a selective model's float layers, all of them in the float file."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet():
        interpreter = Interpreter(model_path=str(path))
    types = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return sum(1 for op in interpreter._get_ops_details()  # noqa: SLF001
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
               and types[int(op["outputs"][0])] == np.float32)


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


def accumulated_error(float_file: Path, int8_file: Path, images: np.ndarray) -> list[dict]:
    """Where the int8 file's answer drifts from the float file's, layer by layer: each op
    output of the int8 file (dequantised) against the float file's tensor of the same name,
    both run on the same ``images`` with every intermediate tensor kept. Per op, in the
    int8 file's order: the SQNR of its output in dB (10 log10 of the float tensor's
    variance over the mean squared difference: 40 dB is an error 1 % of the signal's
    spread, 0 dB as large as the signal) and its ``drop``, the SQNR of its worst activation
    input minus that of its output: how much this op itself adds to the error it receives.
    The debugger's per-layer statistics (step 1) feed each layer the int8 model's own
    input, so they cannot show this."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def runner(path):
        # LiteRT's own kernels: a delegate (XNNPACK) keeps the tensors inside its partition to itself
        with quiet():
            interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
        ops = [op for op in interpreter._get_ops_details()  # noqa: SLF001 (LiteRT's only listing of the graph's nodes)
               if op["op_name"] != "DELEGATE"]
        details = {t["index"]: t for t in interpreter.get_tensor_details()}
        return interpreter, ops, details

    f_interp, f_ops, f_details = runner(float_file)
    q_interp, q_ops, q_details = runner(int8_file)
    f_by_name = {f_details[int(t)]["name"]: int(t) for op in f_ops for t in op["outputs"]}
    q_out = [(op, int(op["outputs"][0])) for op in q_ops if len(op["outputs"])]
    stats = {q: [0.0, 0.0, 0.0, 0] for _, q in q_out}  # sum of float, of its squares, of squared error, count

    def value(interpreter, details, index):
        array = interpreter.get_tensor(index)
        scale, zero = details[index]["quantization"]
        if array.dtype in (np.int8, np.uint8, np.int16) and scale:
            return (array.astype(np.float32) - zero) * scale
        return array.astype(np.float32)

    for image in images:
        batch = np.asarray(image, dtype=np.float32)[None]
        for interpreter in (f_interp, q_interp):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
            interpreter.invoke()
        for _, q in q_out:
            name = q_details[q]["name"]
            if name not in f_by_name:
                continue
            a = value(f_interp, f_details, f_by_name[name]).astype(np.float64)
            b = value(q_interp, q_details, q)
            if a.shape != b.shape:
                continue
            entry = stats[q]
            entry[0] += a.sum()
            entry[1] += (a * a).sum()
            entry[2] += ((a - b) ** 2).sum()
            entry[3] += a.size
    sqnr: dict[int, float] = {}
    for q, (total, squares, error, n) in stats.items():
        if n:
            variance = squares / n - (total / n) ** 2
            if variance > 0:
                sqnr[q] = float(10 * np.log10(variance / max(error / n, 1e-30)))
    rows = []
    for op, q in q_out:
        if q not in sqnr:
            continue
        inputs = [sqnr[int(t)] for t in op["inputs"] if int(t) in sqnr]
        rows.append({"tensor_name": q_details[q]["name"], "op_name": op["op_name"], "sqnr_db": sqnr[q],
                     "drop_db": (min(inputs) - sqnr[q]) if inputs else None})
    return rows


def short(tensor: str) -> str:
    """A fused op's tensor name, readable: its first part, without the model's scopes."""
    first = tensor.split(";")[0]
    return "/".join(part for part in first.split("/") if not part.startswith(("functional", "resnet50_1")))


def main(argv=None) -> int:
    global ARGS
    ARGS = args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from busi_classifier.export.variants import MAX_MACRO_F1_LOSS, MIN_TOP1_AGREEMENT, agreement_evidence
    from busi_classifier.training.loop import REPRESENTATIVE_IMAGES

    card = json.loads((args.model / "model.json").read_text())
    size = int(card["input"]["size"])
    seed = int(card.get("training", {}).get("seed", 42))
    started = time.time()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    images, labels, x_train, n_val = gate_images(args.model, args.data, size, seed)
    print(f"gate images: {len(images)} (train {len(x_train)}, val {n_val}, and one view each)")
    graph = probabilities_graph(args.model)
    reference = np.asarray(graph.predict(images.astype("float32"), batch_size=16, verbose=0), dtype=np.float64)
    rng = np.random.default_rng(seed)
    export_calibration = x_train[np.sort(rng.permutation(len(x_train))[:REPRESENTATIVE_IMAGES])]
    full_calibration = with_views(x_train, seed + 7)

    with tempfile.TemporaryDirectory(prefix="quant-debug-") as tmp:
        tmp = Path(tmp)
        with quiet():
            (tmp / "float32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(graph).convert())
            (tmp / "int8_all.tflite").write_bytes(int8_converter(graph, full_calibration).convert())
        debug = images[np.random.default_rng(0).permutation(len(images))[:args.debug_images]]

        # 1. per-layer error (the debugger: each layer fed the int8 model's own input)
        t0 = time.time()
        with quiet():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=int8_converter(graph, full_calibration),
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
        print(f"\n1. per-layer error of the int8 model (the debugger: {len(layers)} quantised tensors, {len(debug)} images, "
              f"{time.time() - t0:.0f} s): RMSE / quantisation step, worst first (0.29 = rounding alone)")
        print("| tensor | op | RMSE / step | mean error | max abs error |\n|---|---|---:|---:|---:|")
        for r in layers[:args.top]:
            print(f"| {short(r['tensor_name'])} | {r['op_name']} | {r['rmse_per_scale']:.2f} | {float(r['mean_error']):+.4f} | "
                  f"{float(r['max_abs_error']):.4f} |")

        # 1b. the error as it accumulates through the graph
        t0 = time.time()
        accumulated = accumulated_error(tmp / "float32.tflite", tmp / "int8_all.tflite", debug)
        print(f"\n2. accumulated error: each op's output in the int8 model against the float model's ({len(debug)} images, "
              f"{time.time() - t0:.0f} s): SQNR in dB, and the op's own drop (worst input's SQNR - its output's)")
        print("| tensor | op | SQNR | drop |\n|---|---|---:|---:|")
        worst = sorted((r for r in accumulated if r["drop_db"] is not None), key=lambda r: -r["drop_db"])
        for r in worst[:args.top]:
            print(f"| {short(r['tensor_name'])} | {r['op_name']} | {r['sqnr_db']:.1f} dB | {r['drop_db']:+.1f} dB |")
        print("trajectory (every 8th op, then the last): " + ", ".join(
            f"{short(r['tensor_name']).split('/')[0]} {r['sqnr_db']:.0f}" for r in accumulated[::8] + accumulated[-1:]))

        # 3. the remedies
        wanted = {v.strip() for v in args.remedies.split(",") if v.strip()}
        unknown = wanted - set(REMEDIES)
        if unknown:
            raise SystemExit(f"--remedies: unknown {', '.join(sorted(unknown))}; choose from {', '.join(REMEDIES)}")
        remedies = []
        if "export" in wanted:
            remedies.append(("export (REPRESENTATIVE_IMAGES training images)",
                             lambda: int8_converter(graph, export_calibration).convert()))
        if "train" in wanted:
            remedies.append(("all train, no views", lambda: int8_converter(graph, x_train).convert()))
        if "train_views" in wanted:
            remedies.append(("all train + views", lambda: (tmp / "int8_all.tflite").read_bytes()))
        if "per_tensor" in wanted:
            remedies.append(("all train + views, per-tensor weights",
                             lambda: int8_converter(graph, full_calibration, False).convert()))
        base, base_name = ((export_calibration, "export's calibration") if args.denylist_base == "export"
                           else (full_calibration, "all train + views"))
        for k in ([int(v) for v in args.denylist.split(",") if v.strip()] if "denylist" in wanted else []):
            nodes = [r["tensor_name"] for r in worst[:k]]

            def selective(nodes=nodes):
                options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=nodes)
                d = tf.lite.experimental.QuantizationDebugger(
                    converter=int8_converter(graph, base),
                    debug_dataset=lambda: ([np.asarray(image, dtype=np.float32)[None]] for image in debug[:1]),
                    debug_options=options)
                return d.get_nondebug_quantized_model()
            remedies.append((f"{base_name}, float for the {k} largest drops", selective))
        rows = []
        candidates = [("float32 (reference file)", tmp / "float32.tflite")]
        for name, make in remedies:
            t0 = time.time()
            with quiet():
                data = make()
            path = tmp / f"r{len(candidates)}.tflite"
            path.write_bytes(data)
            candidates.append((name, path))
            print(f"converted: {name} ({time.time() - t0:.0f} s)", flush=True)
        for name, path in candidates:
            probabilities, p50 = probabilities_of(path, size, images)
            evidence = agreement_evidence(reference, probabilities, labels)
            passed = (evidence["top1_agreement"] >= MIN_TOP1_AGREEMENT - 1e-12
                      and evidence["macro_f1_diff"] >= -MAX_MACRO_F1_LOSS - 1e-12)
            rows.append({"remedy": name, "bytes": path.stat().st_size, "p50_ms": p50, "passes": passed,
                         "float_ops": float_ops(path),
                         **{k: evidence[k] for k in ("top1_agreement", "macro_f1_diff", "max_probability_diff")}})
    print(f"\nremedies, on {len(images)} gate images (probabilities output; the gate: top-1 agreement >= "
          f"{MIN_TOP1_AGREEMENT}, macro-F1 loss <= {MAX_MACRO_F1_LOSS})")
    print("| remedy | top-1 agreement | macro-F1 diff | largest probability diff | p50 (1 thread) | size | ops in float | gate |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['remedy']} | {r['top1_agreement']:.3f} | {r['macro_f1_diff']:+.3f} | {r['max_probability_diff']:.3f} | "
              f"{r['p50_ms']:.1f} ms | {r['bytes'] / 1e6:.1f} MB | {r['float_ops']} | {'passes' if r['passes'] else 'fails'} |")
    print(f"\ndone in {time.time() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"command": f"python {shlex.join(sys.argv)}", "model": str(args.model),
                                        "model_version": card.get("model_version"), "size": size,
                                        "gate_images": int(len(images)), "debug_images": int(len(debug)),
                                        "layers": layers, "accumulated": accumulated, "remedies": rows}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
