"""Constants and settings shared by training and serving (no heavy imports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The class order used everywhere: model outputs, model.json, metrics, folder reading.
# Never rely on alphabetical folder order (benign, malignant, normal).
CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

DEFAULT_IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Largest decoded image the preprocessing accepts (width * height). Protects against
# decompression bombs: a tiny file whose header claims huge dimensions.
MAX_IMAGE_PIXELS = 40_000_000

# Two images are near-duplicates when their 255-bit perceptual hashes differ in at most
# this many bits (chosen on the real BUSI data: see busi_classifier/audit.py and README).
NEAR_DUPLICATE_BITS = 86

# How the model input is made; written into model.json so that every consumer of the
# exported model knows what the TFLite input expects.
PREPROCESSING_DESCRIPTION = {
    "function": "busi_classifier.preprocessing.decode_image",
    "exif_orientation": "applied",
    "color": "any Pillow mode converted to RGB uint8 (alpha composited on black, "
    "16-bit scaled by 1/257)",
    "resize": "aspect ratio kept: longer side scaled to the input size with Pillow "
    "bilinear (antialiased), centred on a black square canvas",
    "input_dtype": "float32",
    "input_range": "raw RGB 0..255; no mean subtraction by the caller",
    "model_internal_normalization": "keras.applications.resnet50.preprocess_input "
    "(RGB->BGR, ImageNet mean subtraction) is a layer inside the model",
}


class ConfigError(ValueError):
    """A setting the user gave cannot work (explained in the message)."""


@dataclass
class TrainConfig:
    """Every setting of a training run; recorded in model.json."""

    data_dir: str = ""
    out_dir: str = "artifacts/model"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    image_size: int = DEFAULT_IMAGE_SIZE
    epochs_head: int = 5
    epochs_fine_tune: int = 5
    batch_size: int = 16
    lr_head: float = 1e-3
    lr_fine_tune: float = 1e-5
    fine_tune_from: str = "conv5_block1_1_conv"  # first base layer unfrozen in phase 2
    dropout: float = 0.3
    seed: int = 42
    max_per_class: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    class_weights: bool = True
    monitor: str = "val_macro_f1"
    split: str = "grouped"  # "grouped" (near-duplicates kept together) or "random" (image-level)
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    conflict_label: str | None = None  # None: groups with conflicting labels are left out
    folds: int = 0  # > 0: grouped k-fold, `fold` is the test fold
    fold: int = 0
    classes: tuple[str, ...] = field(default_factory=lambda: CLASSES)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d
