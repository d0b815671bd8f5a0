"""Train the classifier: read data, grouped split, decode once, train (head on the
frozen base, then gradual unfreezing), calibrate on val, evaluate on test, export.

Every option lives in TrainConfig and is recorded in model.json.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.data.dataset import cap_per_class, find_dataset_root, fingerprint, load_images, read_dataset
from busi_classifier.data.splitting import (
    SPLITS,
    SplitResult,
    grouped_kfold,
    grouped_split,
    stratified_split,
    write_split_csv,
)
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.predictor import apply_temperature

MIN_CALIBRATION_IMAGES = 20  # fewer validation images fit a temperature to noise
REPRESENTATIVE_IMAGES = 100  # training images that calibrate the int8_full activation ranges


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
    counts = {name: dict(Counter(s.label for s in result.splits[name])) for name in SPLITS}
    if result.excluded:
        counts["excluded"] = dict(Counter(s.label for s in result.excluded))
    return counts


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> dict[int, float]:
    """Inverse-frequency weights (n / (k * count)); a class absent from train gets 1.0."""
    counts = np.bincount(labels, minlength=n_classes)
    total = counts.sum()
    return {i: float(total / (n_classes * c)) if c else 1.0 for i, c in enumerate(counts)}


# --- runtime: seeds, determinism, devices ---------------------------------------------


def configure_runtime(config: TrainConfig):
    """Seed everything from config.seed, switch op determinism and the precision policy,
    and return the distribution strategy to build the model under."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    if config.mixed_precision:
        if not gpus:
            print("warning: --mixed-precision without a GPU is slower than float32 on a CPU", file=sys.stderr)
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    if config.distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)", flush=True)
        return strategy
    return tf.distribute.get_strategy()


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, augmenter=None):
    """tf.data pipeline: (float32 images or features, one-hot labels), seeded shuffle,
    augmentation after batching (sequential map, so the random stream is deterministic)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(len(CLASSES), dtype="float32")[y]))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
    if augmenter is not None:
        ds = ds.map(lambda a, b: (augmenter(a, training=True), b))
    return ds.prefetch(2)


# --- callbacks, losses, optimizers ------------------------------------------------------


def keep_best_callback(monitor: str, model):
    """Keeps the weights of the whole ``model`` at its best epoch (highest ``monitor``,
    ties broken by the lower val_loss) across every phase, whichever model is being fit."""
    import keras

    class KeepBestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_key = None
            self.best_weights = None
            self.best_epoch = None
            self.epochs_seen = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_seen += 1
            logs = logs or {}
            if monitor not in logs:
                return
            key = (float(logs[monitor]), -float(logs.get("val_loss", 0.0)))
            if self.best_key is None or key > self.best_key:
                self.best_key, self.best_epoch = key, self.epochs_seen
                self.best_weights = model.get_weights()

        def restore(self):
            if self.best_weights is not None:
                model.set_weights(self.best_weights)

    return KeepBestWeights()


def make_loss(config: TrainConfig):
    import keras

    if config.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=config.focal_gamma,
                                                         label_smoothing=config.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def make_optimizer(config: TrainConfig, learning_rate: float, steps_per_epoch: int, epochs: int):
    import keras

    if config.lr_schedule == "cosine":
        warmup = min(config.warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate * 0.1 if warmup else learning_rate,
            decay_steps=max(1, steps_per_epoch * epochs - warmup),
            alpha=0.01,
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
        return keras.optimizers.Adam(schedule)
    return keras.optimizers.Adam(learning_rate)


def compile_model(model, config: TrainConfig, learning_rate: float, steps_per_epoch: int, epochs: int) -> None:
    import keras

    model.compile(
        optimizer=make_optimizer(config, learning_rate, steps_per_epoch, epochs),
        loss=make_loss(config),
        metrics=[
            "accuracy",
            keras.metrics.F1Score(average="macro", name="macro_f1"),
            keras.metrics.AUC(multi_label=True, num_labels=len(CLASSES), name="macro_auc"),
        ],
    )


def phase_callbacks(config: TrainConfig, learning_rate: float) -> list:
    import keras

    class LogLearningRate(keras.callbacks.Callback):
        """Puts the learning rate in effect at the end of each epoch into the history
        (whatever the schedule)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    callbacks = [LogLearningRate()]
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=config.monitor, mode="max",
                                                       patience=config.early_stopping))
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode="max", factor=0.5,
                                                           patience=2, min_lr=learning_rate / 100, verbose=0))
    return callbacks


# --- fast head training -------------------------------------------------------------------


def extract_features(model, x: np.ndarray, batch_size: int, augmenter=None, views: int = 1,
                     seed: int = 0) -> list[np.ndarray]:
    """Pooled base features of ``x`` (the model up to ``avg_pool``): the images as they
    are, then ``views - 1`` augmented views. The frozen base runs once per view, not once
    per epoch."""
    import keras

    feature_model = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    labels = np.zeros(len(x), dtype=np.int64)
    out = [feature_model.predict(make_dataset(x, labels, batch_size, False, seed), verbose=0)]
    for _ in range(1, views if augmenter is not None else 1):
        out.append(feature_model.predict(make_dataset(x, labels, batch_size, False, seed, augmenter), verbose=0))
    return out


def head_model(model):
    """A model from pooled features to probabilities that shares the full model's
    dropout and dense layers: training it trains the full model's head."""
    import keras

    features = keras.Input(model.get_layer("avg_pool").output.shape[1:], name="features")
    outputs = model.get_layer("probabilities")(model.get_layer("dropout")(features))
    return keras.Model(features, outputs, name="head")


# --- the run --------------------------------------------------------------------------------


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run a whole training; returns model.json's content. Writes into config.out_dir."""
    config.check()
    started = time.time()
    out_dir = Path(config.out_dir)
    root, samples, result = prepare_split(config, progress)
    split = result.splits
    counts = split_counts(result)
    print(f"data: {root} ({len(samples)} images) -> {config.split} split {counts}", flush=True)
    if not split["val"] or not split["test"]:
        raise ConfigError("the validation and test splits must not be empty (more images, or other fractions)")

    # Heavy imports only after the cheap checks passed, so user mistakes fail fast.
    from busi_classifier.evaluation.figures import write_training_figures
    from busi_classifier.evaluation.metrics import evaluate_predictions, fit_temperature, point_metrics
    from busi_classifier.export.tflite import export_model, write_json
    from busi_classifier.training.augmentation import build_augmenter
    from busi_classifier.training.model import build_model, freeze_base, is_pretrained, unfreeze_top

    strategy = configure_runtime(config)
    x = {name: load_images(split[name], config.image_size, progress) for name in SPLITS}
    y = {name: np.array([s.label_index for s in split[name]], dtype=np.int64) for name in SPLITS}
    augmenter = build_augmenter(tuple(config.augment), config.seed)
    train_ds = make_dataset(x["train"], y["train"], config.batch_size, True, config.seed, augmenter)
    val_ds = make_dataset(x["val"], y["val"], config.batch_size, False, config.seed)
    weights = class_weights(y["train"]) if config.class_weights else None
    steps = max(1, -(-len(x["train"]) // config.batch_size))

    with strategy.scope():
        model, base = build_model(config)
    best = keep_best_callback(config.monitor, model)
    verbose = 1 if (progress and sys.stdout.isatty()) else 2
    history: dict[str, list] = {}
    timings: dict[str, float] = {}

    def fit(fit_model, train_data, val_data, epochs: int, learning_rate: float, phase: str) -> None:
        print(f"phase {phase}: {epochs} epoch(s), learning rate {learning_rate:g}", flush=True)
        with strategy.scope():
            compile_model(fit_model, config, learning_rate, steps, epochs)
        t0 = time.perf_counter()
        h = fit_model.fit(train_data, validation_data=val_data, epochs=epochs, class_weight=weights,
                          callbacks=[best, *phase_callbacks(config, learning_rate)], shuffle=False, verbose=verbose)
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([phase] * len(h.history.get("loss", [])))

    if is_pretrained(config.weights):
        freeze_base(base)
        if config.epochs_head and config.cache_features:
            t0 = time.perf_counter()
            views = extract_features(model, x["train"], config.batch_size, augmenter, config.feature_views,
                                     config.seed)
            val_features = extract_features(model, x["val"], config.batch_size)[0]
            timings["1-head features"] = time.perf_counter() - t0
            print(f"cached base features: {len(views)} view(s) of {len(x['train'])} images "
                  f"in {timings['1-head features']:.1f} s", flush=True)
            with strategy.scope():
                head = head_model(model)
            fit(head, make_dataset(np.concatenate(views), np.tile(y["train"], len(views)), config.batch_size, True,
                                   config.seed),
                make_dataset(val_features, y["val"], config.batch_size, False, config.seed),
                config.epochs_head, config.lr_head, "1-head")
        elif config.epochs_head:
            fit(model, train_ds, val_ds, config.epochs_head, config.lr_head, "1-head")
        if config.epochs_fine_tune:
            for stage, first_layer in enumerate(config.fine_tune_stages, start=1):
                n = unfreeze_top(base, first_layer)
                print(f"stage {stage}: unfroze {n} base layers from {first_layer} (BatchNorm stays frozen)",
                      flush=True)
                fit(model, train_ds, val_ds, config.epochs_fine_tune, config.lr_fine_tune, f"2-fine-tune-{stage}")
    else:
        # Random initialisation: nothing to protect, the whole network trains at once.
        fit(model, train_ds, val_ds, config.epochs_head + config.epochs_fine_tune, config.lr_head, "1-full")
    best.restore()

    def predict(name: str) -> np.ndarray:
        return model.predict(make_dataset(x[name], y[name], config.batch_size, False, config.seed), verbose=0)

    p_val, p_test = predict("val"), predict("test")
    if len(y["val"]) >= MIN_CALIBRATION_IMAGES:
        temperature = fit_temperature(y["val"], p_val)
    else:
        temperature = 1.0
        print(f"calibration skipped: {len(y['val'])} validation images, fewer than {MIN_CALIBRATION_IMAGES}",
              flush=True)
    test_metrics = evaluate_predictions(y["test"], p_test, temperature, config.bootstrap_resamples, config.seed)
    test_metrics["best_epoch"] = best.best_epoch
    test_metrics["monitor"] = config.monitor
    val_metrics = point_metrics(y["val"], p_val)
    calibration = {
        "method": "temperature scaling" if temperature != 1.0 else "none",
        "temperature": temperature,
        "fitted_on": "val",
        "val_nll_before": val_metrics["nll"],
        "val_nll_after": point_metrics(y["val"], apply_temperature(p_val, temperature))["nll"],
    }
    dataset_info = {
        "root": str(root),
        "fingerprint_sha256": fingerprint(samples, root),
        "images": len(samples),
        "per_split": counts,
        "split": config.split,
        "split_file": "split.csv",
    }
    if config.mixed_precision:  # export a float32 copy: the serving world has no float16 policy
        import keras

        keras.mixed_precision.set_global_policy("float32")
        export_source, _ = build_model(dataclasses.replace(config, weights="none"))
        export_source.set_weights(model.get_weights())
    else:
        export_source = model
    print("exporting model.keras, the TFLite variants, model.json ...", flush=True)
    rng = np.random.default_rng(config.seed)
    representative = x["train"][np.sort(rng.permutation(len(x["train"]))[:REPRESENTATIVE_IMAGES])]
    meta = export_model(export_source, out_dir, config, dataset_info, {"test": _headline(test_metrics)},
                        calibration, representative, (x["test"], y["test"], p_test), progress)
    print(f"default variant: {meta['default_variant']} ({meta['default_variant_reason']})", flush=True)
    figures_dir = Path(config.figures_dir) if config.figures_dir else out_dir
    figures = write_training_figures(history, test_metrics, y["test"], p_test, temperature, figures_dir)
    write_json(out_dir / "metrics.json", {
        "model_version": meta["model_version"],
        "test": test_metrics,
        "val": val_metrics,
        "calibration": calibration,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "figures": {k: str(v) for k, v in figures.items()},
    })
    write_json(out_dir / "history.json", history)
    meta["wall_time_s"] = round(time.time() - started, 1)
    return meta


def _headline(metrics: dict) -> dict:
    """What model.json carries of the test metrics: the numbers, their intervals, the
    confusion matrix; not the reliability table."""
    return {k: v for k, v in metrics.items() if k not in ("reliability",)}
