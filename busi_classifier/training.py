"""Train the classifier: read data, split, decode once, two training phases, evaluate, export."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .config import CLASSES, ConfigError, TrainConfig
from .dataset import cap_per_class, find_dataset_root, fingerprint, load_images, read_dataset
from .splitting import SPLITS, SplitResult, grouped_kfold, grouped_split, stratified_split, write_split_csv


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
        from .audit import group_samples

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
    counts = {name: dict(Counter(s.label for s in result.splits[name])) for name in SPLITS}
    if result.excluded:
        counts["excluded"] = dict(Counter(s.label for s in result.excluded))
    return counts


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> dict[int, float]:
    """Inverse-frequency weights (n / (k * count)); a class absent from train gets 1.0."""
    counts = np.bincount(labels, minlength=n_classes)
    total = counts.sum()
    return {i: float(total / (n_classes * c)) if c else 1.0 for i, c in enumerate(counts)}


def _make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(len(CLASSES), dtype="float32")[y]))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(2)


def _best_weights_callback(monitor: str):
    import keras

    class KeepBestWeights(keras.callbacks.Callback):
        """Keeps the weights of the best epoch (highest ``monitor``, ties broken by the
        lower val_loss) across both phases, and restores them when asked."""

        def __init__(self):
            super().__init__()
            self.best_key = None
            self.best_weights = None
            self.best_epoch = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if monitor not in logs:
                return
            key = (float(logs[monitor]), -float(logs.get("val_loss", 0.0)))
            if self.best_key is None or key > self.best_key:
                self.best_key, self.best_epoch = key, epoch + 1
                self.best_weights = self.model.get_weights()

        def restore(self):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return KeepBestWeights()


def _compile(model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.F1Score(average="macro", name="macro_f1")],
    )


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run a whole training; returns model.json's content. Writes into config.out_dir."""
    started = time.time()
    out_dir = Path(config.out_dir)
    root, samples, result = prepare_split(config, progress)
    split = result.splits
    counts = split_counts(result)
    print(f"data: {root} ({len(samples)} images) -> {config.split} split {counts}", flush=True)

    # Heavy imports only after the cheap checks passed, so user mistakes fail fast.
    import keras
    import tensorflow as tf

    from .evaluation import classification_metrics
    from .export import export_model, write_json
    from .model import build_model, freeze_base, is_pretrained, unfreeze_top

    keras.utils.set_random_seed(config.seed)
    x = {name: load_images(split[name], config.image_size, progress) for name in SPLITS}
    y = {name: np.array([s.label_index for s in split[name]], dtype=np.int64) for name in SPLITS}
    train_ds = _make_dataset(x["train"], y["train"], config.batch_size, True, config.seed)
    val_ds = _make_dataset(x["val"], y["val"], config.batch_size, False, config.seed)
    weights = class_weights(y["train"]) if config.class_weights else None

    model, base = build_model(config)
    best = _best_weights_callback(config.monitor)
    verbose = 1 if (progress and sys.stdout.isatty()) else 2
    history: dict[str, list] = {}

    def fit(epochs: int, initial_epoch: int, phase: str) -> int:
        print(f"phase {phase}: epochs {initial_epoch + 1}..{epochs}", flush=True)
        h = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=[best],
            shuffle=False,  # tf.data already shuffles, seeded
            verbose=verbose,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([phase] * len(h.history.get("loss", [])))
        return epochs

    epoch = 0
    if is_pretrained(config.weights):
        freeze_base(base)
        _compile(model, config.lr_head)
        epoch = fit(config.epochs_head, 0, "1-head")
        if config.epochs_fine_tune > 0:
            n = unfreeze_top(base, config.fine_tune_from)
            print(f"unfroze {n} base layers from {config.fine_tune_from} (BatchNorm stays frozen)", flush=True)
            _compile(model, config.lr_fine_tune)
            fit(epoch + config.epochs_fine_tune, epoch, "2-fine-tune")
    else:
        # Random initialisation: nothing to protect, the whole network trains at once.
        _compile(model, config.lr_head)
        fit(config.epochs_head + config.epochs_fine_tune, 0, "1-full")
    best.restore()

    probabilities = model.predict(tf.cast(x["test"], tf.float32), batch_size=config.batch_size, verbose=0)
    metrics = classification_metrics(y["test"], probabilities)
    metrics["best_epoch"] = best.best_epoch
    metrics["monitor"] = config.monitor
    dataset_info = {
        "root": str(root),
        "fingerprint_sha256": fingerprint(samples, root),
        "images": len(samples),
        "per_split": counts,
        "split": config.split,
        "split_file": "split.csv",
    }
    print("exporting model.keras, model.tflite, model.json ...", flush=True)
    meta = export_model(model, out_dir, config, dataset_info, metrics)
    write_json(out_dir / "metrics.json", {"test": metrics, "model_version": meta["model_version"]})
    write_json(out_dir / "history.json", history)
    meta["wall_time_s"] = round(time.time() - started, 1)
    return meta
