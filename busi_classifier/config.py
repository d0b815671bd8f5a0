"""Settings of the training world: TrainConfig, its choices, ConfigError (no heavy imports).

Every setting is a TrainConfig field; its metadata (help text, flag name, choices, how a
flag's text becomes the value) is the one description the command line is built from
(busi_classifier.cli) and that ``TrainConfig.check`` validates against. The serving
contract's constants (classes, input size, caps, variant names) live in
busi_classifier.serving.constants. At the bottom of the training world: it imports only
the standard library, serving's constants and busi_classifier.resnet50_layers (a layout
test says so), never data, training, evaluation, export or the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from busi_classifier.resnet50_layers import RESNET50_LAYER_NAMES
from busi_classifier.serving.constants import CLASSES, DEFAULT_IMAGE_SIZE, VARIANTS

# Two images are near-duplicates when their 255-bit perceptual hashes differ in at most
# this many bits (chosen on the real BUSI data: see busi_classifier/data/audit.py and docs/data-audit.md).
NEAR_DUPLICATE_BITS = 86
# keras.applications.ResNet50 refuses inputs smaller than 32 x 32 (five stride-2 stages).
MIN_IMAGE_SIZE = 32

# One tuple per choice setting: argparse `choices=` and TrainConfig.check both read these.
LOSSES = ("crossentropy", "focal")
LR_SCHEDULES = ("plateau", "cosine", "constant")
MONITORS = ("val_macro_f1", "val_macro_auc")
DISTRIBUTE = ("none", "mirrored")
SPLIT_METHODS = ("grouped", "random")
AUGMENTATIONS = ("flip", "rotate", "zoom", "brightness", "contrast", "speckle")  # training.augmentation builds them
TASKS = ("multitask", "classify")
# The lesion decoder adds the feature pyramid's strides 4..32: its input side must divide by 32.
MULTITASK_SIZE_MULTIPLE = 32


class ConfigError(ValueError):
    """A setting the user gave cannot work (explained in the message)."""


def parse_augmentations(text: str) -> tuple[str, ...]:
    """'flip,rotate' -> ('flip', 'rotate'); 'none' or '' -> (); 'all' -> every one."""
    return _parse_names(text, AUGMENTATIONS, "augmentation", allow_none=True)


def parse_variants(text: str) -> tuple[str, ...]:
    """'float32,int8_dynamic' -> those TFLite variants (float32 always included: it is the
    reference the others are checked against); 'all' -> every one."""
    names = _parse_names(text, VARIANTS, "variant", allow_none=False)
    return tuple(v for v in VARIANTS if v == "float32" or v in names)


def parse_stages(text: str) -> tuple[str, ...]:
    """'conv5_block1_1_conv, conv4_block1_1_conv' -> a tuple of layer names."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _parse_names(text: str, allowed: tuple[str, ...], what: str, allow_none: bool) -> tuple[str, ...]:
    text = text.strip().lower()
    if allow_none and text in ("", "none", "off"):
        return ()
    if text == "all":
        return allowed
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        extra = "'all' or 'none'" if allow_none else "or 'all'"
        raise ConfigError(f"unknown {what}(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(allowed)}, "
                          f"{extra}")
    return names


def setting(default, help: str, *, flag: str | None = None, choices: tuple | None = None,
            parse: Callable[[str], object] | None = None, kind: str | None = None, metavar: str | None = None,
            group: str = "model and phases", factory: bool = False):
    """A TrainConfig field with what the command line needs to know about it.

    Args:
        default: the default value (a tuple default is stored through a factory).
        help: one line for ``--help``; the default is appended by the formatter.
        flag: the option name when it is not the field name with dashes (``data_dir`` -> ``--data``).
        choices: the allowed values (argparse ``choices=`` and ``TrainConfig.check``).
        parse: turns the flag's text into the value (comma lists); errors are ConfigError.
        kind: "positive" for integers >= 1, "nonneg" for integers >= 0, "flag" for an on/off
            setting whose default None means "decided from the other settings".
        metavar, group: how ``--help`` shows and groups the flag.
        factory: store ``default`` through ``default_factory`` (tuples).

    Returns:
        a ``dataclasses.field``.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "parse": parse, "kind": kind, "metavar": metavar,
            "group": group}
    if factory:
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run; recorded in model.json (``training``)."""

    data_dir: str = setting("", "dataset folder with normal/, benign/, malignant/ (see data/README.md)",
                            flag="--data", group="data")
    out_dir: str = setting("artifacts/model", "output folder: split.csv, model files, metrics, figures",
                           flag="--out", group="data")
    figures_dir: str | None = setting(None, "folder for the figures (default: --out)", flag="--figures", group="data")
    task: str | None = setting(None, "multitask: classify and outline the lesion (a decoder on the ResNet50 "
                               "feature pyramid, trained on the mask files); classify: the classes only "
                               "(default: multitask where the dataset has mask files, else classify)",
                               choices=TASKS)
    seg_weight: float = setting(1.0, "multitask: weight of the lesion loss (Dice + binary cross-entropy) beside the "
                                "classification loss")
    weights: str = setting("imagenet", "'imagenet' (downloads once), 'none' (random init) or a path to a ResNet50 "
                           "no-top weights file")
    image_size: int = setting(DEFAULT_IMAGE_SIZE, f"input side in pixels (at least {MIN_IMAGE_SIZE}: ResNet50's "
                              "smallest input)", kind="positive")
    epochs_head: int = setting(5, "phase 1 epochs: head on the frozen base (with --weights none: whole network)",
                               kind="nonneg")
    epochs_fine_tune: int = setting(5, "phase 2 epochs per unfreezing stage (with --weights none: added to phase 1)",
                                    kind="nonneg")
    batch_size: int = setting(16, "images per batch", kind="positive")
    lr_head: float = setting(1e-3, "phase 1 learning rate")
    lr_fine_tune: float = setting(1e-5, "phase 2 learning rate")
    # Gradual unfreezing: phase 2 runs one stage per layer name, each unfreezing the base
    # from that layer on (BatchNorm stays frozen), epochs_fine_tune epochs each.
    fine_tune_stages: tuple[str, ...] = setting(
        ("conv5_block1_1_conv",), "gradual unfreezing: comma-separated ResNet50 layer names, each stage unfreezes "
        "the base from that layer on (e.g. conv5_block1_1_conv,conv4_block1_1_conv)", parse=parse_stages,
        metavar="LAYERS", factory=True)
    dropout: float = setting(0.3, "dropout before the classification layer, in [0, 1)")
    seed: int = setting(42, "drives split, initialisation, augmentation, shuffling")
    deterministic: bool = setting(True, "TensorFlow op determinism")
    max_per_class: int | None = setting(None, "cap on images per class, for quick runs (default: no cap)",
                                        kind="positive", metavar="N", group="data")
    val_fraction: float = setting(0.15, "share of each class in the validation split", group="data audit and split")
    test_fraction: float = setting(0.15, "share of each class in the test split", group="data audit and split")
    # loss and imbalance
    loss: str = setting("crossentropy", "training loss", choices=LOSSES, group="loss, schedule, selection")
    focal_gamma: float = setting(2.0, "focusing parameter of the focal loss", group="loss, schedule, selection")
    label_smoothing: float = setting(0.0, "label smoothing, in [0, 1)", group="loss, schedule, selection")
    class_weights: bool = setting(True, "weight the loss by inverse class frequency", group="loss, schedule, selection")
    # schedule, selection, stopping
    lr_schedule: str = setting("plateau", "plateau: ReduceLROnPlateau; cosine: cosine decay after --warmup-epochs",
                               choices=LR_SCHEDULES, group="loss, schedule, selection")
    warmup_epochs: int = setting(1, "warm-up epochs of the cosine schedule", kind="nonneg",
                                 group="loss, schedule, selection")
    monitor: str = setting("val_macro_f1", "validation metric that picks the kept epoch and drives early stopping",
                           choices=MONITORS, group="loss, schedule, selection")
    early_stopping: int = setting(8, "stop a phase after PATIENCE epochs without improvement (0: off)", kind="nonneg",
                                  metavar="PATIENCE", group="loss, schedule, selection")
    augment: tuple[str, ...] = setting(AUGMENTATIONS, f"augmentations: comma list of {', '.join(AUGMENTATIONS)}, "
                                       "or 'all' / 'none'", parse=parse_augmentations, factory=True, metavar="LIST",
                                       group="loss, schedule, selection")
    # fast head training: with a frozen pretrained base, compute base features once per view
    cache_features: bool | None = setting(None, "with pretrained weights and --task classify: train the head on "
                                          "base features computed once per view instead of running the frozen "
                                          "base every epoch (default: on where it applies; the lesion decoder "
                                          "needs the whole feature pyramid, so multitask cannot cache)",
                                          kind="flag", group="loss, schedule, selection")
    feature_views: int = setting(4, "views per image for --cache-features: the image plus N-1 augmented copies",
                                 kind="positive", metavar="N", group="loss, schedule, selection")
    # hardware
    distribute: str = setting("none", "mirrored: tf.distribute.MirroredStrategy over every visible GPU",
                              choices=DISTRIBUTE, group="hardware")
    mixed_precision: bool = setting(False, "mixed_float16 (for GPUs; the export is float32)", group="hardware")
    # data split
    split: str = setting("grouped", "grouped: near-duplicate groups never straddle train/val/test; random: "
                         "image-level split (leaks near-duplicates, for comparison only)", choices=SPLIT_METHODS,
                         group="data audit and split")
    near_duplicate_bits: int = setting(NEAR_DUPLICATE_BITS, "perceptual-hash distance at or below which two images "
                                       "are near-duplicates", kind="nonneg", group="data audit and split")
    conflict_label: str | None = setting(None, "keep groups whose images carry different labels, all relabelled to "
                                         "this class (default: leave them out of training and evaluation)",
                                         choices=CLASSES, group="data audit and split")
    folds: int = setting(0, "grouped k-fold cross-validation with K folds (K >= 3; 0: one train/val/test split)",
                         kind="nonneg", metavar="K", group="data audit and split")
    fold: int = setting(0, "with --folds: the test fold (0..K-1); fold+1 is validation", kind="nonneg",
                        group="data audit and split")
    # evaluation and export
    bootstrap_resamples: int = setting(1000, "bootstrap resamples for the confidence intervals", flag="--bootstrap",
                                       kind="nonneg", metavar="N", group="evaluation and export")
    variants: tuple[str, ...] = setting(VARIANTS, f"TFLite variants to export: comma list of {', '.join(VARIANTS)} "
                                        "or 'all'; float32 is always written (the reference the others are "
                                        "checked against)", parse=parse_variants, factory=True, metavar="LIST",
                                        group="evaluation and export")
    # the input check (is this a breast ultrasound?): fitted on the training split's pooled
    # features at export, its threshold chosen on the validation split for this flag rate
    input_check_flag_rate: float = setting(0.05, "input check: the share of in-distribution (validation) images "
                                           "it flags, which sets its threshold; in (0, 0.5)", metavar="RATE",
                                           group="evaluation and export")
    input_check_ood_images: int = setting(16, "input check: images per out-of-distribution set it is measured on "
                                          "at export (masks, screenshots, photos, near-misses...; 0: not "
                                          "measured; benchmarks/input_check_methods.py measures more)",
                                          kind="nonneg", metavar="N", group="evaluation and export")

    def check_task(self, task: str) -> None:
        """Raise ConfigError where ``task`` cannot work with the other settings."""
        if task != "multitask":
            return
        if self.cache_features and self.weights.lower() != "none":
            raise ConfigError("--cache-features cannot apply to --task multitask: the lesion decoder needs the whole "
                              "feature pyramid, not the pooled features (use --no-cache-features, or --task classify)")
        if self.image_size % MULTITASK_SIZE_MULTIPLE:
            raise ConfigError(f"--task multitask needs --image-size a multiple of {MULTITASK_SIZE_MULTIPLE} (the "
                              f"feature pyramid's coarsest stride), got {self.image_size}")

    def uses_cached_features(self) -> bool:
        """Whether phase 1 trains the head on cached base features (``cache_features``
        None: wherever it applies, i.e. pretrained weights and the classify task)."""
        if self.weights.lower() == "none" or self.task == "multitask":
            return False
        return True if self.cache_features is None else self.cache_features

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    def check(self) -> None:
        """Raise ConfigError for settings that cannot work (alone or together); reads no file."""
        for f in fields(self):
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            if allowed and value is not None and value not in allowed:
                raise ConfigError(f"{flag_of(f.name)} must be one of {', '.join(allowed)}, got {value!r}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be at least {MIN_IMAGE_SIZE} (ResNet50's smallest input), got "
                              f"{self.image_size}")
        if self.epochs_head < 0 or self.epochs_fine_tune < 0 or self.epochs_head + self.epochs_fine_tune < 1:
            raise ConfigError("epochs must be >= 0 and at least one epoch in total (--epochs-head, --epochs-fine-tune)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.seg_weight <= 100:
            raise ConfigError(f"--seg-weight must be in [0, 100], got {self.seg_weight}")
        if self.task is not None:
            self.check_task(self.task)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.feature_views < 1:
            raise ConfigError(f"--feature-views must be at least 1, got {self.feature_views}")
        if (not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1
                or self.val_fraction + self.test_fraction >= 1):
            raise ConfigError(f"--val-fraction ({self.val_fraction}) and --test-fraction ({self.test_fraction}) must "
                              "be in [0, 1) and sum to less than 1")
        if self.folds:
            if self.split != "grouped":
                raise ConfigError("--folds needs --split grouped")
            if self.folds < 3:
                raise ConfigError(f"--folds must be at least 3, got {self.folds}")
            if not 0 <= self.fold < self.folds:
                raise ConfigError(f"--fold must be in 0..{self.folds - 1}, got {self.fold}")
        unknown = [s for s in self.fine_tune_stages if s not in RESNET50_LAYER_NAMES]
        if unknown:
            raise ConfigError(f"--fine-tune-stages: {', '.join(map(repr, unknown))} is not a ResNet50 layer name "
                              "(e.g. conv5_block1_1_conv, conv4_block1_1_conv, conv3_block1_1_conv)")
        if not 0 < self.input_check_flag_rate < 0.5:
            raise ConfigError(f"--input-check-flag-rate must be in (0, 0.5): the share of in-distribution images "
                              f"the input check flags, got {self.input_check_flag_rate}")
        if self.input_check_ood_images < 0:
            raise ConfigError(f"--input-check-ood-images must be at least 0, got {self.input_check_ood_images}")
        if "float32" not in self.variants or any(v not in VARIANTS for v in self.variants):
            raise ConfigError(f"--variants must include float32 and name only {', '.join(VARIANTS)}")


def flag_of(name: str) -> str:
    """The command-line flag of a TrainConfig field (``bootstrap_resamples`` -> ``--bootstrap``)."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.metadata.get("flag") or "--" + name.replace("_", "-")
