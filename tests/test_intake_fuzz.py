"""Fuzzing the decoder: random bytes and mutated valid PNG and JPEG files either give the
model input (uint8, size x size x 3) or raise the project's own InvalidImageError, and
every example stays within a CPU budget. The metadata targets insert and mutate what
Pillow's parsers would read (JPEG APPn segments with EXIF and MPF IFDs, PNG ancillary
chunks with valid CRCs, eXIf IFDs): the intake drops them, and the budget says so."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from busi_classifier.serving.decode import InvalidImageError, decode_image, exif_orientation

SIZE = 32
CPU_BUDGET_S = 2.0
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seeds() -> list[bytes]:
    pixels = np.random.default_rng(0).gamma(2.0, 40.0, (48, 64)).clip(0, 255).astype(np.uint8)
    gray = Image.fromarray(pixels, "L")
    out = []
    for image, fmt, options in [
        (gray, "PNG", {}), (gray.convert("RGBA"), "PNG", {}), (gray.convert("P"), "PNG", {"transparency": 0}),
        (Image.fromarray(pixels.astype(np.uint16) * 257, "I;16"), "PNG", {}),
        (gray, "JPEG", {}), (gray.convert("RGB"), "JPEG", {"progressive": True}),
        (gray.convert("CMYK"), "JPEG", {}), (gray.convert("RGB"), "JPEG", {"restart_marker_blocks": 2}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    return out


SEEDS = seeds()


def check(data: bytes) -> None:
    start = time.process_time()
    try:
        out = decode_image(data, SIZE)
    except InvalidImageError as exc:
        assert str(exc) and exc.detail
    else:
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    spent = time.process_time() - start
    assert spent < CPU_BUDGET_S, f"{spent:.2f} s of CPU for {len(data)} bytes"


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice-marker"]))
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            data = data[:at] + (b"\xff\xd9" if draw(st.booleans()) else b"")
        else:  # a marker or a chunk type where it does not belong
            data[at:at] = draw(st.sampled_from([b"\xff\xda", b"\xff\xd9", b"\xff\xc2", b"\xff\xfe\x00\x02",
                                                b"\x00\x00\x00\x00IEND", b"\x00\x00\x00\x00IDAT"]))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check(data)


@FUZZ
@given(st.binary(max_size=2048).map(lambda tail: b"\xff\xd8\xff" + tail)
       | st.binary(max_size=2048).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail))
def test_random_bytes_behind_a_valid_signature(data):
    check(data)


@FUZZ
@given(mutated())
def test_mutated_png_and_jpeg(data):
    check(data)


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_the_seeds_decode(index):
    check(SEEDS[index])
    assert decode_image(SEEDS[index], SIZE).max() > 0


# --------------------------------------------------------------------------- metadata


@st.composite
def ifd(draw) -> bytes:
    """A TIFF structure with random entries (any tag, type, count, offset), some of
    them pointing back into a shared block: what EXIF and MPF parsers read."""
    order = draw(st.sampled_from(["<", ">"]))
    entries = draw(st.integers(0, 300))
    block = draw(st.binary(max_size=512))
    rows = []
    for _ in range(min(entries, 40)):  # hypothesis draws are slow; the rest repeat
        rows.append(struct.pack(order + "HHII", draw(st.sampled_from([0x0112, 0x8769, 0xB000, 0xB002, 0x927C,
                                                                      draw(st.integers(0, 0xFFFF))])),
                                draw(st.integers(0, 13)), draw(st.integers(0, 1 << 31)),
                                draw(st.sampled_from([8, 8 + 2 + 12 * entries + 4, draw(st.integers(0, 1 << 32 - 1))]))))
    rows = (rows * (entries // max(1, len(rows)) + 1))[:entries] if rows else []
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    return header + struct.pack(order + "H", entries) + b"".join(rows) + b"\0\0\0\0" + block


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def jpeg_with_metadata(draw) -> bytes:
    data = draw(st.sampled_from([s for s in SEEDS if s.startswith(b"\xff\xd8")]))
    segments = []
    for _ in range(draw(st.integers(1, 6))):
        marker = draw(st.sampled_from([0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xFE, draw(st.integers(0xE0, 0xEF))]))
        prefix = draw(st.sampled_from([b"Exif\0\0", b"MPF\0", b"JFIF\0", b"Adobe", b"ICC_PROFILE\0\1\1",
                                       b"Photoshop 3.0\0", b"http://ns.adobe.com/xap/1.0/\0", b""]))
        payload = (prefix + draw(ifd()))[:65_000]
        segments.append(b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload)
    at = draw(st.sampled_from([2, data.index(b"\xff\xda")]))  # after SOI, or just before the first scan
    return data[:at] + b"".join(segments) + data[at:]


@st.composite
def png_with_ancillary_chunks(draw) -> bytes:
    data = draw(st.sampled_from([s for s in SEEDS if s.startswith(b"\x89PNG")]))
    chunks = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from([b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"acTL", b"fcTL", b"fdAT", b"sPLT",
                                     b"pHYs", b"vpAg"]))
        body = draw(ifd()) if kind == b"eXIf" else draw(st.binary(max_size=256))
        if kind in (b"zTXt", b"iCCP"):
            body = b"k\0\0" + zlib.compress(b"\0" * draw(st.integers(0, 2_000_000)))  # inflate bombs, unread
        chunks.append(png_chunk(kind, body))
    at = draw(st.sampled_from([33, data.index(b"IDAT") - 4, len(data) - 12]))  # after IHDR, before IDAT, before IEND
    return data[:at] + b"".join(chunks) + data[at:]


@FUZZ
@given(jpeg_with_metadata())
def test_jpeg_metadata_segments(data):
    check(data)


@FUZZ
@given(png_with_ancillary_chunks())
def test_png_ancillary_chunks(data):
    check(data)


@FUZZ
@given(ifd())
def test_the_orientation_parser_is_total_and_bounded(tiff):
    start = time.process_time()
    assert 1 <= exif_orientation(tiff) <= 8
    assert time.process_time() - start < 0.01
