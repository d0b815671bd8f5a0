"""Does the lesion map outline the lesion? The served file's lesion map against the BUSI masks.

A multitask model returns, beside the probabilities, a lesion probability map: an (h, w)
grid at a quarter of the input side (56x56 at 224 px), cell (r, c) covering model-input
pixels [4r, 4r + 4) x [4c, 4c + 4) of the *square letterboxed input*. Everything here is
measured at that square input's resolution, as the masks are (``localisation.mask_for_input``
letterboxes them like ``decode_image`` letterboxes the image):

* the grid is upsampled with ``serving.lesion.upsample_map`` (the function the API draws
  its outline with: one upsampling) and thresholded (>= threshold) into a (size, size) mask,
  kept to the image area when ``areas`` are given (the API's answer covers the image, never
  the black padding; ``input_area`` finds it in a letterboxed input);
* ``choose_threshold`` picks the threshold on validation images (mean per-image Dice);
* ``segmentation_report`` gives, on the test split, Dice and IoU per lesion image, their
  means per class with percentile-bootstrap intervals (images, or whole near-duplicate
  groups, resampled, as ``evaluation.localisation`` does), the rate of a lesion "found" on
  normal images, and the pointing game of the map's peak against the same centre baseline
  and dilated-cell rule the class maps are scored with;
* ``segmentation_figure`` draws predicted outline against mask on test images, the worst
  ones included.

NumPy only (matplotlib is imported inside ``segmentation_figure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busi_classifier.evaluation.localisation import (
    DEFAULT_DILATE_CELLS,
    MASK_COLOUR,
    _interval,
    cell_mask,
    centre_map,
    distinct_frames,
    peak_cell,
    pointing_game_not_meaningful,
    pointing_hit,
)
from busi_classifier.evaluation.metrics import resample_units
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.lesion import upsample_map

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.10, ..., 0.95
DEFAULT_THRESHOLD = 0.5
MIN_THRESHOLD_IMAGES = 5  # fewer validation images with a lesion: the threshold stays DEFAULT_THRESHOLD
LESION_CLASSES = ("benign", "malignant")
NORMAL_CLASS = "normal"
PREDICTED_COLOUR = "#ff9100"  # predicted outline: orange, against the mask's cyan (the blue-orange axis reads
# for most colour-vision deficiencies too)
PREDICTED_FILL_ALPHA = 0.22
FIGURE_EACH = 4  # best and worst lesion images shown (all of them when there are at most twice as many)

DEFINITIONS = {
    "predicted_mask": (
        "The lesion map upsampled bilinearly (cell centres aligned, serving.lesion.upsample_map) to the square model "
        "input and thresholded (probability >= threshold), inside the image area (the letterbox padding left out)."),
    "dice": (
        "Per image with a lesion mask: 2 |predicted AND mask| / (|predicted| + |mask|) over the square model input's "
        "pixels; the mean over the images, per true class and over all lesion images."),
    "iou": "Per image with a lesion mask: |predicted AND mask| / |predicted OR mask|; the mean over the images.",
    "normal_found_rate": (
        "Share of normal images (no lesion mask) where some pixel of the image area has a lesion probability >= "
        "threshold: the API would answer found = true."),
    "normal_false_area": "Mean share of a normal image's area predicted lesion.",
    "pointing_game": (
        "Share of lesion images whose lesion map peaks (first maximum in row-major order) in a map cell that holds a "
        "lesion pixel or lies within dilate_cells cells of one (8-neighbourhood), as evaluation.localisation scores "
        "the class maps; the centre baseline is localisation's (a Gaussian on the square input's centre), on the "
        "same grid."),
    "pointing_game_class_map_grid": (
        "The same pointing game with the lesion map's peak placed on the class maps' coarser grid (the cell that holds "
        "the centre of the peak cell) and scored by the class maps' own rule: like for like with the class maps' "
        "pointing game and its centre baseline."),
    "not_meaningful": (
        "Set (with the reason) where the centre cell dilated by dilate_cells covers the whole grid: the centre baseline "
        "then hits every lesion, and the pointing game's model value and difference are null."),
    "ci95": "Percentile bootstrap 95 % interval, resampling images (or whole groups when group ids are given).",
    "model_minus_centre": (
        "The model's pointing game less the centre baseline's on the same images; its interval is a paired bootstrap."),
}


# --------------------------------------------------------------------------- masks


def _grid(grid: np.ndarray) -> np.ndarray:
    """One (h, w) map: a trailing channel of 1 ((h, w, 1), as Keras gives it) is dropped."""
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim == 3 and grid.shape[-1] == 1:
        grid = grid[..., 0]
    if grid.ndim != 2:
        raise ValueError(f"a lesion map is one (h, w) grid per image, got shape {grid.shape}")
    return grid


def input_area(image: np.ndarray) -> np.ndarray | None:
    """(size, size) bool: the image area of a letterboxed model input, the bounding box of
    its non-black pixels (``decode_image`` pastes the image on exact black). None when the
    input is all black (no area to tell: the whole square counts). An image whose own
    border is black loses those border rows or columns too (nothing is there to find)."""
    image = np.asarray(image)
    lit = image.any(axis=-1) if image.ndim == 3 else image != 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if not rows.size:
        return None
    area = np.zeros(lit.shape, dtype=bool)
    area[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return area


def input_areas(images) -> list[np.ndarray | None]:
    """``input_area`` of each image."""
    return [input_area(image) for image in images]


def lesion_probability(grid: np.ndarray, size: int, area: np.ndarray | None = None) -> np.ndarray:
    """(size, size) float32: the grid upsampled (``serving.lesion.upsample_map``), 0 outside ``area``."""
    values = np.asarray(upsample_map(_grid(grid), int(size)), dtype=np.float32)
    if area is not None:
        values = np.where(np.asarray(area, dtype=bool), values, np.float32(0))
    return values


def predicted_mask(grid: np.ndarray, size: int, threshold: float, area: np.ndarray | None = None) -> np.ndarray:
    """(size, size) bool: the upsampled map at or above ``threshold``, inside ``area`` (None: the whole square)."""
    predicted = lesion_probability(grid, size) >= np.float32(threshold)
    return predicted & np.asarray(area, dtype=bool) if area is not None else predicted


def dice_iou(predicted: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two bool masks; both 1.0 when both are empty."""
    predicted, mask = np.asarray(predicted, dtype=bool), np.asarray(mask, dtype=bool)
    inter = int(np.count_nonzero(predicted & mask))
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(mask))
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / (total - inter)


def _has_lesion(mask) -> bool:
    return mask is not None and bool(np.asarray(mask).any())


def _check(grids, masks, labels=None, groups=None, areas=None) -> tuple[list, list]:
    grids, masks = list(grids), list(masks)
    for name, other in (("masks", masks), ("labels", labels), ("groups", groups), ("areas", areas)):
        if other is not None and len(other) != len(grids):
            raise ValueError(f"{len(grids)} lesion maps for {len(other)} {name}")
    return grids, masks


# --------------------------------------------------------------------------- threshold


def choose_threshold(grids, masks: Sequence[np.ndarray | None], size: int,
                     areas: Sequence[np.ndarray | None] | None = None) -> tuple[float, str]:
    """The lesion threshold, chosen on VALIDATION images: the value of ``THRESHOLDS`` (0.05,
    0.10, ..., 0.95) that maximises the mean per-image Dice over every image given, an image
    without a lesion (mask None: a normal one) scoring 1 when nothing reaches the threshold
    and 0 when something does (a low threshold that outlines every lesion a little better
    but "finds" one in every normal image loses); ties go to the value closest to 0.5 (then
    the lower). With fewer than ``MIN_THRESHOLD_IMAGES`` lesion images: 0.5, and the rule
    says so. Give only images whose mask is the truth (not a lesion image without a mask file).

    Args:
        grids: one (h, w) lesion probability map per image.
        masks: one (size, size) bool mask per image (``mask_for_input``), None without a lesion.
        size: the model input side.
        areas: the image area of each input (``input_areas``), None: the whole square.

    Returns:
        (threshold, the rule as one sentence for model.json's ``threshold_rule``).
    """
    grids, masks = _check(grids, masks, areas=areas)
    kept = [i for i, m in enumerate(masks) if _has_lesion(m)]
    if len(kept) < MIN_THRESHOLD_IMAGES:
        return DEFAULT_THRESHOLD, (
            f"{DEFAULT_THRESHOLD}, the sigmoid's midpoint: only {len(kept)} validation image(s) with a lesion mask, "
            f"fewer than the {MIN_THRESHOLD_IMAGES} a threshold is chosen on")
    cuts = np.asarray(THRESHOLDS, dtype=np.float32)
    dice = np.zeros(len(cuts))
    for i in kept:
        values = lesion_probability(grids[i], size, None if areas is None else areas[i])
        mask = np.asarray(masks[i], dtype=bool)
        if values.shape != mask.shape:
            raise ValueError(f"image {i}: the map upsamples to {values.shape}, its mask is {mask.shape}")
        # pixels >= t, and of them lesion pixels, for every t at once (sorted values)
        everywhere, inside = np.sort(values, axis=None), np.sort(values[mask])
        predicted = everywhere.size - np.searchsorted(everywhere, cuts, side="left")
        hits = inside.size - np.searchsorted(inside, cuts, side="left")
        dice += 2 * hits / (predicted + inside.size)
    empty = [i for i, m in enumerate(masks) if not _has_lesion(m)]
    for i in empty:
        peak = lesion_probability(grids[i], size, None if areas is None else areas[i]).max(initial=0.0)
        dice += (peak < cuts)
    dice /= len(kept) + len(empty)
    best = dice.max()
    tied = [k for k in range(len(cuts)) if dice[k] >= best - 1e-12]
    k = min(tied, key=lambda j: (abs(THRESHOLDS[j] - DEFAULT_THRESHOLD), THRESHOLDS[j]))
    return float(THRESHOLDS[k]), (
        f"the value of {THRESHOLDS[0]:.2f}, {THRESHOLDS[1]:.2f}, ..., {THRESHOLDS[-1]:.2f} that maximises the mean "
        f"per-image Dice (the map upsampled to the {int(size)} px input against the mask) over the {len(kept)} "
        f"validation images with a lesion and the {len(empty)} without one (1 where nothing is found, else 0): mean "
        f"{float(dice[k]):.3f}; ties go to the value closest to 0.5")


# --------------------------------------------------------------------------- report


def image_scores(grids, masks: Sequence[np.ndarray | None], size: int, threshold: float,
                 areas: Sequence[np.ndarray | None] | None = None) -> dict:
    """Per image: ``dice`` and ``iou`` (None without a lesion mask), ``found`` (some pixel
    at or above the threshold), ``area_fraction`` (predicted share of the image area)."""
    grids, masks = _check(grids, masks, areas=areas)
    out = {"dice": [], "iou": [], "found": [], "area_fraction": []}
    for i, (grid, mask) in enumerate(zip(grids, masks, strict=True)):
        area = None if areas is None else areas[i]
        predicted = predicted_mask(grid, size, threshold, area)
        pixels = predicted.size if area is None else max(1, int(np.count_nonzero(area)))
        out["found"].append(bool(predicted.any()))
        out["area_fraction"].append(float(np.count_nonzero(predicted) / pixels))
        if _has_lesion(mask):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != predicted.shape:
                raise ValueError(f"image {i}: the map upsamples to {predicted.shape}, its mask is {mask.shape}")
            dice, iou = dice_iou(predicted, mask)
        else:
            dice = iou = None
        out["dice"].append(dice)
        out["iou"].append(iou)
    return out


def _mean_with_interval(values: Sequence[float], members: Sequence[int], groups, resamples: int,
                        seed: int) -> dict:
    """{"mean", "ci95", "n", "units"} of ``values`` (one per image of ``members``), the
    interval resampling images or, with ``groups``, whole groups."""
    if not len(members):
        return {"mean": None, "ci95": None, "n": 0, "units": 0}
    units = resample_units(None if groups is None else [groups[i] for i in members], len(members))
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()),
            "ci95": _interval(array, units, int(resamples), np.random.default_rng(seed)),
            "n": len(members), "units": len(units)}


def _lesion_reason(grid: tuple[int, int], dilate_cells: int, stride: int) -> str | None:
    """``localisation.pointing_game_not_meaningful`` for the lesion map's grid, in its own pixels per cell."""
    if pointing_game_not_meaningful(grid, dilate_cells) is None:
        return None
    d = max(0, int(dilate_cells))
    side = 2 * d + 2
    return (f"not meaningful on a {grid[0]}x{grid[1]} grid with {d} cell(s) of slack: the centre cell, dilated, "
            f"covers every cell, so the centre baseline hits every lesion (1.0 by construction) and no map can beat "
            f"it; it needs a grid of at least {side}x{side} cells ({side * stride} px input or more)"
            + ("" if d == 0 else ", or dilate_cells=0"))


def _pointing(hits: list[bool], centre: list[bool], members: list[int], groups, resamples: int, seed: int,
              reason: str | None, grid, dilate_cells: int) -> dict:
    """The pointing game's numbers, as ``localisation.localisation_report`` gives them."""
    out = {"n": len(members), "grid": None if grid is None else [int(grid[0]), int(grid[1])],
           "dilate_cells": int(dilate_cells), "model": None, "model_ci95": None, "centre_baseline": None,
           "centre_baseline_ci95": None, "model_minus_centre": None, "model_minus_centre_ci95": None,
           "not_meaningful": reason}
    if not members:
        return out
    units = resample_units(None if groups is None else [groups[i] for i in members], len(members))
    model, baseline = np.asarray(hits, float), np.asarray(centre, float)
    out.update(centre_baseline=float(baseline.mean()),
               centre_baseline_ci95=_interval(baseline, units, resamples, np.random.default_rng(seed)))
    if reason is None:  # where it means nothing the centre baseline's 1.0 stays: it is why
        out.update(model=float(model.mean()),
                   model_ci95=_interval(model, units, resamples, np.random.default_rng(seed)),
                   model_minus_centre=float((model - baseline).mean()),
                   model_minus_centre_ci95=_interval(model - baseline, units, resamples, np.random.default_rng(seed)))
    return out


def _hit(grid: np.ndarray, cells: np.ndarray) -> bool:
    """``localisation.pointing_hit`` with the (dilated) lesion cells already computed."""
    peak = peak_cell(grid)
    return peak is not None and bool(cells[peak])


def _coarse_peak(grid: np.ndarray, coarse: tuple[int, int]) -> np.ndarray:
    """A ``coarse`` map that peaks in the cell holding the centre of ``grid``'s peak cell (all 0: no peak)."""
    out = np.zeros(coarse)
    peak = peak_cell(grid)
    if peak is not None:
        h, w = grid.shape
        out[min(coarse[0] - 1, int((peak[0] + 0.5) * coarse[0] / h)),
            min(coarse[1] - 1, int((peak[1] + 0.5) * coarse[1] / w))] = 1.0
    return out


def segmentation_report(grids, masks: Sequence[np.ndarray | None], labels: Sequence[int], size: int,
                        threshold: float, groups: Sequence | None = None, resamples: int = 1000, seed: int = 0, *,
                        areas: Sequence[np.ndarray | None] | None = None,
                        class_map_grid: tuple[int, int] | None = None,
                        dilate_cells: int = DEFAULT_DILATE_CELLS, classes: Sequence[str] = CLASSES) -> dict:
    """Segmentation metrics of one model's lesion maps on one split (the test split).

    Args:
        grids: (N, h, w) lesion probabilities (a trailing channel of 1 is accepted).
        masks: one (size, size) bool mask per image (``mask_for_input``); None: no lesion.
        labels: (N,) class indices in ``classes`` order.
        size: the model input side.
        threshold: the card's lesion threshold (chosen on validation images).
        groups: one id per image (the near-duplicate group): whole groups are resampled.
        resamples: bootstrap resamples; the same ``seed`` draws the same resamples for
            every interval (localisation's convention).
        areas: the image area of each input (``input_areas``); None: the whole square.
        class_map_grid: (h, w) of the class maps, where there are any: the pointing game
            is also scored on that grid (``pointing_game_class_map_grid``).
        dilate_cells: the pointing game's slack, in cells of the grid it is scored on.

    Returns:
        a JSON-ready dict: ``n``, ``n_lesion``, ``n_normal``, ``n_unscored`` (lesion-class
        images without a mask), ``size``, ``grid``, ``stride``, ``threshold``, ``dice`` and
        ``iou`` (each ``all`` and one entry per lesion class: ``mean``, ``ci95``, ``n``,
        ``units``), ``normal_found_rate`` (the same keys), ``normal_false_area``,
        ``pointing_game`` (as ``localisation_report``'s: ``model``, ``model_ci95``,
        ``centre_baseline``, ``centre_baseline_ci95``, ``model_minus_centre``,
        ``model_minus_centre_ci95``, ``not_meaningful``, ``n``, ``grid``, ``dilate_cells``),
        ``pointing_game_class_map_grid`` (the same, or None), ``bootstrap_resamples``,
        ``bootstrap_unit``, ``bootstrap_units``, ``definition``.
    """
    grids, masks = _check(grids, masks, labels, groups, areas)
    grids = [_grid(g) for g in grids]
    labels = [int(label) for label in labels]
    shapes = {g.shape for g in grids}
    if len(shapes) > 1:
        raise ValueError(f"the lesion maps have different grids: {sorted(shapes)}")
    grid = next(iter(shapes)) if shapes else None
    scores = image_scores(grids, masks, size, threshold, areas)
    lesion = [i for i in range(len(grids)) if scores["dice"][i] is not None]
    normal_index = list(classes).index(NORMAL_CLASS) if NORMAL_CLASS in classes else None
    normals = [i for i in range(len(grids)) if labels[i] == normal_index and not _has_lesion(masks[i])]
    by_class = {name: [i for i in lesion if classes[labels[i]] == name]
                for name in dict.fromkeys([*LESION_CLASSES, *(classes[labels[i]] for i in lesion)])
                if name in classes}

    def summary(key: str) -> dict:
        out = {"all": _mean_with_interval([scores[key][i] for i in lesion], lesion, groups, resamples, seed)}
        for name, members in by_class.items():
            out[name] = _mean_with_interval([scores[key][i] for i in members], members, groups, resamples, seed)
        return out

    found = _mean_with_interval([float(scores["found"][i]) for i in normals], normals, groups, resamples, seed)
    false_area = _mean_with_interval([scores["area_fraction"][i] for i in normals], normals, groups, resamples, seed)

    hits, centre = [], []
    for i in lesion:  # localisation.pointing_hit for the map and the centre baseline, one cell mask for both
        cells = cell_mask(masks[i], grid, dilate_cells)
        hits.append(_hit(grids[i], cells))
        centre.append(_hit(centre_map(grid), cells))
    stride = int(size) // grid[0] if grid else None
    reason = _lesion_reason(grid, dilate_cells, stride) if grid else None
    pointing = _pointing(hits, centre, lesion, groups, resamples, seed, reason, grid, dilate_cells)
    coarse_pointing = None
    if class_map_grid is not None:
        coarse = (int(class_map_grid[0]), int(class_map_grid[1]))
        coarse_hits = [pointing_hit(_coarse_peak(grids[i], coarse), masks[i], dilate_cells) for i in lesion]
        coarse_centre = [pointing_hit(centre_map(coarse), masks[i], dilate_cells) for i in lesion]
        coarse_pointing = _pointing(coarse_hits, coarse_centre, lesion, groups, resamples, seed,
                                    pointing_game_not_meaningful(coarse, dilate_cells), coarse, dilate_cells)
    return {
        "n": len(grids),
        "n_lesion": len(lesion),
        "n_normal": len(normals),
        "n_unscored": len(grids) - len(lesion) - len(normals),
        "size": int(size),
        "grid": None if grid is None else [int(grid[0]), int(grid[1])],
        "stride": stride,
        "threshold": float(threshold),
        "dice": summary("dice"),
        "iou": summary("iou"),
        "normal_found_rate": found,
        "normal_false_area": false_area,
        "pointing_game": pointing,
        "pointing_game_class_map_grid": coarse_pointing,
        "bootstrap_resamples": int(resamples),
        "bootstrap_unit": "image" if groups is None else "group",
        "bootstrap_units": len(resample_units(None if groups is None else [groups[i] for i in lesion], len(lesion))),
        "definition": dict(DEFINITIONS),
    }


# --------------------------------------------------------------------------- figure


def _panels(images, grids, masks, labels, size, threshold, groups, areas, classes) -> list[tuple[int, str]]:
    """(image index, panel title): the best and the worst lesion images by Dice (one per
    frame), then one normal image, the one with the largest false area."""
    scores = image_scores(grids, masks, size, threshold, areas)
    lesion = [i for i, d in enumerate(scores["dice"]) if d is not None]
    frames = distinct_frames([images[i] for i in lesion], None if groups is None else [groups[i] for i in lesion])
    ranked = sorted((lesion[k] for k in frames), key=lambda i: (-scores["dice"][i], i))
    if len(ranked) <= 2 * FIGURE_EACH:
        shown = [(i, f"#{r + 1} of {len(ranked)}") for r, i in enumerate(ranked)]
    else:
        shown = ([(i, f"best {r + 1}") for r, i in enumerate(ranked[:FIGURE_EACH])]
                 + [(i, f"worst {FIGURE_EACH - r}") for r, i in enumerate(ranked[-FIGURE_EACH:])])
    panels = [(i, f"{classes[labels[i]]}: Dice {scores['dice'][i]:.2f} ({tag})") for i, tag in shown]
    normal = list(classes).index(NORMAL_CLASS) if NORMAL_CLASS in classes else None
    normals = [i for i in range(len(labels)) if labels[i] == normal and not _has_lesion(masks[i])]
    if normals:
        normals = [normals[k] for k in distinct_frames([images[i] for i in normals],
                                                       None if groups is None else [groups[i] for i in normals])]
        i = max(normals, key=lambda j: (scores["area_fraction"][j], -j))
        fraction = scores["area_fraction"][i]
        panels.append((i, f"{classes[labels[i]]}: false lesion on {fraction:.1%} of the image" if fraction
                       else f"{classes[labels[i]]}: nothing found"))
    return panels


def _outline(ax, values: np.ndarray, level: float, colour: str, **style) -> None:
    """The contour of ``values`` at ``level`` in pixel coordinates, closed at the square's edge."""
    padded = np.pad(np.asarray(values, dtype=np.float64), 1, constant_values=min(0.0, level - 1))
    if not (padded >= level).any():
        return
    xs, ys = np.arange(padded.shape[1]) - 0.5, np.arange(padded.shape[0]) - 0.5  # pixel centres, the pad outside
    ax.contour(xs, ys, padded, levels=[level], colors=[colour], **style)


def segmentation_figure(images, grids, masks: Sequence[np.ndarray | None], labels: Sequence[int], threshold: float,
                        path: str | Path, title: str, groups: Sequence | None = None,
                        classes: Sequence[str] = CLASSES) -> Path | None:
    """Predicted lesion outline against the true mask on test images: the best and the worst
    lesion images by Dice (all of them when there are at most 2 x FIGURE_EACH), one frame
    per near-duplicate group (``localisation.distinct_frames``: ``groups`` when given),
    then one normal image with its false lesion area if it has any (the normal image with
    the largest). Cyan: the mask's outline; orange: the predicted outline, its area lightly
    filled; each panel's title gives the class and Dice. PNG, ``title`` also in the PNG
    metadata. None when there is no lesion and no normal image to show.

    ``images``: the letterboxed model inputs, uint8 (N, size, size, 3) (their image area,
    ``input_area``, is what the prediction is kept to, as in the report)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    images = np.asarray(images)
    grids, masks = _check(grids, masks, labels, groups)
    if not len(grids):
        return None
    labels = [int(label) for label in labels]
    size = int(images.shape[1])
    areas = input_areas(images)
    panels = _panels(images, grids, masks, labels, size, threshold, groups, areas, classes)
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.8 * cols, 3.0 * rows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    fill = np.array([int(PREDICTED_COLOUR[k:k + 2], 16) / 255 for k in (1, 3, 5)])
    for ax in axes:
        ax.set_axis_off()
    for ax, (i, panel_title) in zip(axes, panels, strict=False):
        image = np.asarray(images[i], dtype=np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        ax.imshow(image, extent=(0, size, size, 0), interpolation="bilinear")
        values = lesion_probability(grids[i], size, areas[i])
        found = values >= np.float32(threshold)
        if found.any():
            overlay = np.zeros((size, size, 4))
            overlay[..., :3] = fill
            overlay[..., 3] = found * PREDICTED_FILL_ALPHA
            ax.imshow(overlay, extent=(0, size, size, 0), interpolation="nearest")
            _outline(ax, values, float(threshold), PREDICTED_COLOUR, linewidths=1.6)
        if _has_lesion(masks[i]):
            _outline(ax, np.asarray(masks[i], dtype=float), 0.5, MASK_COLOUR, linewidths=1.6, linestyles="--")
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(panel_title, fontsize=8)
    fig.suptitle(f"{title}\nlesion threshold {float(threshold):.2f}; one image per frame", fontsize=9)
    fig.legend(handles=[Line2D([], [], color=MASK_COLOUR, linestyle="--", linewidth=1.6, label="true lesion mask"),
                        Line2D([], [], color=PREDICTED_COLOUR, linewidth=1.6,
                               label=f"predicted (probability >= {float(threshold):.2f})")],
               loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Title": title}, facecolor="white")
    return out
