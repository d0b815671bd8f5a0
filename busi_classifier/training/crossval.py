"""Grouped k-fold cross-validation: ``python -m busi_classifier crossval --folds 5 ...``.

Trains one model per fold (fold k is the test fold, fold k+1 validation, the rest
train; near-duplicate groups never straddle folds), each a full ``train`` run with its
own export and served variant, into ``OUT/fold-k``. Then reports the mean, standard
deviation and range over the folds of the served model's test metrics, the Keras
model's beside them, in ``OUT/crossval.json`` and ``OUT/crossval.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.data.dataset import DatasetError
from busi_classifier.training.preflight import WeightsError, preflight

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "malignant_auc",
           "malignant_sensitivity_at_90_specificity", "ece")
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
          "macro_auc": "macro AUC", "malignant_auc": "malignant AUC",
          "malignant_sensitivity_at_90_specificity": "malignant sens. @ 90 % spec.", "ece": "ECE"}


def fold_configs(config: TrainConfig) -> list[TrainConfig]:
    """One TrainConfig per fold, each writing into ``config.out_dir/fold-k``."""
    if config.folds < 3:
        raise ConfigError(f"cross-validation needs --folds K with K >= 3, got {config.folds}")
    if config.split != "grouped":
        raise ConfigError("cross-validation needs --split grouped")
    out = Path(config.out_dir)
    figures = Path(config.figures_dir) if config.figures_dir else None
    return [dataclasses.replace(config, fold=k, out_dir=str(out / f"fold-{k}"),
                                figures_dir=str(figures / f"fold-{k}") if figures else None)
            for k in range(config.folds)]


def summarise(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min and max of the defined values."""
    defined = [v for v in values if v is not None]
    if not defined:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    mean = sum(defined) / len(defined)
    sd = math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1)) if len(defined) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(defined), "max": max(defined), "n": len(defined)}


def aggregate(runs: list[dict]) -> dict:
    """crossval.json's content from the folds' model.json metrics."""
    folds = []
    for k, meta in enumerate(runs):
        served, keras = meta["metrics"]["served"], meta["metrics"]["keras"]
        folds.append({
            "fold": k,
            "model_version": meta["model_version"],
            "served_variant": served["variant"],
            "n_test": served["test"]["n"],
            "served": {m: served["test"].get(m) for m in METRICS},
            "keras": {m: keras["test"].get(m) for m in METRICS},
        })
    return {
        "folds": folds,
        "served": {m: summarise([f["served"][m] for f in folds]) for m in METRICS},
        "keras": {m: summarise([f["keras"][m] for f in folds]) for m in METRICS},
    }


def markdown(result: dict, config: TrainConfig, command: str) -> str:
    def cell(s: dict) -> str:
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.3f} ± {s['sd']:.3f} ({s['min']:.3f}–{s['max']:.3f})"

    lines = [
        f"# Grouped {config.folds}-fold cross-validation",
        "",
        f"Command: `{command}`",
        "",
        f"Each fold's test set is one fold of near-duplicate groups (stratified by class); {config.folds} models, "
        f"{config.image_size} px, weights `{config.weights}`, {config.epochs_head} + {config.epochs_fine_tune} "
        "epochs. Mean ± standard deviation over the folds (min–max):",
        "",
        "| metric | served model (the TFLite variant each fold serves) | Keras model |",
        "|---|---|---|",
    ]
    for m in METRICS:
        lines.append(f"| {LABELS[m]} | {cell(result['served'][m])} | {cell(result['keras'][m])} |")
    lines += ["", "| fold | test images | served variant | accuracy | macro-F1 | macro AUC | ECE |",
              "|---|---|---|---|---|---|---|"]
    for f in result["folds"]:
        s = f["served"]
        auc = "n/a" if s["macro_auc"] is None else f"{s['macro_auc']:.3f}"
        lines.append(f"| {f['fold']} | {f['n_test']} | {f['served_variant']} | {s['accuracy']:.3f} | "
                     f"{s['macro_f1']:.3f} | {auc} | {s['ece']:.3f} |")
    return "\n".join(lines) + "\n"


FINISHED_FILES = ("model.json", "metrics.json", "model.tflite")


def finished_fold(fold_config: TrainConfig) -> dict | None:
    """The model.json of a fold that a run before this one finished with exactly these
    settings (every field of ``fold_config``, its folder included), or None: no model.json,
    a file of a finished run missing (the run stopped inside the fold), or other settings."""
    out = Path(fold_config.out_dir)
    if not all((out / name).is_file() for name in FINISHED_FILES):
        return None
    try:
        meta = json.loads((out / "model.json").read_text())
    except (OSError, ValueError):
        return None
    # the settings as the training records them: after preflight decides the task and
    # whether phase 1 caches features (a fold run with --task unset records the decided
    # one); through JSON both ways, so that tuples and lists compare equal
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "task: classify (no mask files ...)" line
            _, recorded = preflight(fold_config)
    except (ConfigError, DatasetError, WeightsError):  # the training itself refuses them, loudly
        return None
    if meta.get("training") != json.loads(json.dumps(recorded.to_dict())):
        return None
    return meta


def run_fold(fold_config: TrainConfig, train, progress: bool, verbose: bool, resume: bool, label: str) -> dict:
    """One fold: its finished model.json when ``resume`` finds one, else a training."""
    if resume:
        meta = finished_fold(fold_config)
        if meta is not None:
            print(f"=== {label} -> {fold_config.out_dir}: finished by an earlier run with the same settings, "
                  f"kept (model {meta.get('model_version')})", flush=True)
            return meta
    print(f"=== {label} -> {fold_config.out_dir}", flush=True)
    return train(fold_config, progress=progress, verbose=verbose)


def cross_validate(config: TrainConfig, command: str, progress: bool = True, verbose: bool = False,
                   train=None, resume: bool = False) -> dict:
    """Train every fold, write crossval.json and crossval.md into ``config.out_dir``;
    return crossval.json's content. ``train``: the per-fold training function (the
    real one by default). ``resume``: keep the folds an earlier run finished with the
    same settings (``finished_fold``) and train only the others."""
    if train is None:
        from busi_classifier.training.loop import train
    configs = fold_configs(config)
    runs = []
    for fold_config in configs:
        runs.append(run_fold(fold_config, train, progress, verbose, resume,
                             f"fold {fold_config.fold + 1}/{config.folds}"))
    return write_report(config, command, runs)


def write_report(config: TrainConfig, command: str, runs: list[dict]) -> dict:
    """crossval.json and crossval.md of the folds in ``runs`` into ``config.out_dir``;
    returns crossval.json's content."""
    result = {"command": command, "folds_k": config.folds, "training": config.to_dict(), **aggregate(runs),
              **_segmentation(runs)}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "crossval.md").write_text(markdown(result, config, command))
    return result


def _segmentation(runs: list[dict]) -> dict:
    """Multitask folds: the mean and spread of the served file's Dice and IoU on the
    test folds' lesion images and of its false-lesion rate on their normal images."""
    lesion = [run.get("lesion") for run in runs]
    if not lesion or not all(lesion):
        return {}

    def value(entry: dict, key: str, part: str):
        item = (entry.get("metrics") or {}).get(key) or {}
        return (item.get(part) or {}).get("mean") if part else item.get("mean")

    return {"segmentation": {
        "dice": summarise([value(e, "dice", "all") for e in lesion]),
        "iou": summarise([value(e, "iou", "all") for e in lesion]),
        "normal_found_rate": summarise([value(e, "normal_found_rate", "") for e in lesion]),
    }}


COMPARED = ("macro_f1", "balanced_accuracy", "macro_auc", "malignant_sensitivity_at_90_specificity")
TASK_ORDER = ("classify", "multitask")


def paired_difference(a: list[float | None], b: list[float | None]) -> dict:
    """Mean, sd, min and max over the folds of ``b - a`` (folds where both are defined),
    and how many folds ``b`` is ahead."""
    diffs = [y - x for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return {**summarise(diffs), "ahead": sum(d > 0 for d in diffs)}


def compare(results: dict[str, dict]) -> dict:
    """compare.json's content from each task's crossval result: per metric the served
    model's mean and spread for each task and the paired per-fold difference
    (multitask - classify); the multitask folds' segmentation figures beside them."""
    served = {task: {m: [f["served"][m] for f in results[task]["folds"]] for m in COMPARED} for task in TASK_ORDER}
    return {
        "tasks": {task: {m: results[task]["served"][m] for m in COMPARED} for task in TASK_ORDER},
        "multitask_minus_classify": {m: paired_difference(served["classify"][m], served["multitask"][m])
                                     for m in COMPARED},
        "folds": {task: served[task] for task in TASK_ORDER},
        "segmentation": results["multitask"].get("segmentation"),
    }


def compare_markdown(comparison: dict, config: TrainConfig, command: str) -> str:
    done = comparison.get("folds_done", config.folds)

    def cell(s: dict) -> str:
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f} (one fold)"

    lines = [
        f"# classify vs multitask: grouped {config.folds}-fold cross-validation",
        "",
        f"Command: `{command}`",
        "",
        *([f"**{done} of {config.folds} folds done** (a partial run: the figures are of those folds only).", ""]
          if done < config.folds else []),
        f"The same folds, seeds and settings for both tasks ({config.image_size} px, weights `{config.weights}`, "
        f"{config.epochs_head} + {config.epochs_fine_tune} epochs, --seg-weight {config.seg_weight:g} for "
        "multitask); the served model of each fold on its test fold. Mean ± sd over the folds; the difference is "
        "paired (multitask - classify, fold by fold).",
        "",
        "| metric | classify | multitask | multitask - classify | folds multitask ahead |",
        "|---|---|---|---|---|",
    ]
    for m in COMPARED:
        d = comparison["multitask_minus_classify"][m]
        diff = ("n/a" if d["mean"] is None else f"{d['mean']:+.3f} ± {d['sd']:.3f}" if d["n"] > 1
                else f"{d['mean']:+.3f} (one fold)")
        lines.append(f"| {LABELS[m]} | {cell(comparison['tasks']['classify'][m])} | "
                     f"{cell(comparison['tasks']['multitask'][m])} | {diff} | {d['ahead']} of {d['n']} |")
    d = comparison["multitask_minus_classify"]["macro_f1"]
    if d["mean"] is not None and d["n"] > 1:
        verdict = ("multitask is ahead on macro-F1 in every fold" if d["ahead"] == d["n"] else
                   f"multitask does not help macro-F1 consistently here: ahead in {d['ahead']} of {d['n']} folds, "
                   f"mean difference {d['mean']:+.3f} ± {d['sd']:.3f}")
        lines += ["", verdict + "."]
    seg = comparison.get("segmentation") or {}
    if seg.get("dice", {}).get("mean") is not None:
        lines += ["", f"The multitask folds' served files on their test folds: lesion Dice {cell(seg['dice'])}, IoU "
                      f"{cell(seg['iou'])}; normal images with a lesion found {cell(seg['normal_found_rate'])}."]
    return "\n".join(lines) + "\n"


def compare_tasks(config: TrainConfig, command: str, progress: bool = True, verbose: bool = False,
                  train=None, resume: bool = False) -> dict:
    """Cross-validate ``--task classify`` and ``--task multitask`` with otherwise the same
    settings into OUT/classify/fold-K and OUT/multitask/fold-K, fold by fold (both tasks
    of a fold before the next fold), and write OUT/compare.json and OUT/compare.md after
    each fold: a run stopped early leaves the paired comparison of the folds it finished,
    and the same command with ``resume`` keeps those folds. Returns compare.json's content."""
    if train is None:
        from busi_classifier.training.loop import train
    out = Path(config.out_dir)
    configs = {task: fold_configs(dataclasses.replace(config, task=task, out_dir=str(out / task)))
               for task in TASK_ORDER}
    runs: dict[str, list] = {task: [] for task in TASK_ORDER}
    comparison: dict = {}
    for k in range(config.folds):
        for task in TASK_ORDER:
            fold_config = configs[task][k]
            runs[task].append(run_fold(fold_config, train, progress, verbose, resume,
                                       f"fold {k + 1}/{config.folds}, task {task}"))
        results = {task: write_report(dataclasses.replace(config, task=task, out_dir=str(out / task)),
                                      f"{command} (task {task})", runs[task]) for task in TASK_ORDER}
        comparison = {"command": command, "folds_k": config.folds, "folds_done": k + 1,
                      "training": config.to_dict(), **compare(results)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(comparison, indent=2) + "\n")
        (out / "compare.md").write_text(compare_markdown(comparison, config, command))
    return comparison
