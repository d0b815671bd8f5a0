"""Read a dataset and split it as a TrainConfig says, writing split.csv: the first step
of training and the whole of the ``split`` command (no TensorFlow)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.data.dataset import cap_per_class, find_dataset_root, read_dataset
from busi_classifier.data.splitting import (
    SPLITS,
    SplitResult,
    grouped_kfold,
    grouped_split,
    stratified_split,
    write_split_csv,
)


def prepare_split(config: TrainConfig, progress: bool = True) -> tuple[Path, list, SplitResult]:
    """Read the dataset, split it as ``config`` says and write ``split.csv`` into
    config.out_dir. Returns (dataset root, samples, split)."""
    root = find_dataset_root(config.data_dir)
    samples = cap_per_class(read_dataset(root), config.max_per_class, config.seed)
    if config.split == "random":
        if config.folds:
            raise ConfigError("--folds needs the grouped split")
        result = SplitResult(stratified_split(samples, config.val_fraction, config.test_fraction, config.seed))
    elif config.split == "grouped":
        from busi_classifier.data.audit import group_samples

        grouping = group_samples(samples, root, config.near_duplicate_bits, progress)
        if config.folds:
            result = grouped_kfold(samples, grouping.groups, config.folds, config.fold, config.seed,
                                   config.conflict_label)
        else:
            result = grouped_split(samples, grouping.groups, config.val_fraction, config.test_fraction,
                                   config.seed, config.conflict_label)
    else:
        raise ConfigError(f"split must be 'grouped' or 'random', got {config.split!r}")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split_csv(result, root, out_dir / "split.csv")
    return root, samples, result


def split_counts(result: SplitResult) -> dict:
    """Images per class in each split (and among the excluded, if any)."""
    counts = {name: dict(Counter(s.label for s in result.splits[name])) for name in SPLITS}
    if result.excluded:
        counts["excluded"] = dict(Counter(s.label for s in result.excluded))
    return counts
