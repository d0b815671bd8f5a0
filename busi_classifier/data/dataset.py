"""Read a dataset in the BUSI folder layout.

    DATA/normal/normal (1).png     DATA/normal/normal (1)_mask.png
    DATA/benign/benign (3).png     DATA/benign/benign (3)_mask.png  DATA/benign/benign (3)_mask_1.png
    DATA/malignant/...

Images become samples; mask files are attached to their image and never counted as
samples. PNG and JPEG, grayscale or RGB, are accepted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from busi_classifier.serving.constants import CLASSES, IMAGE_EXTENSIONS
from busi_classifier.serving.decode import InvalidImageError, decode_image

_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$", re.IGNORECASE)


class DatasetError(ValueError):
    """The dataset folder does not have the expected layout or holds unreadable files."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image
    label: str  # one of CLASSES
    masks: tuple[Path, ...] = field(default=())

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.label)

    def relative_path(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


def find_dataset_root(data_dir: str | Path) -> Path:
    """The folder holding the class folders: DATA itself, or its single subfolder that
    does (the BUSI download unpacks to Dataset_BUSI_with_GT/)."""
    root = Path(data_dir).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root} (where to get BUSI and how to lay it out: "
                           "data/README.md; a synthetic one: python -m busi_classifier synthesize --out DIR)")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root} (see data/README.md)")
    if any((root / name).is_dir() for name in CLASSES):
        return root
    nested = [p for p in sorted(root.iterdir()) if p.is_dir() and any((p / n).is_dir() for n in CLASSES)]
    if len(nested) == 1:
        return nested[0]
    raise DatasetError(
        f"no class folders in {root}: expected subfolders {', '.join(CLASSES)} "
        "(the BUSI layout, see data/README.md)"
    )


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _check_readable(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums; pixels are decoded later
    except Exception as exc:
        raise DatasetError(f"unreadable image {path}: {type(exc).__name__}: {exc}") from None


def read_class_folder(folder: Path, label: str) -> list[Sample]:
    images: dict[str, Path] = {}
    masks: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if not _is_image_file(path):
            continue
        match = _MASK_RE.match(path.stem)
        if match:
            index = int(match.group("index") or 0)
            masks.setdefault(match.group("stem"), []).append((index, path))
        else:
            images[path.stem] = path
    orphans = sorted(set(masks) - set(images))
    if orphans:
        example = sorted(p.name for _, p in masks[orphans[0]])[0]
        raise DatasetError(
            f"{len(orphans)} mask file(s) in {folder} have no image, e.g. {example!r} "
            f"(expected an image named {orphans[0]!r} with a .png/.jpg extension)"
        )
    if not images:
        raise DatasetError(f"class folder {folder} holds no images (.png, .jpg, .jpeg)")
    samples = []
    for stem, path in sorted(images.items(), key=lambda kv: _natural_key(kv[0])):
        _check_readable(path)
        attached = tuple(p for _, p in sorted(masks.get(stem, [])))
        samples.append(Sample(path=path.resolve(), label=label, masks=tuple(m.resolve() for m in attached)))
    return samples


def _natural_key(text: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def read_dataset(data_dir: str | Path) -> list[Sample]:
    """All samples of the dataset, in class order (normal, benign, malignant)."""
    root = find_dataset_root(data_dir)
    samples: list[Sample] = []
    for label in CLASSES:
        folder = root / label
        if not folder.is_dir():
            raise DatasetError(f"missing class folder: {folder} (expected {', '.join(CLASSES)})")
        samples.extend(read_class_folder(folder, label))
    return samples


def cap_per_class(samples: Sequence[Sample], max_per_class: int | None, seed: int) -> list[Sample]:
    """At most ``max_per_class`` samples of each class, drawn with ``seed``."""
    if not max_per_class:
        return list(samples)
    rng = np.random.default_rng(seed)
    kept: list[Sample] = []
    for label in CLASSES:
        members = [s for s in samples if s.label == label]
        if len(members) > max_per_class:
            chosen = sorted(rng.choice(len(members), size=max_per_class, replace=False))
            members = [members[i] for i in chosen]
        kept.extend(members)
    return kept


def fingerprint(samples: Sequence[Sample], root: Path) -> str:
    """SHA-256 over (relative path, label, file bytes) of every sample: identifies the data."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.relative_path(root)):
        digest.update(sample.relative_path(root).encode())
        digest.update(sample.label.encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


def load_images(samples: Sequence[Sample], size: int, progress: bool = True) -> np.ndarray:
    """Decode every sample once with the shared preprocessing: uint8 (N, size, size, 3)."""
    from tqdm import tqdm

    arrays = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc="decoding images", unit="img", disable=not progress)):
        try:
            arrays[i] = decode_image(sample.path.read_bytes(), size)
        except InvalidImageError as exc:
            raise DatasetError(f"unreadable image {sample.path}: {exc}") from None
    return arrays
