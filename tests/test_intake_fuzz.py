"""Fuzzing the decoder: random bytes and mutated valid PNG and JPEG files either give the
model input (uint8, size x size x 3) or raise the project's own InvalidImageError, and
every example stays within a CPU budget."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from busi_classifier.serving.decode import InvalidImageError, decode_image

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
