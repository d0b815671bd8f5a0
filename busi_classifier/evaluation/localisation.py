"""Do the class activation maps point at the lesion? CAMs checked against the BUSI masks.

The exported model returns, beside the probabilities, one class activation map per
class: an (h, w) grid (7x7 at 224 px) over the *square model input*, i.e. the image
letterboxed by ``decode_image``. The lesion masks are letterboxed the same way
(``mask_for_input``) and two measures are computed per image with a lesion:

* pointing game (``pointing_hit``): is the map's peak cell a lesion cell? A cell is a
  lesion cell when any mask pixel falls in it, and the lesion cells are dilated by
  ``dilate_cells`` cells (8-neighbourhood): a 32 px cell is coarse, and a peak next to a
  small lesion is still "pointing at it".
* energy inside (``energy_inside``): the share of the normalised map's mass (negative
  values clipped, upsampled bilinearly to the input size) that lies on lesion pixels.

Both are compared with a centre baseline (``centre_map``: a Gaussian that always points
at the centre of the square), because BUSI lesions sit mostly near the image centre:
a map that beats the baseline shows more than the photographer's habit of centring the
lesion. ``localisation_report`` gives both numbers with percentile-bootstrap intervals
(images, or whole near-duplicate groups, resampled), ``cam_figure`` the overlays.

On a coarse grid the pointing game says nothing: with ``d`` cells of slack the centre
cell, dilated, covers the whole grid once the grid is at most ``2d + 1`` cells a side
(3x3 and 2x2 with one cell: a 96 px or 64 px input), so the centre baseline hits every
lesion, 1.0 by construction, and no map can beat it (on 2x2 every peak hits). There
(``pointing_game_not_meaningful``) the report gives no pointing-game number: the model's
value and its difference from the baseline are None, with the reason; the baseline's 1.0
stays, to show why. The figure's hit/miss labels use the same test as the metric.

NumPy and Pillow only (matplotlib is imported inside ``cam_figure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from busi_classifier.evaluation.metrics import resample_units
from busi_classifier.serving.decode import letterbox_geometry
from busi_classifier.serving.explain import colourise, normalise_map

MASK_THRESHOLD = 127  # a mask pixel is lesion when its gray value is above this
DEFAULT_DILATE_CELLS = 1
CENTRE_SIGMA = 0.25  # of the square's side
OVERLAY_ALPHA = 0.45  # opacity of the heat map in the figure (as in serving.explain)
MASK_COLOUR = "#00e5ff"  # lesion outline in the figure: cyan, visible over the inferno ramp and gray images
PEAK_COLOUR = "#ffffff"

DEFINITIONS = {
    "pointing_game": (
        "Share of images whose map peaks (first maximum in row-major order; a map with no positive cell misses) "
        "in a grid cell that holds a lesion pixel or lies within dilate_cells cells of one (8-neighbourhood)."),
    "energy_inside": (
        "Mean over images of the share of the normalised map (negatives clipped to 0, divided by the peak, "
        "upsampled bilinearly to the square model input) that falls on lesion-mask pixels."),
    "centre_baseline": (
        "The same two measures for a map that ignores the image: an isotropic Gaussian centred on the square "
        "model input, sigma a quarter of its side."),
    "uniform_baseline": (
        "Mean share of the square model input covered by the lesion: the energy inside of a flat map."),
    "not_meaningful": (
        "Set (with the reason) where the centre cell dilated by dilate_cells covers the whole grid (at most 3x3 "
        "cells with one cell of slack): the centre baseline then hits every lesion, and the pointing game's model "
        "value and difference are null."),
    "model_ci95": (
        "Percentile bootstrap 95 % interval, resampling images (or whole groups when group ids are given)."),
    "model_minus_centre": (
        "The model's value less the centre baseline's on the same images; its interval is a paired bootstrap "
        "(the same resamples), so an interval above 0 says the maps localise better than pointing at the centre."),
}


# --------------------------------------------------------------------------- masks


def letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) bool mask at image resolution -> (size, size) bool over the model input:
    the longer side resized to ``size`` (NEAREST, so it stays binary), centred on a
    False square, with ``decode_image``'s own geometry (``serving.decode.letterbox_geometry``)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    new_size, offset = letterbox_geometry(width, height, size)
    resized = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(new_size, Image.Resampling.NEAREST)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, offset)
    return np.asarray(canvas) > MASK_THRESHOLD


def mask_for_input(mask_paths: Sequence[str | Path], size: int) -> np.ndarray | None:
    """The union of an image's lesion masks (pixels > 127 in any of them), letterboxed
    like ``decode_image`` letterboxes the image: a (size, size) bool array. None when
    there are no mask files or the union is empty (normal images: no lesion).

    The masks must all have the image's size (they do in BUSI); EXIF orientation is
    not applied (BUSI PNGs carry none)."""
    union = None
    for path in mask_paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L")) > MASK_THRESHOLD
        if union is None:
            union = pixels
        elif union.shape != pixels.shape:
            raise ValueError(f"mask {path} is {pixels.shape[1]}x{pixels.shape[0]}, "
                             f"the image's other masks {union.shape[1]}x{union.shape[0]}")
        else:
            union |= pixels
    if union is None or not union.any():
        return None
    boxed = letterbox_mask(union, size)
    return boxed if boxed.any() else None


def _cell_edges(n_cells: int, n_pixels: int) -> np.ndarray:
    """Pixel edges of ``n_cells`` cells splitting ``n_pixels`` evenly: cell i covers
    floor(i * n_pixels / n_cells) .. floor((i + 1) * n_pixels / n_cells) (end excluded)."""
    return (np.arange(n_cells + 1) * n_pixels) // n_cells


def dilate(cells: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` cells with the 8-neighbourhood (a (2k+1)^2 square)."""
    cells = np.asarray(cells, dtype=bool)
    for _ in range(max(0, int(steps))):
        padded = np.pad(cells, 1)
        h, w = cells.shape
        cells = np.zeros_like(cells)
        for dy in range(3):
            for dx in range(3):
                cells |= padded[dy:dy + h, dx:dx + w]
    return cells


def cell_mask(mask: np.ndarray, grid_shape: tuple[int, int], dilate_cells: int = DEFAULT_DILATE_CELLS) -> np.ndarray:
    """(h, w) bool: the grid cells holding at least one lesion pixel of ``mask`` (the
    square model input split evenly into h x w cells, see ``_cell_edges``), then
    dilated by ``dilate_cells`` cells (8-neighbourhood)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = int(grid_shape[0]), int(grid_shape[1])
    rows, cols = _cell_edges(h, mask.shape[0]), _cell_edges(w, mask.shape[1])
    cells = np.array([[mask[rows[i]:rows[i + 1], cols[j]:cols[j + 1]].any() for j in range(w)] for i in range(h)],
                     dtype=bool).reshape(h, w)
    return dilate(cells, dilate_cells)


# --------------------------------------------------------------------------- measures


def peak_cell(cam: np.ndarray) -> tuple[int, int] | None:
    """The map's peak cell (row, col): the first maximum in row-major order of
    ``normalise_map(cam)`` (the same cell as the raw map's when anything is positive;
    NaN and infinities count as 0). None when no cell is positive."""
    grid = normalise_map(cam)
    if grid.size == 0 or grid.max() <= 0:
        return None
    index = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(index[0]), int(index[1])


def pointing_game_not_meaningful(grid_shape: tuple[int, int], dilate_cells: int = DEFAULT_DILATE_CELLS) -> str | None:
    """Why the pointing game with ``dilate_cells`` cells of slack means nothing on a grid
    of ``grid_shape`` cells, or None when it can mean something.

    The centre baseline's peak is the cell (h // 2, w // 2) (``centre_map``). When that
    cell, dilated by ``dilate_cells`` (8-neighbourhood), covers every cell of the grid,
    every lesion touches it: the centre baseline scores 1.0 whatever the data, and a
    model cannot do better. With one cell of slack that is every grid of at most 3x3
    cells (a 96 px input or smaller, 32 px a cell); with none, only a 1x1 grid."""
    h, w = int(grid_shape[0]), int(grid_shape[1])
    d = max(0, int(dilate_cells))
    row, col = h // 2, w // 2
    if row - d > 0 or row + d < h - 1 or col - d > 0 or col + d < w - 1:
        return None
    side = 2 * d + 2  # the smallest square grid on which the dilated centre cell leaves a cell out
    return (f"not meaningful on a {h}x{w} grid with {d} cell(s) of slack: the centre cell, dilated, covers every "
            f"cell, so the centre baseline hits every lesion (1.0 by construction) and no map can beat it; it needs "
            f"a grid of at least {side}x{side} cells ({side * 32} px input or more)"
            + ("" if d == 0 else ", or dilate_cells=0"))


def hit_label(cam: np.ndarray, mask: np.ndarray, dilate_cells: int = DEFAULT_DILATE_CELLS) -> str:
    """What a figure says of one map: "hit" or "miss" by ``pointing_hit`` with
    ``dilate_cells`` (the metric's own test). Where that pointing game is not meaningful
    on this grid (``pointing_game_not_meaningful``), the strict test (no slack: the peak
    cell holds a lesion pixel) as "hit, no slack" / "miss, no slack"; "pointing n/a" when
    that is not meaningful either (a 1x1 grid)."""
    shape = np.shape(cam)
    for slack in dict.fromkeys((int(dilate_cells), 0)):
        if pointing_game_not_meaningful(shape, slack) is None:
            verdict = "hit" if pointing_hit(cam, mask, slack) else "miss"
            return verdict if slack == dilate_cells else f"{verdict}, no slack"
    return "pointing n/a"


def pointing_hit(cam: np.ndarray, mask: np.ndarray, dilate_cells: int = DEFAULT_DILATE_CELLS) -> bool:
    """True when the map's peak cell (``peak_cell``: ties go to the first maximum in
    row-major order) lies in ``cell_mask(mask, cam.shape, dilate_cells)``. A map with no
    positive cell is a miss."""
    peak = peak_cell(cam)
    if peak is None:
        return False
    return bool(cell_mask(mask, np.shape(cam), dilate_cells)[peak])


def upsample_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``normalise_map(cam)`` bilinearly upsampled to ``size`` (height, width) pixels,
    with Pillow's BILINEAR (as ``colourise`` draws it: cell centres at pixel centres)."""
    grid = normalise_map(cam).astype(np.float32)
    height, width = size
    resized = Image.fromarray(grid, mode="F").resize((int(width), int(height)), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, None)


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the normalised map's energy on lesion pixels: ``normalise_map(cam)``
    upsampled bilinearly to the mask's size (the square model input), summed inside
    the mask / summed everywhere. 0.0 when the map has no positive cell."""
    mask = np.asarray(mask, dtype=bool)
    values = upsample_map(cam, mask.shape)
    total = float(values.sum())
    return float(values[mask].sum() / total) if total > 0 else 0.0


def centre_map(grid_shape: tuple[int, int]) -> np.ndarray:
    """The centre baseline's map: an isotropic Gaussian centred on the square model
    input, sigma = a quarter of its side, sampled at the cell centres; peak 1.

    Its peak cell is (h // 2, w // 2). For an odd grid (7x7) that is the centre cell and
    the Gaussian's unique maximum. For an even grid the four central cells tie; that
    cell, the lower-right of the four, is raised by one part in 10^6 so that it is the
    unique peak (the energy share moves by about 10^-6)."""
    h, w = int(grid_shape[0]), int(grid_shape[1])
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    grid = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * CENTRE_SIGMA ** 2))
    grid[h // 2, w // 2] = grid.max() * (1 + 1e-6)
    return grid / grid.max()


# --------------------------------------------------------------------------- report


def _interval(values: np.ndarray, units: list[np.ndarray], n_resamples: int, rng: np.random.Generator,
              level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean of ``values``, drawing ``units`` (lists
    of image indices) with replacement, as ``metrics.bootstrap_intervals`` does."""
    if not units or n_resamples < 1:
        return None
    means = np.empty(n_resamples)
    for r in range(n_resamples):
        picked = rng.integers(0, len(units), size=len(units))
        means[r] = values[np.concatenate([units[j] for j in picked])].mean()
    alpha = (1 - level) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


def localisation_report(maps, masks: Sequence[np.ndarray | None], n_resamples: int = 1000, seed: int = 0,
                        groups: Sequence | None = None, *, map_of: str,
                        dilate_cells: int = DEFAULT_DILATE_CELLS) -> dict:
    """Pointing game and energy inside the lesion, for the model's maps and the centre
    baseline, over the images that have a lesion mask.

    ``maps``: one (h, w) map per image, of the class being checked; ``map_of`` says
    which ("predicted" class, "true" class, ...) and is copied into the report.
    ``masks``: one (size, size) bool array per image (``mask_for_input``), or None;
    images whose mask is None or empty are left out (``n_without_lesion``).
    ``groups``: one id per image (e.g. the near-duplicate group); when given, whole
    groups are resampled for the intervals. The same ``seed`` draws the same resamples
    for every interval (model, baseline, and their paired difference). With no image
    left, every number is None.

    Keys: ``map_of``, ``n`` (images with a lesion), ``n_without_lesion``,
    ``dilate_cells``, ``grid`` ([h, w] of the maps; None without images),
    ``pointing_game`` and ``energy_inside`` (each: ``model``, ``model_ci95``,
    ``centre_baseline``, ``centre_baseline_ci95``, ``model_minus_centre``,
    ``model_minus_centre_ci95``; ``pointing_game`` also ``not_meaningful``: None, or why
    the number means nothing on this grid (``pointing_game_not_meaningful``), in which
    case ``model``, ``model_minus_centre`` and their intervals are None and the centre
    baseline's 1.0 is kept; ``energy_inside`` also ``uniform_baseline``),
    ``bootstrap_resamples``, ``bootstrap_unit``, ``bootstrap_units``, ``definition``.

    Every map must have the same grid (one model's maps)."""
    maps = list(maps)
    masks = list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps for {len(masks)} masks")
    if groups is not None and len(groups) != len(maps):
        raise ValueError(f"{len(groups)} group ids for {len(maps)} images")
    kept = [i for i, m in enumerate(masks) if m is not None and np.asarray(m).any()]
    hits, energies, centre_hits, centre_energies = [], [], [], []
    grid = None
    for i in kept:
        cam, mask = np.asarray(maps[i], dtype=np.float64), np.asarray(masks[i], dtype=bool)
        if cam.ndim != 2:
            raise ValueError(f"map {i} has shape {cam.shape}; pass one (h, w) map per image (one class)")
        if grid is not None and cam.shape != grid:
            raise ValueError(f"map {i} is a {cam.shape[0]}x{cam.shape[1]} grid, the others {grid[0]}x{grid[1]}")
        grid = cam.shape
        centre = centre_map(cam.shape)
        hits.append(pointing_hit(cam, mask, dilate_cells))
        energies.append(energy_inside(cam, mask))
        centre_hits.append(pointing_hit(centre, mask, dilate_cells))
        centre_energies.append(energy_inside(centre, mask))
    n = len(kept)
    area_share = float(np.mean([np.asarray(masks[i], dtype=bool).mean() for i in kept])) if n else None
    kept_groups = None if groups is None else [groups[i] for i in kept]
    units = resample_units(kept_groups, n)

    def summary(model: list, baseline: list) -> dict:
        if not n:
            return {"model": None, "model_ci95": None, "centre_baseline": None, "centre_baseline_ci95": None,
                    "model_minus_centre": None, "model_minus_centre_ci95": None}
        model_values, baseline_values = np.asarray(model, float), np.asarray(baseline, float)
        difference = model_values - baseline_values  # paired: the same images in every resample
        return {
            "model": float(model_values.mean()),
            "model_ci95": _interval(model_values, units, n_resamples, np.random.default_rng(seed)),
            "centre_baseline": float(baseline_values.mean()),
            "centre_baseline_ci95": _interval(baseline_values, units, n_resamples, np.random.default_rng(seed)),
            "model_minus_centre": float(difference.mean()),
            "model_minus_centre_ci95": _interval(difference, units, n_resamples, np.random.default_rng(seed)),
        }

    pointing = summary(hits, centre_hits)
    reason = pointing_game_not_meaningful(grid, dilate_cells) if grid is not None else None
    if reason is not None:  # the centre baseline's 1.0 stays: it is why
        pointing.update(model=None, model_ci95=None, model_minus_centre=None, model_minus_centre_ci95=None)
    pointing["not_meaningful"] = reason
    return {
        "map_of": map_of,
        "n": n,
        "n_without_lesion": len(masks) - n,
        "dilate_cells": int(dilate_cells),
        "grid": None if grid is None else [int(grid[0]), int(grid[1])],
        "pointing_game": pointing,
        "energy_inside": {**summary(energies, centre_energies), "uniform_baseline": area_share},
        "bootstrap_resamples": int(n_resamples),
        "bootstrap_unit": "image" if groups is None else "group",
        "bootstrap_units": len(units),
        "definition": dict(DEFINITIONS),
    }


# --------------------------------------------------------------------------- figure


def cam_figure(images, maps, masks: Sequence[np.ndarray | None], titles: Sequence[str], path: str | Path,
               max_images: int = 8, title: str = "Class activation maps and lesion masks") -> Path:
    """A grid of panels (at most ``max_images``, four a row): the model input (uint8
    size x size x 3) with the normalised map blended over it, the lesion mask's outline
    (cyan; none when the mask is None), the map's peak cell (white square) and the
    panel's title. PNG, Agg backend, ``title`` also in the PNG metadata."""
    from matplotlib.patches import Rectangle

    from busi_classifier.evaluation.figures import _figure, _save

    count = min(len(images), len(maps), len(masks), len(titles), int(max_images))
    if count < 1:
        raise ValueError("cam_figure needs at least one image")
    cols = min(4, count)
    rows = -(-count // cols)
    fig, axes = _figure(rows, cols, (2.7 * cols, 2.95 * rows + 0.35))
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k >= count:
            continue
        image = np.asarray(images[k], dtype=np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        cam = np.asarray(maps[k], dtype=np.float64)
        height, width = image.shape[:2]
        heat = colourise(normalise_map(cam), (width, height))
        blended = np.round(image.astype(np.float64) * (1 - OVERLAY_ALPHA) + heat * OVERLAY_ALPHA).astype(np.uint8)
        # everything in the unit square (x right, y down), so image, mask and grid may differ in size
        ax.imshow(blended, extent=(0, 1, 1, 0), interpolation="bilinear")
        mask = masks[k]
        if mask is not None and np.asarray(mask).any():
            mask = np.asarray(mask, dtype=float)
            ys = (np.arange(mask.shape[0]) + 0.5) / mask.shape[0]
            xs = (np.arange(mask.shape[1]) + 0.5) / mask.shape[1]
            ax.contour(xs, ys, mask, levels=[0.5], colors=[MASK_COLOUR], linewidths=1.6)
        peak = peak_cell(cam)
        if peak is not None:
            h, w = cam.shape
            ax.add_patch(Rectangle((peak[1] / w, peak[0] / h), 1 / w, 1 / h, fill=False,
                                   edgecolor=PEAK_COLOUR, linewidth=1.6, linestyle="--"))
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_title(str(titles[k]), fontsize=8)
    fig.suptitle(f"{title}\n(cyan: lesion mask outline; dashed white square: the map's peak cell)", fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out, title)


# --------------------------------------------------------------------------- the served model


def served_localisation(maps: np.ndarray, probabilities: np.ndarray, masks: Sequence[np.ndarray | None],
                        groups: Sequence | None = None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The localisation figures of a model's answers: the map of the predicted class (what
    the API's explanation shows) for every image with a lesion mask, with the cells
    dilated by one (``dilate_1``, the headline) and not dilated (``dilate_0``, stricter:
    with 7x7 cells the centre baseline alone hits most BUSI lesions once dilated).

    ``maps``: (N, h, w, classes); ``probabilities``: (N, classes)."""
    maps, probabilities = np.asarray(maps), np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    chosen = [maps[i, ..., c] for i, c in enumerate(predicted)]
    return {
        "map_of": "predicted class",
        "dilate_1": localisation_report(chosen, masks, n_resamples, seed, groups, map_of="predicted class",
                                        dilate_cells=1),
        "dilate_0": localisation_report(chosen, masks, n_resamples, seed, groups, map_of="predicted class",
                                        dilate_cells=0),
    }


def _content(image: np.ndarray) -> Image.Image:
    """The gray picture inside a letterboxed model input (the black padding cut off)."""
    gray = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L")
    box = gray.getbbox()
    return gray.crop(box) if box else gray


def distinct_frames(images, groups: Sequence | None = None) -> list[int]:
    """Indices of ``images`` keeping the first of each frame: images with the same
    ``groups`` id (the split's near-duplicate groups), identical pixels, or, without
    ``groups``, perceptual hashes (``data.audit.perceptual_hash`` of the picture inside
    the letterbox) within the audit's near-duplicate distance are one frame."""
    from busi_classifier.config import NEAR_DUPLICATE_BITS
    from busi_classifier.data.audit import perceptual_hash

    images = list(images)
    if groups is not None and len(groups) != len(images):
        raise ValueError(f"{len(groups)} group ids for {len(images)} images")
    kept: list[int] = []
    seen_groups, seen_pixels, seen_hashes = set(), set(), []
    for i, image in enumerate(images):
        array = np.ascontiguousarray(image)
        pixels = (array.shape, array.tobytes())
        if pixels in seen_pixels or (groups is not None and groups[i] in seen_groups):
            continue
        if groups is None:
            phash = perceptual_hash(_content(array))
            if any(int(np.count_nonzero(phash != other)) <= NEAR_DUPLICATE_BITS for other in seen_hashes):
                continue
            seen_hashes.append(phash)
        else:
            seen_groups.add(groups[i])
        seen_pixels.add(pixels)
        kept.append(i)
    return kept


def served_cam_figure(images: np.ndarray, maps: np.ndarray, probabilities: np.ndarray, labels: Sequence[int],
                      masks: Sequence[np.ndarray | None], classes: Sequence[str], path: str | Path,
                      where: str, max_images: int = 8, groups: Sequence | None = None) -> Path | None:
    """``cam_figure`` of the first ``max_images`` images that have a lesion mask, one per
    frame (``distinct_frames``: ``groups``, the near-duplicate group of each image, when
    given), each with its true class, the predicted class and probability, and
    ``hit_label`` (the pointing game's own test, one cell of slack; without slack where
    that is not meaningful on the map's grid). None when no image has a lesion."""
    with_lesion = [i for i, m in enumerate(masks) if m is not None and np.asarray(m).any()]
    frames = distinct_frames([images[i] for i in with_lesion],
                             None if groups is None else [groups[i] for i in with_lesion])
    keep = [with_lesion[k] for k in frames][:max_images]
    if not keep:
        return None
    predicted = np.asarray(probabilities).argmax(axis=1)
    chosen = [maps[i, ..., predicted[i]] for i in keep]
    titles = [f"{classes[labels[i]]}: predicted {classes[predicted[i]]} {probabilities[i, predicted[i]]:.2f}, "
              f"{hit_label(cam, masks[i])}" for i, cam in zip(keep, chosen, strict=True)]
    grid = np.shape(chosen[0])
    if pointing_game_not_meaningful(grid, DEFAULT_DILATE_CELLS) is None:
        meaning = (f"hit: the peak cell is on the lesion or within {DEFAULT_DILATE_CELLS} cell of it (the pointing "
                   "game's test)")
    else:
        meaning = (f"hit, no slack: the peak cell holds lesion pixels (on a {grid[0]}x{grid[1]} grid, with one cell "
                   "of slack the centre cell touches every cell)")
    return cam_figure(images[keep], chosen, [masks[i] for i in keep], titles, path,
                      title=f"Class activation maps of the predicted class ({where}), one image per frame\n{meaning}")
