"""Issue 24: the faster intake gives the same model input. Each image is decoded once
(a JPEG once more, for the truncation check), an RGB image with three equal channels
is resized as gray, an 8-bit RGB PNG is inflated by the intake and unfiltered by Pillow
as one channel when it is gray, and base64 is decoded without a compacted copy; none of
it may change a pixel or an answer. Checked against a straightforward decode written
here (Pillow's own EXIF reading, plain conversions) and against the frozen pre-issue
pipeline (benchmarks/_intake_reference.py). Behaviour only, no timing: the timing is
benchmarks/intake.py. Every image is drawn here."""

from __future__ import annotations

import base64
import io
import random
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from benchmarks import _intake_reference as reference
from benchmarks.intake_attacks import png_raw
from benchmarks.intake_worst_case import encode, png_chunk
from busi_classifier.serving import api, decode
from busi_classifier.serving.api import RequestError, decode_base64
from busi_classifier.serving.decode import InvalidImageError, decode_image, letterbox_geometry

SIZE = 224
# EXIF orientation -> the transpose that turns the stored image upright (EXIF 2.32, 4.6.4 A),
# written out here rather than taken from decode.py
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


# --------------------------------------------------------------------------- drawing


def speckle(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An ultrasound-like gray frame: speckle, a dark lesion, a black border."""
    rng = np.random.default_rng(seed)
    pixels = rng.gamma(2.0, 40.0, (height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    pixels[((yy - height / 2) / (height / 4 + 1)) ** 2 + ((xx - width / 2) / (width / 5 + 1)) ** 2 < 1] *= 0.3
    pixels[:, : max(1, width // 10)] = 0
    return pixels.clip(0, 255).astype(np.uint8)


def gray_rgb(width: int = 180, height: int = 140, seed: int = 0) -> Image.Image:
    """A gray frame stored as RGB (three equal channels): what users send."""
    return Image.fromarray(speckle(width, height, seed), "L").convert("RGB")


def colour_rgb(width: int = 180, height: int = 140, seed: int = 1) -> Image.Image:
    frame = np.repeat(speckle(width, height, seed)[..., None], 3, axis=2)
    frame[10:30, 20:60] = (230, 40, 40)  # a red calliper mark
    return Image.fromarray(frame, "RGB")


def with_exif(image: Image.Image, fmt: str, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif, **options)


# --------------------------------------------------------------------------- the straightforward decode


def straightforward(data: bytes, size: int = SIZE) -> np.ndarray:
    """The model input the plain way: Pillow opens the original bytes and reads the EXIF
    orientation itself, JPEGs decode at libjpeg's reduced DCT scale for ``size`` (as the
    project always has), the pixels become RGB (16-bit gray divided by 257 with rounding,
    alpha composited on black), one bilinear resize of the stored image to the upright
    letterbox sides (swapped for orientations 5-8), the transpose, centred on black."""
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(0x0112, 1)
        width, height = image.size  # the header's size (a draft decode is larger by its rounding)
        if image.format == "JPEG":
            image.draft(None, (size, size))
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            values = np.asarray(image).astype(np.uint32)
            rgb = Image.fromarray(((values + 128) // 257).astype(np.uint8), "L").convert("RGB")
        elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
            rgb = Image.fromarray(((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8), "RGB")
        else:
            rgb = image.convert("RGB")
    swapped = orientation in (5, 6, 7, 8)
    (new_w, new_h), offset = letterbox_geometry(*((height, width) if swapped else (width, height)), size)
    resized = rgb.resize((new_h, new_w) if swapped else (new_w, new_h), Image.Resampling.BILINEAR)
    if orientation in UPRIGHT:
        resized = resized.transpose(UPRIGHT[orientation])
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, offset)
    return np.asarray(canvas)


def palette_image(transparent: bool) -> bytes:
    gray = speckle(120, 90, 3) // 16
    image = Image.fromarray(gray, "P")
    image.putpalette(bytes(v for i in range(16) for v in (i * 16, 255 - i * 16, i * 8)))
    return encode(image, "PNG", **({"transparency": bytes(range(0, 256, 16))} if transparent else {}))


def rgba_image() -> bytes:
    alpha = np.linspace(0, 255, 150 * 100).reshape(100, 150).astype(np.uint8)
    rgb = np.asarray(colour_rgb(150, 100))
    return encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")


def sixteen_bit_gray() -> bytes:
    values = (speckle(130, 100, 4).astype(np.uint32) * 257 + np.arange(100)[:, None] * 3).clip(0, 65535)
    return encode(Image.fromarray(values.astype(np.uint16), "I;16"), "PNG")


def sixteen_bit_rgb() -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one): big-endian samples, filter None."""
    gray = speckle(64, 48, 5).astype(">u2") * 257
    rows = b"".join(b"\0" + np.repeat(row[:, None], 3, axis=1).tobytes() for row in gray)
    return png_raw(64, 48, rows, bit_depth=16, color_type=2)


CASES = {
    "rgb-png-gray": lambda: encode(gray_rgb(), "PNG"),
    "rgb-png-colour": lambda: encode(colour_rgb(), "PNG"),
    "rgb-png-gray-but-one-pixel": lambda: encode(_one_pixel_off(), "PNG"),
    "rgb-png-orientation-8": lambda: with_exif(gray_rgb(170, 120), "PNG", 8),
    "gray-png": lambda: encode(Image.fromarray(speckle(200, 150, 2), "L"), "PNG"),
    "16-bit-gray-png": sixteen_bit_gray,
    "16-bit-rgb-png": sixteen_bit_rgb,
    "palette-png": lambda: palette_image(False),
    "palette-png-with-transparency": lambda: palette_image(True),
    "rgba-png": rgba_image,
    "rgb-png-with-a-transparent-colour": lambda: encode(gray_rgb(), "PNG", transparency=(0, 0, 0)),
    "jpeg-gray-rgb": lambda: encode(gray_rgb(500, 420), "JPEG", quality=90),
    "jpeg-colour": lambda: encode(colour_rgb(500, 420), "JPEG", quality=90),
    "jpeg-orientation-6": lambda: with_exif(gray_rgb(520, 400), "JPEG", 6, quality=90),
    "jpeg-colour-orientation-6": lambda: with_exif(colour_rgb(300, 200), "JPEG", 6, quality=90),
    "jpeg-progressive": lambda: encode(gray_rgb(480, 360), "JPEG", quality=90, progressive=True),
    "jpeg-gray": lambda: encode(Image.fromarray(speckle(300, 240, 6), "L"), "JPEG", quality=90),
    "tiny-rgb-png": lambda: encode(gray_rgb(5, 3), "PNG"),
    "one-pixel-png": lambda: encode(Image.new("RGB", (1, 1), (90, 90, 90)), "PNG"),
    "tiny-jpeg": lambda: encode(colour_rgb(30, 20), "JPEG", quality=90),
    "elongated-rgb-png": lambda: encode(gray_rgb(2000, 210), "PNG"),
    "elongated-tall-jpeg": lambda: encode(gray_rgb(60, 590), "JPEG", quality=90),
    "elongated-thin-png": lambda: encode(gray_rgb(40, 4), "PNG"),
}


def _one_pixel_off() -> Image.Image:
    image = gray_rgb()
    r, g, b = image.getpixel((179, 139))
    image.putpixel((179, 139), (r, g, b ^ 1))  # the last pixel: the channels differ there only
    return image


@pytest.mark.parametrize("name", list(CASES))
def test_the_model_input_is_the_straightforward_decode_and_the_old_one(name):
    data = CASES[name]()
    new = decode_image(data, SIZE)
    assert new.shape == (SIZE, SIZE, 3) and new.dtype == np.uint8 and new.flags.c_contiguous
    assert np.array_equal(new, straightforward(data, SIZE)), name
    assert np.array_equal(new, reference.decode_image(data, SIZE)), name
    assert np.array_equal(decode_image(data, 64), reference.decode_image(data, 64)), name


def test_the_one_pixel_that_differs_is_kept():
    """The gray shortcut looks at every pixel: one blue value off by one in the last pixel
    keeps the image on the RGB path, and that pixel's colour reaches the model input."""
    data = CASES["rgb-png-gray-but-one-pixel"]()
    assert decode._restored_png(decode.inspect_image(data))[1] is False
    image = decode.load_image(data, SIZE, gray=True)
    assert image.mode == "RGB"


# --------------------------------------------------------------------------- decoded once


def count_decodes(monkeypatch) -> dict:
    """How often Pillow decodes an image file's pixels from now on: ImageFile.load calls
    with tiles left to decode, and the file decoders it makes (PNG "zip", "jpeg"; not the
    "raw" copies of Image.frombytes)."""
    counts = {"load": 0, "decoders": 0}
    real_load, real_getdecoder = ImageFile.ImageFile.load, Image._getdecoder

    def load(self, *args, **kwargs):
        if self.tile:
            counts["load"] += 1
        return real_load(self, *args, **kwargs)

    def getdecoder(mode, decoder_name, *args, **kwargs):
        counts["decoders"] += decoder_name != "raw"
        return real_getdecoder(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image, "_getdecoder", getdecoder)
    return counts


@pytest.mark.parametrize("name", ["rgb-png-gray", "rgb-png-colour", "gray-png", "16-bit-gray-png", "palette-png",
                                  "palette-png-with-transparency", "rgba-png", "rgb-png-with-a-transparent-colour",
                                  "elongated-rgb-png"])
def test_a_png_is_decoded_once(name, monkeypatch):
    data = CASES[name]()
    counts = count_decodes(monkeypatch)
    decode_image(data, SIZE)
    assert counts == {"load": 1, "decoders": 1}, counts


@pytest.mark.parametrize("name", ["jpeg-gray-rgb", "jpeg-colour", "jpeg-orientation-6", "jpeg-progressive",
                                  "jpeg-gray"])
def test_a_jpeg_is_decoded_once_and_once_more_for_the_truncation_check(name, monkeypatch):
    data = CASES[name]()
    counts = count_decodes(monkeypatch)
    decode_image(data, SIZE)
    assert counts == {"load": 2, "decoders": 2}, counts


def seen_by_pillow(monkeypatch) -> list[Image.Image]:
    images = []
    real_open = Image.open

    def recording(fp, *args, **kwargs):
        image = real_open(fp, *args, **kwargs)
        images.append(image)
        return image

    monkeypatch.setattr(Image, "open", recording)
    return images


def test_a_gray_rgb_png_reaches_pillow_as_a_gray_png_and_a_colour_one_as_rgb(monkeypatch):
    opened = seen_by_pillow(monkeypatch)
    decode_image(CASES["rgb-png-gray"](), SIZE)
    decode_image(CASES["rgb-png-colour"](), SIZE)
    decode_image(CASES["gray-png"](), SIZE)
    assert [image.mode for image in opened] == ["L", "RGB", "L"]


def test_an_rgb_jpeg_with_three_equal_channels_is_resized_as_gray():
    data = CASES["jpeg-gray-rgb"]()
    assert decode.load_image(data, SIZE, gray=True).mode == "L"
    assert decode.load_image(data, SIZE).mode == "RGB"  # what load_image gives without asking
    assert decode.load_image(CASES["jpeg-colour"](), SIZE, gray=True).mode == "RGB"


def test_above_the_pixel_limit_of_the_gray_path_nothing_changes(monkeypatch):
    data = CASES["rgb-png-gray"]()
    monkeypatch.setattr(decode, "GRAY_PATH_MAX_PIXELS", 100)
    opened = seen_by_pillow(monkeypatch)
    assert decode.load_image(data, SIZE, gray=True).mode == "RGB"
    assert opened[0].mode == "RGB"
    assert np.array_equal(decode_image(data, SIZE), reference.decode_image(data, SIZE))


def test_a_png_that_is_already_minimal_is_not_copied():
    data = CASES["rgb-png-gray"]()
    assert decode.inspect_image(data).stream is data
    with_text = encode(gray_rgb(), "PNG", pnginfo=_text_info())
    stream = decode.inspect_image(with_text).stream
    assert stream is not with_text and b"tEXt" not in stream and stream == data


def _text_info():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("scanner", "demo")
    return info


# --------------------------------------------------------------------------- the same answers for broken PNGs


def _rgb_rows(width: int, height: int, filter_type: int = 1) -> bytes:
    gray = speckle(width, height, 7)
    return b"".join(bytes([filter_type]) + np.repeat(row[:, None], 3, axis=1).tobytes() for row in gray)


def _png_with_idat(width: int, height: int, idat: bytes) -> bytes:
    import struct

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


BROKEN = {
    "zlib-data-cut-short": lambda: _png_with_idat(40, 30, zlib.compress(_rgb_rows(40, 30))[:-200]),
    "too-few-scanlines": lambda: _png_with_idat(40, 30, zlib.compress(_rgb_rows(40, 29))),
    "unknown-filter-type": lambda: _png_with_idat(40, 30, zlib.compress(_rgb_rows(40, 30, filter_type=5))),
    "not-zlib": lambda: _png_with_idat(40, 30, b"\x00" * 500),
    "extra-scanline-bytes": lambda: _png_with_idat(40, 30, zlib.compress(_rgb_rows(40, 30) + b"\0" * 500)),
    "preset-dictionary": lambda: _png_with_idat(40, 30, b"\x78\xbb" + b"\0" * 200),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_rgb_pngs_get_the_answer_they_always_got(name):
    """Anything unusual in the inflated data sends the image back to Pillow's own decode:
    the same pixels or the same refusal (type and sentence) as before."""
    data = BROKEN[name]()

    def outcome(function):
        try:
            return function(data, SIZE)
        except InvalidImageError as exc:
            return type(exc), str(exc)

    old, new = outcome(reference.decode_image), outcome(decode_image)
    if isinstance(old, tuple):
        assert new == old
    else:
        assert isinstance(new, np.ndarray) and np.array_equal(new, old)


# --------------------------------------------------------------------------- base64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_base64_with_line_breaks_spaces_and_data_urls_still_decodes():
    data = CASES["rgb-png-gray"]()
    text = b64(data)
    mime = "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    assert decode_base64(text) == data
    assert decode_base64(mime) == data
    assert decode_base64(base64.encodebytes(data).decode()) == data  # "\n" every 76 characters and at the end
    assert decode_base64(" \t" + text[:100] + "\n  " + text[100:] + "\n") == data
    assert decode_base64("data:image/png;base64," + text) == data
    assert decode_base64("data:image/png;base64," + mime) == data
    assert decode_base64("") == b""


@pytest.mark.parametrize("text", ["not base64 at all!", "@@@", "iVBOR\u00e9w0KGgo=", "abc", "ab=c", "abcde",
                                  "====", "YWJj\nZA", "YW Jj-ZGVm", "data:image/png;base64,!!!", "YWJjZA==YWJj"])
def test_invalid_base64_is_refused_with_the_same_error(text):
    with pytest.raises(RequestError) as new:
        decode_base64(text, "images[2]")
    with pytest.raises(RequestError) as old:
        reference.decode_base64(text, "images[2]")
    assert new.value.code == old.value.code == "invalid_base64"
    assert str(new.value) == str(old.value) and "images[2] is not valid base64" in str(new.value)


def test_the_size_budget_counts_what_is_left_without_whitespace():
    data = bytes(range(256)) * 4  # 1024 bytes
    text = b64(data)
    spaced = "\n".join(text[i:i + 4] for i in range(0, len(text), 4))  # a third longer than the budget allows
    assert decode_base64(spaced, budget=1024) == data
    for budget in (1023, 1000, 10):
        with pytest.raises(RequestError) as caught:
            decode_base64(spaced, budget=budget)
        assert caught.value.code == "payload_too_large"
    with pytest.raises(RequestError) as caught:
        decode_base64("!" * 4000, budget=1024)  # over the budget on its length, before its alphabet is looked at
    assert caught.value.code == "payload_too_large"


def test_base64_answers_are_the_old_ones_on_random_strings():
    rng = random.Random(24)
    alphabet = "AQgw+/=9a \n\t\r\x0b\x0c\x1c\u00a0\u2028\u00e9,-_"

    def outcome(function, text, budget):
        try:
            return function(text, "image", budget)
        except RequestError as exc:
            return exc.code, str(exc)

    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.1:
            text = "data:image/png;base64," + text
        budget = rng.choice((0, 1, 3, 6, 1000))
        assert outcome(decode_base64, text, budget) == outcome(reference.decode_base64, text, budget), repr(text)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="binascii's strict mode is Python 3.11+")
def test_base64_without_whitespace_takes_the_strict_decoder_alone(monkeypatch):
    """No b64decode (its copy to bytes and its regular expression over the string)."""
    def refused(*args, **kwargs):
        raise AssertionError("the slow path ran")

    monkeypatch.setattr(api.base64, "b64decode", refused)
    data = CASES["rgb-png-gray"]()
    assert decode_base64(b64(data)) == data
