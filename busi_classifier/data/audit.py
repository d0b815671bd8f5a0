"""Audit a dataset in the BUSI layout: counts, sizes, modes, masks, exact and
near-duplicates, groups with conflicting labels, burned-in colour annotations.

Near-duplicates are found with a 256-bit perceptual hash (pHash): the image is decoded
(EXIF orientation, any mode to gray), shrunk to 64x64 by area averaging, its 2-D DCT taken,
and the 16x16 lowest frequencies (DC left out: 255 bits) compared to their median. Two
images are near-duplicates when their hashes differ in at most ``NEAR_DUPLICATE_BITS``
bits. Pairs are joined into groups transitively (union-find); the grouped split keeps
every group on one side. The threshold (86 bits) was chosen on the real BUSI data
(README, ``imgs/audit_threshold_pairs.png``): of the 7 pairs 82 to 86 bits apart, 6 are
the same frame with or without calipers, text or a black corner, 1 is two different
mostly dark images; from 88 bits on most pairs are different lesions. A false merge
only puts two images on the same side of the split; a missed pair leaks.

The hash compares whole images, so it misses the same frame cropped differently or
shifted. A second comparison (``crop_match``: alignment by phase correlation, then a
correlation of the overlap) finds those; its pairs join the hash pairs in the groups
(``crop_match=False`` leaves it out). Each comparison is also the independent leak
check of a split grouped by the other one (``leak_comparison``).

Imports NumPy and Pillow only (figures are in ``audit_figures``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from busi_classifier.config import NEAR_DUPLICATE_BITS
from busi_classifier.data import crop_match as cm
from busi_classifier.data.dataset import DatasetError, Sample, find_dataset_root, read_dataset
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.decode import InvalidImageError, apply_orientation, inspect_image, open_image, to_rgb

HASH_SIZE = 64  # side of the image the DCT is taken on
HASH_FREQUENCIES = 16  # the HASH_FREQUENCIES x HASH_FREQUENCIES lowest frequencies make the hash
HASH_BITS = HASH_FREQUENCIES * HASH_FREQUENCIES - 1
# A pixel is "coloured" when its channels differ by more than this; an image carries
# coloured annotations when more than ANNOTATION_MIN_PIXELS of its pixels are.
COLOUR_CHANNEL_SPREAD = 40
ANNOTATION_MIN_PIXELS = 30


@dataclass
class ImageRecord:
    path: str  # relative to the dataset root, POSIX
    label: str
    width: int
    height: int
    mode: str
    masks: int
    pixel_sha256: str  # of the RGB pixels: the same picture stored as L or RGB hashes alike
    coloured_pixels: int
    phash: np.ndarray  # bool[HASH_BITS]
    small: np.ndarray  # uint8 gray image at 1/8 size, for the crop-robust comparison

    @property
    def annotated(self) -> bool:
        return self.coloured_pixels > ANNOTATION_MIN_PIXELS


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix(HASH_SIZE)


def perceptual_hash(data: bytes | Image.Image) -> np.ndarray:
    """255-bit DCT hash of image bytes or of a gray image (bool array); robust to
    resizing, small overlays and colour mode, sensitive to content. Raises InvalidImageError."""
    if isinstance(data, Image.Image):
        gray_image = data
    else:
        intake = inspect_image(data)
        gray_image = _gray(open_image(intake), intake.orientation)
    # Stretched to a square, not letterboxed: black bars would make unrelated images of
    # the same aspect ratio look alike.
    gray = np.asarray(gray_image.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX), dtype=np.float64)
    coefficients = (_DCT @ gray @ _DCT.T)[:HASH_FREQUENCIES, :HASH_FREQUENCIES].ravel()[1:]
    return coefficients > np.median(coefficients)


def _gray(image: Image.Image, orientation: int = 1) -> Image.Image:
    """Upright (the EXIF orientation read by the intake's own parser), gray."""
    return apply_orientation(to_rgb(image), orientation).convert("L")


def describe(sample: Sample, root: Path) -> ImageRecord:
    data = sample.path.read_bytes()
    try:
        intake = inspect_image(data)
        image = open_image(intake)
        mode = image.mode
        rgb = np.asarray(to_rgb(image), dtype=np.uint8)
        gray = _gray(image, intake.orientation)
        phash = perceptual_hash(gray)
        small = cm.small_image(gray)
    except (InvalidImageError, OSError) as exc:
        raise DatasetError(f"unreadable image {sample.path}: {exc}") from None
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    return ImageRecord(
        path=sample.relative_path(root),
        label=sample.label,
        width=rgb.shape[1],
        height=rgb.shape[0],
        mode=mode,
        masks=len(sample.masks),
        pixel_sha256=hashlib.sha256(rgb.tobytes() + str(rgb.shape).encode()).hexdigest(),
        coloured_pixels=int((spread > COLOUR_CHANNEL_SPREAD).sum()),
        phash=phash,
        small=small,
    )


def describe_all(samples: Sequence[Sample], root: Path, progress: bool = True) -> list[ImageRecord]:
    from tqdm import tqdm

    return [describe(s, root) for s in tqdm(samples, desc="auditing images", unit="img", disable=not progress)]


def hash_distances(records: Sequence[ImageRecord]) -> np.ndarray:
    """Pairwise Hamming distances between the perceptual hashes (int16, n x n)."""
    if not records:
        return np.zeros((0, 0), dtype=np.int16)
    bits = np.array([r.phash for r in records], dtype=np.uint8)
    # matches of ones plus matches of zeros = HASH_BITS - distance
    ones = bits.astype(np.int32)
    same = ones @ ones.T + (1 - ones) @ (1 - ones).T
    return (HASH_BITS - same).astype(np.int16)


def near_duplicate_pairs(distances: np.ndarray, threshold: int = NEAR_DUPLICATE_BITS) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with distance <= threshold."""
    i, j = np.nonzero(np.triu(distances <= threshold, k=1))
    return [(int(a), int(b), int(distances[a, b])) for a, b in zip(i, j, strict=True)]


def connected_groups(n: int, pairs: Sequence[tuple[int, ...]]) -> list[int]:
    """Group index for each of n items, joining every pair (union-find). Groups are
    numbered by their first member, so the numbering is stable."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, *_ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(r, len(numbering)) for r in roots]


@dataclass
class Grouping:
    """The near-duplicate structure of a dataset: what the split needs."""

    records: list[ImageRecord]
    groups: list[int]  # group index per record: hash pairs and crop pairs joined
    pairs: list[tuple[int, int, int]]  # hash near-duplicate pairs (i, j, distance)
    threshold: int
    distances: np.ndarray  # pairwise hash distances (n x n)
    crop_checked: list[cm.CropMatch] = field(default_factory=list)  # every pair the crop comparison verified
    crop_pairs: list[tuple[int, int, float]] = field(default_factory=list)  # same frame: (i, j, correlation)
    crop_match: bool = False  # whether the crop comparison ran

    @property
    def hash_groups(self) -> list[int]:
        """Groups from the hash pairs alone (the grouping before the crop comparison)."""
        return connected_groups(len(self.records), self.pairs)

    @property
    def crop_groups(self) -> list[int]:
        """Groups from the crop comparison's pairs alone."""
        return connected_groups(len(self.records), self.crop_pairs)

    def members(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            out.setdefault(g, []).append(i)
        return out

    def conflicting_groups(self) -> list[int]:
        return sorted(g for g, idx in self.members().items() if len({self.records[i].label for i in idx}) > 1)


def group_samples(samples: Sequence[Sample], root: str | Path, threshold: int = NEAR_DUPLICATE_BITS,
                  progress: bool = True, crop_match: bool = True) -> Grouping:
    """Near-duplicate groups of ``samples`` (read from ``root``, relative or through a
    symlink alike): hash pairs, joined with the crop comparison's pairs unless
    ``crop_match`` is False."""
    root = Path(root).expanduser().resolve()  # read_dataset gives resolved sample paths
    records = describe_all(samples, root, progress)
    distances = hash_distances(records)
    pairs = near_duplicate_pairs(distances, threshold)  # exact duplicates are at distance 0
    checked: list[cm.CropMatch] = []
    if crop_match:
        # the hash pairs are candidates too: the crop comparison then measures them independently
        checked = cm.crop_matches([r.small for r in records], extra=[(i, j) for i, j, _ in pairs], progress=progress)
    crop_pairs = [(m.i, m.j, round(m.correlation, 4)) for m in checked if m.same_frame()]
    groups = connected_groups(len(records), list(pairs) + crop_pairs)
    return Grouping(records, groups, pairs, threshold, distances, checked, crop_pairs, crop_match)


# --- the report -----------------------------------------------------------------------


LEAK_SPLITS = {
    "random": "random, image-level",
    "grouped_by_hash": "grouped by the hash alone",
    "grouped_by_crop": "grouped by the crop comparison alone",
    "grouped": "grouped by both (this project's default)",
}


def leak_counts(split_of: dict[Path, str], grouping: Grouping, paths: Sequence[Path],
                a: str = "test", b: str = "train") -> dict[str, int]:
    """Images of split ``a`` with a near-duplicate in split ``b``, by each comparison:
    {"hash": n, "crop": n} ("crop" only where the crop comparison ran)."""
    from busi_classifier.data.splitting import leaked_images

    comparisons = {"hash": grouping.pairs}
    if grouping.crop_match:
        comparisons["crop"] = grouping.crop_pairs
    return {name: len(leaked_images(split_of, pairs, paths, a, b)) for name, pairs in comparisons.items()}


def leak_comparison(samples: Sequence[Sample], grouping: Grouping, val_fraction: float = 0.15,
                    test_fraction: float = 0.15, seed: int = 42) -> dict:
    """How many test images have a near-duplicate in train, same proportions and seed,
    for a random image-level split and for splits grouped by the hash pairs, by the crop
    comparison's pairs and by both (the default), each measured by each comparison.

    A split grouped by some pairs cannot leak by those pairs: that count is 0 by
    construction. The other comparison is the independent check (the hash-grouped split
    measured by the crop comparison, and the reverse)."""
    from busi_classifier.data.splitting import grouped_split, leaked_images, stratified_split

    paths = [s.path for s in samples]
    random = stratified_split(samples, val_fraction, test_fraction, seed)
    split_ofs = {"random": {s.path: name for name, part in random.items() for s in part}}
    if grouping.crop_match:
        split_ofs["grouped_by_hash"] = grouped_split(samples, grouping.hash_groups, val_fraction, test_fraction,
                                                     seed).split_of()
        split_ofs["grouped_by_crop"] = grouped_split(samples, grouping.crop_groups, val_fraction, test_fraction,
                                                     seed).split_of()
    split_ofs["grouped"] = grouped_split(samples, grouping.groups, val_fraction, test_fraction, seed).split_of()
    union = list(grouping.pairs) + list(grouping.crop_pairs)
    out = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    for name, split_of in split_ofs.items():
        out[name] = {
            "description": LEAK_SPLITS[name],
            "test_images": sum(v == "test" for v in split_of.values()),
            # by every pair the audit found (what the default grouping joins)
            "test_images_with_near_duplicate_in_train": len(leaked_images(split_of, union, paths)),
            "by_comparison": leak_counts(split_of, grouping, paths),
        }
    return out


def crop_match_summary(grouping: Grouping) -> dict:
    """What the crop comparison found, and what it adds to the hash grouping."""
    n = len(grouping.records)

    def multi(groups: list[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            out.setdefault(g, []).append(i)
        return {g: idx for g, idx in out.items() if len(idx) > 1}

    hash_multi, crop_multi, union_multi = (multi(grouping.hash_groups), multi(grouping.crop_groups),
                                           multi(grouping.groups))
    in_hash = {i for idx in hash_multi.values() for i in idx}
    hash_pairs = {(i, j) for i, j, _ in grouping.pairs}
    new_pairs = [(i, j, c) for i, j, c in grouping.crop_pairs if (i, j) not in hash_pairs]
    touched_hash_groups = {grouping.hash_groups[i] for idx in union_multi.values() for i in idx if i in in_hash}
    return {
        "descriptor": (f"phase-correlation alignment at 1/{cm.SMALL_FACTOR} scale, then the correlation of the "
                       "band-passed overlap (black borders left out)"),
        "min_correlation": cm.MIN_CORRELATION,
        "min_overlap": cm.MIN_OVERLAP,
        "candidates_per_image": cm.CANDIDATES_PER_IMAGE,
        "pairs_verified": len(grouping.crop_checked),
        "pairs": len(grouping.crop_pairs),
        "pairs_the_hash_missed": len(new_pairs),
        "hash_pairs_it_confirms": len(grouping.crop_pairs) - len(new_pairs),
        "hash_pairs_it_does_not_confirm": len(grouping.pairs) - (len(grouping.crop_pairs) - len(new_pairs)),
        "groups_alone": len(crop_multi),
        "images_in_groups_alone": sum(len(idx) for idx in crop_multi.values()),
        "new_groups": sum(1 for idx in union_multi.values() if not in_hash & set(idx)),
        "hash_groups_merged": len(touched_hash_groups) - sum(1 for idx in union_multi.values() if in_hash & set(idx)),
        "images_added_to_groups": sum(len(idx) for idx in union_multi.values()) - len(in_hash),
        "new_pair_list": [{"a": grouping.records[i].path, "b": grouping.records[j].path, "correlation": c}
                          for i, j, c in new_pairs],
        "images": n,
    }


def audit_report(grouping: Grouping, root: Path) -> dict:
    """Everything the audit found, as JSON-ready data."""
    records = grouping.records
    members = grouping.members()
    per_class = {
        label: {
            "images": sum(r.label == label for r in records),
            "masks": sum(r.masks for r in records if r.label == label),
            "images_with_several_masks": sum(r.masks > 1 for r in records if r.label == label),
            "images_without_mask": sum(r.masks == 0 for r in records if r.label == label),
        }
        for label in CLASSES
    }
    widths = np.array([r.width for r in records])
    heights = np.array([r.height for r in records])
    exact: dict[str, list[str]] = {}
    for r in records:
        exact.setdefault(r.pixel_sha256, []).append(r.path)
    exact_groups = [paths for paths in exact.values() if len(paths) > 1]
    dup_groups = [idx for idx in members.values() if len(idx) > 1]
    conflicts = grouping.conflicting_groups()
    hash_sizes = Counter(grouping.hash_groups)

    def group_entry(g: int) -> dict:
        idx = members[g]
        return {"group": g, "members": [{"path": records[i].path, "label": records[i].label} for i in idx]}

    return {
        "dataset": str(root),
        "images": len(records),
        "per_class": per_class,
        "sizes": {
            "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
            "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        },
        "modes": dict(Counter(r.mode for r in records)),
        "several_masks": [{"path": r.path, "masks": r.masks} for r in records if r.masks > 1],
        "exact_duplicates": exact_groups,
        "near_duplicates": {
            "descriptor": f"{HASH_BITS}-bit DCT perceptual hash of the {HASH_SIZE}px grayscale image",
            "threshold_bits": grouping.threshold,
            "pairs": len({(i, j) for i, j, *_ in list(grouping.pairs) + list(grouping.crop_pairs)}),
            "hash_pairs": len(grouping.pairs),
            "hash_groups": sum(1 for n in hash_sizes.values() if n > 1),
            "hash_images_in_groups": sum(n for n in hash_sizes.values() if n > 1),
            "crop_match": crop_match_summary(grouping) if grouping.crop_match else None,
            "groups": len(dup_groups),
            "images_in_groups": sum(len(idx) for idx in dup_groups),
            "largest_group": max((len(idx) for idx in dup_groups), default=1),
            "group_list": [group_entry(g) for g in sorted(members) if len(members[g]) > 1],
        },
        "conflicting_groups": [group_entry(g) for g in conflicts],
        "coloured_annotations": [{"path": r.path, "coloured_pixels": r.coloured_pixels} for r in records if r.annotated],
    }


def markdown_report(report: dict, figures: dict[str, str] | None = None) -> str:
    nd = report["near_duplicates"]
    lines = [
        f"# Dataset audit: `{report['dataset']}`",
        "",
        f"{report['images']} images. Colour modes: "
        + ", ".join(f"{m} {n}" for m, n in sorted(report["modes"].items())) + ". "
        f"Width {report['sizes']['width']['min']}..{report['sizes']['width']['max']} px "
        f"(median {report['sizes']['width']['median']:.0f}), height {report['sizes']['height']['min']}.."
        f"{report['sizes']['height']['max']} px (median {report['sizes']['height']['median']:.0f}).",
        "",
        "| class | images | masks | images with several masks | images without mask |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, c in report["per_class"].items():
        lines.append(f"| {label} | {c['images']} | {c['masks']} | {c['images_with_several_masks']} | "
                     f"{c['images_without_mask']} |")
    lines += [
        "",
        "## Duplicates",
        "",
        f"- exact duplicates (same pixels): {len(report['exact_duplicates'])} groups",
        f"- near-duplicates by hash ({nd['descriptor']}, at most {nd['threshold_bits']} bits apart): "
        f"{nd['hash_pairs']} pairs, {nd['hash_groups']} groups holding {nd['hash_images_in_groups']} images",
    ]
    crop = nd.get("crop_match")
    if crop:
        lines += [
            f"- same frame cropped or shifted ({crop['descriptor']}; correlation at least {crop['min_correlation']}, "
            f"overlap at least {crop['min_overlap']:.0%} of the smaller image; {crop['pairs_verified']} candidate "
            f"pairs verified): {crop['pairs']} pairs, of which {crop['pairs_the_hash_missed']} the hash missed; "
            f"it adds {crop['new_groups']} new groups and {crop['images_added_to_groups']} images to groups, and "
            f"merges {crop['hash_groups_merged']} hash groups into others",
        ]
    lines += [
        f"- near-duplicate groups used by the split: {nd['pairs']} pairs joined into {nd['groups']} groups holding "
        f"{nd['images_in_groups']} images (largest: {nd['largest_group']})",
        f"- groups whose members carry different labels: {len(report['conflicting_groups'])} "
        "(left out of training and evaluation by default)",
        f"- images with coloured burned-in annotations: {len(report['coloured_annotations'])}",
        "",
    ]
    leak = report.get("leak")
    if leak:
        names = [k for k in LEAK_SPLITS if k in leak]
        comparisons = list(leak[names[0]]["by_comparison"])
        lines += [
            "## Leak: test images with a near-duplicate in train",
            "",
            f"Split {1 - leak['val_fraction'] - leak['test_fraction']:.0%} / {leak['val_fraction']:.0%} / "
            f"{leak['test_fraction']:.0%}, seed {leak['seed']}. A split grouped by a comparison has no leak by that "
            "comparison by construction; the other comparison is the independent check.",
            "",
            "| split | test images | " + " | ".join(f"leaked, by {c}" for c in comparisons) + " | leaked, by either |",
            "|---|---:|" + "---:|" * (len(comparisons) + 1),
        ]
        for name in names:
            entry = leak[name]
            lines.append(f"| {entry['description']} | {entry['test_images']} | "
                         + " | ".join(str(entry["by_comparison"][c]) for c in comparisons)
                         + f" | {entry['test_images_with_near_duplicate_in_train']} |")
        lines.append("")
    if report["conflicting_groups"]:
        lines += ["### Groups with conflicting labels", "", "| group | members |", "|---:|---|"]
        for g in report["conflicting_groups"]:
            members = ", ".join(f"`{m['path']}`" for m in g["members"])
            lines.append(f"| {g['group']} | {members} |")
        lines.append("")
    if report["exact_duplicates"]:
        lines += ["### Exact duplicates", ""]
        lines += ["- " + ", ".join(f"`{p}`" for p in paths) for paths in report["exact_duplicates"]]
        lines.append("")
    if report["coloured_annotations"]:
        lines += ["### Coloured annotations", ""]
        lines += [f"- `{a['path']}` ({a['coloured_pixels']} coloured pixels)" for a in report["coloured_annotations"]]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{title}]({path})" for title, path in figures.items()]
        lines.append("")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(type(obj).__name__)


def run_audit(data_dir: str | Path, out_dir: str | Path, figures_dir: str | Path | None = None,
              threshold: int = NEAR_DUPLICATE_BITS, progress: bool = True) -> dict:
    """Audit ``data_dir``; write audit.json and audit.md into ``out_dir`` and the
    figures into ``figures_dir`` (default: ``out_dir``). Returns the report."""
    root = find_dataset_root(data_dir)
    samples = read_dataset(root)
    grouping = group_samples(samples, root, threshold, progress)
    report = audit_report(grouping, root)
    report["dataset"] = str(data_dir)  # as the user gave it, not this machine's absolute path
    report["leak"] = leak_comparison(samples, grouping)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = None
    if figures_dir is not False:
        from busi_classifier.data.audit_figures import write_audit_figures

        fig_dir = Path(figures_dir) if figures_dir else out
        written = write_audit_figures(grouping, samples, root, fig_dir)
        figures = {title: _relative(path, out) for title, path in written.items()}
        report["figures"] = {title: str(path) for title, path in written.items()}
    (out / "audit.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    (out / "audit.md").write_text(markdown_report(report, figures))
    return report


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()

