"""Constants of the serving contract (classes, input size, image caps, the model variants). Stdlib only."""

# The class order used everywhere: model outputs, model.json, metrics, folder reading.
# Never rely on alphabetical folder order (benign, malignant, normal).
CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

DEFAULT_IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Largest decoded image the preprocessing accepts (width * height). Protects against
# decompression bombs: a tiny file whose header claims huge dimensions.
MAX_IMAGE_PIXELS = 40_000_000
# Shape caps, checked on the header with the pixel cap. Ultrasound exports are 4:3, 16:9
# or side-by-side 2:1 frames, panoramic (extended field of view) images about 4:1, and
# none is wider than an 8K screen (7680 px). A one-pixel-wide strip at the pixel cap is
# what costs Pillow the most memory per pixel (a row pointer per row, per copy).
MAX_IMAGE_SIDE = 10_000
MAX_ASPECT_RATIO = 10  # the longer side at most 10 times the shorter
# Pixels per request, the images of a batch together (checked on the headers of every
# image before any is decoded): one image at the pixel cap, or 16 Full-HD frames
# (16 x 1920 x 1080 = 33.2 MP), or 16 typical BUSI images (~0.3 MP each) many times over.
MAX_REQUEST_PIXELS = MAX_IMAGE_PIXELS

# How decode_image makes the model input. model.json's "preprocessing" is generated from
# these (serving/card.py); tests/test_card.py checks decode_image against them.
RESIZE_METHOD = "bilinear"  # Pillow Image.Resampling name, one resize of the longer side
PAD_COLOR = (0, 0, 0)  # the square canvas the resized image is centred on; alpha is composited on it
SIXTEEN_BIT_DIVISOR = 257  # 16-bit grayscale -> 8 bits (65535 / 257 = 255)
MODEL_INPUT_DTYPE = "float32"  # raw RGB 0..255; the model's first layers do the ImageNet normalisation
# What the exported model does itself to its 0..255 RGB input (a layer inside it)
MODEL_INTERNAL_NORMALIZATION = "keras.applications.resnet50.preprocess_input (RGB to BGR, ImageNet mean subtraction)"

# The exported TFLite variants: name (model.json's "variants" keys, MODEL_VARIANT) -> the
# file written beside model.json (model.tflite keeps its name: float32 is the reference).
# busi_classifier.export.variants holds the rule that picks the served one.
VARIANT_FILES = {
    "float32": "model.tflite",
    "float16": "model_float16.tflite",
    "int8_dynamic": "model_int8_dynamic.tflite",
    "int8_full": "model_int8_full.tflite",
}
VARIANTS = tuple(VARIANT_FILES)
