"""Builders of the hostile inputs of issue 19, shared by tests/test_intake_budget.py
(small sizes) and benchmarks/intake_worst_case.py (at the caps). Every input is made
here from nothing: no file is read or downloaded.

Families:
* metadata that Pillow parses at open or on ``getexif`` (JPEG MPF index in APP2, EXIF
  IFDs in a JPEG APP1 or a PNG eXIf chunk whose entries all point at one big block, an
  EXIF Orientation next to thousands of entries);
* degenerate shapes (one pixel wide at the pixel cap);
* structure that libjpeg / Pillow only warn about (AC scans without a DC scan, a PNG
  chunk with a wrong CRC, palette indices past the PLTE);
* whole requests (a batch at the caps).
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image

from benchmarks.intake_worst_case import encode, jpeg_segments, png_chunk

TIFF_TYPES = {"BYTE": 1, "ASCII": 2, "SHORT": 3, "LONG": 4, "RATIONAL": 5, "UNDEFINED": 7}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], block: bytes = b"", order: str = "<") -> bytes:
    """A TIFF structure (what EXIF and the MP index are): header, one IFD with
    ``entries`` (tag, type, count, value), then ``block``. A value that does not fit in
    4 bytes is replaced by the offset of ``block``: every such entry points at the SAME
    block (the N x S amplification)."""
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    ifd_size = 2 + 12 * len(entries) + 4
    block_offset = 8 + ifd_size
    out = [header, struct.pack(order + "H", len(entries))]
    for tag, kind, count, value in entries:
        if count * _TYPE_SIZES[kind] <= 4:
            field = value.ljust(4, b"\0")[:4]
        else:
            field = struct.pack(order + "I", block_offset)
        out.append(struct.pack(order + "HHI", tag, kind, count) + field)
    out.append(b"\0\0\0\0")
    return b"".join(out) + block


def amplified_ifd(entries: int, block_bytes: int, kind: str = "UNDEFINED", first_tag: int = 0x9000,
                  orientation: int | None = None) -> bytes:
    """``entries`` IFD entries of ``kind`` that each claim the whole ``block_bytes``
    block (all at one offset): ``entries x block_bytes`` of values for a parser that
    reads them all, ``block_bytes`` on the wire. ``orientation``: an Orientation entry
    first (tags stay sorted)."""
    size = _TYPE_SIZES[TIFF_TYPES[kind]]
    rows = []
    if orientation is not None:
        rows.append((0x0112, 3, 1, struct.pack("<H", orientation)))
    rows += [(first_tag + i, TIFF_TYPES[kind], block_bytes // size, b"") for i in range(entries)]
    return tiff_ifd(rows, bytes(range(256)) * (block_bytes // 256) + b"\0" * (block_bytes % 256))


def small_jpeg(width: int = 16, height: int = 16, mode: str = "L", **options) -> bytes:
    return encode(Image.new(mode, (width, height), 90), "JPEG", **options)


def jpeg_with_app(marker: int, payloads: list[bytes], base: bytes | None = None) -> bytes:
    """``base`` (a small JPEG) with APPn segments of ``payloads`` right after SOI."""
    base = base or small_jpeg()
    segments = b"".join(b"\xff" + bytes([marker]) + struct.pack(">H", len(p) + 2) + p for p in payloads)
    return base[:2] + segments + base[2:]


def mpf_jpeg(tags: int = 2700, block_bytes: int = 32_768, kind: str = "RATIONAL") -> bytes:
    """The issue's MPF index: a 16x16 JPEG whose APP2 "MPF\\0" segment holds ``tags``
    entries that all point at one ``block_bytes`` block (Pillow's jpeg_factory reads the
    MP index at open and decodes every entry). At most 64 KB per segment: the block is
    trimmed to fit."""
    room = 65_533 - 4 - 8 - 2 - 12 * tags - 4
    block = max(8, min(block_bytes, room))
    index = amplified_ifd(tags, block, kind, first_tag=0xB000)
    return jpeg_with_app(0xE2, [b"MPF\0" + index])


def exif_jpeg(entries: int, block_bytes: int, orientation: int | None = None) -> bytes:
    """A small JPEG whose APP1 EXIF IFD has ``entries`` entries pointing at one block."""
    ifd = amplified_ifd(entries, block_bytes, orientation=orientation)
    if len(ifd) + 6 > 65_533:
        raise ValueError("an APP1 segment holds at most 64 KB")
    return jpeg_with_app(0xE1, [b"Exif\0\0" + ifd])


def png_raw(width: int, height: int, rows: bytes, bit_depth: int = 8, color_type: int = 0,
            before_idat: bytes = b"", after_idat: bytes = b"", interlace: int = 0) -> bytes:
    """A PNG of already filtered scanline bytes (each row starts with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before_idat
            + png_chunk(b"IDAT", zlib.compress(rows, 9)) + after_idat + png_chunk(b"IEND", b""))


def exif_png(entries: int, block_bytes: int, orientation: int | None = None, side: int = 16) -> bytes:
    """A small gray PNG with an eXIf chunk of ``entries`` entries pointing at one block."""
    rows = (b"\0" + b"\x80" * side) * side
    return png_raw(side, side, rows, before_idat=png_chunk(b"eXIf", amplified_ifd(entries, block_bytes,
                                                                               orientation=orientation)))


def palette_png_past_plte(entries: int = 2, side: int = 16) -> bytes:
    """A palette PNG whose PLTE has ``entries`` colours but whose pixels use indices up
    to 255 (Pillow decodes them as black: a silent wrong image)."""
    rows = b"".join(b"\0" + bytes((x * 16 + y) % 256 for x in range(side)) for y in range(side))
    plte = png_chunk(b"PLTE", bytes(i % 256 for i in range(3 * entries)))
    return png_raw(side, side, rows, 8, 3, before_idat=plte)


def png_with_bad_crc(chunk: bytes = b"IDAT") -> bytes:
    """A valid gray PNG with the CRC of its first ``chunk`` chunk flipped."""
    data = bytearray(encode(Image.new("L", (16, 16), 100)))
    start = data.index(chunk) - 4
    length = struct.unpack_from(">I", data, start)[0]
    data[start + 8 + length] ^= 0xFF
    return bytes(data)


def jpeg_without_dc_scan(side: int = 64, mode: str = "CMYK") -> bytes:
    """A progressive JPEG with its DC scans removed: only AC scans (libjpeg warns
    "bogus progression" and decodes a grey image; Pillow answered 200)."""
    data = encode(Image.new(mode, (side, side), (40, 90, 150, 20)[: len(mode)] if mode != "L" else 90),
                  "JPEG", progressive=True)
    out, position = [], 0
    for marker, start, end in jpeg_segments(data):
        if marker == 0xDA and data[start + 4 + 1 + 2 * data[start + 4]] == 0:  # Ss = 0: a DC scan
            out.append(data[position:start])
            position = end
    out.append(data[position:])
    return b"".join(out)


def thin_png(width: int, height: int, bit_depth: int = 8, color_type: int = 3, transparency: bool = True) -> bytes:
    """A flat PNG of width x height (e.g. 1 x 40,000,000): streamed through zlib so that
    no full image is built. Palette + tRNS by default (the issue's 78 KB file)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    compressor = zlib.compressobj(9)
    zero_row = b"\0" * (row_bytes + 1)
    parts = [compressor.compress(zero_row) for _ in range(min(height, 4096))]
    if height > 4096:  # identical rows compress to the same bytes: feed them in blocks
        block = zero_row * 4096
        for _ in range((height - 4096) // 4096):
            parts.append(compressor.compress(block))
        parts.append(compressor.compress(zero_row * ((height - 4096) % 4096)))
    parts.append(compressor.flush())
    before = b""
    if color_type == 3:
        before = png_chunk(b"PLTE", b"\0\0\0" * 2) + (png_chunk(b"tRNS", b"\0") if transparency else b"")
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))
