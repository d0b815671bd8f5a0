"""The training-curve figure: what a short run draws (busi_classifier/evaluation/figures.py)."""

from __future__ import annotations

import pytest
from PIL import Image

from busi_classifier.evaluation.figures import MARKER_MAX_EPOCHS, training_curves, training_curves_figure


def _history(epochs: int) -> dict:
    ramp = [0.3 + 0.5 * i / max(epochs, 1) for i in range(epochs)]
    return {"loss": [1.0 / (i + 1) for i in range(epochs)], "val_loss": [1.2 / (i + 1) for i in range(epochs)],
            "macro_f1": ramp, "val_macro_f1": ramp, "macro_auc": ramp, "val_macro_auc": ramp,
            "phase": ["1-full"] * epochs}


def _curves(fig) -> list:
    """The train and val lines of every panel (not the phase and kept-epoch markers)."""
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_label() in ("train", "val")]


@pytest.mark.parametrize("epochs", [1, 2, MARKER_MAX_EPOCHS])
def test_a_short_run_draws_a_marker_on_every_epoch(epochs):
    """A one-epoch run is one point per curve: without a marker the three panels are empty."""
    fig = training_curves_figure(_history(epochs), best_epoch=1)
    lines = _curves(fig)
    assert len(lines) == 6  # train and val in each of the three panels
    for line in lines:
        assert line.get_marker() not in (None, "None", "none", "", " "), line.get_label()
        assert line.get_markersize() > 0
        assert len(line.get_xdata()) == epochs


def test_a_long_run_draws_plain_lines():
    fig = training_curves_figure(_history(MARKER_MAX_EPOCHS + 1), best_epoch=3)
    assert all(line.get_marker() in (None, "None", "none", "") for line in _curves(fig))


def test_one_epoch_figure_is_written_with_its_title(tmp_path):
    path = training_curves(_history(1), 1, tmp_path / "training_curves.png")
    with Image.open(path) as image:
        assert image.info["Title"].startswith("Training curves")
