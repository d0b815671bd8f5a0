"""Score an exported model (model.keras or any .tflite beside its model.json) on a split
of split.csv: ``python -m busi_classifier evaluate --model DIR/model.tflite``.

Gives the same numbers as training wrote (same images, same preprocessing, the
temperature of model.json, the same bootstrap seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from busi_classifier.data.dataset import DatasetError, Sample, load_images
from busi_classifier.serving.card import ModelCard
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.predictor import ModelLoadError


def read_split(split_csv: Path, data_dir: Path, subset: str) -> list[Sample]:
    """The samples of one split of split.csv (paths relative to ``data_dir``)."""
    return read_split_with_groups(split_csv, data_dir, subset)[0]


def read_split_with_groups(split_csv: Path, data_dir: Path, subset: str) -> tuple[list[Sample], list[str]]:
    """(samples, near-duplicate group of each) of one split of split.csv. A row with no
    group (a split.csv from before groups were written) is a group of its own."""
    if not split_csv.is_file():
        raise DatasetError(f"split file not found: {split_csv}")
    with open(split_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("split") == subset]
    if not rows:
        raise DatasetError(f"no rows with split {subset!r} in {split_csv}")
    samples, groups = [], []
    for row in rows:
        path = data_dir / row["path"]
        if not path.is_file():
            raise DatasetError(f"{row['path']} (listed in {split_csv}) not found under {data_dir}")
        if row["label"] not in CLASSES:
            raise DatasetError(f"unknown label {row['label']!r} for {row['path']} in {split_csv}")
        samples.append(Sample(path=path.resolve(), label=row["label"]))
        groups.append(row.get("group") or f"image:{row['path']}")
    return samples, groups


def predict_outputs(model_path: Path, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """(uncalibrated probabilities, class maps or None) of a .keras or .tflite model for
    uint8 images: a .tflite file with maps gives both from one invoke per image."""
    if model_path.suffix == ".keras":
        from busi_classifier.model_file import load_keras_model

        model = load_keras_model(model_path)
        out = model.predict(images.astype("float32"), batch_size=batch_size, verbose=0)
        return (out["probabilities"] if isinstance(out, dict) else out), None  # a multitask model: + "lesion"
    predictor = _predictor(model_path)
    if predictor.has_maps:
        return predictor.raw_outputs(images)
    return predictor.raw_probabilities(images), None


def _predictor(model_path: Path):
    """A LiteRT predictor, without LiteRT's "INFO: Created TensorFlow Lite XNNPACK
    delegate" line on the console."""
    from busi_classifier.console import native_stderr_silenced
    from busi_classifier.serving.predictor import Predictor

    with native_stderr_silenced():
        return Predictor(model_path)


def evaluate_model(model_path: str | Path, data_dir: str | Path | None = None, split_csv: str | Path | None = None,
                   subset: str = "test", bootstrap: int | None = None, seed: int | None = None,
                   progress: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, true labels, raw probabilities) of ``model_path`` on one split."""
    from busi_classifier.evaluation.metrics import evaluate_predictions

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelLoadError(f"model file not found: {model_path}")
    card = ModelCard.read(model_path)  # the model.json beside the file
    training = card.training
    data_dir = Path(data_dir or card.dataset.get("root", ""))
    split_csv = Path(split_csv) if split_csv else model_path.with_name("split.csv")
    samples, groups = read_split_with_groups(split_csv, data_dir, subset)
    images = load_images(samples, card.input.size, progress)
    y = np.array([s.label_index for s in samples])
    raw, maps = predict_outputs(model_path, images, int(training.get("batch_size", 16)))
    temperature = card.temperature
    metrics = evaluate_predictions(
        y, raw, temperature,
        n_resamples=bootstrap if bootstrap is not None else int(training.get("bootstrap_resamples", 1000)),
        seed=seed if seed is not None else int(training.get("seed", 0)),
        groups=groups,
    )
    metrics.update({"model": str(model_path), "model_version": card.model_version, "subset": subset,
                    "split_file": str(split_csv)})
    if maps is not None:
        metrics["localisation"] = localise(maps, raw, samples, data_dir, groups, card.input.size,
                                           metrics["bootstrap_resamples"],
                                           seed if seed is not None else int(training.get("seed", 0)))
    return metrics, y, raw


def localise(maps: np.ndarray, raw: np.ndarray, samples: list[Sample], data_dir: Path, groups: list, size: int,
             n_resamples: int, seed: int) -> dict:
    """The class maps against the lesion masks of ``samples`` (pointing game and energy
    inside, with the centre baseline)."""
    from busi_classifier.data.dataset import read_dataset
    from busi_classifier.evaluation.localisation import mask_for_input, served_localisation

    masks_of = {s.path.resolve(): s.masks for s in read_dataset(data_dir)}
    masks = [mask_for_input(masks_of.get(s.path, []), size) for s in samples]
    return served_localisation(maps, raw, masks, groups, n_resamples, seed)


def resolve_model_argument(model: str | Path, variant: str | None = None) -> Path:
    """The model file ``--model`` names: a .keras or .tflite file as given; a model
    folder gives the .tflite file the function would serve from it (``variant``, else
    model.json's default variant)."""
    path = Path(model)
    if not path.is_dir():
        if variant is not None:
            raise ModelLoadError(f"--variant {variant} needs a model folder, not the file {path}")
        return path
    from busi_classifier.serving.predictor import resolve_model_file

    return resolve_model_file(path, ModelCard.read(path), variant)[0]


def main(argv=None) -> int:
    from busi_classifier.console import HelpFormatter, add_output_options

    p = argparse.ArgumentParser(prog="python -m busi_classifier evaluate", description=__doc__,
                                formatter_class=HelpFormatter,
                                epilog="examples:\n  python -m busi_classifier evaluate --model artifacts/model\n"
                                "  python -m busi_classifier evaluate --model artifacts/model/model.keras --subset val "
                                "--figures imgs")
    p.add_argument("--model", required=True,
                   help="a model folder (scores the variant the function serves), model.keras, or a .tflite file "
                   "with model.json beside it")
    p.add_argument("--variant", default=None,
                   help="with a model folder: the TFLite variant to score (default: model.json's default variant)")
    p.add_argument("--data", default=None, help="dataset folder (default: the one recorded in model.json)")
    p.add_argument("--split-csv", default=None, help="split file (default: split.csv beside the model)")
    p.add_argument("--subset", default="test", choices=("train", "val", "test"), help="which split")
    p.add_argument("--out", default=None,
                   help="folder for evaluation-<model>-<subset>.json (default: beside the model)")
    p.add_argument("--figures", default=None, help="folder for the figures (default: --out)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: as in training)")
    add_output_options(p)
    args = p.parse_args(argv)
    from busi_classifier.console import quiet_tensorflow, show_progress

    quiet_tensorflow(args.verbose)
    try:
        model_path = resolve_model_argument(args.model, args.variant)
        metrics, y, raw = evaluate_model(model_path, args.data, args.split_csv, args.subset, args.bootstrap,
                                         progress=show_progress(args))
    except (DatasetError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from busi_classifier.evaluation.figures import write_evaluation_figures

    out = Path(args.out) if args.out else model_path.parent
    out.mkdir(parents=True, exist_ok=True)
    name = f"evaluation-{model_path.stem}-{model_path.suffix.lstrip('.')}-{args.subset}"
    figures = write_evaluation_figures(metrics, y, raw, metrics["temperature"], Path(args.figures) if args.figures
                                       else out, prefix=f"{name}-", split=args.subset)
    metrics["figures"] = {k: str(v) for k, v in figures.items()}
    (out / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    ci = metrics["ci95"]
    print(f"{model_path}, {args.subset} split, n={metrics['n']}: accuracy {metrics['accuracy']:.3f} "
          f"{_ci(ci['accuracy'])}, macro-F1 {metrics['macro_f1']:.3f} {_ci(ci['macro_f1'])}, macro AUC "
          f"{_fmt(metrics['macro_auc'])} {_ci(ci['macro_auc'])}, ECE {metrics['ece']:.3f} -> {out / (name + '.json')}")
    if "localisation" in metrics:
        report = metrics["localisation"]["dilate_1"]
        pointing, energy = report["pointing_game"], report["energy_inside"]
        if report["n"]:
            if pointing.get("model") is None:  # a grid so coarse that the centre cell touches every cell
                game = f"pointing game n/a ({pointing.get('not_meaningful', 'not meaningful on this grid')})"
            else:
                game = (f"pointing game {pointing['model']:.3f} {_ci(pointing['model_ci95'])} "
                        f"(centre baseline {pointing['centre_baseline']:.3f})")
            print(f"class maps on {report['n']} images with a lesion: {game}, energy "
                  f"inside {energy['model']:.3f} (centre baseline {energy['centre_baseline']:.3f})")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(interval) -> str:
    return "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
