"""Seeded, stratified train / val / test split, written as CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import CLASSES, ConfigError
from .dataset import Sample

SPLITS = ("train", "val", "test")


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Split each class separately so every split keeps the class proportions.

    Every class with at least 3 images gets at least one image in val and in test."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("val and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    result: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for label in CLASSES:
        members = [s for s in samples if s.label == label]
        order = rng.permutation(len(members))
        n = len(members)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_train = n - n_test - n_val
        if n_train < 1:
            raise ConfigError(f"class {label!r} has {n} image(s): too few to split into train/val/test")
        picked = [members[i] for i in order]
        result["test"].extend(picked[:n_test])
        result["val"].extend(picked[n_test : n_test + n_val])
        result["train"].extend(picked[n_test + n_val :])
    return result


def write_split_csv(split: dict[str, list[Sample]], root: Path, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for name in SPLITS:
            for sample in split[name]:
                writer.writerow([sample.relative_path(root), sample.label, name])
