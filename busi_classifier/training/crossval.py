"""Grouped k-fold cross-validation: ``python -m busi_classifier crossval --folds 5 ...``.

Trains one model per fold (fold k is the test fold, fold k+1 validation, the rest
train; near-duplicate groups never straddle folds), each a full ``train`` run with its
own export and served variant, into ``OUT/fold-k``. Then reports the mean, standard
deviation and range over the folds of the served model's test metrics, the Keras
model's beside them, in ``OUT/crossval.json`` and ``OUT/crossval.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig

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


def cross_validate(config: TrainConfig, command: str, progress: bool = True, verbose: bool = False,
                   train=None) -> dict:
    """Train every fold, write crossval.json and crossval.md into ``config.out_dir``;
    return crossval.json's content. ``train``: the per-fold training function (the
    real one by default)."""
    if train is None:
        from busi_classifier.training.loop import train
    configs = fold_configs(config)
    runs = []
    for fold_config in configs:
        print(f"=== fold {fold_config.fold + 1}/{config.folds} -> {fold_config.out_dir}", flush=True)
        runs.append(train(fold_config, progress=progress, verbose=verbose))
    result = {"command": command, "folds_k": config.folds, "training": config.to_dict(), **aggregate(runs)}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "crossval.md").write_text(markdown(result, config, command))
    return result
