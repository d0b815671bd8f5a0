"""Figures of a training run and of an evaluation: training curves, confusion matrix,
ROC curves, reliability diagram (matplotlib's object API: no global backend state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from busi_classifier.evaluation.metrics import apply_temperature, reliability, roc_auc, roc_curve
from busi_classifier.serving.constants import CLASSES

CLASS_COLOURS = {"normal": "#4c9a2a", "benign": "#1f77b4", "malignant": "#d62728"}


def _figure(rows: int = 1, cols: int = 1, size=(5, 4)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path, title: str) -> Path:
    """Write the PNG with its title also in the file's metadata (PNG ``Title``), so a
    reader and a test can tell which split a figure shows without looking at it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})
    return path


# Up to this many epochs each one gets a marker: a one-epoch run is a single point per
# curve, which a line alone does not draw at all.
MARKER_MAX_EPOCHS = 30


def training_curves_figure(history: dict, best_epoch: int | None):
    """The training curves of ``history`` (loss, macro-F1, macro AUC; train and val) as
    a matplotlib Figure: dotted lines at phase boundaries, a dashed one at the kept
    epoch, a marker on every epoch when there are at most MARKER_MAX_EPOCHS."""
    keys = [("loss", "loss"), ("macro_f1", "macro-F1"), ("macro_auc", "macro AUC")]
    keys = [(k, t) for k, t in keys if k in history]
    fig, axes = _figure(1, len(keys), (4.6 * len(keys), 3.6))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    style = {"marker": "o", "markersize": 4} if len(epochs) <= MARKER_MAX_EPOCHS else {}
    phases = history.get("phase", [])
    starts = [i + 1 for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        ax.plot(epochs, history[key], label="train", color="#1f77b4", **style)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="val", color="#ff7f0e", **style)
        for s in starts:
            ax.axvline(s - 0.5, color="#999999", linestyle=":", linewidth=1)
        if best_epoch:
            ax.axvline(best_epoch, color="#2ca02c", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        if key == "loss":
            ax.set_yscale("log")
        if 0 < len(epochs) <= 12:
            ax.set_xticks(epochs)  # whole epochs, not 0.96, 0.98, ... around a single one
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8, frameon=False)
    return fig


def training_curves(history: dict, best_epoch: int | None, path: Path) -> Path:
    """Write ``training_curves_figure`` to ``path``."""
    title = "Training curves (dotted: phase boundaries)"
    fig = training_curves_figure(history, best_epoch)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, title)


def confusion_matrix_figure(metrics: dict, path: Path, split: str = "test", model: str = "") -> Path:
    cm = np.array(metrics["confusion_matrix"]["rows_true_cols_pred"])
    labels = metrics["confusion_matrix"]["labels"]
    fig, axes = _figure(1, 2, (9.5, 4))
    rows = cm.sum(axis=1, keepdims=True)
    for ax, data, title in ((axes[0][0], cm, "counts"),
                            (axes[0][1], np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0),
                             "share of the true class (recall on the diagonal)")):
        ax.imshow(data, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(data):
            text = f"{v:d}" if data.dtype.kind == "i" else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if data[i, j] > 0.6 * data.max() else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    title = f"Confusion matrix, {_where(split, model)} (n={int(cm.sum())})"
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, title)


def roc_figure(y_true: np.ndarray, probabilities: np.ndarray, path: Path, split: str = "test", model: str = "") -> Path:
    fig, axes = _figure(1, 1, (4.8, 4.4))
    ax = axes[0][0]
    for i, label in enumerate(CLASSES):
        positive = np.asarray(y_true) == i
        auc = roc_auc(positive, probabilities[:, i])
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, i])
        ax.plot(fpr, tpr, color=CLASS_COLOURS[label], label=f"{label} vs rest (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":")
    ax.axvline(0.1, color="#d62728", linestyle="--", linewidth=0.8, alpha=0.5, label="90 % specificity")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    title = f"ROC curves, one class vs the rest ({_where(split, model)})"
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _save(fig, path, title)


def reliability_figure(y_true: np.ndarray, probabilities: np.ndarray, temperature: float, path: Path,
                       split: str = "test", model: str = "") -> Path:
    fig, axes = _figure(1, 1, (4.8, 4.4))
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", label="perfect calibration")
    for p, name, colour in ((probabilities, "raw", "#ff7f0e"),
                            (apply_temperature(probabilities, temperature), f"temperature {temperature:.2f}", "#1f77b4")):
        r = reliability(y_true, p)
        bins = [b for b in r["bins"] if b["n"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour,
                label=f"{name} (ECE {r['ece']:.3f})")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    title = f"Reliability diagram ({_where(split, model)})"
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _save(fig, path, title)


def _where(split: str, model: str) -> str:
    return f"{split} split" + (f", {model}" if model else "")


def write_evaluation_figures(metrics: dict, y_true: np.ndarray, raw_probabilities: np.ndarray, temperature: float,
                             out_dir: Path, prefix: str = "", split: str = "test", model: str = "") -> dict[str, Path]:
    """Confusion matrix, ROC curves and reliability diagram of one split; each title
    names ``split`` (and ``model``, the file scored). Returns {figure name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    calibrated = apply_temperature(raw_probabilities, temperature)
    return {
        "confusion matrix": confusion_matrix_figure(metrics, out_dir / f"{prefix}confusion_matrix.png", split, model),
        "ROC curves": roc_figure(y_true, calibrated, out_dir / f"{prefix}roc_curves.png", split, model),
        "reliability": reliability_figure(y_true, raw_probabilities, temperature,
                                          out_dir / f"{prefix}reliability.png", split, model),
    }


def write_training_figures(history: dict, metrics: dict, y_true: np.ndarray, raw_probabilities: np.ndarray,
                           temperature: float, out_dir: Path, model: str = "",
                           best_epoch: int | None = None) -> dict[str, Path]:
    """Training curves, and the test figures of ``model`` (the served file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "training curves": training_curves(history, best_epoch, out_dir / "training_curves.png"),
        **write_evaluation_figures(metrics, y_true, raw_probabilities, temperature, out_dir, model=model),
    }
