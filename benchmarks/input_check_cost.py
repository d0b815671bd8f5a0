"""What the input check costs: per request (p50 with and without) and in the image (bytes).
Writes the "input-check" section of BENCHMARKS.md.

    python benchmarks/input_check_cost.py [--size 224] [--variant int8_dynamic] [--requests 100]

One model, two ways of serving it, end to end through the Lambda handler with direct
events, one interpreter thread, the two kinds of request alternating on the same images:

* **without**: the served graph of a classify model (probabilities + class maps) and a
  model.json without ``input_check``: what the function did before issue 21;
* **with**: the same Keras model's served graph with the fourth output, the pooled
  features (the ``avg_pool`` output the dense layer already reads), and ``input_check.npz``
  beside it, described by model.json: every answer carries ``input_check``.

The model is ResNet50 at ``--size`` (224 by default) with seeded random weights (the
invoke's work does not depend on the weights' values), exported as training exports it
(``export/tflite.convert_to_tflite``); the check is fitted with the project's own code
(``evaluation/input_check_fit``: default method and dims) on the served file's features of
the images below, so its file has the size and the arithmetic of a real one. Measured
too: the check's score alone, the file's load at init, and the bytes each part adds.

Images: the real BUSI PNGs as users send them (RGB, original size) where ../shared/busi
exists, else synthetic ones (said so).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.explain import user_images  # noqa: E402
from benchmarks.report import write_section  # noqa: E402

CLASSES = ["normal", "benign", "malignant"]


def served_graphs(size: int):
    """(Keras served graph without the features output, with it): one seeded random-weight
    classify model, so that both files hold the same weights."""
    import keras

    from busi_classifier.config import TrainConfig
    from busi_classifier.training import model as training_model

    keras.utils.set_random_seed(0)
    config = TrainConfig(data_dir="-", out_dir="-", weights="none", image_size=size, task="classify")
    model, _ = training_model.build_model(config)
    try:  # explain_model(model, features=...) where the export adds the features output itself
        without = training_model.explain_model(model, features=False)
        with_features = training_model.explain_model(model, features=True)
    except TypeError:  # an explain_model without the features output: add it here
        without = training_model.explain_model(model)
        outputs = dict(without.output)
        outputs["features"] = model.get_layer("avg_pool").output
        with_features = keras.Model(model.inputs, outputs, name=f"{model.name}_features")
    return without, with_features


def card(size: int, variant: str, file: Path, maps_shape: list[int], input_check: dict | None):
    from busi_classifier.serving.card import (
        FORMAT_VERSION,
        Calibration,
        ExplainSpec,
        InputCheckSpec,
        InputSpec,
        ModelCard,
        OutputSpec,
        VariantEntry,
        preprocessing_description,
    )

    data = file.read_bytes()
    return ModelCard(
        format_version=FORMAT_VERSION, name="busi-resnet50-benchmark", model_version="benchmark", created_at="-",
        classes=CLASSES, input=InputSpec("image", [1, size, size, 3], size, "float32", [0.0, 255.0], "RGB"),
        output=OutputSpec("probabilities", [1, len(CLASSES)], "softmax"),
        explain=ExplainSpec("class_maps", maps_shape, "class activation map"), lesion=None,
        input_check=InputCheckSpec(**input_check) if input_check else None,
        preprocessing=preprocessing_description(),
        variants={variant: VariantEntry(file.name, len(data), hashlib.sha256(data).hexdigest(), None, None)},
        default_variant=variant, default_variant_reason="benchmark", variant_rule={}, files={}, training={},
        dataset={"synthetic": False}, calibration=Calibration("none", 1.0), metrics={}, packages={})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="input side of the random-weight model")
    p.add_argument("--variant", default="int8_dynamic", choices=("float32", "float16", "int8_dynamic"),
                   help="the TFLite variant served (int8_dynamic: the usual default)")
    p.add_argument("--requests", type=int, default=100, help="requests of each kind")
    p.add_argument("--images", type=int, default=20, help="distinct images cycled through")
    p.add_argument("--fit-images", type=int, default=96, help="images the check is fitted (3/4) and thresholded (1/4) on")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--json-out", default=None, help="also write the figures (and the section's text) to this JSON file")
    args = p.parse_args(argv)

    from busi_classifier.console import quiet_tensorflow

    quiet_tensorflow(False)
    import numpy as np

    from benchmarks.lesion_cost import handler_for, timed
    from busi_classifier.evaluation.input_check_fit import DEFAULT_FLAG_RATE, choose_threshold, fit_input_check
    from busi_classifier.export.tflite import convert_to_tflite
    from busi_classifier.serving.decode import decode_image
    from busi_classifier.serving.input_check import FILE, InputCheck
    from busi_classifier.serving.predictor import Predictor, input_check_answer

    scratch = Path(tempfile.mkdtemp(prefix="input-check-cost-"))
    folders = {"without": scratch / "without", "with": scratch / "with"}
    started = time.perf_counter()
    graphs = dict(zip(folders, served_graphs(args.size), strict=True))
    files = {}
    for kind, graph in graphs.items():
        folders[kind].mkdir()
        files[kind] = folders[kind] / f"model_{args.variant}.tflite"
        files[kind].write_bytes(convert_to_tflite(graph, args.variant))
    convert_s = time.perf_counter() - started

    # the check: fitted on the served file's features, as the export fits it (train / validation)
    fit_images, fit_source = user_images(args.fit_images)
    served = Predictor.for_file(files["with"], CLASSES, args.size)
    features = served.raw_all(np.stack([decode_image(data, args.size) for data in fit_images]))["features"]
    cut = len(features) * 3 // 4
    check = fit_input_check(features[:cut], np.arange(cut) % len(CLASSES))
    check = choose_threshold(check, features[cut:], DEFAULT_FLAG_RATE)
    sha256 = check.save(folders["with"] / FILE)
    npz_bytes = (folders["with"] / FILE).stat().st_size
    spec = {"file": FILE, "sha256": sha256, "bytes": npz_bytes, "method": check.method, "dims": check.dims,
            "feature_output": "features", "threshold": check.threshold, "threshold_rule": check.threshold_rule,
            "flag_rate": DEFAULT_FLAG_RATE, "metrics": {}}
    maps_shape = [int(v) for v in served._maps["shape"]]
    feature_dim = int(served._features["shape"][1])
    for kind in folders:
        card(args.size, args.variant, files[kind], maps_shape, spec if kind == "with" else None).write(folders[kind])

    images, source = user_images(args.images)
    events = [{"image": base64.b64encode(data).decode()} for data in images]
    handlers = {kind: handler_for(folder, None) for kind, folder in folders.items()}
    assert not handlers["without"].predictor.has_input_check and handlers["with"].predictor.has_input_check
    times, sizes = timed({kind: (handler, {}) for kind, handler in handlers.items()}, events, args.requests)
    answers = [handlers["with"](e, None)["input_check"] for e in events]
    # the invoke alone, both interpreters alternating on the same preprocessed images: the graph's share
    inputs = [decode_image(data, args.size) for data in images]
    invoke_ms = {kind: [] for kind in handlers}
    for i in range(args.requests):
        for kind in (list(handlers) if i % 2 == 0 else list(handlers)[::-1]):
            t0 = time.perf_counter()
            handlers[kind].predictor._invoke(inputs[i % len(inputs)])
            invoke_ms[kind].append((time.perf_counter() - t0) * 1000)

    # the check alone: the score of one image's features and the answer object; the file's load
    one = features[0]
    score_us = []
    for _ in range(2000):
        t0 = time.perf_counter()
        input_check_answer(check, one)
        score_us.append((time.perf_counter() - t0) * 1e6)
    load_ms = []
    for _ in range(11):
        t0 = time.perf_counter()
        InputCheck.load(folders["with"] / FILE, sha256, feature_dim)
        load_ms.append((time.perf_counter() - t0) * 1000)

    def p50(values):
        return statistics.median(values)

    def p95(values):
        return statistics.quantiles(values, n=100)[94]

    t = {kind: p50(v) for kind, v in times.items()}
    paired = p50([w - o for w, o in zip(times["with"], times["without"], strict=True)])
    inv = {kind: p50(v) for kind, v in invoke_ms.items()}
    inv_paired = p50([w - o for w, o in zip(invoke_ms["with"], invoke_ms["without"], strict=True)])
    tflite_added = files["with"].stat().st_size - files["without"].stat().st_size
    card_added = (folders["with"] / "model.json").stat().st_size - (folders["without"] / "model.json").stat().st_size
    flagged = sum(not a["in_distribution"] for a in answers)
    body = f"""Model: ResNet50 classify, {args.size} px, seeded random weights (the invoke's work does not depend on the
weights' values), served as {args.variant}, 1 interpreter thread; the check: {check.method} in {check.dims}
dimensions of the {feature_dim} pooled features, fitted on the served file's features of {cut} images and
thresholded on {len(features) - cut} ({fit_source}). Requests: {source}; {args.requests} of each kind, alternating,
through `lambda_handler` with direct events.

| request | p50 ms | p95 ms | answer size (median, JSON bytes) |
|---|---|---|---|
| without the check (no features output, model.json without input_check) | {t['without']:.1f} | {p95(times['without']):.1f} | {p50(sizes['without']):,.0f} |
| with the check (features output, input_check.npz) | {t['with']:.1f} | {p95(times['with']):.1f} | {p50(sizes['with']):,.0f} |
| added by the check: difference of the p50s | **{t['with'] - t['without']:+.1f}** ({t['with'] / t['without'] - 1:+.1%}) | | **{p50(sizes['with']) - p50(sizes['without']):+,.0f}** |
| added by the check: p50 of the paired differences (the same image, back to back) | {paired:+.1f} | | |

The invoke alone (the two interpreters alternating on the same preprocessed images): {inv['without']:.1f} ms
p50 without the features output, {inv['with']:.1f} ms with it (paired difference {inv_paired:+.1f} ms).

The check's own work per image (reading the features output aside): {p50(score_us):.0f} µs p50 (score and answer,
{len(score_us)} calls); loading and checking `input_check.npz` at init: {p50(load_ms):.1f} ms p50 (sha256 included).

| bytes added to the image | |
|---|---|
| `input_check.npz` ({check.method}, {check.dims} dimensions) | {npz_bytes:,} |
| the features output in the .tflite ({args.variant}) | {tflite_added:+,} |
| model.json's input_check field (without metrics) | {card_added:+,} |
| served .tflite without / with the output | {files['without'].stat().st_size:,} / {files['with'].stat().st_size:,} |

The two kinds of request differ by less than the noise between requests on this machine (read the paired
differences): the features are computed in every invoke anyway (the dense layer reads them), so the check
adds copying {feature_dim:,} floats out of the interpreter, the score's few small products and the
answer's few fields. ({flagged} of the {len(answers)} request images were flagged by this random-weight
model's check: the figure says nothing about the real check's accuracy, which is in docs/evaluation.md.)
Converting the two graphs took {convert_s:.0f} s.
"""
    print(body)
    if not args.no_write:
        write_section("input-check", "What the input check costs (per request and in the image)",
                      f"python benchmarks/input_check_cost.py --size {args.size} --variant {args.variant} "
                      f"--requests {args.requests}", body)
    figures = {"p50_ms": t, "p95_ms": {kind: p95(v) for kind, v in times.items()}, "paired_ms": paired,
               "invoke_p50_ms": inv, "invoke_paired_ms": inv_paired, "npz_bytes": npz_bytes,
               "tflite_added_bytes": tflite_added, "score_us_p50": p50(score_us), "load_ms_p50": p50(load_ms),
               "command": f"python benchmarks/input_check_cost.py --size {args.size} --variant {args.variant} "
                          f"--requests {args.requests}", "body": body}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
