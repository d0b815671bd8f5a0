"""A near-duplicate comparison that survives crops and shifts.

The perceptual hash of ``audit`` compares whole images, so the same ultrasound frame
saved with other borders, with a black wedge, or shifted by a few pixels looks like a
different image to it. This comparison aligns two images before comparing them:

1. Each image is kept at 1/8 of its pixel size (gray, box-averaged: ``small_image``).
   A crop keeps the pixel scale, so two crops of one frame differ by a translation.
2. Candidates, cheaply: every pair is compared by the peak of its phase correlation
   at 1/32 scale (whitened cross-power spectrum, one inverse FFT per pair); each image
   keeps its ``CANDIDATES_PER_IMAGE`` best partners, plus any extra candidate pairs
   (the audit adds the hash pairs).
3. Verification: phase correlation at 1/8 scale on a canvas large enough for any
   shift (no wrap-around) gives the translation; the two band-passed images (fine texture and edges,
   without the depth gradient that every ultrasound image shares) are correlated on
   the overlap, black pixels (borders, wedges) left out. Two images are the same frame
   when that correlation is at least ``MIN_CORRELATION`` and the overlap covers at
   least ``MIN_OVERLAP`` of the smaller image.

Thresholds were chosen on the real BUSI data (docs/data-audit.md,
``imgs/audit_crop_pairs.png``): the same frame, however cropped, correlates at 0.86 or
more; the next pairs, from 0.75 down, are neighbouring frames of one sweep or
different images. Imports NumPy and Pillow (and tqdm for the progress bar).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SMALL_FACTOR = 8  # images are compared at 1/8 of their pixel size
COARSE_FACTOR = 4  # candidates are found at a further 1/4 (1/32 in all)
BLACK_LEVEL = 10  # gray level (0-255) at or below which a pixel is border, not tissue
CANDIDATES_PER_IMAGE = 6
MIN_CORRELATION = 0.8
MIN_OVERLAP = 0.5
_COARSE_BATCH = 4096  # pairs per inverse FFT call (bounds memory)


def _fast_length(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


@dataclass(frozen=True)
class CropMatch:
    """The verified comparison of images i < j."""

    i: int
    j: int
    correlation: float  # band-pass correlation on the overlap, -1..1
    overlap: float  # overlap area / valid area of the smaller image, 0..1
    shift: tuple[int, int]  # (dy, dx) of j relative to i, in original pixels (approximate)

    def same_frame(self, min_correlation: float = MIN_CORRELATION, min_overlap: float = MIN_OVERLAP) -> bool:
        return self.correlation >= min_correlation and self.overlap >= min_overlap


def small_image(gray: Image.Image) -> np.ndarray:
    """The image at 1/SMALL_FACTOR of its size (uint8, box-averaged): what is compared."""
    return np.asarray(gray.convert("L").reduce(SMALL_FACTOR), dtype=np.uint8)


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated."""
    k = 2 * r + 1
    p = np.pad(a, r, mode="edge")
    c = np.cumsum(p, axis=0)
    c = np.concatenate([np.zeros((1, c.shape[1])), c], axis=0)
    p = (c[k:] - c[:-k]) / k
    c = np.cumsum(p, axis=1)
    c = np.concatenate([np.zeros((c.shape[0], 1)), c], axis=1)
    return (c[:, k:] - c[:, :-k]) / k


def _prepared(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band-passed image with non-tissue set to 0, tissue mask): a difference of box
    blurs keeps structure of about 8 to 70 original pixels; the mask leaves out black
    borders and wedges and the 2 pixels next to them (their edge is not content)."""
    a = small.astype(np.float64)
    mask = _box((a > BLACK_LEVEL).astype(np.float64), 2) > 0.999
    band = _box(a, 1) - _box(a, 4)
    return np.where(mask, band, 0.0), mask


def coarse_scores(smalls: Sequence[np.ndarray]) -> np.ndarray:
    """n x n peak of the whitened circular cross-correlation at 1/32 scale (symmetric,
    diagonal 0): high for two views of one frame whatever the shift."""
    n = len(smalls)
    coarse = [np.asarray(Image.fromarray(s).reduce(COARSE_FACTOR), dtype=np.float32) for s in smalls]
    if n < 2:
        return np.zeros((n, n), dtype=np.float32)
    height = _fast_length(max(c.shape[0] for c in coarse))
    width = _fast_length(max(c.shape[1] for c in coarse))
    stack = np.zeros((n, height, width), dtype=np.float32)
    for k, c in enumerate(coarse):
        valid = c > BLACK_LEVEL
        if valid.any():
            v = np.where(valid, c - c[valid].mean(), 0.0)
            stack[k, : c.shape[0], : c.shape[1]] = v / (np.sqrt((v * v).sum()) + 1e-6)
    spectra = np.fft.rfft2(stack).astype(np.complex64)
    spectra /= np.abs(spectra) + 1e-3 * float(np.abs(spectra).mean())
    conjugates = np.conj(spectra)
    scores = np.zeros((n, n), dtype=np.float32)
    rows = max(1, _COARSE_BATCH // n)
    for start in range(0, n - 1, rows):  # a block of rows against every later image
        for i in range(start, min(start + rows, n - 1)):
            corr = np.fft.irfft2(spectra[i] * conjugates[i + 1 :], s=(height, width))
            scores[i, i + 1 :] = corr.reshape(n - 1 - i, -1).max(axis=1)
    return scores + scores.T


def candidate_pairs(scores: np.ndarray, per_image: int = CANDIDATES_PER_IMAGE,
                    extra: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Pairs (i < j): each image's ``per_image`` best-scoring partners, plus ``extra``."""
    n = len(scores)
    out = {(min(a, b), max(a, b)) for a, b in extra if a != b}
    if n > 1 and per_image > 0:
        masked = scores.astype(np.float64).copy()
        np.fill_diagonal(masked, -np.inf)
        best = np.argsort(-masked, axis=1, kind="stable")[:, : min(per_image, n - 1)]
        out |= {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in best[i]}
    return sorted(out)


def compare(a: np.ndarray, b: np.ndarray, i: int = 0, j: int = 1, prepared=None) -> CropMatch:
    """Align small images ``a`` and ``b`` by phase correlation and correlate their
    band-passed overlap. ``prepared``: their ``_prepared`` forms, if already computed."""
    (pa, ma), (pb, mb) = prepared or (_prepared(a), _prepared(b))
    height, width = _fast_length(pa.shape[0] + pb.shape[0]), _fast_length(pa.shape[1] + pb.shape[1])
    cross = np.fft.rfft2(pa, s=(height, width)) * np.conj(np.fft.rfft2(pb, s=(height, width)))
    corr = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(height, width))
    dy, dx = (int(v) for v in np.unravel_index(int(np.argmax(corr)), corr.shape))
    dy = dy - height if dy >= pa.shape[0] else dy  # b's origin lies at (dy, dx) in a
    dx = dx - width if dx >= pa.shape[1] else dx
    y0, y1 = max(0, dy), min(pa.shape[0], pb.shape[0] + dy)
    x0, x1 = max(0, dx), min(pa.shape[1], pb.shape[1] + dx)
    shift = (dy * SMALL_FACTOR, dx * SMALL_FACTOR)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return CropMatch(i, j, 0.0, 0.0, shift)
    both = ma[y0:y1, x0:x1] & mb[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    overlap = float(both.sum()) / max(1, min(int(ma.sum()), int(mb.sum())))
    if both.sum() < 50:
        return CropMatch(i, j, 0.0, overlap, shift)
    u = pa[y0:y1, x0:x1][both]
    v = pb[y0 - dy : y1 - dy, x0 - dx : x1 - dx][both]
    u, v = u - u.mean(), v - v.mean()
    correlation = float((u * v).sum() / (np.sqrt((u * u).sum() * (v * v).sum()) + 1e-12))
    return CropMatch(i, j, correlation, overlap, shift)


def crop_matches(smalls: Sequence[np.ndarray], per_image: int = CANDIDATES_PER_IMAGE,
                 extra: Iterable[tuple[int, int]] = (), progress: bool = False) -> list[CropMatch]:
    """Every candidate pair, verified (see the module docstring); ``same_frame`` tells
    which are copies."""
    from tqdm import tqdm

    pairs = candidate_pairs(coarse_scores(smalls), per_image, extra)
    prepared: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def prep(k: int):
        if k not in prepared:
            prepared[k] = _prepared(smalls[k])
        return prepared[k]

    return [compare(smalls[i], smalls[j], i, j, (prep(i), prep(j)))
            for i, j in tqdm(pairs, desc="aligning candidate pairs", unit="pair", disable=not progress)]
