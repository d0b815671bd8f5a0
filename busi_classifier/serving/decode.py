"""Image bytes -> model input. The ONE decoding/resizing function of the project.

Used by the Lambda handler and by training alike, so that the model sees the same
pixels in both worlds. Imports only NumPy and Pillow.

Intake is built so that no upload can turn into a hang, an out-of-memory kill or a
program run (docs/input-limits.md has the limits and the measured worst case):

* only PNG and JPEG are decoded (sniffed from the first bytes, and Pillow is told to try
  those two plugins only): no Ghostscript, no container format hiding a bigger image;
* a structural pre-scan walks the PNG chunks / JPEG marker segments before Pillow sees
  the bytes: at most ``MAX_PNG_CHUNKS`` chunks, at most ``MAX_JPEG_SCANS`` scans, at most
  ``MAX_METADATA_SEGMENTS`` segments and ``MAX_METADATA_BYTES`` bytes of JPEG metadata,
  one frame of an 8-bit baseline or progressive JPEG, and the pixel count of the header
  under ``MAX_IMAGE_PIXELS``, all checked before a pixel is decoded;
* PNG ancillary chunks (text, ICC profiles, APNG frames...) are dropped unread: only
  IHDR, PLTE, tRNS, eXIf, IDAT and IEND reach Pillow;
* a JPEG whose last scan was cut short (and ended with an appended EOI, which libjpeg
  silently fills with grey) is refused when the missing data changes the decoded pixels;
* every error is an ``InvalidImageError`` whose message is a fixed sentence (plus the
  limit where one applies); what went wrong in detail is in its ``detail`` attribute,
  for the log only.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .constants import DEFAULT_IMAGE_SIZE, MAX_IMAGE_PIXELS, PAD_COLOR, RESIZE_METHOD, SIXTEEN_BIT_DIVISOR

# Pillow's own bomb check uses the project's cap (it warns above it; we turn the warning
# into an error), and truncated images are never "loaded anyway".
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

ALLOWED_FORMATS = ("PNG", "JPEG")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# libjpeg's progressive script writes 10 scans for a colour image (6 for grayscale, 12
# for CMYK); mozjpeg's scan optimisation stays under 20. 32 leaves room for any real
# encoder and bounds the work: each scan costs at most one pass over every block.
MAX_JPEG_SCANS = 32
# APPn + COM segments: JFIF, EXIF (with its thumbnail, at most 64 KB), an ICC profile
# in APP2 pieces, XMP, an MPF index... a few dozen in real files.
MAX_METADATA_SEGMENTS = 64
MAX_METADATA_BYTES = 1_048_576
# Every marker segment of a JPEG (metadata, tables, frame, scans, restart intervals).
MAX_JPEG_SEGMENTS = 256
# PNG chunks: libpng writes 8 KB IDAT chunks (about 540 in the largest accepted file),
# other encoders 1-64 KB; 8192 is more than any of them at the 4.4 MB request cap.
MAX_PNG_CHUNKS = 8192
# The only PNG chunks decoding needs; every other (ancillary) chunk is dropped unread.
PNG_KEPT_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"eXIf", b"IDAT", b"IEND"}

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# A run of bytes that libjpeg skips when it sits between a complete scan and the next
# marker, but decodes as entropy-coded data when the scan was cut short (no 0xFF in it).
_TRUNCATION_PROBE = bytes((37 * i + 11) % 251 for i in range(256)).replace(b"\xff", b"\x5a")


class InvalidImageError(ValueError):
    """The bytes are not an image this project reads. ``str(exc)`` is a fixed sentence
    for the caller; ``detail`` says what exactly went wrong, for the log."""

    message = "the image could not be read; send a PNG or JPEG file"

    def __init__(self, message: str | None = None, detail: str = "", limit: int | None = None):
        self.message = message or type(self).message
        super().__init__(self.message)
        self.detail = detail
        self.limit = limit


class UnsupportedFormatError(InvalidImageError):
    """Not PNG or JPEG (or a JPEG variant outside baseline/progressive 8-bit)."""

    message = "unsupported image format; send PNG or JPEG"


class CorruptImageError(InvalidImageError):
    """PNG or JPEG whose structure or pixel data is broken or cut short."""

    message = "the image data is corrupt or truncated"


class ImageTooComplexError(InvalidImageError):
    """More scans, chunks or metadata than any real encoder writes."""


class ImageTooLargeError(InvalidImageError):
    """The image header claims more pixels than MAX_IMAGE_PIXELS (a decompression bomb,
    or simply too big): refused before any pixel is decoded."""

    message = f"the image has more pixels than the limit of {MAX_IMAGE_PIXELS} pixels"

    def __init__(self, detail: str = ""):
        super().__init__(None, detail, MAX_IMAGE_PIXELS)


EMPTY_MESSAGE = "the image is empty (0 bytes)"
NO_PIXELS_MESSAGE = "the image has no pixels"
UNSUPPORTED_JPEG_MESSAGE = "unsupported JPEG variant; send a baseline or progressive 8-bit JPEG"
TOO_MANY_SCANS_MESSAGE = f"the JPEG has more than {MAX_JPEG_SCANS} scans (the limit)"
TOO_MUCH_METADATA_MESSAGE = (f"the image carries more metadata than the limit "
                             f"({MAX_METADATA_SEGMENTS} segments, {MAX_METADATA_BYTES} bytes)")
TOO_MANY_SEGMENTS_MESSAGE = f"the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments (the limit)"
TOO_MANY_CHUNKS_MESSAGE = f"the PNG has more than {MAX_PNG_CHUNKS} chunks (the limit)"


def _check_pixels(width: int, height: int, where: str) -> None:
    if width < 1 or height < 1:
        raise InvalidImageError(NO_PIXELS_MESSAGE, f"{where}: {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"{where}: {width}x{height} = {width * height} pixels")


# --------------------------------------------------------------------------- pre-scan


def sniff_format(data: bytes) -> str:
    """"PNG" or "JPEG" from the first bytes; UnsupportedFormatError for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    raise UnsupportedFormatError(detail=f"first bytes {data[:8]!r}")


def scan_png(data: bytes) -> bytes:
    """Walk the PNG chunks (lengths, order, count, IHDR size) and return the file with
    only the chunks decoding needs. Costs one Python step per chunk, at most
    MAX_PNG_CHUNKS of them."""
    kept = [PNG_SIGNATURE]
    position, count, seen_ihdr = len(PNG_SIGNATURE), 0, False
    while True:
        if position + 8 > len(data):
            raise CorruptImageError(detail=f"PNG ends inside a chunk header at byte {position}")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise CorruptImageError(detail=f"PNG chunk {kind!r} of {length} bytes runs past the end")
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise ImageTooComplexError(TOO_MANY_CHUNKS_MESSAGE, f"more than {MAX_PNG_CHUNKS} chunks", MAX_PNG_CHUNKS)
        if not seen_ihdr:
            if kind != b"IHDR" or length != 13:
                raise CorruptImageError(detail=f"first PNG chunk is {kind!r}, not IHDR")
            width, height = struct.unpack_from(">II", data, position + 8)
            _check_pixels(width, height, "PNG IHDR")
            seen_ihdr = True
        elif kind == b"IHDR":
            raise CorruptImageError(detail="second IHDR")
        if kind in PNG_KEPT_CHUNKS:
            kept.append(data[position:end])
        position = end
        if kind == b"IEND":
            return b"".join(kept)


# JPEG markers: SOF0 baseline, SOF1 extended sequential, SOF2 progressive (Huffman).
_SOF_SUPPORTED = {0xC0, 0xC1, 0xC2}
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or RSTn; anything
# else starts a marker.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")


class JpegLayout:
    """What the pre-scan learnt: frame size, progressive or not, scans, where EOI is."""

    def __init__(self):
        self.width = self.height = 0
        self.progressive = False
        self.scans = 0
        self.eoi = -1


def scan_jpeg(data: bytes) -> JpegLayout:
    """Walk the JPEG marker segments (and skip over each scan's entropy-coded data with
    one regular-expression search) before anything is decoded."""
    layout = JpegLayout()
    position, segments, meta_segments, meta_bytes = 2, 0, 0, 0
    size = len(data)
    while True:
        if position + 2 > size:
            raise CorruptImageError(detail=f"JPEG ends at byte {size} without EOI")
        if data[position] != 0xFF:
            raise CorruptImageError(detail=f"no marker at byte {position}")
        while position + 1 < size and data[position + 1] == 0xFF:  # fill bytes
            position += 1
        if position + 2 > size:
            raise CorruptImageError(detail="JPEG ends inside a marker")
        marker = data[position + 1]
        if marker == 0xD9:  # EOI
            if layout.scans == 0:
                raise CorruptImageError(detail="EOI before any scan")
            layout.eoi = position
            return layout
        if marker in _STANDALONE or marker == 0xD8:
            raise CorruptImageError(detail=f"stray marker 0xFF{marker:02X} at byte {position}")
        if position + 4 > size:
            raise CorruptImageError(detail="JPEG ends inside a segment length")
        length = (data[position + 2] << 8) | data[position + 3]
        end = position + 2 + length
        if length < 2 or end > size:
            raise CorruptImageError(detail=f"segment 0xFF{marker:02X} of {length} bytes runs past the end")
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageTooComplexError(TOO_MANY_SEGMENTS_MESSAGE, f"more than {MAX_JPEG_SEGMENTS} segments",
                                       MAX_JPEG_SEGMENTS)
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM
            meta_segments += 1
            meta_bytes += length
            if meta_segments > MAX_METADATA_SEGMENTS or meta_bytes > MAX_METADATA_BYTES:
                raise ImageTooComplexError(TOO_MUCH_METADATA_MESSAGE,
                                           f"{meta_segments} metadata segments, {meta_bytes} bytes",
                                           MAX_METADATA_BYTES)
        elif marker in _SOF_SUPPORTED or marker in _SOF_OTHER:
            if layout.width:
                raise CorruptImageError(detail="second SOF marker")
            if marker in _SOF_OTHER:
                raise UnsupportedFormatError(UNSUPPORTED_JPEG_MESSAGE, f"SOF marker 0xFF{marker:02X}")
            if length < 8:
                raise CorruptImageError(detail="short SOF segment")
            precision, height, width = struct.unpack_from(">BHH", data, position + 4)
            if precision != 8:
                raise UnsupportedFormatError(UNSUPPORTED_JPEG_MESSAGE, f"{precision}-bit samples")
            _check_pixels(width, height, "JPEG SOF")
            layout.width, layout.height, layout.progressive = width, height, marker == 0xC2
        elif marker == 0xDA:  # SOS: the entropy-coded data follows up to the next marker
            if not layout.width:
                raise CorruptImageError(detail="scan before the frame header")
            layout.scans += 1
            if layout.scans > MAX_JPEG_SCANS:
                raise ImageTooComplexError(TOO_MANY_SCANS_MESSAGE, f"more than {MAX_JPEG_SCANS} scans", MAX_JPEG_SCANS)
            found = _MARKER_IN_SCAN.search(data, end)
            if found is None:
                raise CorruptImageError(detail="scan data runs to the end of the file (no EOI)")
            position = found.start()
            continue
        position = end


# --------------------------------------------------------------------------- decoding


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"Pillow: {exc}") from None
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise CorruptImageError(detail=f"open: {type(exc).__name__}: {exc}") from None
    if image.format not in ("PNG", "JPEG", "MPO"):  # MPO: a JPEG with more JPEGs after it
        raise UnsupportedFormatError(detail=f"Pillow format {image.format}")
    _check_pixels(*image.size, "Pillow header")
    return image


def open_image(data: bytes) -> Image.Image:
    """Open PNG or JPEG bytes with Pillow after the structural pre-scan: nothing is
    decoded yet, and everything that can be refused on the structure has been."""
    image, _layout = _open_checked(data)
    return image


def _open_checked(data: bytes) -> tuple[Image.Image, JpegLayout | None]:
    if not data:
        raise InvalidImageError(EMPTY_MESSAGE, "0 bytes")
    if sniff_format(data) == "PNG":
        return _open(scan_png(data)), None
    layout = scan_jpeg(data)
    image = _open(data)
    if image.size != (layout.width, layout.height):
        raise CorruptImageError(detail=f"Pillow size {image.size} differs from the SOF {layout.width}x{layout.height}")
    return image, layout


def _load(image: Image.Image, size: int) -> Image.Image:
    """Decode the pixels (JPEG at the smallest DCT scale that still covers ``size``)."""
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        if image.format in ("JPEG", "MPO"):
            image.draft(None, (size, size))
        image.load()
    except InvalidImageError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise CorruptImageError(detail=f"load: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:  # what was decoded, not what the header said
        raise ImageTooLargeError(f"decoded {width}x{height}")
    return image


def _jpeg_was_cut_short(data: bytes, layout: JpegLayout, decoded: Image.Image, size: int) -> bool:
    """True when the last scan ended before its last block and that changes the pixels
    decoded at this scale: decoding again with a probe inserted before EOI gives other
    pixels (libjpeg skips bytes between a complete scan and the next marker, but reads
    them as data when the scan is incomplete). A progressive file cut in an AC scan
    whose coefficients this DCT scale does not use (1/8 uses DC only) gives exactly the
    complete file's pixels, and passes."""
    probed = data[:layout.eoi] + _TRUNCATION_PROBE + data[layout.eoi:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        again = _load(Image.open(io.BytesIO(probed), formats=ALLOWED_FORMATS), size)
    return again.size != decoded.size or again.tobytes() != decoded.tobytes()


def load_image(data: bytes, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """PNG or JPEG bytes -> a decoded Pillow image (JPEGs at a reduced DCT scale that
    still covers ``size``), after every intake check. EXIF orientation not yet applied."""
    image, layout = _open_checked(data)
    image = _load(image, size)
    if layout is not None and _jpeg_was_cut_short(data, layout, image, size):
        raise CorruptImageError(detail="the last JPEG scan ends before its last block")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited on black (the ultrasound background);
    16-bit grayscale is scaled to 8 bits (65535 -> 255) instead of being clipped; NaN and
    infinities of a float image become 0 and 255."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        values = values.astype(np.uint32)  # rint(v / 257) in integers: 65535 -> 255
        gray = ((values + SIXTEEN_BIT_DIVISOR // 2) // SIXTEEN_BIT_DIVISOR).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info) or (
        mode in ("L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*PAD_COLOR, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr ...


def decode_image(data: bytes, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode PNG or JPEG bytes into the model input: uint8 array (size, size, 3).

    Steps, in this order: format sniffing and the structural pre-scan (size checked
    before decoding), open with Pillow's PNG/JPEG plugins only, first frame, JPEG draft
    mode (libjpeg decodes at a reduced scale that is still at least ``size``), the
    truncation check of JPEG, EXIF orientation, conversion to RGB, one bilinear resize
    of the longer side to ``size`` keeping the aspect ratio, centred on a black square.
    Raises InvalidImageError (ImageTooLargeError for too many pixels) for anything else.
    """
    image = load_image(data, size)
    try:
        image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
        width, height = image.size
        scale = size / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = image.resize(new_size, Image.Resampling[RESIZE_METHOD.upper()])
    except InvalidImageError:
        raise
    except Exception as exc:  # corrupt EXIF and the like
        raise CorruptImageError(detail=f"convert: {type(exc).__name__}: {exc}") from None
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)
