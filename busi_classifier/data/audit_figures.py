"""Figures of the dataset audit (matplotlib, training world)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from busi_classifier.data.dataset import Sample
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.decode import decode_image

if TYPE_CHECKING:  # annotations only: audit.run_audit imports this module to draw its figures
    from busi_classifier.data.audit import Grouping

CLASS_COLOURS = {"normal": "#4c9a2a", "benign": "#1f77b4", "malignant": "#d62728"}
THUMB = 160


def _subplots(*args, **kwargs):
    """(figure, axes) without pyplot: no global backend state, works in notebooks too."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(*args, **kwargs)


def _thumb(path: Path, size: int = THUMB) -> np.ndarray:
    return decode_image(path.read_bytes(), size)


def class_balance(grouping: Grouping, path: Path) -> Path:
    records = grouping.records
    members = grouping.members()
    images = [sum(r.label == c for r in records) for c in CLASSES]
    in_groups = [sum(r.label == c for i, r in enumerate(records) if len(members[grouping.groups[i]]) > 1)
                 for c in CLASSES]
    masks = [sum(r.masks for r in records if r.label == c) for c in CLASSES]
    x = np.arange(len(CLASSES))
    fig, ax = _subplots(figsize=(6.5, 3.6))
    ax.bar(x - 0.27, images, 0.27, label="images", color=[CLASS_COLOURS[c] for c in CLASSES])
    ax.bar(x, in_groups, 0.27, label="of which in a near-duplicate group", color="#999999")
    ax.bar(x + 0.27, masks, 0.27, label="mask files", color="#dddddd", edgecolor="#777777")
    for xi, n in zip(x, images, strict=True):
        ax.text(xi - 0.27, n, str(n), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, CLASSES)
    ax.set_ylabel("count")
    ax.set_title("Class balance")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def size_distribution(grouping: Grouping, path: Path) -> Path:
    fig, ax = _subplots(figsize=(5.5, 4.2))
    for label in CLASSES:
        rs = [r for r in grouping.records if r.label == label]
        ax.scatter([r.width for r in rs], [r.height for r in rs], s=10, alpha=0.6, label=f"{label} ({len(rs)})",
                   color=CLASS_COLOURS[label])
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title("Image sizes")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def mean_images(samples: Sequence[Sample], path: Path, size: int = 224) -> Path:
    """Average of every image of a class after the shared preprocessing (what the model sees)."""
    fig, axes = _subplots(1, len(CLASSES), figsize=(3.2 * len(CLASSES), 3.5))
    for ax, label in zip(axes, CLASSES, strict=True):
        members = [s for s in samples if s.label == label]
        total = np.zeros((size, size), dtype=np.float64)
        for s in members:
            total += decode_image(s.path.read_bytes(), size).mean(axis=2)
        ax.imshow(total / max(1, len(members)), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label} (n={len(members)})")
        ax.axis("off")
    fig.suptitle("Average image per class (after the shared preprocessing)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _pair_grid(pairs, root: Path, records, title: str, path: Path, per_row: int = 2,
               caption_size: float = 9) -> Path:
    """Pairs side by side, ``per_row`` pairs a row, each captioned."""
    rows = max(1, -(-len(pairs) // per_row))
    fig, axes = _subplots(rows, 2 * per_row, figsize=(2.4 * 2 * per_row, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (i, j, label_text) in enumerate(pairs):
        row, col = divmod(n, per_row)
        for k, index in enumerate((i, j)):
            ax = axes[row][2 * col + k]
            ax.imshow(_thumb(root / records[index].path))
            ax.set_title(records[index].path.split("/")[-1], fontsize=8)
        axes[row][2 * col].text(1.0, -0.08, label_text, transform=axes[row][2 * col].transAxes,
                                ha="center", va="top", fontsize=caption_size, fontweight="bold")
    if not pairs:
        axes[0][0].text(0.5, 0.5, "none", ha="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def threshold_pairs(grouping: Grouping, root: Path, path: Path, per_side: int = 4) -> Path:
    """The pairs just inside the near-duplicate threshold and just outside it."""
    d = grouping.distances
    n = len(grouping.records)
    iu = np.triu_indices(n, 1)
    dist = d[iu]
    inside = np.argsort(np.where(dist <= grouping.threshold, -dist, 10**6), kind="stable")[:per_side]
    inside = [k for k in inside if dist[k] <= grouping.threshold]
    outside = np.argsort(np.where(dist > grouping.threshold, dist, 10**6), kind="stable")[:per_side]
    outside = [k for k in outside if dist[k] > grouping.threshold]
    pairs = [(int(iu[0][k]), int(iu[1][k]), f"inside: {dist[k]} bits") for k in inside]
    pairs += [(int(iu[0][k]), int(iu[1][k]), f"outside: {dist[k]} bits") for k in outside]
    return _pair_grid(pairs, root, grouping.records,
                      f"Pairs just inside / outside the threshold ({grouping.threshold} bits)", path)


def crop_threshold_pairs(grouping: Grouping, root: Path, path: Path, per_side: int = 4) -> Path:
    """The crop comparison at work: pairs the hash missed, and pairs just inside and just
    outside its correlation threshold (among pairs that overlap enough)."""
    from busi_classifier.data import crop_match as cm

    d = grouping.distances
    overlapping = [m for m in grouping.crop_checked if m.overlap >= cm.MIN_OVERLAP]
    inside = sorted((m for m in overlapping if m.same_frame()), key=lambda m: m.correlation)
    outside = sorted((m for m in overlapping if not m.same_frame()), key=lambda m: -m.correlation)
    missed = sorted((m for m in inside if d[m.i, m.j] > grouping.threshold), key=lambda m: -d[m.i, m.j])

    def caption(kind: str, m) -> str:
        return f"{kind}: r={m.correlation:.2f}, dx {m.shift[1]:+d} px, {d[m.i, m.j]} bits"

    chosen = [(m.i, m.j, caption("hash missed", m)) for m in missed[:per_side]]
    chosen += [(m.i, m.j, caption("inside", m)) for m in inside[:per_side]]
    chosen += [(m.i, m.j, caption("outside", m)) for m in outside[:per_side]]
    return _pair_grid(chosen, root, grouping.records,
                      f"Crop-robust comparison (same frame: r >= {cm.MIN_CORRELATION}, overlap >= "
                      f"{cm.MIN_OVERLAP:.0%}). Rows 1-2: pairs the hash missed; 3-4: just inside; 5-6: just outside.\n"
                      "r: correlation of the aligned overlap; dx: horizontal shift found; bits: hash distance "
                      f"(hash threshold {grouping.threshold})", path, caption_size=7.5)


def distance_histogram(grouping: Grouping, path: Path) -> Path:
    d = grouping.distances
    dist = d[np.triu_indices(len(grouping.records), 1)]
    fig, ax = _subplots(figsize=(6.5, 3.4))
    ax.hist(dist, bins=np.arange(0, dist.max() + 3, 2) if dist.size else 10, color="#555555")
    ax.axvline(grouping.threshold + 0.5, color="#d62728", linestyle="--", label=f"threshold {grouping.threshold}")
    ax.set_yscale("log")
    ax.set_xlabel("perceptual-hash distance (bits)")
    ax.set_ylabel("image pairs")
    ax.set_title("Distances between every pair of images")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def near_duplicate_examples(grouping: Grouping, root: Path, path: Path, count: int = 6) -> Path:
    """Example near-duplicate pairs, those with conflicting labels first."""
    records = grouping.records
    conflict = [p for p in grouping.pairs if records[p[0]].label != records[p[1]].label]
    same = [p for p in grouping.pairs if records[p[0]].label == records[p[1]].label]
    chosen = (conflict[: count // 2] + same)[:count]
    pairs = [(i, j, f"{d} bits" + (" CONFLICT" if records[i].label != records[j].label else ""))
             for i, j, d in chosen]
    return _pair_grid(pairs, root, records, "Near-duplicate pairs (label conflicts first)", path)


def mask_overlays(samples: Sequence[Sample], path: Path, per_class: int = 3) -> Path:
    from PIL import Image

    fig, axes = _subplots(len(CLASSES), per_class, figsize=(2.6 * per_class, 2.6 * len(CLASSES)), squeeze=False)
    for row, label in enumerate(CLASSES):
        members = [s for s in samples if s.label == label]
        # show images with several masks first: they are the interesting ones
        members.sort(key=lambda s: -len(s.masks))
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(members):
                continue
            sample = members[col]
            with Image.open(sample.path) as image:
                gray = np.asarray(image.convert("L"), dtype=np.uint8)
            ax.imshow(gray, cmap="gray")
            for k, mask_path in enumerate(sample.masks):
                with Image.open(mask_path) as m:
                    mask = np.asarray(m.convert("L").resize(gray.shape[::-1]), dtype=np.uint8) > 127
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=["#ffcc00", "#00e5ff", "#ff00aa"][k % 3], linewidths=1.2)
            ax.set_title(f"{sample.path.name} ({len(sample.masks)} mask{'s' if len(sample.masks) != 1 else ''})",
                         fontsize=7)
    fig.suptitle("Masks over their images (one colour per mask file)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_audit_figures(grouping: Grouping, samples: Sequence[Sample], root: Path, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "class balance": class_balance(grouping, out_dir / "audit_class_balance.png"),
        "image sizes": size_distribution(grouping, out_dir / "audit_sizes.png"),
        "average image per class": mean_images(samples, out_dir / "audit_mean_images.png"),
        "hash distances": distance_histogram(grouping, out_dir / "audit_hash_distances.png"),
        "pairs at the threshold": threshold_pairs(grouping, root, out_dir / "audit_threshold_pairs.png"),
        "near-duplicate examples": near_duplicate_examples(grouping, root, out_dir / "audit_near_duplicates.png"),
        **({"crop-robust pairs": crop_threshold_pairs(grouping, root, out_dir / "audit_crop_pairs.png")}
           if grouping.crop_match else {}),
        "mask overlays": mask_overlays(samples, out_dir / "audit_mask_overlays.png"),
    }
