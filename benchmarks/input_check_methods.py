"""Which input check: the published out-of-distribution scores compared on trained models.
Writes the "input-check-methods" section of BENCHMARKS.md.

    python benchmarks/input_check_methods.py --model MODEL_DIR [--model MODEL_DIR ...] --data DATA_DIR [--n-per-set 40] [--seed 0]

MODEL_DIR is a training run's folder (model.keras and split.csv; e.g. one fold of
``crossval``); DATA_DIR the dataset its split.csv paths are relative to. Nothing is written
into MODEL_DIR: the served graph (probabilities, class maps, pooled features, a multitask
model's lesion map) is converted from model.keras to a float32 .tflite file in a temporary
folder, and every image goes through it as the function runs it (LiteRT, one invoke per
image; the sets' images as bytes: ``decode_image``, invoke, features).

Features of the train, validation and test splits, and of the out-of-distribution sets of
``evaluation.ood_sets`` (``--n-per-set`` images each; the synthetic set generated into a
temporary folder unless the data are the synthetic set); then
``input_check_fit.compare_methods``: Mahalanobis at 32 and 64 dimensions (Lee et al. 2018),
Mahalanobis with the residual off the PCA space, relative Mahalanobis (Ren et al. 2021),
kNN on normalised features (Sun et al. 2022), all fitted on the training split, and the
maximum-softmax baseline (Hendrycks & Gimpel 2017, uncalibrated probabilities). Each method's
threshold is its own 95th percentile of the validation scores; AUROC is against the test
split's scores (out of distribution = positive). The default method is the one with the best
mean AUROC over the sets that are clearly not breast ultrasound
(``ood_sets.CLEARLY_NOT``); the near-misses (altered breast ultrasound) and other ultrasound
are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402

SECTION = "input-check-methods"
# (method, dims) rows of the table; each fitted on the training split's features
CONFIGURATIONS = (("mahalanobis", 32), ("mahalanobis", 64), ("mahalanobis_residual", 32),
                  ("relative_mahalanobis", 32), ("knn", 32))


def served_file(model_dir: Path, out: Path, verbose: bool = False) -> tuple[Path, int]:
    """model.keras -> the served graph (with the features output) as float32 .tflite in ``out``."""
    from busi_classifier.export.tflite import convert_to_tflite
    from busi_classifier.model_file import load_keras_model
    from busi_classifier.training.model import explain_model

    model = load_keras_model(model_dir / "model.keras")
    size = int(model.inputs[0].shape[1])
    path = out / "model.tflite"
    path.write_bytes(convert_to_tflite(explain_model(model), "float32", verbose=verbose))
    return path, size


def split_samples(model_dir: Path, data_dir: Path) -> dict[str, list]:
    """split name -> the Samples of split.csv (with their mask files, from the dataset)."""
    import csv

    from busi_classifier.data.dataset import find_dataset_root, read_dataset

    root = find_dataset_root(data_dir)
    by_path = {s.path.resolve(): s for s in read_dataset(root)}
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    with open(model_dir / "split.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] in out:
                sample = by_path.get((root / row["path"]).resolve())
                if sample is None:
                    raise SystemExit(f"{row['path']} (in {model_dir / 'split.csv'}) is not in the dataset {root}")
                out[row["split"]].append(sample)
    return out


def measure(model_dir: Path, data_dir: Path, n_per_set: int, seed: int) -> dict:
    """Features of the splits and the sets through the served file, the method rows."""
    from busi_classifier.console import native_stderr_silenced
    from busi_classifier.data.dataset import load_images
    from busi_classifier.data.synthetic import SYNTHETIC_MARKER, generate_dataset
    from busi_classifier.evaluation.input_check_fit import compare_methods, fit_input_check
    from busi_classifier.evaluation.ood_sets import CLEARLY_NOT, NEAR_MISSES, available_sources, ood_sets
    from busi_classifier.evaluation.served import decode_all
    from busi_classifier.serving.constants import CLASSES
    from busi_classifier.serving.predictor import Predictor

    started = time.perf_counter()
    samples = split_samples(model_dir, data_dir)
    synthetic = (Path(data_dir) / SYNTHETIC_MARKER).is_file()
    with tempfile.TemporaryDirectory(prefix="busi-input-check-") as folder:
        folder = Path(folder)
        path, size = served_file(model_dir, folder)
        with native_stderr_silenced():
            predictor = Predictor.for_file(path, CLASSES, size, num_threads=None)
        outputs = {name: predictor.raw_all(load_images(split, size, progress=False)) for name, split in samples.items()}
        test = samples["test"]
        test_bytes = [s.path.read_bytes() for s in test]
        mask_bytes = [m.read_bytes() for s in test for m in s.masks]
        synthetic_dir = None if synthetic else generate_dataset(folder / "synthetic", per_class=-(-n_per_set // 3),
                                                                seed=seed, progress=False)
        t0 = time.perf_counter()
        sets = ood_sets(test_bytes, mask_bytes or None, synthetic_dir, n_per_set=n_per_set, seed=seed)
        build_s = time.perf_counter() - t0
        absent = {k: v for k, v in available_sources(test_bytes, mask_bytes or None, synthetic_dir).items() if v}
        t0 = time.perf_counter()
        ood, refused = {}, {}
        for name, images in sets.items():
            arrays, refused[name] = decode_all(images, size)
            ood[name] = predictor.raw_all(arrays)
        score_s = time.perf_counter() - t0
    features = {name: np.asarray(o["features"], dtype=np.float32) for name, o in outputs.items()}
    ood_features = {name: np.asarray(o["features"], dtype=np.float32) for name, o in ood.items()}
    labels = np.array([s.label_index for s in samples["train"]])
    probabilities = {"val": outputs["val"]["probabilities"], "test": outputs["test"]["probabilities"],
                     "ood": {name: o["probabilities"] for name, o in ood.items()}}
    rows = []
    for dims in sorted({d for _, d in CONFIGURATIONS}):
        methods = [m for m, d in CONFIGURATIONS if d == dims]
        for row in compare_methods(features["train"], labels, features["val"], features["test"], ood_features,
                                   probabilities=probabilities if dims == 32 else None, dims=dims, methods=methods):
            rows.append({**row, "requested_dims": dims if row.get("servable") else None})
    order = {config: i for i, config in enumerate(CONFIGURATIONS)}
    rows.sort(key=lambda r: order.get((r["method"], r.get("requested_dims")), len(order)))
    for row in rows:
        row["mean_auroc_clearly_not"] = _mean(row["auroc"], CLEARLY_NOT)
        row["mean_auroc_near_misses"] = _mean(row["auroc"], NEAR_MISSES)
        row["label"] = row["method"] + (f" ({row['dims']})" if row.get("servable") else "")
        if row.get("servable"):  # the serving side's work beyond the invoke: one image's score
            check = fit_input_check(features["train"], labels, method=row["method"], dims=row["dims"])
            times = []
            for _ in range(200):
                t0 = time.perf_counter()
                check.score(features["test"][0])
                times.append((time.perf_counter() - t0) * 1e6)
            row["score_us"] = statistics.median(times)
    card = json.loads((model_dir / "model.json").read_text()) if (model_dir / "model.json").is_file() else {}
    return {"model": str(model_dir), "task": card.get("training", {}).get("task", "?"), "size": size,
            "images": card.get("dataset", {}).get("images", "?"), "split": {k: len(v) for k, v in samples.items()},
            "rows": rows, "sets": {name: len(f) for name, f in ood_features.items()}, "absent": absent,
            "refused": {k: v for k, v in refused.items() if v}, "build_s": build_s, "score_s": score_s,
            "total_s": time.perf_counter() - started}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, action="append",
                   help="a training run's folder (model.keras, split.csv); repeat for several models")
    p.add_argument("--data", type=Path, required=True, help="the dataset split.csv's paths are relative to")
    p.add_argument("--n-per-set", type=int, default=40, help="images per out-of-distribution set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    p.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = p.parse_args(argv)

    from busi_classifier.evaluation.input_check_fit import DEFAULT_METHOD
    from busi_classifier.evaluation.ood_sets import CLEARLY_NOT, NEAR_MISSES, SET_NAMES

    runs = [measure(model, args.data, args.n_per_set, args.seed) for model in args.model]
    parts = [
        "Each cell: AUROC (out of distribution = positive, against the test split's images) and, in brackets, the "
        "share of the set flagged at the method's own threshold (95th percentile of its validation scores). "
        f"*Clearly not* = mean over {', '.join(CLEARLY_NOT)}; *near-misses* = mean over {', '.join(NEAR_MISSES)}. "
        "One image's score: the median time of `InputCheck.score` on one image's features (NumPy, after the "
        "invoke). max_softmax: 1 - the largest uncalibrated probability (needs no file). Features from the "
        "model's served graph (`training.model.explain_model`) converted to float32 LiteRT, one invoke per image; "
        "the sets' images as bytes through `decode_image`.",
    ]
    for run in runs:
        names = [n for n in SET_NAMES if n in run["sets"]]
        servable = [(i, r) for i, r in enumerate(run["rows"]) if r.get("servable")]
        best = max(servable, key=lambda item: (item[1]["mean_auroc_clearly_not"], -item[0]))[1]
        parts += [
            "",
            f"**`{run['model']}`** ({run['task']}, {run['size']} px, {run['images']} images of `{args.data}`; split "
            f"{', '.join(f'{k} {v}' for k, v in run['split'].items())}). Sets of up to {args.n_per_set} images "
            f"(seed {args.seed}), built in {run['build_s']:.0f} s, decoded and scored in {run['score_s']:.0f} s"
            + (f"; absent: {'; '.join(f'{k} ({v})' for k, v in run['absent'].items())}" if run["absent"] else "")
            + (f"; refused by the intake: {', '.join(f'{k} {v}' for k, v in run['refused'].items())}"
               if run["refused"] else "") + f"; {run['total_s']:.0f} s in all.",
            "",
            _table(run["rows"], names, run["sets"]),
            "",
            f"Best mean AUROC over the clearly-not sets: **{best['label']}** ({best['mean_auroc_clearly_not']:.3f}).",
        ]
    parts += ["", f"Default method (`input_check_fit.DEFAULT_METHOD`): `{DEFAULT_METHOD}`."]
    body = "\n".join(parts)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=float) + "\n")
    if not args.no_write:
        command = ("python benchmarks/input_check_methods.py " + " ".join(f"--model {m}" for m in args.model)
                   + f" --data {args.data} --n-per-set {args.n_per_set} --seed {args.seed}")
        write_section(SECTION, "Input check: methods compared (AUROC per out-of-distribution set)", command, body)
    return 0


def _mean(aurocs: dict, names) -> float:
    values = [v for k, v in aurocs.items() if k in names and v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _table(rows: list[dict], names: list[str], sizes: dict) -> str:
    """Sets as rows, methods as columns: AUROC (flag rate at the method's threshold)."""
    head = ["set", "n", *[f"{row['label']}" for row in rows]]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(rows)]
    for name in names:
        cells = [name, str(sizes[name])]
        for row in rows:
            cells.append(f"{row['auroc'][name]:.3f} ({100 * row['ood_flag_rate'][name]:.0f} %)")
        lines.append("| " + " | ".join(cells) + " |")
    for key, label in (("mean_auroc", "**mean AUROC, all sets**"), ("mean_auroc_clearly_not", "**mean, clearly not**"),
                       ("mean_auroc_near_misses", "**mean, near-misses**")):
        lines.append("| " + " | ".join([label, "", *[f"**{row[key]:.3f}**" for row in rows]]) + " |")
    lines.append("| " + " | ".join(["in-distribution test images flagged", "",
                                    *[f"{100 * row['test_flag_rate']:.1f} %" for row in rows]]) + " |")
    lines.append("| " + " | ".join(["file", "", *[f"{row['file_bytes'] / 1024:.0f} KiB" if row.get("file_bytes")
                                                  else "none (probabilities)" for row in rows]]) + " |")
    lines.append("| " + " | ".join(["one image's score", "", *[f"{row['score_us']:.0f} µs"
                                                               if row.get("score_us") is not None else "-"
                                                               for row in rows]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
