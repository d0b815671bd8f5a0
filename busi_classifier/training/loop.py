"""Train the classifier: read data, grouped split, decode once, train (head on the
frozen base, then gradual unfreezing), calibrate on val, evaluate on test, export.

Every option lives in TrainConfig and is recorded in model.json.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.data.dataset import fingerprint, load_images
from busi_classifier.data.prepare import prepare_split, split_counts
from busi_classifier.data.splitting import SPLITS, SplitResult
from busi_classifier.data.synthetic import SYNTHETIC_MARKER
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.predictor import apply_temperature
from busi_classifier.training.preflight import preflight

MIN_CALIBRATION_IMAGES = 20  # fewer validation images fit a temperature to noise
REPRESENTATIVE_IMAGES = 100  # training images that calibrate the int8_full activation ranges
GATE_MAX_IMAGES = 512  # non-test images the variants are compared with the Keras model on


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


def make_multitask_dataset(x: np.ndarray, y: np.ndarray, masks: np.ndarray, known: np.ndarray, batch_size: int,
                           shuffle: bool, seed: int, augmenter=None, weights: dict | None = None):
    """tf.data pipeline of the multitask model: (images, {"probabilities": one-hot,
    "lesion": the mask at the lesion map's resolution}, per-output sample weights).

    The mask (N, size, size, 0/1) is augmented with its image (``Augmenter.pair``), then
    averaged over LESION_STRIDE x LESION_STRIDE pixels: each map cell's target is the
    share of it the lesion covers. Sample weights: the class weights for the
    probabilities (Keras' ``class_weight`` does not take several outputs), ``known``
    (0 for a lesion image without a mask file: its map is not trained) for the lesion."""
    import tensorflow as tf

    from busi_classifier.training.model import LESION_OUTPUT, LESION_STRIDE

    class_w = np.ones(len(y), dtype="float32") if weights is None else np.array([weights[int(c)] for c in y],
                                                                                 dtype="float32")
    ds = tf.data.Dataset.from_tensor_slices((x, masks, np.eye(len(CLASSES), dtype="float32")[y], class_w,
                                             known.astype("float32")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def to_model(a, m, b, w, k):
        a = tf.cast(a, tf.float32)
        m = tf.cast(m, tf.float32)[..., None]
        if augmenter is not None:
            a, m = augmenter.pair(a, m)
        m = tf.nn.avg_pool2d(m, LESION_STRIDE, LESION_STRIDE, "VALID")
        return a, {"probabilities": b, LESION_OUTPUT: m}, {"probabilities": w, LESION_OUTPUT: k}

    return ds.batch(batch_size).map(to_model).prefetch(2)


def lesion_loss(y_true, y_pred):
    """Per image: binary cross-entropy averaged over the map's cells + soft Dice loss
    (1 - (2 |P.G| + 1) / (|P| + |G| + 1), in map cells; an image without a lesion is
    pushed towards an empty map)."""
    import keras

    ops = keras.ops
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    overlap = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    dice = 1.0 - (2.0 * overlap + 1.0) / (ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) + 1.0)
    return bce + dice


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
    """Compile for one phase; a multitask model gets the lesion loss beside the
    classification loss, weighted by ``--seg-weight``."""
    import keras

    from busi_classifier.training.model import LESION_OUTPUT, has_lesion

    metrics = [
        "accuracy",
        keras.metrics.F1Score(average="macro", name="macro_f1"),
        keras.metrics.AUC(multi_label=True, num_labels=len(CLASSES), name="macro_auc"),
    ]
    optimizer = make_optimizer(config, learning_rate, steps_per_epoch, epochs)
    if has_lesion(model):
        model.compile(optimizer=optimizer, loss={"probabilities": make_loss(config), LESION_OUTPUT: lesion_loss},
                      loss_weights={"probabilities": 1.0, LESION_OUTPUT: config.seg_weight},
                      metrics={"probabilities": metrics})
    else:
        model.compile(optimizer=optimizer, loss=make_loss(config), metrics=metrics)


def plain_metric_names():
    """A callback that gives a multitask model's classification metrics their plain
    names (``val_probabilities_macro_f1`` -> ``val_macro_f1``), first in the list, so
    the kept epoch, early stopping, the schedule and history.json read the same keys
    for both tasks."""
    import keras

    class PlainMetricNames(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            for key in list(logs):
                for prefix in ("probabilities_", "val_probabilities_"):
                    if key.startswith(prefix) and not key.endswith("_loss"):
                        logs[prefix.replace("probabilities_", "") + key[len(prefix):]] = logs.pop(key)

    return PlainMetricNames()


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


# --- the run, in named phases ----------------------------------------------------------------


@dataclass
class PreparedData:
    """The split and the decoded images of a run."""

    root: Path
    samples: list
    result: SplitResult
    counts: dict
    x: dict[str, np.ndarray]  # split name -> uint8 images (N, size, size, 3)
    y: dict[str, np.ndarray]  # split name -> class indices
    masks: dict[str, np.ndarray] | None = None  # multitask: split -> uint8 (N, size, size) union of the lesion masks
    known: dict[str, np.ndarray] | None = None  # multitask: split -> 1 where the mask is the truth (0: lesion, no file)


@dataclass
class Evaluation:
    """Predictions, calibration and metrics of the kept model."""

    p_val: np.ndarray
    p_test: np.ndarray
    temperature: float
    test_metrics: dict
    val_metrics: dict
    calibration: dict
    lesion_threshold: float | None = None  # multitask: chosen on the validation split's lesion maps
    lesion_threshold_rule: str | None = None


class PhaseRunner:
    """Compiles and fits a model for one phase under the run's strategy, with the
    callback that keeps the best weights across phases; collects history and timings."""

    def __init__(self, config: TrainConfig, strategy, steps_per_epoch: int, weights: dict | None, best,
                 verbose: int):
        self.config, self.strategy, self.steps, self.weights = config, strategy, steps_per_epoch, weights
        self.best, self.verbose = best, verbose
        self.history: dict[str, list] = {}
        self.timings: dict[str, float] = {}

    def fit(self, model, train_data, val_data, epochs: int, learning_rate: float, phase: str) -> None:
        """Compile ``model`` afresh and fit it; the epochs land in ``history`` under ``phase``.

        Args:
            model: the full model, or the head model on cached features.
            train_data, val_data: tf.data datasets.
            epochs, learning_rate: of this phase.
            phase: its name in history.json ("1-head", "2-fine-tune-1", "1-full").
        """
        config = self.config
        print(f"phase {phase}: {epochs} epoch(s), learning rate {learning_rate:g}", flush=True)
        with self.strategy.scope():
            compile_model(model, config, learning_rate, self.steps, epochs)
        t0 = time.perf_counter()
        multitask = isinstance(model.output, dict)  # the weights ride in the dataset
        h = model.fit(train_data, validation_data=val_data, epochs=epochs,
                      class_weight=None if multitask else self.weights,
                      callbacks=[plain_metric_names(), self.best, *phase_callbacks(config, learning_rate)],
                      shuffle=False, verbose=self.verbose)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0
        for key, values in h.history.items():
            self.history.setdefault(key, []).extend(float(v) for v in values)
        self.history.setdefault("phase", []).extend([phase] * len(h.history.get("loss", [])))


def prepare_data(config: TrainConfig, progress: bool) -> PreparedData:
    """Split the dataset (writes split.csv) and decode every image once.

    Args:
        config: the run's settings (already checked by ``preflight``).
        progress: show progress bars.

    Returns:
        the split and the decoded images.
    """
    root, samples, result = prepare_split(config, progress)
    split = result.splits
    counts = split_counts(result)
    print(f"data: {root} ({len(samples)} images) -> {config.split} split {counts}", flush=True)
    if not split["val"] or not split["test"]:
        raise ConfigError("the validation and test splits must not be empty (more images, or larger "
                          "--val-fraction / --test-fraction)")
    x = {name: load_images(split[name], config.image_size, progress) for name in SPLITS}
    y = {name: np.array([s.label_index for s in split[name]], dtype=np.int64) for name in SPLITS}
    if config.task != "multitask":
        return PreparedData(root, samples, result, counts, x, y)
    masks, known = {}, {}
    for name in SPLITS:
        masks[name], known[name] = load_masks(split[name], config.image_size)
    missing = sum(int((1 - k).sum()) for k in known.values())
    print(f"lesion masks: {sum(int(m.any(axis=(1, 2)).sum()) for m in masks.values())} images with a lesion"
          + (f", {missing} lesion image(s) without a mask (their map is not trained)" if missing else ""), flush=True)
    return PreparedData(root, samples, result, counts, x, y, masks, known)


def load_masks(samples, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, size, size) masks, float (N,) known): the union of each image's mask
    files letterboxed like its image (``mask_for_input``); a normal image's mask is
    empty and known; a benign or malignant image whose masks are missing or empty is not
    known (its lesion loss is weighted 0)."""
    from busi_classifier.evaluation.localisation import mask_for_input

    masks = np.zeros((len(samples), size, size), dtype=np.uint8)
    known = np.zeros(len(samples), dtype=np.float32)
    for i, sample in enumerate(samples):
        mask = mask_for_input(sample.masks, size) if sample.masks else None
        if mask is not None:
            masks[i] = mask
        known[i] = 1.0 if (mask is not None or sample.label == CLASSES[0]) else 0.0
    return masks, known


def train_head(runner: PhaseRunner, model, data: PreparedData, augmenter, train_ds, val_ds) -> None:
    """Phase 1 with a pretrained base: freeze it and train the head, on base features
    computed once per view (``--cache-features``) or through the frozen base.

    Args:
        runner: fits the phases.
        model: the full model.
        data: the decoded splits.
        augmenter: the training augmentation (for the cached views).
        train_ds, val_ds: the image datasets (used without cached features).
    """
    config = runner.config
    if not config.epochs_head:
        return
    if not config.uses_cached_features():
        runner.fit(model, train_ds, val_ds, config.epochs_head, config.lr_head, "1-head")
        return
    x, y = data.x, data.y
    t0 = time.perf_counter()
    views = extract_features(model, x["train"], config.batch_size, augmenter, config.feature_views, config.seed)
    val_features = extract_features(model, x["val"], config.batch_size)[0]
    runner.timings["1-head features"] = time.perf_counter() - t0
    print(f"cached base features: {len(views)} view(s) of {len(x['train'])} images "
          f"in {runner.timings['1-head features']:.1f} s", flush=True)
    with runner.strategy.scope():
        head = head_model(model)
    runner.fit(head,
               make_dataset(np.concatenate(views), np.tile(y["train"], len(views)), config.batch_size, True,
                            config.seed),
               make_dataset(val_features, y["val"], config.batch_size, False, config.seed),
               config.epochs_head, config.lr_head, "1-head")


def fine_tune(runner: PhaseRunner, model, base, train_ds, val_ds) -> None:
    """Phase 2: gradual unfreezing, one stage per ``--fine-tune-stages`` layer.

    Args:
        runner: fits the phases.
        model, base: the full model and its ResNet50 base.
        train_ds, val_ds: the image datasets.
    """
    from busi_classifier.training.model import unfreeze_top

    config = runner.config
    if not config.epochs_fine_tune:
        return
    for stage, first_layer in enumerate(config.fine_tune_stages, start=1):
        n = unfreeze_top(base, first_layer)
        print(f"stage {stage}: unfroze {n} base layers from {first_layer} (BatchNorm stays frozen)", flush=True)
        runner.fit(model, train_ds, val_ds, config.epochs_fine_tune, config.lr_fine_tune, f"2-fine-tune-{stage}")


def train_model(config: TrainConfig, data: PreparedData, strategy, progress: bool) -> tuple[object, PhaseRunner]:
    """Build the model and run the phases; the kept (best) weights are restored.

    Args:
        config: the run's settings.
        data: the decoded splits.
        strategy: the tf.distribute strategy to build and compile under.
        progress: Keras progress bars on a terminal.

    Returns:
        (the trained model, the runner with history, timings and the best epoch).
    """
    from busi_classifier.training.augmentation import build_augmenter
    from busi_classifier.training.model import build_model, freeze_base, is_pretrained

    x, y = data.x, data.y
    augmenter = build_augmenter(tuple(config.augment), config.seed)
    weights = class_weights(y["train"]) if config.class_weights else None
    if config.task == "multitask":
        if data.masks is None:
            raise ConfigError("--task multitask: the prepared data has no masks")
        train_ds = make_multitask_dataset(x["train"], y["train"], data.masks["train"], data.known["train"],
                                          config.batch_size, True, config.seed, augmenter, weights)
        val_ds = make_multitask_dataset(x["val"], y["val"], data.masks["val"], data.known["val"], config.batch_size,
                                        False, config.seed)
    else:
        train_ds = make_dataset(x["train"], y["train"], config.batch_size, True, config.seed, augmenter)
        val_ds = make_dataset(x["val"], y["val"], config.batch_size, False, config.seed)
    steps = max(1, -(-len(x["train"]) // config.batch_size))
    with strategy.scope():
        model, base = build_model(config)
    runner = PhaseRunner(config, strategy, steps, weights, keep_best_callback(config.monitor, model),
                         1 if (progress and sys.stdout.isatty()) else 2)
    if is_pretrained(config.weights):
        freeze_base(base)
        train_head(runner, model, data, augmenter, train_ds, val_ds)
        fine_tune(runner, model, base, train_ds, val_ds)
    else:
        # Random initialisation: nothing to protect, the whole network trains at once.
        runner.fit(model, train_ds, val_ds, config.epochs_head + config.epochs_fine_tune, config.lr_head, "1-full")
    runner.best.restore()
    return model, runner


def evaluate_and_calibrate(model, data: PreparedData, config: TrainConfig, best_epoch: int | None) -> Evaluation:
    """Predict val and test, fit the temperature on val, score test (with intervals).

    Args:
        model: the trained model.
        data: the decoded splits.
        config: the run's settings.
        best_epoch: the kept epoch (recorded with the metrics).

    Returns:
        the predictions, the calibration and the metrics.
    """
    from busi_classifier.evaluation.metrics import evaluate_predictions, fit_temperature, point_metrics

    x, y = data.x, data.y
    lesion_val = None

    def predict(name: str) -> np.ndarray:
        nonlocal lesion_val
        out = model.predict(make_dataset(x[name], y[name], config.batch_size, False, config.seed), verbose=0)
        if isinstance(out, dict):  # multitask
            if name == "val":
                lesion_val = np.asarray(out["lesion"], dtype=np.float64)[..., 0]
            return out["probabilities"]
        return out

    p_val, p_test = predict("val"), predict("test")
    if len(y["val"]) >= MIN_CALIBRATION_IMAGES:
        temperature = fit_temperature(y["val"], p_val)
    else:
        temperature = 1.0
        print(f"calibration skipped: {len(y['val'])} validation images, fewer than {MIN_CALIBRATION_IMAGES}",
              flush=True)
    test_metrics = evaluate_predictions(y["test"], p_test, temperature, config.bootstrap_resamples, config.seed,
                                        groups=test_groups(data))
    test_metrics["best_epoch"] = best_epoch
    test_metrics["monitor"] = config.monitor
    val_metrics = point_metrics(y["val"], p_val)
    calibration = {
        "method": "temperature scaling" if temperature != 1.0 else "none",
        "temperature": temperature,
        "fitted_on": "val",
        "val_nll_before": val_metrics["nll"],
        "val_nll_after": point_metrics(y["val"], apply_temperature(p_val, temperature))["nll"],
    }
    evaluation = Evaluation(p_val, p_test, temperature, test_metrics, val_metrics, calibration)
    if lesion_val is not None:
        from busi_classifier.evaluation.localisation import mask_for_input
        from busi_classifier.evaluation.segmentation import choose_threshold

        val_masks = [mask_for_input(s.masks, config.image_size) if s.masks else None
                     for s in data.result.splits["val"]]
        known = data.known["val"] > 0
        evaluation.lesion_threshold, evaluation.lesion_threshold_rule = choose_threshold(
            lesion_val[known], [m for m, k in zip(val_masks, known, strict=True) if k], config.image_size)
        print(f"lesion threshold {evaluation.lesion_threshold:g} ({evaluation.lesion_threshold_rule})", flush=True)
    return evaluation


def test_groups(data: PreparedData) -> list | None:
    """The near-duplicate group of each test image (the grouped split's), for the
    cluster bootstrap; None for the random split, which has no groups."""
    groups = data.result.groups
    if not groups:
        return None
    return [groups.get(s.path, f"image:{s.path}") for s in data.result.splits["test"]]


def gate_evidence(model, data: PreparedData, config: TrainConfig, lesion_threshold: float | None = None):
    """The images the TFLite variants are checked against the Keras model on: every
    train and validation image and one augmented view of each (all transforms), at most
    GATE_MAX_IMAGES of them; never a test image. ``model``: the served graph
    (``explain_model``: probabilities, class maps and pooled features, and the lesion map
    of a multitask model, compared at ``lesion_threshold``). Returns a ``GateEvidence``
    (the input check itself is added by ``export_model``)."""
    from busi_classifier.config import AUGMENTATIONS
    from busi_classifier.evaluation.served import GateEvidence
    from busi_classifier.training.augmentation import build_augmenter
    from busi_classifier.training.model import CAM_OUTPUT, FEATURES_OUTPUT

    x, y = data.x, data.y
    images = np.concatenate([x["train"], x["val"]])
    labels = np.concatenate([y["train"], y["val"]])
    augmenter = build_augmenter(tuple(AUGMENTATIONS), config.seed + 1000)
    views = [np.clip(np.round(np.asarray(augmenter(images[i:i + 64].astype("float32"), training=True))), 0, 255)
             .astype(np.uint8) for i in range(0, len(images), 64)]
    images = np.concatenate([images, *views])
    labels = np.concatenate([labels, labels])
    if len(images) > GATE_MAX_IMAGES:
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(images))[:GATE_MAX_IMAGES])
        images, labels = images[keep], labels[keep]
    outputs = model.predict(images.astype("float32"), batch_size=config.batch_size, verbose=0)
    description = (f"train+val: {len(images)} images (each image and one augmented view, at most "
                   f"{GATE_MAX_IMAGES}); no test image")
    lesion = outputs.get("lesion")
    features = outputs.get(FEATURES_OUTPUT)
    return GateEvidence(images, labels, np.asarray(outputs["probabilities"], dtype=np.float64),
                        np.asarray(outputs[CAM_OUTPUT], dtype=np.float64), description,
                        reference_lesion=None if lesion is None else np.asarray(lesion, dtype=np.float64)[..., 0],
                        lesion_threshold=lesion_threshold if lesion is not None else None,
                        reference_features=None if features is None else np.asarray(features, dtype=np.float32),
                        flag_rate=config.input_check_flag_rate)


def export_model(model, out_dir: Path, config: TrainConfig, dataset_info: dict, calibration: dict | None = None,
                 representative: np.ndarray | None = None, gate=None, test=None, progress: bool = True,
                 verbose: bool = False, lesion_threshold: tuple[float, str] | None = None,
                 input_check=None) -> tuple[dict, object]:
    """Write model.keras, every TFLite variant and model.json into ``out_dir``; return
    (the metadata, the served variant's test score or None). Export converts and writes
    the card; evaluation measures the files (busi_classifier.evaluation.served).

    Args:
        model: the trained Keras model (float32).
        out_dir: the model folder.
        config: the run's settings; only ``config.variants`` are written (float32, the
            reference, always is).
        dataset_info: model.json's ``dataset``.
        calibration: what serving applies ({"method", "temperature"}).
        representative: uint8 training images for int8_full calibration (without them
            that variant is skipped).
        gate: a ``GateEvidence``: each variant is compared with the Keras model on these
            (non-test) images and the default variant is chosen by
            ``variants.choose_default``; None: float32 is served.
        test: a ``TestSet``: the served variant's own test metrics (with intervals and
            calibration) are computed and become model.json's headline, the Keras
            model's beside them.
        progress: progress bar over the variants.
        verbose: show the TFLite converter's and LiteRT's own output.
        lesion_threshold: (threshold, rule) of a multitask model's lesion map, chosen on
            the validation split (0.5 and a rule saying so when None).
        input_check: an ``evaluation.served.InputCheckPlan`` (the check fitted on the
            training split, the validation images, the out-of-distribution sets): every
            variant gets the pooled features as an output, each is gated on its decisions
            too, the served file's threshold is chosen on its validation features, the check
            is written to input_check.npz and measured with ``test``; None: no features
            output, no input check (the card's ``input_check`` is null).

    Returns:
        (model.json's content, the served variant's ``ServedScore`` or None without ``test``).
    """
    from busi_classifier.evaluation.served import card_metrics, gate_variants, score_served, threshold_on_file
    from busi_classifier.export.tflite import write_card, write_model_files
    from busi_classifier.serving.input_check import FILE as INPUT_CHECK_FILE
    from busi_classifier.training.model import (
        CAM_OUTPUT,
        FEATURES_OUTPUT,
        LESION_OUTPUT,
        LESION_STRIDE,
        explain_model,
        has_lesion,
        inference_copy,
    )

    # + the class maps, the pooled features (and the lesion map) as outputs of every variant
    served_graph = explain_model(model, features=input_check is not None)
    map_shape = [1, *[int(d) for d in served_graph.get_layer(CAM_OUTPUT).output.shape[1:]]]
    lesion = None
    if has_lesion(model):
        threshold, rule = lesion_threshold or (0.5, "0.5: no validation lesion maps were given to choose it on")
        lesion = {"output": LESION_OUTPUT, "shape": [1, *[int(d) for d in model.get_layer(LESION_OUTPUT).output.shape[1:]]],
                  "stride": LESION_STRIDE, "activation": "sigmoid", "threshold": float(threshold),
                  "threshold_rule": rule, "metrics": {}}
    # model.keras uncompiled: no optimizer state in the file
    files = write_model_files(inference_copy(model), served_graph, out_dir, config.variants, representative,
                              progress, verbose)
    (out_dir / INPUT_CHECK_FILE).unlink(missing_ok=True)  # never a check of an older run beside these files
    if gate is not None and input_check is not None:
        gate = dataclasses.replace(gate, input_check=input_check.check, check_images=input_check.val_images,
                                   flag_rate=input_check.flag_rate)
    default, reason, evidence_split = gate_variants(out_dir, files, gate, config.image_size, verbose)
    served_check, val_scores, spec = None, None, None
    if input_check is not None:
        served_check, val_scores = threshold_on_file(out_dir / files[default]["file"], input_check.check,
                                                     input_check.val_images, input_check.flag_rate,
                                                     config.image_size, verbose)
        digest = served_check.save(out_dir / INPUT_CHECK_FILE)
        spec = {"file": INPUT_CHECK_FILE, "sha256": digest, "bytes": (out_dir / INPUT_CHECK_FILE).stat().st_size,
                "method": served_check.method, "dims": served_check.dims, "feature_output": FEATURES_OUTPUT,
                "threshold": served_check.threshold, "threshold_rule": served_check.threshold_rule,
                "flag_rate": float(input_check.flag_rate), "metrics": {}}
    score = None
    if test is not None:
        score = score_served(out_dir / files[default]["file"], default, test, config.image_size, verbose,
                             lesion_threshold=lesion["threshold"] if lesion else None, input_check=served_check,
                             ood=input_check, val_scores=val_scores)
        if lesion is not None and "segmentation" in score.metrics:
            lesion["metrics"] = score.metrics["segmentation"]
        if spec is not None and score.input_check is not None:
            spec["metrics"] = {k: v for k, v in score.input_check.items() if k != "timings_s"}
    meta = write_card(out_dir, config, dataset_info, files, default, reason, evidence_split,
                      {"output": CAM_OUTPUT, "shape": map_shape}, calibration,
                      card_metrics(score, test.keras_metrics) if score is not None else {}, lesion=lesion,
                      input_check=spec)
    return meta, score


def input_check_plan(model, data: PreparedData, config: TrainConfig, synthetic: bool):
    """Fit the input check on the Keras model's pooled features of the training split
    (``input_check_fit.fit_input_check``, its default method and dimensions), with the
    threshold chosen on its validation features (the reference the variants' decisions are
    gated against; the served file's own threshold is chosen by ``export_model``), and
    build the out-of-distribution sets it is measured on (``export_ood_sets``).

    Args:
        model: the float32 Keras model (its ``avg_pool`` output).
        data: the decoded splits and the samples (files of the test images and masks).
        config: ``input_check_flag_rate``, ``input_check_ood_images``, ``seed``, ``batch_size``.
        synthetic: the training data is the project's synthetic set (then that set is in
            distribution and left out).

    Returns:
        an ``evaluation.served.InputCheckPlan``.
    """
    from busi_classifier.evaluation.input_check_fit import choose_threshold, fit_input_check
    from busi_classifier.evaluation.served import InputCheckPlan

    t0 = time.perf_counter()
    n_train = len(data.x["train"])  # one predict of both splits (one trace of the feature model)
    features = extract_features(model, np.concatenate([data.x["train"], data.x["val"]]), config.batch_size)[0]
    train_features, val_features = features[:n_train], features[n_train:]
    check = choose_threshold(fit_input_check(train_features, data.y["train"]), val_features,
                             config.input_check_flag_rate)
    fitted = time.perf_counter() - t0
    t0 = time.perf_counter()
    sets, left_out = export_ood_sets(data, config, synthetic)
    print(f"input check: {check.method} in {check.dims} dimensions, fitted on {len(train_features)} training images "
          f"({fitted:.1f} s); {len(sets)} out-of-distribution set(s) of up to {config.input_check_ood_images} images "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return InputCheckPlan(check, data.x["val"], config.input_check_flag_rate, sets, left_out,
                          config.input_check_ood_images, config.seed,
                          {"fit (features and check)": round(fitted, 2),
                           "building the sets": round(time.perf_counter() - t0, 2)})


def export_ood_sets(data: PreparedData, config: TrainConfig, synthetic: bool) -> tuple[dict, dict]:
    """The out-of-distribution sets of the export (``evaluation.ood_sets.ood_sets``,
    ``config.input_check_ood_images`` images per set, ``config.seed``): from the test
    split's image files (the near-misses) and mask files, a synthetic set generated into a
    temporary folder (unless the training data is synthetic: then it is in distribution),
    and what installed packages ship. Returns (sets, {set left out: why})."""
    import tempfile

    from busi_classifier.evaluation.ood_sets import SYNTHETIC, available_sources, ood_sets

    n = config.input_check_ood_images
    if not n:
        return {}, {"all sets": "not measured (--input-check-ood-images 0)"}
    test = data.result.splits["test"]
    images = [s.path.read_bytes() for s in test]
    masks = [m.read_bytes() for s in test for m in s.masks]
    with tempfile.TemporaryDirectory(prefix="busi-ood-") as folder:
        synthetic_dir = None
        if not synthetic:
            from busi_classifier.data.synthetic import generate_dataset

            synthetic_dir = generate_dataset(Path(folder), per_class=-(-n // len(CLASSES)), seed=config.seed,
                                             progress=False)
        sets = ood_sets(images, masks or None, synthetic_dir, n_per_set=n, seed=config.seed)
        reasons = available_sources(images, masks or None, synthetic_dir)
    left_out = {name: reason for name, reason in reasons.items() if reason is not None}
    if synthetic:
        left_out[SYNTHETIC] = "the training data is the project's synthetic set: in distribution, not out of it"
    return sets, left_out


def export(model, data: PreparedData, config: TrainConfig, evaluation: Evaluation, progress: bool,
           verbose: bool) -> tuple[dict, object]:
    """Write model.keras, the chosen TFLite variants and model.json.

    Args:
        model: the trained model (a float32 copy is exported after mixed precision).
        data: the decoded splits (representative images, test evidence).
        config: the run's settings.
        evaluation: the test predictions and the calibration.
        progress: progress bar over the variants.
        verbose: show the TFLite converter's own output.

    Returns:
        (model.json's content, the served variant's ``ServedScore`` on the test split).
    """
    from busi_classifier.evaluation.localisation import mask_for_input
    from busi_classifier.evaluation.served import TestSet
    from busi_classifier.training.model import explain_model

    dataset_info = {
        "root": str(data.root),
        "fingerprint_sha256": fingerprint(data.samples, data.root),
        "images": len(data.samples),
        "per_split": data.counts,
        "split": config.split,
        "split_file": "split.csv",
        # a dataset written by `synthesize` carries its marker file: the card says "demo model"
        "synthetic": (Path(data.root) / SYNTHETIC_MARKER).is_file(),
    }
    if config.mixed_precision:  # export a float32 copy: the serving world has no float16 policy
        import keras

        from busi_classifier.training.model import build_model

        keras.mixed_precision.set_global_policy("float32")
        export_source, _ = build_model(dataclasses.replace(config, weights="none"))
        export_source.set_weights(model.get_weights())
    else:
        export_source = model
    print(f"exporting model.keras, the TFLite variants ({', '.join(config.variants)}), model.json ...", flush=True)
    x, y = data.x, data.y
    rng = np.random.default_rng(config.seed)
    representative = x["train"][np.sort(rng.permutation(len(x["train"]))[:REPRESENTATIVE_IMAGES])]
    # model.json carries what serving applies; the fit's details stay in metrics.json
    card_calibration = {"method": "temperature" if evaluation.temperature != 1.0 else "none",
                        "temperature": evaluation.temperature}
    gate = gate_evidence(explain_model(export_source), data, config, evaluation.lesion_threshold)
    masks = [mask_for_input(s.masks, config.image_size) for s in data.result.splits["test"]]
    test = TestSet(x["test"], y["test"], test_groups(data), evaluation.test_metrics, masks, evaluation.temperature,
                   config.bootstrap_resamples, config.seed)
    plan = input_check_plan(export_source, data, config, dataset_info["synthetic"])
    meta, served = export_model(export_source, Path(config.out_dir), config, dataset_info, card_calibration,
                                representative, gate, test, progress, verbose=verbose,
                                lesion_threshold=None if evaluation.lesion_threshold is None else
                                (evaluation.lesion_threshold, evaluation.lesion_threshold_rule), input_check=plan)
    print(f"default variant: {meta['default_variant']} ({meta['default_variant_reason']})", flush=True)
    return meta, served


def write_reports(config: TrainConfig, data: PreparedData, evaluation: Evaluation, runner: PhaseRunner,
                  meta: dict, served) -> None:
    """Training figures, metrics.json and history.json.

    Args:
        config: the run's settings (out_dir, figures_dir).
        data: the decoded splits (test labels).
        evaluation: predictions, calibration, metrics.
        runner: history and timings.
        meta: model.json's content (version, served variant).
        served: the served variant's ``ServedScore`` (its figures and metrics).
    """
    from busi_classifier.evaluation.figures import write_training_figures
    from busi_classifier.export.tflite import write_json

    out_dir = Path(config.out_dir)
    figures_dir = Path(config.figures_dir) if config.figures_dir else out_dir
    from busi_classifier.evaluation.localisation import served_cam_figure

    figures = write_training_figures(runner.history, served.metrics, data.y["test"], served.raw,
                                     evaluation.temperature, figures_dir, model=served.file,
                                     best_epoch=evaluation.test_metrics.get("best_epoch"))
    cam = served_cam_figure(data.x["test"], served.maps, served.raw, data.y["test"], served.masks, CLASSES,
                            figures_dir / "cam_examples.png", f"test split, {served.file}",
                            groups=test_groups(data))
    if cam is not None:
        figures["class activation maps"] = cam
    if getattr(served, "lesion", None) is not None and meta.get("lesion"):
        from busi_classifier.evaluation.segmentation import segmentation_figure

        outlines = segmentation_figure(data.x["test"], served.lesion, served.masks, data.y["test"],
                                       meta["lesion"]["threshold"], figures_dir / "lesion_examples.png",
                                       f"test split, {served.file}", groups=test_groups(data))
        if outlines is not None:
            figures["lesion outlines"] = outlines
    check = meta.get("input_check")
    if getattr(served, "input_check_scores", None) is not None and check:
        from busi_classifier.evaluation.ood_sets import ood_figure

        figures["input check"] = ood_figure(served.input_check_scores["test"], served.input_check_scores["sets"],
                                            check["threshold"], figures_dir / "ood_scores.png",
                                            f"Input check ({check['method']}, {check['dims']} dimensions): "
                                            f"{served.file}, test split vs other images",
                                            in_label=("synthetic test split" if meta["dataset"].get("synthetic")
                                                      else "BUSI test split") + " (in distribution)")
    write_json(out_dir / "metrics.json", {
        "model_version": meta["model_version"],
        "served": {"variant": served.variant, "file": served.file, "test": served.metrics},
        "test": evaluation.test_metrics,  # the Keras model (model.keras)
        "val": evaluation.val_metrics,
        "calibration": evaluation.calibration,
        # the served file's input check: threshold, flag rates, AUROC per set, what it took
        **({"input_check": {"file": check["file"], "method": check["method"], "dims": check["dims"],
                            "threshold": check["threshold"], "threshold_rule": check["threshold_rule"],
                            **served.input_check}}
           if check and getattr(served, "input_check", None) is not None else {}),
        "timings_s": {k: round(v, 2) for k, v in runner.timings.items()},
        "figures": {k: str(v) for k, v in figures.items()},
    })
    write_json(out_dir / "history.json", runner.history)


def train(config: TrainConfig, progress: bool = True, verbose: bool = False) -> dict:
    """Run a whole training; writes into config.out_dir.

    Args:
        config: every setting of the run.
        progress: progress bars.
        verbose: let TensorFlow and the TFLite converter print their own lines.

    Returns:
        model.json's content, plus ``wall_time_s``.
    """
    started = time.time()
    _, config = preflight(config)  # settings, dataset layout, task, weights: before any hashing or TensorFlow
    data = prepare_data(config, progress)
    strategy = configure_runtime(config)
    model, runner = train_model(config, data, strategy, progress)
    evaluation = evaluate_and_calibrate(model, data, config, runner.best.best_epoch)
    meta, served = export(model, data, config, evaluation, progress, verbose)
    write_reports(config, data, evaluation, runner, meta, served)
    meta["wall_time_s"] = round(time.time() - started, 1)
    return meta
