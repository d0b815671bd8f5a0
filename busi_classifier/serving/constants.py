"""Constants of the serving contract (classes, input size, image caps). Stdlib only."""

# The class order used everywhere: model outputs, model.json, metrics, folder reading.
# Never rely on alphabetical folder order (benign, malignant, normal).
CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

DEFAULT_IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Largest decoded image the preprocessing accepts (width * height). Protects against
# decompression bombs: a tiny file whose header claims huge dimensions.
MAX_IMAGE_PIXELS = 40_000_000
