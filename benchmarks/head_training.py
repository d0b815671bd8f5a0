"""Fast head training: phase 1 (head on the frozen pretrained base) with cached base
features against running the whole model every epoch. Same data, same seed, no
augmentation, one view: the two must train the same head, one of them faster.

    python benchmarks/head_training.py [--data DIR] [--per-class 40] [--size 224] [--epochs 5]

A ResNet50 weights file of random values stands in for the ImageNet weights (which
cannot be downloaded offline): the cost of a frozen base does not depend on its values.
Writes the "head training" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="dataset folder (default: a synthetic one in a temporary folder)")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = p.parse_args(argv)

    import keras

    from busi_classifier.cli import train_main
    from busi_classifier.data.synthetic import generate_dataset
    from busi_classifier.training.model import load_keras_model

    tmp = Path(tempfile.mkdtemp(prefix="head-bench-"))
    data = Path(args.data) if args.data else generate_dataset(tmp / "data", per_class=args.per_class, seed=0,
                                                              progress=False)
    weights = tmp / "resnet50_random_notop.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(args.size, args.size, 3)).save_weights(
        weights)
    common = ["--data", str(data), "--weights", str(weights), "--image-size", str(args.size), "--epochs-head",
              str(args.epochs), "--epochs-fine-tune", "0", "--augment", "none", "--feature-views", "1",
              "--early-stopping", "0", "--lr-schedule", "constant", "--max-per-class", str(args.per_class),
              "--bootstrap", "100", "--quiet"]
    results = {}
    for mode in ("cache-features", "no-cache-features"):
        out = tmp / mode
        assert train_main([*common, "--out", str(out), f"--{mode}"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        head = load_keras_model(out / "model.keras").get_layer("probabilities").get_weights()
        timings = metrics["timings_s"]
        results[mode] = {
            "seconds": timings.get("1-head", 0.0) + timings.get("1-head features", 0.0),
            "features_s": timings.get("1-head features", 0.0),
            "val_loss": history["val_loss"],
            "val_macro_f1": history["val_macro_f1"],
            "head": head,
        }
    cached, full = results["cache-features"], results["no-cache-features"]
    speedup = full["seconds"] / cached["seconds"]
    max_weight_diff = max(float(np.abs(a - b).max()) for a, b in zip(cached["head"], full["head"], strict=True))
    max_loss_diff = max(abs(a - b) for a, b in zip(cached["val_loss"], full["val_loss"], strict=True))
    body = f"""Phase 1 of `train.py` (frozen base, {args.epochs} epochs, {args.size} px, {args.per_class} synthetic images
per class before the split, batch 16, no augmentation, one feature view), once with `--cache-features` and
once with `--no-cache-features`.

| phase 1 | wall time | of which computing base features |
|---|---:|---:|
| whole model every epoch (`--no-cache-features`) | {full['seconds']:.1f} s | - |
| cached base features (`--cache-features`, default) | {cached['seconds']:.1f} s | {cached['features_s']:.1f} s |
| **speed-up** | **{speedup:.1f}x** | |

Same result: largest difference between the two trained heads' weights {max_weight_diff:.2e}; largest
difference between their validation losses over the {args.epochs} epochs {max_loss_diff:.2e}
(val macro-F1 per epoch: cached {[round(v, 3) for v in cached['val_macro_f1']]}, whole model
{[round(v, 3) for v in full['val_macro_f1']]}). The saving grows with the number of epochs; with
`--feature-views N` the base runs N times (the image and N-1 augmented copies) instead of once per epoch.
"""
    print(body)
    if not args.no_write:
        command = "python benchmarks/head_training.py" + (f" --data {args.data}" if args.data else "") + \
            f" --per-class {args.per_class} --size {args.size} --epochs {args.epochs}"
        write_section("head-training", "Fast head training (cached base features)", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
