"""The one shared decoding function: every Pillow mode, EXIF, shape and dtype, errors."""

import io

import numpy as np
import pytest
from PIL import Image

from busi_classifier.serving.decode import InvalidImageError, decode_image

SIZE = 32


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_gray(width=40, height=40) -> np.ndarray:
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    return ((x + y) / 2).astype(np.uint8)


@pytest.fixture
def reference():
    """A grayscale square gradient and its decoded RGB result."""
    gray = gradient_gray()
    return gray, decode_image(encode(Image.fromarray(gray, "L")), SIZE)


def test_output_shape_dtype_and_channels(reference):
    gray, out = reference
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out.max() > 200 and out.min() < 30  # the gradient survives, not a blank image


@pytest.mark.parametrize(
    "make",
    [
        lambda g: Image.fromarray(g, "L").convert("RGB"),
        lambda g: Image.fromarray(g, "L").convert("P"),
        lambda g: Image.fromarray(g, "L").convert("LA"),
        lambda g: Image.fromarray(g, "L").convert("RGBA"),
        lambda g: Image.fromarray((g.astype(np.uint16) * 257), "I;16"),
    ],
    ids=["RGB", "P", "LA", "RGBA-opaque", "I;16"],
)
def test_lossless_modes_give_the_same_input(reference, make):
    gray, expected = reference
    out = decode_image(encode(make(gray)), SIZE)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_sixteen_bit_is_scaled_not_clipped():
    value = np.full((10, 10), 65535, dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(value, "I;16")), SIZE)
    assert out.max() == 255
    half = np.full((10, 10), 32896, dtype=np.uint16)  # 128 * 257
    assert decode_image(encode(Image.fromarray(half, "I;16")), SIZE).max() == 128


def test_transparent_pixels_become_black():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent
    out = decode_image(encode(Image.fromarray(rgba, "RGBA")), SIZE)
    assert out.max() == 0


def test_cmyk_jpeg_and_grayscale_jpeg(reference):
    gray, expected = reference
    rgb = Image.fromarray(gray, "L").convert("RGB")
    for image in (rgb.convert("CMYK"), rgb.convert("L")):
        out = decode_image(encode(image, "JPEG", quality=95), SIZE)
        assert out.shape == (SIZE, SIZE, 3)
        assert np.abs(out.astype(int) - expected.astype(int)).mean() < 6


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, white block in the stored top-left corner; EXIF
    # orientation 6 means "rotate 90 deg clockwise to display": the displayed image is
    # 20 wide x 40 high and the block sits top-right.
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored, "L").convert("RGB"), "JPEG", exif=exif, quality=100)
    out = decode_image(data, 40)[..., 0].astype(int)
    # displayed 20x40 is letterboxed into 40x40: columns 10..29 hold the image
    assert out[:, :10].max() < 20 and out[:, 30:].max() < 20
    top_right, top_left = out[:10, 20:30].mean(), out[:10, 10:20].mean()
    assert top_right > 150 and top_left < 60


def test_aspect_ratio_kept_with_black_bars():
    wide = np.full((20, 80), 200, dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(wide, "L")), SIZE)[..., 0]
    # 80x20 -> 32x8, centred: rows 12..19 hold the image
    assert out[:12].max() == 0 and out[20:].max() == 0
    assert out[12:20].min() > 190


def test_animated_png_uses_first_frame():
    frames = [Image.new("L", (16, 16), 10), Image.new("L", (16, 16), 240)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue(), SIZE)
    assert out.max() <= 12


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", encode(Image.new("L", (50, 50)))[:40]],
    ids=["empty", "text", "truncated-png"],
)
def test_unreadable_bytes_raise_invalid_image(data):
    with pytest.raises(InvalidImageError):
        decode_image(data, SIZE)


def test_decompression_bomb_is_refused_before_decoding():
    # A valid 1-bit PNG whose header claims 20000 x 20000 pixels (a few KB on disk).
    bomb = encode(Image.new("1", (20000, 20000)))
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImageError, match="limit"):
        decode_image(bomb, SIZE)
