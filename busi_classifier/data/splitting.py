"""Train / val / test splits, written as CSV.

* ``grouped_split`` (the default for training): every near-duplicate group (see
  ``audit``) lies wholly in one split, stratified by class, seeded. Groups whose
  members carry different labels are left out, or kept with a chosen label.
* ``grouped_kfold``: the same grouping, k folds for cross-validation.
* ``stratified_split``: a random image-level split, kept to measure the leak it causes.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busi_classifier.config import ConfigError
from busi_classifier.data.dataset import Sample
from busi_classifier.serving.constants import CLASSES

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"


@dataclass
class SplitResult:
    splits: dict[str, list[Sample]]
    groups: dict[Path, int] = field(default_factory=dict)  # sample path -> near-duplicate group
    excluded: list[Sample] = field(default_factory=list)  # conflicting groups left out

    def split_of(self) -> dict[Path, str]:
        out = {s.path: name for name in SPLITS for s in self.splits[name]}
        out.update({s.path: EXCLUDED for s in self.excluded})
        return out


def _split_sizes(n: int, val_fraction: float, test_fraction: float, label: str) -> tuple[int, int]:
    """(n_val, n_test) for a class of n images: every class with at least 3 images gets
    at least one image in val and in test."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("val and test fractions must be in [0, 1) and sum to less than 1")
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    if n - n_test - n_val < 1:
        raise ConfigError(f"class {label!r} has {n} image(s): too few to split into train/val/test")
    return n_val, n_test


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Random image-level split, each class separately (ignores near-duplicates)."""
    rng = np.random.default_rng(seed)
    result: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for label in CLASSES:
        members = [s for s in samples if s.label == label]
        n_val, n_test = _split_sizes(len(members), val_fraction, test_fraction, label)
        picked = [members[i] for i in rng.permutation(len(members))]
        result["test"].extend(picked[:n_test])
        result["val"].extend(picked[n_test : n_test + n_val])
        result["train"].extend(picked[n_test + n_val :])
    return result


def resolve_conflicts(
    samples: Sequence[Sample], groups: Sequence[int], conflict_label: str | None
) -> tuple[list[Sample], list[int], list[Sample]]:
    """(kept samples, their groups, excluded samples). A group whose members carry
    different labels is excluded, or, with ``conflict_label``, kept with every member
    relabelled to it."""
    if conflict_label is not None and conflict_label not in CLASSES:
        raise ConfigError(f"conflict label must be one of {', '.join(CLASSES)}, got {conflict_label!r}")
    labels: dict[int, set[str]] = {}
    for sample, group in zip(samples, groups, strict=True):
        labels.setdefault(group, set()).add(sample.label)
    kept, kept_groups, excluded = [], [], []
    for sample, group in zip(samples, groups, strict=True):
        if len(labels[group]) == 1:
            kept.append(sample)
            kept_groups.append(group)
        elif conflict_label is None:
            excluded.append(sample)
        else:
            kept.append(dataclasses.replace(sample, label=conflict_label))
            kept_groups.append(group)
    return kept, kept_groups, excluded


def _class_units(samples: Sequence[Sample], groups: Sequence[int], label: str,
                 rng: np.random.Generator) -> list[list[Sample]]:
    """The groups of one class as lists of samples: shuffled, then largest first (a
    stable sort, so groups of equal size keep their random order)."""
    units: dict[int, list[Sample]] = {}
    for sample, group in zip(samples, groups, strict=True):
        if sample.label == label:
            units.setdefault(group, []).append(sample)
    ordered = [units[g] for g in sorted(units)]
    ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    return sorted(ordered, key=len, reverse=True)


def grouped_split(
    samples: Sequence[Sample],
    groups: Sequence[int],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    conflict_label: str | None = None,
) -> SplitResult:
    """Stratified train/val/test split that never separates a group. Each class's
    groups go, largest first, to the split furthest below its target size."""
    kept, kept_groups, excluded = resolve_conflicts(samples, groups, conflict_label)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for label in CLASSES:
        n = sum(s.label == label for s in kept)
        n_val, n_test = _split_sizes(n, val_fraction, test_fraction, label)
        target = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
        filled = dict.fromkeys(SPLITS, 0)
        for unit in _class_units(kept, kept_groups, label, rng):
            name = max(SPLITS, key=lambda s: (target[s] - filled[s]) / max(target[s], 1))
            splits[name].extend(unit)
            filled[name] += len(unit)
        if n >= 3 and any(filled[name] == 0 for name in SPLITS if target[name]):
            raise ConfigError(f"class {label!r}: its near-duplicate groups are too few or too large to fill "
                              f"train, val and test ({filled})")
    group_of = {s.path: g for s, g in zip(samples, groups, strict=True)}
    return SplitResult(splits, group_of, excluded)


def grouped_kfold(
    samples: Sequence[Sample],
    groups: Sequence[int],
    k: int,
    fold: int,
    seed: int,
    conflict_label: str | None = None,
) -> SplitResult:
    """Grouped, stratified k-fold: fold ``fold`` is the test split, fold ``fold + 1``
    (mod k) the validation split, the other k - 2 folds train. Same seed, same folds."""
    if k < 3:
        raise ConfigError(f"k-fold needs at least 3 folds (test, val and train), got {k}")
    if not 0 <= fold < k:
        raise ConfigError(f"fold must be in 0..{k - 1}, got {fold}")
    kept, kept_groups, excluded = resolve_conflicts(samples, groups, conflict_label)
    rng = np.random.default_rng(seed)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    for label in CLASSES:
        sizes = [0] * k
        for unit in _class_units(kept, kept_groups, label, rng):
            smallest = min(range(k), key=lambda f: sizes[f])
            folds[smallest].extend(unit)
            sizes[smallest] += len(unit)
    val_fold = (fold + 1) % k
    splits = {
        "test": folds[fold],
        "val": folds[val_fold],
        "train": [s for f in range(k) if f not in (fold, val_fold) for s in folds[f]],
    }
    group_of = {s.path: g for s, g in zip(samples, groups, strict=True)}
    return SplitResult(splits, group_of, excluded)


def cross_split_pairs(split_of: dict[Path, str], pairs: Sequence[tuple[int, int, int]],
                      paths: Sequence[Path], a: str = "test", b: str = "train") -> list[tuple[int, int, int]]:
    """The near-duplicate pairs with one image in split ``a`` and the other in ``b``."""
    out = []
    for i, j, d in pairs:
        si, sj = split_of.get(paths[i]), split_of.get(paths[j])
        if {si, sj} == {a, b}:
            out.append((i, j, d))
    return out


def leaked_images(split_of: dict[Path, str], pairs: Sequence[tuple[int, int, int]], paths: Sequence[Path],
                  a: str = "test", b: str = "train") -> set[Path]:
    """Images of split ``a`` that have a near-duplicate in split ``b``."""
    leaked = set()
    for i, j, _ in cross_split_pairs(split_of, pairs, paths, a, b):
        leaked.add(paths[i] if split_of[paths[i]] == a else paths[j])
    return leaked


def write_split_csv(result: SplitResult | dict[str, list[Sample]], root: str | Path, path: Path) -> None:
    """CSV with columns path (relative to ``root``), label, split, group. Excluded
    samples (conflicting labels) are listed with split ``excluded``."""
    if not isinstance(result, SplitResult):
        result = SplitResult(result)
    root = Path(root).expanduser().resolve()  # sample paths are resolved: a relative or symlinked root too
    rows = [(s, name) for name in SPLITS for s in result.splits[name]] + [(s, EXCLUDED) for s in result.excluded]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "group"])
        for sample, name in rows:
            writer.writerow([sample.relative_path(root), sample.label, name, result.groups.get(sample.path, "")])
