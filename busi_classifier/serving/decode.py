"""Image bytes -> model input. The ONE decoding/resizing function of the project.

Used by the Lambda handler and by training alike, so that the model sees the same
pixels in both worlds. Imports only NumPy and Pillow.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import DEFAULT_IMAGE_SIZE, MAX_IMAGE_PIXELS

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class InvalidImageError(ValueError):
    """The bytes are not an image this project can read."""


class ImageTooLargeError(InvalidImageError):
    """The image header claims more pixels than MAX_IMAGE_PIXELS (a decompression bomb,
    or simply too big): refused before any pixel is decoded."""


def _too_large(pixels: int | None, dimensions: str = "") -> ImageTooLargeError:
    size = f"{dimensions} = {pixels} pixels" if dimensions else (f"{pixels} pixels" if pixels else "too many pixels")
    return ImageTooLargeError(f"image is {size}; the limit is {MAX_IMAGE_PIXELS} pixels")


def open_image(data: bytes) -> Image.Image:
    """Open image bytes with Pillow, checking the size before any pixel is decoded."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImageError("not a readable image (expected PNG, JPEG or another format Pillow reads)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb check (at 89 and 179 megapixels) fires inside open()
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(int(claimed.group(1)) if claimed else None) from None
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise InvalidImageError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(width * height, f"{width}x{height}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited on black (the ultrasound background);
    16-bit grayscale is scaled to 8 bits (65535 -> 255) instead of being clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64) / 257.0
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info) or (
        mode in ("L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV ...


def decode_image(data: bytes, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode image bytes into the model input: uint8 array of shape (size, size, 3).

    Steps, in this order: open (size checked before decoding), first frame of an
    animation, JPEG draft mode (lets libjpeg decode at a reduced scale that is still
    at least ``size``), EXIF orientation, conversion to RGB, one bilinear resize of the
    longer side to ``size`` keeping the aspect ratio, centred on a black square.
    Raises InvalidImageError for anything that is not a readable image.
    """
    image = open_image(data)
    try:
        # is_animated looks for a second frame only; n_frames would walk every frame of
        # a GIF (a file of a million 1-pixel frames is a cheap denial of service)
        if getattr(image, "is_animated", False):
            image.seek(0)
        if image.format == "JPEG":
            image.draft(None, (size, size))
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        width, height = image.size
        scale = size / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = image.resize(new_size, Image.Resampling.BILINEAR)
    except InvalidImageError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise InvalidImageError(f"image data could not be decoded ({type(exc).__name__}: {exc})") from None
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)

# How the model input is made; written into model.json so that every consumer of the
# exported model knows what the TFLite input expects.
PREPROCESSING_DESCRIPTION = {
    "function": "busi_classifier.serving.decode.decode_image",
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
