"""The intake as it was before issue 24: a frozen copy of ``decode_image`` (and the
pre-scan, decoding and conversion functions it runs) from serving/decode.py, and of
``decode_base64`` from serving/api.py, at the commit before the faster intake. Only
benchmarks/intake.py (old and new interleaved on the same images) and
tests/test_intake_speed_path.py use it: never imported by the package.

The code below the imports is copied unchanged; the error classes, messages, limits and
``check_shape`` are imported from the current module (issue 24 did not change them), so
that old and new refuse with the same exception types.
"""

# ruff: noqa: E501

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from busi_classifier.serving.api import MAX_IMAGE_BYTES, RequestError
from busi_classifier.serving.constants import (
    DEFAULT_IMAGE_SIZE,
    MAX_IMAGE_PIXELS,
    PAD_COLOR,
    RESIZE_METHOD,
    SIXTEEN_BIT_DIVISOR,
)
from busi_classifier.serving.decode import (
    ALLOWED_FORMATS,
    BAD_CHECKSUM_MESSAGE,
    BAD_PALETTE_MESSAGE,
    EMPTY_MESSAGE,
    INCOMPLETE_SCANS_MESSAGE,
    JPEG_SIGNATURE,
    MAX_EXIF_ENTRIES,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_METADATA_BYTES,
    MAX_METADATA_SEGMENTS,
    MAX_PNG_CHUNKS,
    ORIENTATION_TAG,
    PNG_SIGNATURE,
    TOO_MANY_CHUNKS_MESSAGE,
    TOO_MANY_SCANS_MESSAGE,
    TOO_MANY_SEGMENTS_MESSAGE,
    TOO_MUCH_METADATA_MESSAGE,
    UNSUPPORTED_JPEG_MESSAGE,
    CorruptImageError,
    ImageTooComplexError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedFormatError,
    check_shape,
)

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# PNG colour type -> allowed bit depths (PNG specification, 11.2.2)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}

# A run of bytes that libjpeg skips when it sits between a complete scan and the next
# marker, but decodes as entropy-coded data when the scan was cut short (no 0xFF in it).
_TRUNCATION_PROBE = bytes((37 * i + 11) % 251 for i in range(256)).replace(b"\xff", b"\x5a")
# Rows per step when 16-bit samples are scaled to 8 bits (bounds the temporaries).
_ROW_BLOCK_PIXELS = 1 << 20


# --------------------------------------------------------------------------- copied from serving/decode.py


def exif_orientation(tiff: bytes) -> int:
    """The EXIF Orientation (1-8) of a TIFF structure (a JPEG APP1 "Exif" payload after
    its 6-byte header, or a PNG eXIf chunk); 1 when there is none or it is malformed.

    Bounded whatever the input: the first IFD only, at most MAX_EXIF_ENTRIES entries,
    one SHORT read; nothing is followed, nothing else decoded."""
    if len(tiff) < 8:
        return 1
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
        return 1
    offset = struct.unpack_from(order + "I", tiff, 4)[0]
    if offset < 8 or offset + 2 > len(tiff):
        return 1
    count = struct.unpack_from(order + "H", tiff, offset)[0]
    for i in range(min(count, MAX_EXIF_ENTRIES)):
        entry = offset + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == ORIENTATION_TAG:
            if kind != 3 or values < 1:  # SHORT
                return 1
            value = struct.unpack_from(order + "H", tiff, entry + 8)[0]
            return value if 1 <= value <= 8 else 1
    return 1


# orientation -> the transpose that undoes it (EXIF 2.32, 4.6.4 A; what ImageOps.exif_transpose does)
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned upright for EXIF orientation ``orientation`` (1: as is)."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


# --------------------------------------------------------------------------- pre-scan


@dataclass
class JpegLayout:
    """What the JPEG pre-scan learnt: frame size, progressive or not, scans, where the
    EOI of the rewritten stream is."""

    width: int = 0
    height: int = 0
    progressive: bool = False
    scans: int = 0
    eoi: int = -1
    components: int = 0


@dataclass
class Intake:
    """One image after the pre-scan, before any pixel is decoded: what a request is
    budgeted on, and the minimal stream Pillow will decode."""

    format: str  # "PNG" or "JPEG"
    width: int
    height: int
    stream: bytes  # the rewritten file: only what decoding needs
    orientation: int = 1  # EXIF orientation, 1-8
    palette_entries: int = 0  # PNG colour type 3: PLTE entries
    jpeg: JpegLayout | None = None
    size: int = 0  # bytes of the original file

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> str:
    """"PNG" or "JPEG" from the first bytes; UnsupportedFormatError for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    raise UnsupportedFormatError(detail=f"first bytes {data[:8]!r}")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def inspect_png(data: bytes) -> Intake:
    """Walk the PNG chunks and rewrite the file with only the chunks decoding needs.

    Checked: IHDR first, its fields, every chunk's length and CRC, chunk type letters,
    no unknown critical chunk, PLTE / tRNS before the first IDAT with the lengths the
    colour type allows, the IDAT chunks contiguous, IEND. One Python step per chunk, at
    most MAX_PNG_CHUNKS of them, and one CRC pass (C speed) over the file."""
    kept = [PNG_SIGNATURE]
    position, count = len(PNG_SIGNATURE), 0
    width = height = bit_depth = color_type = 0
    palette_entries, seen_idat, idat_ended, seen_trns, orientation = 0, False, False, False, 1
    exif_seen = False
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
        if not kind.isalpha() or not kind.isascii():
            raise CorruptImageError(detail=f"PNG chunk type {kind!r} at byte {position}")
        body = data[position + 8:end - 4]
        if zlib.crc32(data[position + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise CorruptImageError(BAD_CHECKSUM_MESSAGE, f"CRC of chunk {kind!r} at byte {position}")
        if count == 1:
            if kind != b"IHDR" or length != 13:
                raise CorruptImageError(detail=f"first PNG chunk is {kind!r}, not IHDR")
            width, height, bit_depth, color_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if (bit_depth not in _PNG_DEPTHS.get(color_type, ()) or compression != 0 or filtering != 0
                    or interlace not in (0, 1)):
                raise CorruptImageError(detail=f"IHDR fields {bit_depth=} {color_type=} {compression=} "
                                               f"{filtering=} {interlace=}")
            check_shape(width, height, "PNG IHDR")
            kept.append(data[position:end])
        elif kind == b"IHDR":
            raise CorruptImageError(detail="second IHDR")
        elif seen_idat and kind != b"IDAT" and kind != b"IEND":
            idat_ended = True
            if kind[0] < 0x61:  # critical (upper-case first letter) after the image data
                raise CorruptImageError(detail=f"critical chunk {kind!r} after IDAT")
        elif kind == b"PLTE":
            if palette_entries or seen_trns or length % 3 or not 3 <= length <= 768:
                raise CorruptImageError(detail=f"PLTE of {length} bytes (or a second one, or after tRNS)")
            if color_type == 3:
                palette_entries = length // 3
                if palette_entries > 1 << bit_depth:
                    raise CorruptImageError(detail=f"{palette_entries} palette entries at {bit_depth} bits")
                kept.append(data[position:end])
            elif color_type in (0, 4):
                raise CorruptImageError(detail=f"PLTE in a PNG of colour type {color_type}")
            # colour types 2 and 6: a suggested palette, not needed to decode: dropped
        elif kind == b"tRNS":
            if seen_trns:
                raise CorruptImageError(detail="second tRNS")
            seen_trns = True
            allowed = {0: (2,), 2: (6,)}.get(color_type)
            if color_type == 3:
                if not palette_entries or length > palette_entries:
                    raise CorruptImageError(detail=f"tRNS of {length} entries for {palette_entries} palette entries")
                kept.append(data[position:end])
            elif allowed is not None:
                if length not in allowed:
                    raise CorruptImageError(detail=f"tRNS of {length} bytes for colour type {color_type}")
                kept.append(data[position:end])
            # colour types 4 and 6 carry alpha already: a tRNS there is meaningless, dropped
        elif kind == b"IDAT":
            if idat_ended:
                raise CorruptImageError(detail="IDAT chunks are not contiguous")
            if color_type == 3 and not palette_entries:
                raise CorruptImageError(detail="palette image without PLTE before IDAT")
            seen_idat = True
            kept.append(data[position:end])
        elif kind == b"IEND":
            if not seen_idat:
                raise CorruptImageError(detail="IEND before any IDAT")
            kept.append(data[position:end])
            return Intake("PNG", width, height, b"".join(kept), orientation, palette_entries, None, len(data))
        elif kind == b"eXIf":
            if not exif_seen:
                orientation, exif_seen = exif_orientation(body), True
        elif kind[0] < 0x61:  # an unknown critical chunk: a decoder may not skip it
            raise CorruptImageError(detail=f"unknown critical chunk {kind!r}")
        position = end


# JPEG markers: SOF0 baseline, SOF1 extended sequential, SOF2 progressive (Huffman).
_SOF_SUPPORTED = {0xC0, 0xC1, 0xC2}
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7
_TABLES = {0xC4, 0xDB, 0xDD}  # DHT, DQT, DRI: copied to the rewritten stream
_DROPPED = {*range(0xE0, 0xF0), *range(0xF0, 0xFE), 0xFE}  # APPn, JPGn extensions, COM
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or RSTn; anything
# else starts a marker.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")
# What libjpeg needs of JFIF / Adobe markers to choose the colour transform (jdmarker.c:
# examine_app0 / examine_app14 look at 14 / 12 bytes): written anew, never copied.
_JFIF_SEGMENT = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def _adobe_segment(transform: int) -> bytes:
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


class _Progression:
    """The scan sequence of one frame, checked as libjpeg checks it (jdphuff.c), but
    refusing what libjpeg only warns about: an AC scan before the component's DC scan,
    a refinement that does not follow the scan it refines, a component without data."""

    def __init__(self, components: list[int], progressive: bool):
        self.ids = components
        self.progressive = progressive
        self.bits = {c: [-1] * 64 for c in components}  # per coefficient: the last Al, -1 unseen
        self.covered: set[int] = set()

    def add(self, header: bytes) -> None:
        count = header[0]
        if not 1 <= count <= 4 or len(header) != 1 + 2 * count + 3:
            raise CorruptImageError(detail=f"SOS header of {len(header)} bytes for {count} components")
        selected = [header[1 + 2 * i] for i in range(count)]
        ss, se, approximation = header[1 + 2 * count:4 + 2 * count]
        ah, al = approximation >> 4, approximation & 15
        if len(set(selected)) != count or not set(selected) <= set(self.ids):
            raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE, f"scan components {selected} of frame {self.ids}")
        if not self.progressive:
            if ss != 0 or se != 63 or ah or al or self.covered & set(selected):
                raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE, f"sequential scan {ss}-{se} {ah}/{al} {selected}")
            self.covered |= set(selected)
            return
        dc = ss == 0
        bad = (se != 0) if dc else (ss > se or se > 63 or count != 1)
        if bad or (ah and al != ah - 1) or al > 13:
            raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE, f"progressive scan {ss}-{se} {ah}/{al} x{count}")
        for component in selected:
            bits = self.bits[component]
            if not dc and bits[0] < 0:
                raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE, f"AC scan of component {component} before its DC")
            for k in range(ss, se + 1):
                if ah != (0 if bits[k] < 0 else bits[k]) or (ah == 0 and bits[k] >= 0):
                    raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE,
                                            f"coefficient {k} of component {component}: Ah {ah} after Al {bits[k]}")
                bits[k] = al
            self.covered.add(component)

    def check_complete(self) -> None:
        missing = [c for c in self.ids if (self.bits[c][0] < 0 if self.progressive else c not in self.covered)]
        if missing:
            raise CorruptImageError(INCOMPLETE_SCANS_MESSAGE, f"components {missing} have no DC data")


def inspect_jpeg(data: bytes) -> Intake:
    """Walk the JPEG marker segments (skipping each scan's entropy-coded data with one
    regular-expression search) and rewrite the file as SOI, the tables, the frame, the
    scans and EOI, plus a canonical JFIF / Adobe marker where the original carried one.
    Nothing is decoded."""
    layout = JpegLayout()
    out = [b"\xff\xd8"]
    position, segments, meta_segments, meta_bytes = 2, 0, 0, 0
    size = len(data)
    jfif, adobe_transform, orientation, exif_seen = False, None, 1, False
    progression: _Progression | None = None
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
            progression.check_complete()
            break
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
        if marker in _DROPPED:
            meta_segments += 1
            meta_bytes += length
            if meta_segments > MAX_METADATA_SEGMENTS or meta_bytes > MAX_METADATA_BYTES:
                raise ImageTooComplexError(TOO_MUCH_METADATA_MESSAGE,
                                           f"{meta_segments} metadata segments, {meta_bytes} bytes",
                                           MAX_METADATA_BYTES)
            head = data[position + 4:min(end, position + 4 + 14)]
            if marker == 0xE0 and length >= 16 and head.startswith(b"JFIF\0"):
                jfif = True
            elif marker == 0xEE and length >= 14 and head.startswith(b"Adobe"):
                adobe_transform = head[11]
            elif marker == 0xE1 and not exif_seen and head.startswith(b"Exif\0\0"):
                orientation, exif_seen = exif_orientation(data[position + 10:end]), True
        elif marker in _SOF_SUPPORTED or marker in _SOF_OTHER:
            if layout.width:
                raise CorruptImageError(detail="second SOF marker")
            if marker in _SOF_OTHER:
                raise UnsupportedFormatError(UNSUPPORTED_JPEG_MESSAGE, f"SOF marker 0xFF{marker:02X}")
            if length < 8:
                raise CorruptImageError(detail="short SOF segment")
            precision, height, width, components = struct.unpack_from(">BHHB", data, position + 4)
            if precision != 8:
                raise UnsupportedFormatError(UNSUPPORTED_JPEG_MESSAGE, f"{precision}-bit samples")
            if components not in (1, 3, 4) or length != 8 + 3 * components:
                raise CorruptImageError(detail=f"SOF with {components} components in {length} bytes")
            check_shape(width, height, "JPEG SOF")
            ids = [data[position + 10 + 3 * i] for i in range(components)]
            if len(set(ids)) != components:
                raise CorruptImageError(detail=f"SOF component ids {ids}")
            layout.width, layout.height, layout.progressive = width, height, marker == 0xC2
            layout.components = components
            progression = _Progression(ids, layout.progressive)
            out.append(data[position:end])
        elif marker == 0xDA:  # SOS: the entropy-coded data follows up to the next marker
            if not layout.width:
                raise CorruptImageError(detail="scan before the frame header")
            layout.scans += 1
            if layout.scans > MAX_JPEG_SCANS:
                raise ImageTooComplexError(TOO_MANY_SCANS_MESSAGE, f"more than {MAX_JPEG_SCANS} scans", MAX_JPEG_SCANS)
            progression.add(data[position + 4:end])
            found = _MARKER_IN_SCAN.search(data, end)
            if found is None:
                raise CorruptImageError(detail="scan data runs to the end of the file (no EOI)")
            out.append(data[position:found.start()])
            position = found.start()
            continue
        elif marker in _TABLES:
            out.append(data[position:end])
        else:  # DHP, EXP, DNL, DAC, reserved: nothing a baseline/progressive decoder reads
            raise CorruptImageError(detail=f"marker 0xFF{marker:02X} at byte {position}")
        position = end
    colour = []
    if jfif:
        colour.append(_JFIF_SEGMENT)
    if adobe_transform is not None:
        colour.append(_adobe_segment(adobe_transform))
    stream = b"".join([out[0], *colour, *out[1:]])
    layout.eoi = len(stream)
    return Intake("JPEG", layout.width, layout.height, stream + b"\xff\xd9", orientation, 0, layout, len(data))


def inspect_image(data: bytes) -> Intake:
    """Every check that needs no pixel decoded, and the minimal stream to decode: what a
    batch runs on each of its images before it decodes any of them."""
    if isinstance(data, Intake):
        return data
    if not data:
        raise InvalidImageError(EMPTY_MESSAGE, "0 bytes")
    if sniff_format(data) == "PNG":
        return inspect_png(data)
    return inspect_jpeg(data)


# --------------------------------------------------------------------------- decoding


def _open(stream: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(stream), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"Pillow: {exc}") from None
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise CorruptImageError(detail=f"open: {type(exc).__name__}: {exc}") from None
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedFormatError(detail=f"Pillow format {image.format}")
    check_shape(*image.size, "Pillow header")
    return image


def open_image(data: bytes) -> Image.Image:
    """Open PNG or JPEG bytes with Pillow after the structural pre-scan: nothing is
    decoded yet, everything that can be refused on the structure has been, and Pillow
    sees only the minimal stream (no metadata). EXIF orientation: ``inspect_image``."""
    intake = inspect_image(data)
    image = _open(intake.stream)
    if image.size != (intake.width, intake.height):
        raise CorruptImageError(detail=f"Pillow size {image.size} differs from the header "
                                       f"{intake.width}x{intake.height}")
    return image


def _load(image: Image.Image, size: int) -> Image.Image:
    """Decode the pixels (JPEG at the smallest DCT scale that still covers ``size``)."""
    try:
        if image.format == "JPEG":
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


def _jpeg_was_cut_short(intake: Intake, decoded: Image.Image, size: int) -> bool:
    """True when the last scan ended before its last block and that changes the pixels
    decoded at this scale: decoding again with a probe inserted before EOI gives other
    pixels (libjpeg skips bytes between a complete scan and the next marker, but reads
    them as data when the scan is incomplete). A progressive file cut in an AC scan
    whose coefficients this DCT scale does not use (1/8 uses DC only) gives exactly the
    complete file's pixels, and passes."""
    eoi = intake.jpeg.eoi
    probed = intake.stream[:eoi] + _TRUNCATION_PROBE + intake.stream[eoi:]
    again = _load(_open(probed), size)
    return again.size != decoded.size or again.tobytes() != decoded.tobytes()


def load_image(data: bytes | Intake, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """PNG or JPEG bytes (or their Intake) -> a decoded Pillow image (JPEGs at a reduced
    DCT scale that still covers ``size``), after every intake check. EXIF orientation
    not applied (it is ``inspect_image(data).orientation``)."""
    intake = inspect_image(data)
    image = open_image(intake)
    image = _load(image, size)
    if intake.format == "JPEG" and _jpeg_was_cut_short(intake, image, size):
        raise CorruptImageError(detail="the last JPEG scan ends before its last block")
    if image.mode == "P" and intake.palette_entries:
        highest = image.getextrema()[1]
        if highest >= intake.palette_entries:
            raise CorruptImageError(BAD_PALETTE_MESSAGE, f"index {highest} of {intake.palette_entries} entries")
    return image


def _sixteen_to_gray(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale -> 8-bit L: rint(v / 257) (65535 -> 255)
    instead of Pillow's clipping, a block of rows at a time so that the temporaries stay
    small."""
    values = np.asarray(image)
    out = np.empty(values.shape, dtype=np.uint8)
    step = max(1, _ROW_BLOCK_PIXELS // max(1, values.shape[1]))
    for row in range(0, values.shape[0], step):
        block = values[row:row + step]
        if image.mode == "I":
            block = np.clip(block, 0, 65535)
        out[row:row + step] = (block.astype(np.uint32) + SIXTEEN_BIT_DIVISOR // 2) // SIXTEEN_BIT_DIVISOR
    return Image.fromarray(out, mode="L")


def _premultiplied_palette(image: Image.Image) -> Image.Image:
    """A palette image with transparency -> the same image with each palette colour
    composited on black (colour x alpha / 255), no transparency: a palette step, no
    full-size RGBA copy."""
    palette = image.getpalette("RGB") or []
    entries = len(palette) // 3
    transparency = image.info.get("transparency")
    alpha = [255] * entries
    if isinstance(transparency, int) and 0 <= transparency < entries:
        alpha[transparency] = 0
    elif isinstance(transparency, bytes):
        for i, value in enumerate(transparency[:entries]):
            alpha[i] = value
    colours = np.asarray(palette, dtype=np.uint32).reshape(-1, 3)
    weights = np.asarray(alpha, dtype=np.uint32)[:, None]
    premultiplied = ((colours * weights + 127) // 255).astype(np.uint8)
    out = image.copy() if image.readonly else image
    out.putpalette(premultiplied.tobytes(), "RGB")
    out.info.pop("transparency", None)
    return out


def _working_image(image: Image.Image) -> tuple[Image.Image, str]:
    """(an image to resize, how to finish it): "L" gray (resized as gray, then RGB),
    "RGB", or "RGBa" (premultiplied: its colour channels are the image composited on
    black). Each step makes at most one full-size copy."""
    mode = image.mode
    transparent = "transparency" in image.info
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_gray(image), "L"
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L"), "L"
    if mode == "1":
        return image.convert("L"), "L"
    if mode == "L" and transparent:
        value = image.info["transparency"]
        lut = [0 if v == value else v for v in range(256)]
        return image.point(lut), "L"
    if mode == "L":
        return image, "L"
    if mode == "P" and transparent:
        return _premultiplied_palette(image).convert("RGB"), "RGB"
    if mode == "LA":
        return image.convert("La"), "La"
    if mode == "La":
        return image, "La"
    if mode == "RGB" and not transparent:
        return image, "RGB"
    if mode == "RGBa":
        return image, "RGBa"
    if mode in _ALPHA_MODES or transparent:  # RGBA, PA, RGB with a transparent colour
        return image.convert("RGBA").convert("RGBa"), "RGBa"
    return image.convert("RGB"), "RGB"  # P, CMYK, YCbCr ...


def _finish(resized: Image.Image, kind: str) -> Image.Image:
    """The resized working image as RGB."""
    if kind in ("RGBa", "La"):
        values = np.asarray(resized)
        gray_or_rgb = values[..., :3] if kind == "RGBa" else values[..., 0]
        return Image.fromarray(np.ascontiguousarray(gray_or_rgb), "RGB" if kind == "RGBa" else "L").convert("RGB")
    return resized.convert("RGB") if resized.mode != "RGB" else resized


# orientations whose transpose swaps width and height (EXIF 2.32, 4.6.4 A)
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where an upright ``width`` x ``height`` image lands in the ``size`` x ``size`` model
    input: ``((new_w, new_h), (offset_x, offset_y))``, exactly as ``decode_image`` resizes
    and pastes it. The longer side becomes ``size`` (scale = size / max(width, height),
    each side rounded, at least 1 px), centred on the black square (offsets floored).

    The ONE geometry of the project: decode_image places the image with it, the lesion
    masks are letterboxed with it (evaluation.localisation.letterbox_mask) and the lesion
    map is mapped back onto the uploaded image with it (serving.lesion). ``width`` and
    ``height`` are the upright image's (EXIF orientations 5-8 swap the header's); the
    formula is symmetric in the two sides, so the geometry of the stored (pre-orientation)
    image, transposed, is the same."""
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"letterbox_geometry needs positive sides, got {width}x{height} into {size}")
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (new_w, new_h), ((size - new_w) // 2, (size - new_h) // 2)


def decode_image(data: bytes | Intake, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode PNG or JPEG bytes (or what ``inspect_image`` made of them) into the model
    input: uint8 array (size, size, 3).

    Steps, in this order: format sniffing and the structural pre-scan (size and shape
    checked, the file rewritten to what decoding needs), open with Pillow's PNG/JPEG
    plugins only, JPEG draft mode (libjpeg decodes at a reduced scale that is still at
    least ``size``), the truncation check of JPEG and the palette check of PNG, the
    mode the resize runs in (gray stays gray, alpha premultiplied = composited on
    black), one bilinear resize of the longer side to ``size`` keeping the aspect ratio
    (``letterbox_geometry`` of the upright header size), conversion to RGB, the EXIF
    orientation as a transpose, centred on a black square.
    Raises InvalidImageError (ImageTooLargeError for too many pixels) for anything else.
    """
    intake = inspect_image(data)
    image = load_image(intake, size)
    swapped = intake.orientation in SWAPPING_ORIENTATIONS
    upright_size = (intake.height, intake.width) if swapped else (intake.width, intake.height)
    (new_w, new_h), offset = letterbox_geometry(*upright_size, size)
    try:
        working, kind = _working_image(image)
        del image
        # the stored image is resized to the upright geometry's sides (swapped back for
        # orientations 5-8), then turned upright. The geometry comes from the header's size,
        # not from the decoded one: a JPEG decoded in draft mode is ceil(side / scale) px a
        # side, whose rounding would move the short side by a pixel in about one size in
        # ten, and the mask and the lesion map know only the header's size.
        resized = working.resize((new_h, new_w) if swapped else (new_w, new_h),
                                 Image.Resampling[RESIZE_METHOD.upper()])
        del working
        upright = apply_orientation(_finish(resized, kind), intake.orientation)
    except InvalidImageError:
        raise
    except Exception as exc:  # a mode Pillow cannot convert, and the like
        raise CorruptImageError(detail=f"convert: {type(exc).__name__}: {exc}") from None
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(upright, offset)
    return np.asarray(canvas, dtype=np.uint8)


# --------------------------------------------------------------------------- copied from serving/api.py


def decode_base64(text: str, what: str = "image", budget: int = MAX_IMAGE_BYTES) -> bytes:
    """Bytes of a base64 string (a data URL is fine), refused with 413 when they would
    exceed ``budget`` bytes: checked on the length before anything is decoded."""
    if text.startswith("data:") and "," in text[:200]:  # data:image/png;base64,....
        text = text.split(",", 1)[1]
    compact = "".join(text.split())
    if len(compact) * 3 // 4 - 2 > budget:
        raise RequestError("payload_too_large", limit=budget)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("invalid_base64", f"{what} is not valid base64") from None
    if len(data) > budget:
        raise RequestError("payload_too_large", limit=budget)
    return data
