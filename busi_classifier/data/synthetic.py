"""Synthetic breast-ultrasound images in the BUSI folder layout.

For tests, demos and smoke-training without the real (licensed) BUSI data set::

    out_dir/normal/normal (1).png        out_dir/normal/normal (1)_mask.png   (all black)
    out_dir/benign/benign (1).png        out_dir/benign/benign (1)_mask.png
                                         out_dir/benign/benign (1)_mask_1.png (2nd lesion)
    out_dir/malignant/malignant (1).png  out_dir/malignant/malignant (1)_mask.png

The images imitate B-mode ultrasound: tissue layers (skin line, subcutaneous fat with
Cooper's ligaments and fat lobules, fibroglandular tissue, pectoral muscle, dark chest
wall), depth attenuation, multiplicative speckle with horizontally elongated grains,
amplitude compression and a per-image gain, offset and compression exponent (so mean
brightness alone does not tell the classes apart). Lesions follow the BI-RADS cues:

* benign: oval, smooth (sometimes gently lobulated), wider than tall, hypo/anechoic,
  posterior acoustic enhancement in about 70 % of the images, sometimes a thin
  echogenic capsule; about 10 % get a second small lesion (``_mask_1.png``).
* malignant: irregular and often spiculated contour, taller than wide, heterogeneous
  hypoechoic interior (sometimes microcalcifications), sometimes an echogenic halo,
  posterior acoustic shadowing in about 85 % of the images.

Every image gets its own random generator derived from ``(seed, class index, image
number)``, so an image does not depend on how many images are generated, and the same
seed gives byte-identical files. Imports only NumPy, Pillow, tqdm and the standard
library.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from busi_classifier.serving.constants import CLASSES

MIN_SIDE_ALLOWED = 64

_N_ANGLES = 720
_ANGLES = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False)

BENIGN_ENHANCEMENT_PROBABILITY = 0.7
MALIGNANT_SHADOW_PROBABILITY = 0.85
SECOND_LESION_PROBABILITY = 0.1
RGB_PROBABILITY = 0.5
PNG_COMPRESS_LEVEL = 3  # zlib level for the images: ~2x faster than 6, ~10 % larger files
# Written at the root of every synthetic dataset: training records it in model.json
# (dataset.synthetic), so that the page, predict and the card say "demo model".
SYNTHETIC_MARKER = "SYNTHETIC.md"
SYNTHETIC_MARKER_TEXT = ("# Synthetic data\n\nMade by `python -m busi_classifier synthesize`: ultrasound-like "
                         "speckle with drawn lesions, in the BUSI folder layout. Not real ultrasound images; a model "
                         "trained on them is a demo of the pipeline, not a classifier of real scans.\n")


# --------------------------------------------------------------------------- helpers


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _convolve_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Same-size convolution along one axis (reflected edges), as shifted sums."""
    radius = len(kernel) // 2
    n = a.shape[axis]
    if radius >= n:  # tiny arrays: fall back to edge padding
        mode = "edge"
    else:
        mode = "reflect"
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(a, pad, mode=mode)
    out = np.zeros(a.shape, dtype=np.float32)
    index = [slice(None)] * a.ndim
    for i, weight in enumerate(kernel):
        index[axis] = slice(i, i + n)
        out += weight * padded[tuple(index)]
    return out


def _blur(a: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array (sigma 0 = no blur on that axis)."""
    out = a.astype(np.float32, copy=False)
    if sigma_y > 0:
        out = _convolve_axis(out, _gaussian_kernel(sigma_y), 0)
    if sigma_x > 0:
        out = _convolve_axis(out, _gaussian_kernel(sigma_x), 1)
    return out


def _blur1d(a: np.ndarray, sigma: float) -> np.ndarray:
    return _convolve_axis(a.astype(np.float32), _gaussian_kernel(sigma), 0)


_BINOMIAL = np.array([0.25, 0.5, 0.25], dtype=np.float32)


def _add_step(a: np.ndarray, boundary: np.ndarray, width: float, delta: float) -> None:
    """In place: add ``delta`` below the curve ``boundary`` (row per column) with a soft
    sigmoid edge of ``width`` pixels. Only the rows near the curve are evaluated."""
    h = a.shape[0]
    lo = int(np.clip(math.floor(float(boundary.min()) - 15 * width), 0, h))
    hi = int(np.clip(math.ceil(float(boundary.max()) + 15 * width), lo, h))
    rows = np.arange(lo, hi, dtype=np.float32)[:, None]
    a[lo:hi] += delta * _sigmoid((rows - boundary[None, :]) / width)
    a[hi:] += delta


def _smooth_field(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Zero-mean, unit-std random field with structures of about cell_y x cell_x pixels
    (low-resolution Gaussian noise upsampled bicubically with Pillow)."""
    gh = max(2, int(round(h / cell_y)) + 2)
    gw = max(2, int(round(w / cell_x)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _wave(rng: np.random.Generator, x: np.ndarray, amplitude: float, n_terms: int = 3) -> np.ndarray:
    """A smooth random curve over x in [0, 1] (sum of a few sinusoids), in units of amplitude."""
    out = np.zeros_like(x)
    for _ in range(n_terms):
        freq = rng.uniform(0.3, 2.5)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * x + rng.uniform(0, 2 * np.pi))
    return amplitude * out / n_terms


_DOT = np.exp(-0.5 * (np.arange(-2, 3)[:, None] ** 2 + np.arange(-2, 3)[None, :] ** 2) / 0.8).astype(np.float32)


def _add_dot(a: np.ndarray, y: int, x: int, amplitude: float) -> None:
    """Add a tiny bright Gaussian dot (5x5) centred at (y, x), clipped to the array."""
    h, w = a.shape
    y0, y1, x0, x1 = max(0, y - 2), min(h, y + 3), max(0, x - 2), min(w, x + 3)
    a[y0:y1, x0:x1] += amplitude * _DOT[y0 - (y - 2) : y1 - (y - 2), x0 - (x - 2) : x1 - (x - 2)]


# --------------------------------------------------------------------------- lesions


def _radius_table(rng: np.random.Generator, malignant: bool) -> np.ndarray:
    """Contour radius (1 = the base ellipse) as a function of the polar angle."""
    t = _ANGLES
    r = np.ones_like(t)
    if malignant:
        # irregular, angular margin: many harmonics ...
        for k in range(2, 16):
            r += rng.uniform(0.0, 0.15) / k**0.7 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        # ... and often radial spicules
        if rng.random() < 0.7:
            for angle in rng.uniform(-np.pi, np.pi, int(rng.integers(8, 22))):
                length = rng.uniform(0.15, 0.55)
                width = rng.uniform(0.025, 0.07)
                dt = np.angle(np.exp(1j * (t - angle)))
                r += length * np.exp(-0.5 * (dt / width) ** 2)
        r = np.maximum(r, 0.45)
    else:
        for k in (3, 4):
            r += rng.uniform(0.0, 0.025) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.3:  # gently macrolobulated
            k = int(rng.integers(3, 6))
            r += rng.uniform(0.03, 0.07) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return r.astype(np.float64)


def _lesion_geometry(rng: np.random.Generator, malignant: bool, ref: float, small: bool = False) -> dict:
    if malignant:
        b = rng.uniform(0.09, 0.2) * ref  # vertical semi-axis
        a = b / rng.uniform(1.2, 1.8)  # taller than wide
        tilt = rng.uniform(-0.3, 0.3)
        edge = rng.uniform(1.5, 3.5)
    else:
        scale = (0.04, 0.07) if small else (0.09, 0.22)
        a = rng.uniform(*scale) * ref  # horizontal semi-axis
        b = a / rng.uniform(1.35, 2.1)  # wider than tall ("parallel" orientation)
        tilt = rng.uniform(-0.2, 0.2)
        edge = rng.uniform(0.6, 1.3)
    return {"a": a, "b": b, "tilt": tilt, "edge": edge, "radius": _radius_table(rng, malignant)}


def _rasterize(geometry: dict, cx: float, cy: float, h: int, w: int, pad: float = 0.0):
    """Signed distance (pixels, >0 inside) to the lesion contour, over a window.

    Returns (window slices, signed distance array for that window)."""
    a, b, tilt, radius = geometry["a"], geometry["b"], geometry["tilt"], geometry["radius"]
    reach = max(a, b) * (float(radius.max()) + 0.05) + 6 + pad
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    yy = (np.arange(y0, y1, dtype=np.float64) - cy)[:, None]
    xx = (np.arange(x0, x1, dtype=np.float64) - cx)[None, :]
    c, s = math.cos(tilt), math.sin(tilt)
    un = (xx * c + yy * s) / a
    vn = (-xx * s + yy * c) / b
    rho = np.hypot(un, vn)
    theta = np.arctan2(vn, un)
    r_contour = np.interp(theta, _ANGLES, radius, period=2 * np.pi)
    pixels_per_unit = np.hypot(a * np.cos(theta), b * np.sin(theta))
    signed = ((r_contour - rho) * pixels_per_unit).astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), signed


def _posterior_factor(mask: np.ndarray, gain: float, decay_px: float, narrow: bool) -> np.ndarray:
    """Multiplicative factor for the column below a lesion: gain < 1 is acoustic
    shadowing, gain > 1 posterior enhancement; 1 elsewhere."""
    h, w = mask.shape
    columns = mask.any(axis=0)
    if not columns.any() or gain == 1.0:
        return np.ones((h, w), dtype=np.float32)
    bottom = (h - 1 - np.argmax(mask[::-1], axis=0)).astype(np.float32)
    idx = np.nonzero(columns)[0]
    start = np.interp(np.arange(w), idx, bottom[idx]).astype(np.float32)
    start = _blur1d(start, 2.0)
    width = float(len(idx))
    profile = _blur1d(columns.astype(np.float32), max(1.5, 0.12 * width))
    if narrow:
        profile = profile**2
    yy = np.arange(h, dtype=np.float32)[:, None]
    dy = yy - start[None, :]
    amount = profile[None, :] * _sigmoid(dy / 2.5) * np.exp(-np.clip(dy, 0, None) / decay_px)
    return (1.0 + (gain - 1.0) * amount).astype(np.float32)


# --------------------------------------------------------------------------- image


@dataclass
class _Layers:
    """Tissue boundaries of one image, in pixels, one value per column."""

    skin: np.ndarray
    fat_end: np.ndarray
    gland_end: np.ndarray
    muscle_end: np.ndarray


def _layer_boundaries(rng: np.random.Generator, h: int, xs: np.ndarray) -> _Layers:
    """Skin line, end of the subcutaneous fat, of the glandular tissue and of the pectoral
    muscle: wavy curves across the image (functions of x)."""
    top_gap = rng.uniform(0.0, 0.04) * h
    skin = top_gap + rng.uniform(0.01, 0.03) * h + _wave(rng, xs, 0.008 * h)
    fat_end = skin + rng.uniform(0.10, 0.26) * h + _wave(rng, xs, 0.05 * h)
    gland_end = np.minimum(fat_end + rng.uniform(0.35, 0.55) * h + _wave(rng, xs, 0.05 * h), 0.9 * h)
    gland_end = np.maximum(gland_end, fat_end + 0.15 * h)
    muscle_end = gland_end + rng.uniform(0.07, 0.14) * h + _wave(rng, xs, 0.02 * h)
    return _Layers(skin, fat_end, gland_end, muscle_end)


def _layered_echogenicity(rng: np.random.Generator, layers: _Layers, h: int, w: int) -> np.ndarray:
    """Echo level of each layer (gap, fat, gland, muscle, chest wall) with soft steps
    between them: the tissue map before texture."""
    level_gap = rng.uniform(0.02, 0.06)
    level_fat = rng.uniform(0.14, 0.28)
    level_gland = rng.uniform(0.45, 0.8)
    level_muscle = rng.uniform(0.3, 0.45)
    level_deep = rng.uniform(0.06, 0.16)
    tissue = np.full((h, w), level_gap, dtype=np.float32)
    _add_step(tissue, layers.skin, 1.5, level_fat - level_gap)
    _add_step(tissue, layers.fat_end, rng.uniform(2.0, 6.0), level_gland - level_fat)
    _add_step(tissue, layers.gland_end, 2.0, level_muscle - level_gland)
    _add_step(tissue, layers.muscle_end, 2.0, level_deep - level_muscle)
    return tissue


def _add_gland_texture(rng: np.random.Generator, tissue: np.ndarray) -> None:
    """In place: heterogeneous glandular texture, horizontally elongated blobs."""
    h, w = tissue.shape
    texture = _smooth_field(rng, h, w, rng.uniform(6, 12), rng.uniform(18, 40))
    tissue *= np.exp(rng.uniform(0.2, 0.4) * texture)


def _add_muscle_striations(rng: np.random.Generator, tissue: np.ndarray, layers: _Layers, yy: np.ndarray) -> None:
    """In place: pectoral muscle striations (only the rows the muscle can reach)."""
    h, w = tissue.shape
    top = max(0, int(layers.gland_end.min() - 12))
    bottom = min(h, int(layers.muscle_end.max() + 12) + 1)
    if bottom - top >= 2:
        rows = yy[top:bottom]
        in_muscle = (_sigmoid((rows - layers.gland_end[None, :]) / 2.0)
                     - _sigmoid((rows - layers.muscle_end[None, :]) / 2.0))
        striae = _smooth_field(rng, bottom - top, w, 2.5, 60)
        tissue[top:bottom] *= np.exp(0.35 * in_muscle * striae)


def _add_skin_lines(rng: np.random.Generator, tissue: np.ndarray, skin: np.ndarray, yy: np.ndarray) -> None:
    """In place: the skin, a bright double line."""
    h = tissue.shape[0]
    thickness = rng.uniform(1.2, 2.5)
    dermis = skin + rng.uniform(3, 8)
    band = min(h, int(dermis.max() + 6 * thickness) + 1)  # rows the skin lines can reach
    yb = yy[:band]
    tissue[:band] += rng.uniform(0.7, 1.1) * np.exp(-0.5 * ((yb - skin[None, :]) / thickness) ** 2)
    tissue[:band] += rng.uniform(0.3, 0.6) * np.exp(-0.5 * ((yb - dermis[None, :]) / thickness) ** 2)


def _add_fat_lobules(rng: np.random.Generator, tissue: np.ndarray, layers: _Layers) -> None:
    """In place: mildly hypoechoic horizontal ovals inside the fat layer."""
    h, w = tissue.shape
    skin, fat_end = layers.skin, layers.fat_end
    fat_thickness = float(np.mean(fat_end - skin))
    for _ in range(int(rng.integers(2, 7))):
        cx = rng.uniform(0, w)
        col = int(np.clip(cx, 0, w - 1))
        depth = fat_end[col] - skin[col]
        cy = rng.uniform(skin[col] + 0.3 * depth, skin[col] + 0.7 * depth)
        geometry = {
            "a": rng.uniform(0.04, 0.1) * w,
            "b": max(2.0, rng.uniform(0.2, 0.35) * fat_thickness),
            "tilt": rng.uniform(-0.15, 0.15),
            "radius": np.ones(_N_ANGLES) + 0.05 * np.cos(3 * _ANGLES + rng.uniform(0, 6.3)),
        }
        window, signed = _rasterize(geometry, cx, cy, h, w)
        tissue[window] *= 1.0 - rng.uniform(0.15, 0.35) * _sigmoid(signed / 2.0)


def _add_cooper_ligaments(rng: np.random.Generator, tissue: np.ndarray, layers: _Layers, yy: np.ndarray,
                          xs: np.ndarray) -> None:
    """In place: Cooper's ligaments, thin bright arcs rising from the gland into the fat."""
    h = tissue.shape[0]
    skin, fat_end = layers.skin, layers.fat_end
    band = min(h, int(fat_end.max()) + 8)
    yb = yy[:band]
    for _ in range(int(rng.integers(2, 6))):
        x0 = rng.uniform(0, 1)
        spread = rng.uniform(0.06, 0.15)
        rise = rng.uniform(0.3, 0.8) * (fat_end - skin)
        bump = np.exp(-0.5 * ((xs - x0) / spread) ** 2)
        curve = fat_end - rise * bump
        support = np.clip((bump - 0.15) / 0.3, 0, 1)
        cols = np.nonzero(support)[0]
        if len(cols) == 0:
            continue
        c0, c1 = cols[0], cols[-1] + 1
        line = np.exp(-0.5 * ((yb - curve[None, c0:c1]) / 1.3) ** 2)
        tissue[:band, c0:c1] += rng.uniform(0.1, 0.3) * support[None, c0:c1] * line


def _place_lesions(rng: np.random.Generator, malignant: bool, layers: _Layers, h: int, w: int) -> list[tuple]:
    """[(geometry, cx, cy)]: the lesion inside the gland, and for about 10 % of benign
    images a second small one beside it."""
    skin, fat_end, gland_end = layers.skin, layers.fat_end, layers.gland_end
    geometry = _lesion_geometry(rng, malignant, float(min(h, w)))
    b_px = geometry["b"]
    cx = rng.uniform(0.3, 0.7) * w
    col = int(np.clip(cx, 0, w - 1))
    top_limit = max(fat_end[col] - 0.3 * b_px, skin[col] + b_px + 6)
    bottom_limit = max(top_limit, min(gland_end[col], 0.72 * h) - b_px)
    cy = rng.uniform(top_limit, bottom_limit)
    lesions = [(geometry, cx, cy)]
    if not malignant and rng.random() < SECOND_LESION_PROBABILITY:
        small = _lesion_geometry(rng, False, float(min(h, w)), small=True)
        for _ in range(10):
            side = rng.choice([-1.0, 1.0])
            gap = geometry["a"] * 1.3 + small["a"] * 1.3 + rng.uniform(5, 0.15 * w)
            cx2 = cx + side * gap
            if not (0.12 * w < cx2 < 0.88 * w):
                continue
            cy2 = cy + rng.uniform(-1.0, 1.0) * geometry["b"]
            if cy2 - small["b"] < skin.max() + 10 or cy2 + small["b"] > 0.85 * h:
                continue
            lesions.append((small, cx2, cy2))
            break
    return lesions


def _lesion_acoustics(rng: np.random.Generator, malignant: bool, h: int) -> tuple[float, float, float]:
    """(interior echo level, posterior gain, posterior decay in pixels): shadowing for
    most malignant lesions, enhancement for most benign ones."""
    if malignant:
        level = rng.uniform(0.06, 0.2)
        posterior_gain = rng.uniform(0.3, 0.55) if rng.random() < MALIGNANT_SHADOW_PROBABILITY else 1.0
        decay = rng.uniform(1.5, 4.0) * h
    else:
        level = rng.uniform(0.03, 0.18)
        enhanced = rng.random() < BENIGN_ENHANCEMENT_PROBABILITY
        posterior_gain = rng.uniform(1.5, 2.2) if enhanced else 1.0
        decay = rng.uniform(0.3, 0.6) * h
    return level, posterior_gain, decay


def _draw_lesion(rng: np.random.Generator, tissue: np.ndarray, geometry: dict, lx: float, ly: float, level: float,
                 malignant: bool) -> np.ndarray:
    """In place: blend one lesion (interior texture, microcalcifications, halo or capsule)
    into ``tissue``. Returns its boolean mask."""
    h, w = tissue.shape
    window, signed = _rasterize(geometry, lx, ly, h, w, pad=8)
    mask = np.zeros((h, w), dtype=bool)
    mask[window] = signed > 0
    inside = _sigmoid(signed / geometry["edge"])
    interior = np.full(signed.shape, level, dtype=np.float32)
    if malignant:
        interior *= np.exp(0.45 * _smooth_field(rng, *signed.shape, 4, 6))
        if rng.random() < 0.4:  # microcalcifications: tiny bright dots
            inner = np.argwhere(signed > 3)
            if len(inner):
                for py, px in inner[rng.integers(0, len(inner), int(rng.integers(3, 12)))]:
                    y, x = window[0].start + int(py), window[1].start + int(px)
                    _add_dot(tissue, y, x, rng.uniform(0.6, 1.2))
    else:
        interior *= np.exp(0.15 * _smooth_field(rng, *signed.shape, 6, 10))
    region = tissue[window]
    region[:] = region * (1.0 - inside) + interior * inside
    if malignant and rng.random() < 0.4:  # echogenic halo
        halo = rng.uniform(0.2, 0.4) * np.exp(-0.5 * ((signed + 3.0) / 2.5) ** 2) * (signed < 0)
        region += halo
    elif not malignant and rng.random() < 0.5:  # thin echogenic capsule
        region += rng.uniform(0.15, 0.35) * np.exp(-0.5 * (signed / 1.0) ** 2)
    return mask


def _add_lesions(rng: np.random.Generator, tissue: np.ndarray, label: str, layers: _Layers) -> list[np.ndarray]:
    """In place: the lesions of a benign or malignant image and their posterior shadowing
    or enhancement (none for normal). Returns their masks."""
    h, w = tissue.shape
    masks: list[np.ndarray] = []
    posterior = np.ones((h, w), dtype=np.float32)
    if label != CLASSES[0]:
        malignant = label == CLASSES[2]
        lesions = _place_lesions(rng, malignant, layers, h, w)
        level, posterior_gain, decay = _lesion_acoustics(rng, malignant, h)
        for geometry, lx, ly in lesions:
            mask = _draw_lesion(rng, tissue, geometry, lx, ly, level, malignant)
            masks.append(mask)
            posterior *= _posterior_factor(mask, posterior_gain, decay, narrow=malignant)
    tissue *= posterior
    return masks


def _to_display(rng: np.random.Generator, tissue: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Depth attenuation, fully developed speckle (the magnitude of a smoothed complex
    Gaussian field, grains elongated laterally, softened a little), amplitude compression
    and display gain/offset."""
    h, w = tissue.shape
    tissue *= np.exp(-rng.uniform(0.4, 1.3) * yy / h)
    sigma_y, sigma_x = rng.uniform(0.9, 1.5), rng.uniform(1.8, 3.0)
    real = _blur(rng.standard_normal((h, w), dtype=np.float32), sigma_y, sigma_x)
    imag = _blur(rng.standard_normal((h, w), dtype=np.float32), sigma_y, sigma_x)
    speckle = np.hypot(real, imag)
    speckle = _convolve_axis(_convolve_axis(speckle, _BINOMIAL, 0), _BINOMIAL, 1)
    speckle /= speckle.mean()
    envelope = np.maximum(tissue, 0.0) * speckle + 0.01 * np.abs(rng.standard_normal((h, w), dtype=np.float32))
    display = envelope ** rng.uniform(0.55, 0.8)  # amplitude compression
    return rng.uniform(0.6, 1.05) * display + rng.uniform(-0.03, 0.04)  # gain, offset


def _field_of_view(rng: np.random.Generator, h: int, w: int, yy: np.ndarray) -> np.ndarray:
    """Boolean (h, w): inside the scanner's field of view; outside are black margins
    (straight side margins, a trapezoid narrower at the top, sometimes a bottom band)."""
    field = np.ones((h, w), dtype=bool)
    kind = rng.random()
    cols = np.arange(w)[None, :]
    if kind < 0.35:  # straight black side margins
        left, right = int(rng.uniform(0, 0.08) * w), int(rng.uniform(0, 0.08) * w)
        field &= (cols >= left) & (cols < w - right)
    elif kind < 0.5:  # trapezoid: narrower at the top
        top_inset = rng.uniform(0.05, 0.15) * w
        bottom_inset = rng.uniform(0.0, 0.04) * w
        inset = top_inset + (bottom_inset - top_inset) * yy / h
        field &= (cols >= inset) & (cols < w - inset)
    if rng.random() < 0.2:
        field[h - int(rng.uniform(0.0, 0.06) * h) :, :] = False
    return field


def _render(rng: np.random.Generator, label: str, h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One synthetic image: (uint8 gray (h, w), list of boolean lesion masks).

    The steps draw from ``rng`` in a fixed order, so the same generator state gives the
    same image."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32) / w
    layers = _layer_boundaries(rng, h, xs)
    tissue = _layered_echogenicity(rng, layers, h, w)
    _add_gland_texture(rng, tissue)
    _add_muscle_striations(rng, tissue, layers, yy)
    _add_skin_lines(rng, tissue, layers.skin, yy)
    _add_fat_lobules(rng, tissue, layers)
    _add_cooper_ligaments(rng, tissue, layers, yy, xs)
    masks = _add_lesions(rng, tissue, label, layers)
    display = _to_display(rng, tissue, yy)
    field = _field_of_view(rng, h, w, yy)
    display = np.where(field, display, 0.0)
    masks = [m & field for m in masks]
    # a second lesion that fell entirely into the black margin is not visible: no mask
    masks = [m for i, m in enumerate(masks) if i == 0 or m.any()]
    gray = np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)
    return gray, masks


# --------------------------------------------------------------------------- public API


def generate_dataset(
    out_dir,
    per_class: int = 60,
    seed: int = 0,
    min_side: int = 300,
    max_side: int = 700,
    progress: bool = True,
) -> pathlib.Path:
    """Write ``per_class`` synthetic images per class (CLASSES order) with their masks
    into ``out_dir`` in the BUSI layout and return ``Path(out_dir)``.

    Width and height of every image are drawn independently and uniformly from
    [min_side, max_side]. About half the images are 8-bit grayscale PNG ("L"), half RGB
    PNG with three equal channels; masks are "L" with 255 inside a lesion. Image N of a
    class depends only on (seed, class, N), so files are byte-identical for the same
    seed. Existing files with the same names are overwritten (a stale ``_mask_1.png`` of
    an image that now has one lesion is removed); other files are left alone.
    """
    per_class, seed = int(per_class), int(seed)
    min_side, max_side = int(min_side), int(max_side)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if min_side < MIN_SIDE_ALLOWED:
        raise ValueError(f"min_side must be at least {MIN_SIDE_ALLOWED}, got {min_side}")
    if max_side < min_side:
        raise ValueError(f"max_side ({max_side}) must not be smaller than min_side ({min_side})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")

    out = pathlib.Path(out_dir)
    jobs = [(ci, label, n) for ci, label in enumerate(CLASSES) for n in range(1, per_class + 1)]
    for label in CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)
    (out / SYNTHETIC_MARKER).write_text(SYNTHETIC_MARKER_TEXT)

    for class_index, label, number in tqdm(jobs, desc="synthetic images", unit="img", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(class_index, number)))
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        as_rgb = bool(rng.random() < RGB_PROBABILITY)
        gray, masks = _render(rng, label, height, width)

        stem = f"{label} ({number})"
        folder = out / label
        image = Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)) if as_rgb else Image.fromarray(gray)
        image.save(folder / f"{stem}.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        if not masks:
            masks = [np.zeros((height, width), dtype=bool)]
        for k, mask in enumerate(masks):
            suffix = "_mask" if k == 0 else f"_mask_{k}"
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{stem}{suffix}.png", format="PNG")
        for k in range(len(masks), 3):  # a stale extra mask from an earlier run would lie
            (folder / f"{stem}_mask_{k}.png").unlink(missing_ok=True)
    return out


def _next_number(folder: pathlib.Path, label: str) -> int:
    numbers = [int(p.stem[len(label) + 2 : -1]) for p in folder.glob(f"{label} (*).png") if "_mask" not in p.name]
    return max(numbers, default=0) + 1


def _copy_with(out: pathlib.Path, source: str, target_label: str, transform) -> str:
    """Write ``transform(image)`` of ``source`` (relative path) as the next image of
    ``target_label``, its masks transformed alike (geometry only). Returns the new path."""
    src = out / source
    folder = out / target_label
    stem = f"{target_label} ({_next_number(folder, target_label)})"
    with Image.open(src) as image:
        transform(image.copy(), False).save(folder / f"{stem}.png")
    for mask in sorted(src.parent.glob(f"{src.stem}_mask*.png")):
        suffix = mask.stem[len(src.stem):]
        with Image.open(mask) as m:
            transform(m.copy(), True).save(folder / f"{stem}{suffix}.png")
    return f"{target_label}/{stem}.png"


def _draw_annotations(image: Image.Image, is_mask: bool) -> Image.Image:
    """Yellow calipers (two '+' marks and a dotted line) and white text, as scanners burn them in."""
    if is_mask:
        return image
    from PIL import ImageDraw

    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    w, h = image.size
    a, b = (int(w * 0.35), int(h * 0.45)), (int(w * 0.62), int(h * 0.52))
    caliper = (255, 230, 0)  # yellow, as on several BUSI images
    for x, y in (a, b):
        draw.line([(x - 6, y), (x + 6, y)], fill=caliper, width=2)
        draw.line([(x, y - 6), (x, y + 6)], fill=caliper, width=2)
    for t in np.linspace(0, 1, 12):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        draw.ellipse([(x - 1, y - 1), (x + 1, y + 1)], fill=caliper)
    draw.text((int(w * 0.05), int(h * 0.88)), "LT BREAST 2:00", fill=(230, 230, 230))
    return image


PLANTED_KINDS = ("exact", "resized", "annotated", "other_class")


def plant_duplicates(out_dir, seed: int = 0) -> list[dict]:
    """Add known near-duplicates to a dataset written by ``generate_dataset``, as BUSI
    has them: an exact copy, a resized copy, a copy with calipers and text drawn on it,
    and a copy filed under another class (a label conflict). Each copy becomes the next
    image number of its class. Returns [{"kind", "original", "copy"}] (relative paths)."""
    out = pathlib.Path(out_dir)
    rng = np.random.default_rng(seed)
    picks = {label: sorted(p.name for p in (out / label).glob(f"{label} (*).png") if "_mask" not in p.name)
             for label in CLASSES}
    if any(len(names) < 2 for names in picks.values()):
        raise ValueError("plant_duplicates needs at least 2 images per class")

    def pick(label: str) -> str:
        names = picks[label]
        return f"{label}/{names.pop(int(rng.integers(len(names))))}"

    planted = []
    exact = pick("benign")
    planted.append({"kind": "exact", "original": exact, "copy": _copy_with(out, exact, "benign", lambda im, m: im)})
    resized = pick("malignant")
    planted.append({"kind": "resized", "original": resized, "copy": _copy_with(
        out, resized, "malignant",
        lambda im, m: im.resize((int(im.width * 0.7), int(im.height * 0.7)),
                                Image.Resampling.NEAREST if m else Image.Resampling.LANCZOS))})
    annotated = pick("normal")
    planted.append({"kind": "annotated", "original": annotated,
                    "copy": _copy_with(out, annotated, "normal", _draw_annotations)})
    other = pick("benign")
    planted.append({"kind": "other_class", "original": other,
                    "copy": _copy_with(out, other, "malignant", lambda im, m: im)})
    return planted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m busi_classifier synthesize",
        description="Write a synthetic breast-ultrasound data set in the BUSI folder layout.",
        epilog="example:\n  python -m busi_classifier synthesize --out data/synthetic --per-class 100 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--per-class", type=int, default=60, metavar="N", help="images per class (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--plant-duplicates", action="store_true",
                        help="also add an exact, a resized, an annotated and a cross-class copy, for the audit "
                        "(default: off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar on a terminal only)")
    args = parser.parse_args(argv)
    try:
        out = generate_dataset(args.out, per_class=args.per_class, seed=args.seed,
                               progress=not args.quiet and sys.stderr.isatty())
        planted = plant_duplicates(out, args.seed) if args.plant_duplicates else []
    except ValueError as exc:
        parser.error(str(exc))
    for p in planted:
        print(f"planted {p['kind']} copy: {p['copy']} <- {p['original']}")
    total = args.per_class * len(CLASSES)
    classes = ", ".join(CLASSES)
    print(f"wrote {total} synthetic images ({args.per_class} per class: {classes}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
