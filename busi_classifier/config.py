"""Settings of the training world: TrainConfig, its choices, ConfigError (no heavy imports).

The serving contract's constants (classes, input size, caps) live in busi_classifier.serving.constants."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from busi_classifier.serving.constants import CLASSES, DEFAULT_IMAGE_SIZE

# Two images are near-duplicates when their 255-bit perceptual hashes differ in at most
# this many bits (chosen on the real BUSI data: see busi_classifier/audit.py and README).
NEAR_DUPLICATE_BITS = 86



class ConfigError(ValueError):
    """A setting the user gave cannot work (explained in the message)."""


# Training-time augmentations (busi_classifier.training.augmentation builds them).
AUGMENTATIONS = ("flip", "rotate", "zoom", "brightness", "contrast", "speckle")


def parse_augmentations(text: str) -> tuple[str, ...]:
    """'flip,rotate' -> ('flip', 'rotate'); 'none' or '' -> (); 'all' -> every one."""
    text = text.strip().lower()
    if text in ("", "none", "off"):
        return ()
    if text == "all":
        return AUGMENTATIONS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown augmentation(s) {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}, "
                          "'all' or 'none'")
    return names


@dataclass
class TrainConfig:
    """Every setting of a training run; recorded in model.json (``training``)."""

    data_dir: str = ""
    out_dir: str = "artifacts/model"
    figures_dir: str | None = None  # training figures; None: out_dir
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    image_size: int = DEFAULT_IMAGE_SIZE
    epochs_head: int = 5  # phase 1 (frozen base); with weights "none": the whole network
    epochs_fine_tune: int = 5  # phase 2, per unfreezing stage
    batch_size: int = 16
    lr_head: float = 1e-3
    lr_fine_tune: float = 1e-5
    # Gradual unfreezing: phase 2 runs one stage per layer name, each unfreezing the base
    # from that layer on (BatchNorm stays frozen), epochs_fine_tune epochs each.
    fine_tune_stages: tuple[str, ...] = ("conv5_block1_1_conv",)
    dropout: float = 0.3
    seed: int = 42
    deterministic: bool = True  # TensorFlow op determinism
    max_per_class: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # loss and imbalance
    loss: str = "crossentropy"  # or "focal"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: bool = True
    # schedule, selection, stopping
    lr_schedule: str = "plateau"  # "plateau" (ReduceLROnPlateau), "cosine" (with warm-up) or "constant"
    warmup_epochs: int = 1  # cosine only
    monitor: str = "val_macro_f1"  # or "val_macro_auc": picks the kept epoch
    early_stopping: int = 8  # patience in epochs; 0 = off
    augment: tuple[str, ...] = ("flip", "rotate", "zoom", "brightness", "contrast", "speckle")
    # fast head training: with a frozen pretrained base, compute base features once per view
    cache_features: bool = True
    feature_views: int = 4  # the original images plus 3 augmented views
    # hardware
    distribute: str = "none"  # or "mirrored" (tf.distribute.MirroredStrategy over the GPUs)
    mixed_precision: bool = False
    # data split
    split: str = "grouped"  # "grouped" (near-duplicates kept together) or "random" (image-level)
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    conflict_label: str | None = None  # None: groups with conflicting labels are left out
    folds: int = 0  # > 0: grouped k-fold, `fold` is the test fold
    fold: int = 0
    # evaluation
    bootstrap_resamples: int = 1000
    classes: tuple[str, ...] = field(default_factory=lambda: CLASSES)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    def check(self) -> None:
        """Raise ConfigError for settings that cannot work together."""
        choices = {"loss": ("crossentropy", "focal"), "lr_schedule": ("plateau", "cosine", "constant"),
                   "monitor": ("val_macro_f1", "val_macro_auc"), "distribute": ("none", "mirrored"),
                   "split": ("grouped", "random")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.epochs_head < 0 or self.epochs_fine_tune < 0 or self.epochs_head + self.epochs_fine_tune < 1:
            raise ConfigError("epochs must be >= 0 and at least one epoch in total")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_views < 1:
            raise ConfigError(f"feature views must be at least 1, got {self.feature_views}")
