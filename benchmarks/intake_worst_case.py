"""Worst-case cost of image intake, per image and per request.

1. Per format: CPU seconds and peak memory of ``decode_image(data, 224)`` for the most
   expensive inputs each accepted format takes at the caps (api.MAX_IMAGE_BYTES bytes,
   constants.MAX_IMAGE_PIXELS pixels, MAX_IMAGE_SIDE, MAX_ASPECT_RATIO), and for the
   hostile inputs of issues 12 and 19 (refused, or decoded with their metadata dropped).
   Each input is decoded in its own subprocess, after a warm-up decode.
2. Per request: whole requests through the real handler (``api.make_handler`` with a
   trained model folder, an API Gateway REST event, a Lambda context whose remaining
   time is the template's Timeout), each in its own subprocess after the model load
   and a warm-up request; compared with the MemorySize and Timeout that template.yaml
   gives the function (read from the template, not written here).

    python benchmarks/intake_worst_case.py                 # both tables to stdout
    python benchmarks/intake_worst_case.py --write docs/input-limits.md
    python benchmarks/intake_worst_case.py --only Adam7 --no-requests

``--write`` replaces the text between the ``<!-- intake-worst-case -->`` and the
``<!-- intake-per-request -->`` markers of the given file. Peak memory is the process's
VmHWM after the high-water mark was reset (/proc/self/clear_refs) at the baseline.
The builders below are also what tests/test_intake*.py and benchmarks/intake_attacks.py
use (at small sizes).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from busi_classifier.serving.api import (  # noqa: E402
    DECODE_SECONDS_PER_MEGABYTE,
    DECODE_SECONDS_PER_MEGAPIXEL,
    MAX_BATCH,
    MAX_IMAGE_BYTES,
    decode_estimate_s,
)
from busi_classifier.serving.constants import (  # noqa: E402
    MAX_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MAX_REQUEST_PIXELS,
)
from busi_classifier.serving.decode import MAX_JPEG_SCANS, MAX_METADATA_BYTES, MAX_METADATA_SEGMENTS, MAX_PNG_CHUNKS  # noqa: E402

BOMB_SIDE = 6320  # 6320 x 6320 = 39.9 MP, just under the pixel cap (the scan bomb)
MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")
TEMPLATE = ROOT / "template.yaml"
DEFAULT_MODEL = ROOT / "artifacts" / "model"
MARKERS = {"format": ("<!-- intake-worst-case -->", "<!-- /intake-worst-case -->"),
           "request": ("<!-- intake-per-request -->", "<!-- /intake-per-request -->")}


# --------------------------------------------------------------------------- builders


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment; a scan's end includes its entropy data."""
    out, position = [], 2
    while data[position + 1] != 0xD9:
        marker = data[position + 1]
        end = position + 2 + ((data[position + 2] << 8) | data[position + 3])
        if marker == 0xDA:
            end = MARKER_IN_SCAN.search(data, end).start()
        out.append((marker, position, end))
        position = end
    return out


def ac_scan_script(count: int) -> list[tuple[int, int, int, int]]:
    """``count`` AC scans (Ss, Se, Ah, Al) of one component that form a valid progression:
    one coefficient band after another, each first coded at Al = 13 and then refined
    bit by bit down to Al = 0 (at most 63 x 14 = 882 scans)."""
    script = []
    for k in range(1, 64):
        script.append((k, k, 0, 13))
        script += [(k, k, al + 1, al) for al in range(12, -1, -1)]
    if count > len(script):
        raise ValueError(f"at most {len(script)} valid AC scans")
    return script[:count]


def progressive_scans_jpeg(scans: int, side: int = BOMB_SIDE, valid: bool = True) -> bytes:
    """A progressive grayscale JPEG of side x side, flat (every AC coefficient zero):
    one DC scan, then ``scans - 1`` AC scans made of end-of-block runs (~65 bytes
    each), whose entropy-coded data is the same whatever their band and bit position.
    ``valid``: the AC scans form a legal progression (ac_scan_script), so that only the
    scan cap refuses them; else they repeat one first-pass scan (what libjpeg warns
    about and the intake refuses as an incomplete scan sequence). With thousands of
    scans this is issue 12's scan bomb; with MAX_JPEG_SCANS it is the most accepted."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    sos = [i for i, s in enumerate(segments) if s[0] == 0xDA]
    dc_end = segments[sos[0]][2]
    ac_table_start = segments[sos[0] + 1][1]  # the DHT before the first AC scan
    ac_sos_start, ac_end = segments[sos[1]][1], segments[sos[1]][2]
    scan = bytearray(data[ac_sos_start:ac_end])
    count = scans - 1
    script = ac_scan_script(min(count, 882)) if valid else [tuple(scan[7:9]) + divmod(scan[9], 16)] * count
    script += [script[-1]] * (count - len(script))  # past 882: repeats (refused by the scan cap first)
    parts = [data[:dc_end], data[ac_table_start:ac_sos_start]]
    for ss, se, ah, al in script:
        scan[7], scan[8], scan[9] = ss, se, (ah << 4) | al
        parts.append(bytes(scan))
    return b"".join(parts) + b"\xff\xd9"


def jpeg_with_segments(kind: int, count: int, payload: bytes = b"", side: int = 64) -> bytes:
    """A small valid JPEG with ``count`` extra segments of marker ``kind`` (0xFE COM,
    0xE1 APP1...) right after SOI."""
    data = encode(Image.new("L", (side, side), 90), "JPEG")
    segment = b"\xff" + bytes([kind]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment * count + data[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def flat_png(width: int, height: int, bit_depth: int = 8, color_type: int = 0, extra: bytes = b"",
             noise_rows: int = 0, seed: int = 0) -> bytes:
    """A valid PNG of zeros (compresses ~1000:1), streamed through zlib row by row so a
    40 MP 16-bit RGBA file is built without 320 MB in memory; ``extra`` chunks go
    before the IDAT; the first ``noise_rows`` rows are random (incompressible)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    compressor = zlib.compressobj(9)
    parts, zero_row = [], b"\0" * (row_bytes + 1)
    rng = __import__("random").Random(seed)
    for y in range(height):
        row = b"\0" + rng.randbytes(row_bytes) if y < noise_rows else zero_row
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    plte = png_chunk(b"PLTE", b"\0\0\0" * 256) if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + plte + extra
            + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b""))


def noise_jpeg_near_cap(width: int, height: int, mode: str = "RGB") -> bytes:
    """A JPEG of width x height whose top rows are noise, grown until the file is just
    under the request cap: the most entropy-coded data at that pixel count."""
    import numpy as np

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    low, high, best = 1, height, b""
    while low <= high:  # binary search on the number of noisy rows
        rows = (low + high) // 2
        pixels = np.full((height, width, channels), 128, dtype=np.uint8)
        pixels[:rows] = rng.integers(0, 256, (rows, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
        data = encode(image, "JPEG", quality=75, subsampling=0)
        if len(data) <= MAX_IMAGE_BYTES:
            best, low = data, rows + 1
        else:
            high = rows - 1
        if high - low < max(8, height // 200):
            break
    return best


def truncated_jpeg(side: int = 256) -> bytes:
    """A baseline JPEG of noise cut in the middle of its scan, with EOI appended."""
    import numpy as np

    pixels = np.random.default_rng(3).integers(0, 256, (side, side), dtype=np.uint8)
    data = encode(Image.fromarray(pixels, "L"), "JPEG", quality=90)
    return data[: len(data) // 2] + b"\xff\xd9"


def gif_comment_bomb(comments: int) -> bytes:
    """The issue's GIF: many empty comment extension blocks before frame 0."""
    frames = [Image.new("P", (4, 4), 0), Image.new("P", (4, 4), 1)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first_image = data.index(b"\x2c")  # image descriptor of frame 0
    return data[:first_image] + b"\x21\xfe\x00" * comments + data[first_image:]


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"newpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n")


def other_formats() -> dict[str, bytes]:
    """Small valid files of formats Pillow reads but intake refuses."""
    gray = Image.new("L", (16, 16), 100)
    return {
        "gif": encode(gray.convert("P"), "GIF"),
        "bmp": encode(gray, "BMP"),
        "tiff": encode(gray, "TIFF"),
        "float-tiff-nan": encode(Image.frombytes("F", (2, 1), struct.pack("<2f", float("nan"), 1.0)), "TIFF"),
        "webp": encode(gray.convert("RGB"), "WEBP"),
        "ico": encode(gray.convert("RGBA"), "ICO", sizes=[(16, 16)]),
        "icns": encode(gray.convert("RGBA").resize((32, 32)), "ICNS"),
        "eps": EPS,
        "iptc": b"\x1c\x01\x5a\x00\x03\x1b\x25\x47" + b"\x1c\x02\x00\x00\x02\x00\x04",
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "tga-like-noise": bytes(range(256)) * 4,
    }


def _repeated_rows(compressor, row: bytes, count: int) -> list[bytes]:
    """zlib output of ``row`` ``count`` times, fed in ~1 MB blocks (identical rows)."""
    per_block = max(1, (1 << 20) // len(row))
    block = row * per_block
    parts = [compressor.compress(block) for _ in range(count // per_block)]
    parts.append(compressor.compress(row * (count % per_block)))
    return parts


# Adam7 passes: (first column, first row, column step, row step)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def interlaced_png(width: int, height: int, bit_depth: int = 16, color_type: int = 6, filter_type: int = 4) -> bytes:
    """A valid Adam7-interlaced PNG of zeros whose every scanline (of every pass) is
    filtered with ``filter_type`` (4: Paeth, the costliest to undo): 7 sub-images to
    unfilter and scatter. Streamed through zlib like flat_png, so a 40 MP 16-bit RGBA
    file (320 MB of samples) is built without them in memory."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    compressor = zlib.compressobj(9)
    parts = []
    for x0, y0, dx, dy in ADAM7:
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns > 0 and rows > 0:  # an empty pass has no scanlines at all
            row = bytes([filter_type]) + bytes((columns * channels * bit_depth + 7) // 8)
            parts += _repeated_rows(compressor, row, rows)
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 1)
    plte = png_chunk(b"PLTE", b"\0\0\0" * 256) if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + plte + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))


def palette_png_past_plte_at(width: int, height: int, entries: int = 2) -> bytes:
    """A flat palette PNG of width x height whose PLTE has ``entries`` colours and whose
    every pixel is index 255: intake_attacks.palette_png_past_plte at the pixel cap,
    streamed. Only the decoded pixels show the bad index, so it is refused after a
    full decode."""
    compressor = zlib.compressobj(9)
    parts = _repeated_rows(compressor, b"\0" + b"\xff" * width, height) + [compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", bytes(3 * entries))
            + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b""))


def refinement_script(count: int, components: int) -> list[tuple[int, int, int, int, int]]:
    """``count`` AC scans (component index, Ss, Se, Ah, Al), one component each, that form
    a valid progression: a component's whole band 1-63 first coded at Al = 13, then
    refined bit by bit down to Al = 0 (14 scans), one component after the other. Of all
    scripts of ``count`` AC scans this one has the most refinement scans of the widest
    band: libjpeg steps a first pass of end-of-block runs with a counter, but a
    refinement pass looks at every coefficient of the band in every block."""
    script = []
    for component in range(components):
        script.append((component, 1, 63, 0, 13))
        script += [(component, 1, 63, al + 1, al) for al in range(12, -1, -1)]
    if count > len(script):
        raise ValueError(f"at most {len(script)} valid whole-band AC scans for {components} components")
    return script[:count]


def progressive_refinement_jpeg(scans: int = MAX_JPEG_SCANS, side: int = BOMB_SIDE, mode: str = "CMYK") -> bytes:
    """A progressive JPEG of side x side (CMYK by default: 4 components without
    subsampling, the most coefficients per pixel) with one interleaved DC scan and
    ``scans - 1`` single-component AC scans of the whole band (refinement_script). The
    image is flat, so every AC scan's entropy-coded data is the same end-of-block runs
    (those of the encoder's first AC scan), whatever its component and bit position."""
    data = encode(Image.new(mode, (side, side), (40, 90, 150, 20)[: len(mode)] if mode != "L" else 128), "JPEG",
                  progressive=True, quality=90)
    segments = jpeg_segments(data)
    sof = next(s for s in segments if s[0] == 0xC2)
    components = data[sof[1] + 9]
    ids = [data[sof[1] + 10 + 3 * i] for i in range(components)]
    sos = [i for i, s in enumerate(segments) if s[0] == 0xDA]
    dc_start, dc_end = segments[sos[0]][1], segments[sos[0]][2]
    if data[dc_start + 4] != components or data[dc_start + 5 + 2 * components] != 0:
        raise ValueError("the encoder's first scan is not an interleaved DC scan")
    tables = data[segments[sos[0] + 1][1]:segments[sos[1]][1]]  # the DHT(s) before the first AC scan
    ac_start, ac_end = segments[sos[1]][1], segments[sos[1]][2]
    scan = bytearray(data[ac_start:ac_end])
    if scan[4] != 1:
        raise ValueError("the encoder's second scan is not a single-component scan")
    parts = [data[:dc_end], tables]
    for component, ss, se, ah, al in refinement_script(scans - 1, components):
        scan[5], scan[7], scan[8], scan[9] = ids[component], ss, se, (ah << 4) | al
        parts.append(bytes(scan))
    return b"".join(parts) + b"\xff\xd9"


def noise_png_at_byte_cap(bit_depth: int = 16, color_type: int = 6, interlace: int = 1, filter_type: int = 4,
                          seed: int = 0) -> bytes:
    """The largest square PNG of random samples (incompressible) that fits in the request
    cap: the most pixel data per megapixel a PNG can carry (16-bit RGBA: 8 bytes a
    pixel, 0.54 MP), Adam7-interlaced with every row Paeth-filtered by default (random
    bytes also defeat the branch prediction of the Paeth predictor)."""
    import numpy as np

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    pixel_bytes = channels * bit_depth // 8
    side = int((MAX_IMAGE_BYTES / pixel_bytes) ** 0.5)
    rng = np.random.default_rng(seed)
    while True:
        parts = []
        for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
            columns, rows = (side - x0 + dx - 1) // dx, (side - y0 + dy - 1) // dy
            if columns > 0 and rows > 0:
                scanlines = rng.integers(0, 256, (rows, 1 + columns * pixel_bytes), dtype=np.uint8)
                scanlines[:, 0] = filter_type
                parts.append(scanlines.tobytes())
        ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, interlace)
        data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"".join(parts), 9))
                + png_chunk(b"IEND", b""))
        if len(data) <= MAX_IMAGE_BYTES:
            return data
        side -= max(1, side // 200)


def dense_jpeg_at_byte_cap(height: int = 447, mode: str = "CMYK", progressive: bool = True, quality: int = 100,
                           seed: int = 0, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """A JPEG of random pixels at ``quality`` 100 without chroma subsampling, ``height``
    rows and as many columns as fit in ``max_bytes`` (at most MAX_ASPECT_RATIO times
    the height): the most entropy-coded data per pixel. CMYK has 4 components a pixel;
    libjpeg's progressive script codes them in 18 scans with successive approximation,
    its slowest data to decode per byte; 447 rows (under 2 x 224) leave draft mode
    nothing to reduce."""
    import numpy as np
    from PIL import ImageFile

    rng = np.random.default_rng(seed)
    channels = len(mode)

    def build(width: int) -> bytes:
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
        block, ImageFile.MAXBLOCK = ImageFile.MAXBLOCK, max(ImageFile.MAXBLOCK, 16 * width * height)
        try:  # Pillow's buffer for a progressive file assumes 4 bytes a pixel at most
            return encode(image, "JPEG", quality=quality, subsampling=0, progressive=progressive)
        finally:
            ImageFile.MAXBLOCK = block

    width = min(MAX_ASPECT_RATIO * height, 2 * height)
    trial = build(width)
    width = min(MAX_ASPECT_RATIO * height, int(width * max_bytes / len(trial) * 0.99))
    while len(data := build(width)) > max_bytes:
        width -= max(1, width // 100)
    return data


def speckle_png(width: int = 600, height: int = 500, seed: int = 0) -> bytes:
    """A gray PNG of ultrasound-like speckle (gamma noise): a typical upload."""
    import numpy as np

    pixels = np.random.default_rng(seed).gamma(2.0, 40.0, (height, width)).clip(0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels, "L"), "PNG")


STRIP_SIDE = MAX_IMAGE_SIDE // MAX_ASPECT_RATIO  # 1000: the widest accepted strip is 10000 x 1000
UNREDUCED_SIDE = 447  # a shorter side under 2 x 224: JPEG draft mode decodes at full scale


def worst_cases(only=None) -> dict[str, bytes]:
    """Every per-format input, at the largest accepted payload. A name starting with
    REFUSED must be refused, one starting with DROPPED decoded with its metadata dropped
    (the inputs of issue 19 at the size the issue measured), any other decoded.
    ``only``: build only the inputs whose name contains this text (or for which this
    function is true)."""
    from benchmarks.intake_attacks import (
        exif_jpeg,
        exif_png,
        jpeg_without_dc_scan,
        mpf_jpeg,
        palette_png_past_plte,
        png_with_bad_crc,
        thin_png,
    )

    side16 = int(MAX_IMAGE_PIXELS ** 0.5)  # 6324: 39.99 MP
    unreduced_long = UNREDUCED_SIDE * MAX_ASPECT_RATIO  # 4470 x 447: 2.0 MP decoded at full scale
    firsts = sum(1 for c, *_, ah, _al in refinement_script(MAX_JPEG_SCANS - 1, 4) if ah == 0)
    refinements = MAX_JPEG_SCANS - 1 - firsts
    builders = {
        "png 8-bit gray, 40 MP, flat": lambda: flat_png(side16, side16, 8, 0),
        "png 16-bit RGBA, 40 MP, flat (320 MB raw)": lambda: flat_png(side16, side16, 16, 6),
        "png 16-bit RGBA, 40 MP, Adam7, Paeth on every row": lambda: interlaced_png(side16, side16, 16, 6, 4),
        "png 16-bit gray, 40 MP, flat": lambda: flat_png(side16, side16, 16, 0),
        "png palette + tRNS, 40 MP": lambda: flat_png(side16, side16, 8, 3, extra=png_chunk(b"tRNS", b"\0")),
        "png 8-bit gray noise at the byte cap (2096x2096, 4.4 MP)": lambda: flat_png(2096, 2096, 8, 0, noise_rows=2096),
        f"png {MAX_PNG_CHUNKS} chunks (text) at 40 MP": lambda: flat_png(
            side16, side16, 8, 0,
            extra=b"".join(png_chunk(b"tEXt", b"k\0" + b"v" * 400) for _ in range(MAX_PNG_CHUNKS - 3))),
        "jpeg RGB 4:4:4, 40 MP, ~4.4 MB of scan data": lambda: noise_jpeg_near_cap(BOMB_SIDE, BOMB_SIDE),
        f"jpeg RGB {MAX_IMAGE_SIDE}x{STRIP_SIDE} (widest accepted strip, draft 1/4), near the byte cap":
            lambda: noise_jpeg_near_cap(MAX_IMAGE_SIDE, STRIP_SIDE),
        f"jpeg RGB {unreduced_long}x{UNREDUCED_SIDE} (widest without draft reduction), every row noise at q75":
            lambda: noise_jpeg_near_cap(unreduced_long, UNREDUCED_SIDE),
        f"jpeg progressive gray 40 MP, {MAX_JPEG_SCANS} scans, one coefficient each":
            lambda: progressive_scans_jpeg(MAX_JPEG_SCANS),
        f"jpeg progressive CMYK 40 MP, {MAX_JPEG_SCANS} scans (1 DC, {firsts} first + {refinements} refinement AC "
        "scans of band 1-63)":
            lambda: progressive_refinement_jpeg(MAX_JPEG_SCANS, BOMB_SIDE, "CMYK"),
        "png 16-bit RGBA, Adam7, Paeth, random samples at the byte cap": lambda: noise_png_at_byte_cap(),
        "jpeg CMYK q100 random pixels, progressive (libjpeg's 18 scans), 447 rows, at the byte cap":
            lambda: dense_jpeg_at_byte_cap(447, "CMYK", progressive=True),
        "jpeg CMYK q100 random pixels, baseline, 447 rows, at the byte cap":
            lambda: dense_jpeg_at_byte_cap(447, "CMYK", progressive=False),
        "jpeg RGB q100 random pixels, progressive, 447 rows, at the byte cap":
            lambda: dense_jpeg_at_byte_cap(447, "RGB", progressive=True),
        f"jpeg {MAX_METADATA_SEGMENTS} COM segments, {MAX_METADATA_BYTES // 1024} KiB of metadata":
            lambda: jpeg_with_segments(0xFE, MAX_METADATA_SEGMENTS - 1,  # + the encoder's JFIF APP0
                                       b"c" * (MAX_METADATA_BYTES // MAX_METADATA_SEGMENTS - 40)),
        "DROPPED jpeg MPF index, 2700 entries x one 32 KB block": lambda: mpf_jpeg(2700, 32_768),
        "DROPPED png eXIf, 5000 entries x one 200 KB block": lambda: exif_png(5000, 200_000),
        "DROPPED jpeg EXIF APP1 (64 KB), 4000 entries x one 16 KB block": lambda: exif_jpeg(4000, 16_000),
        "DROPPED jpeg EXIF Orientation 6 before 4000 entries x 16 KB": lambda: exif_jpeg(4000, 16_000, orientation=6),
        "REFUSED old strip: jpeg RGB 447x65500, near the byte cap": lambda: noise_jpeg_near_cap(447, 65_500),
        "REFUSED png palette + tRNS 1 x 40,000,000": lambda: thin_png(1, 40_000_000),
        "REFUSED png RGBA8 1 x 40,000,000": lambda: thin_png(1, 40_000_000, 8, 6),
        "REFUSED png RGBA16 2 x 20,000,000": lambda: thin_png(2, 20_000_000, 16, 6),
        "REFUSED jpeg progressive CMYK 40 MP, AC scans without DC": lambda: jpeg_without_dc_scan(BOMB_SIDE, "CMYK"),
        "REFUSED png with a wrong IDAT CRC": lambda: png_with_bad_crc(),
        "REFUSED png palette indices past PLTE (16x16)": lambda: palette_png_past_plte(),
        "REFUSED png palette indices past PLTE, 40 MP": lambda: palette_png_past_plte_at(side16, side16),
        "REFUSED scan bomb 40 MP, 4.4 MB of AC scans": lambda: progressive_scans_jpeg((MAX_IMAGE_BYTES - 80_000) // 65),
        "REFUSED truncated JPEG + EOI": lambda: truncated_jpeg(2048),
        "REFUSED GIF comment bomb, 4.4 MB": lambda: gif_comment_bomb((MAX_IMAGE_BYTES - 100) // 3),
        "REFUSED EPS (never runs Ghostscript)": lambda: EPS,
        "REFUSED PNG over the chunk cap, 4.4 MB": lambda: flat_png(
            64, 64, extra=png_chunk(b"tEXt", b"k\0") * ((MAX_IMAGE_BYTES - 200) // 14)),
        "REFUSED JPEG with 4.4 MB of 4-byte COM segments":
            lambda: jpeg_with_segments(0xFE, (MAX_IMAGE_BYTES - 1000) // 4),
        "REFUSED PNG header 100000x100000": lambda: png_claiming(100_000, 100_000),
    }
    selected = (lambda name: only in name) if isinstance(only, str) else only
    return {name: build() for name, build in builders.items() if selected is None or selected(name)}



def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


BATCH_IMAGE = (2000, 1250)  # 2.5 MP: MAX_BATCH of them are exactly MAX_REQUEST_PIXELS
TYPICAL_IMAGE = (560, 460)  # about a BUSI image (16 speckle PNGs of 600x500 are over the byte cap)


def request_cases(singles: dict[str, bytes] | None = None) -> dict[str, tuple[list[bytes], bool]]:
    """Whole requests: name -> (the images of the batch, explain). ``singles``: the
    single images to send alone (default: the 40 MP Adam7 16-bit RGBA PNG). A name
    starting with REFUSED must be refused before any image is decoded."""
    from benchmarks.intake_attacks import png_with_bad_crc

    width, height = BATCH_IMAGE
    if MAX_BATCH * width * height > MAX_REQUEST_PIXELS:
        raise ValueError("the full batch is over the request pixel cap")
    heavy = interlaced_png(width, height, 16, 6, 4)
    side16 = int(MAX_IMAGE_PIXELS ** 0.5)
    singles = singles or {"png 16-bit RGBA, 40 MP, Adam7, Paeth on every row": interlaced_png(side16, side16)}
    full = f"{MAX_BATCH} x {width}x{height} png 16-bit RGBA Adam7 Paeth (40 MP, {MAX_BATCH} images)"
    bomb = progressive_scans_jpeg(MAX_JPEG_SCANS)
    cases = {
        full: ([heavy] * MAX_BATCH, False),
        f"{full}, explain": ([heavy] * MAX_BATCH, True),
        **{f"1 x {name}": ([data], False) for name, data in singles.items()},
        f"{MAX_BATCH} x jpeg CMYK q100 random pixels, progressive, 447 rows, at the byte cap together":
            ([dense_jpeg_at_byte_cap(max_bytes=MAX_IMAGE_BYTES // MAX_BATCH)] * MAX_BATCH, False),
        f"{MAX_BATCH} x {TYPICAL_IMAGE[0]}x{TYPICAL_IMAGE[1]} speckle png (typical)":
            ([speckle_png(*TYPICAL_IMAGE, seed) for seed in range(MAX_BATCH)], False),
        f"REFUSED {MAX_BATCH} x 40 MP progressive jpeg, {MAX_JPEG_SCANS} scans (640 MP)": ([bomb] * MAX_BATCH, False),
        f"REFUSED {MAX_BATCH - 1} x {width}x{height} png Adam7 + a last png with a wrong CRC":
            ([heavy] * (MAX_BATCH - 1) + [png_with_bad_crc()], False),
    }
    for name, (images, _) in cases.items():
        if sum(map(len, images)) > MAX_IMAGE_BYTES:
            raise ValueError(f"{name}: {sum(map(len, images))} bytes, over the request cap")
    return cases


def template_limits(path: Path = TEMPLATE) -> dict:
    """MemorySize (MB) and Timeout (s) that the template gives its Lambda function: the
    function's own properties, else Globals.Function, else Lambda's defaults (128 MB,
    3 s); a ``!Ref`` to a parameter is its Default."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):  # !Ref X -> {"Ref": X}, !Sub ..., !If [...]
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}

    Loader.add_multi_constructor("!", tagged)
    document = yaml.load(path.read_text(), Loader=Loader)
    functions = {name: r for name, r in (document.get("Resources") or {}).items()
                 if isinstance(r, dict) and r.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function")}
    if len(functions) != 1:
        raise SystemExit(f"{path}: expected one Lambda function, found {sorted(functions)}")
    (name, function), = functions.items()
    properties = function.get("Properties") or {}
    globals_ = (document.get("Globals") or {}).get("Function") or {}

    def value(key: str, default):
        found = properties.get(key, globals_.get(key, default))
        if isinstance(found, dict) and "Ref" in found:
            found = document["Parameters"][found["Ref"]]["Default"]
        return found

    return {"function": name, "memory_mb": int(value("MemorySize", 128)), "timeout_s": float(value("Timeout", 3))}


# --------------------------------------------------------------------------- measuring


# What both children share: the process's memory (VmRSS, VmHWM) and CPU time.
_PROBES = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
def memory_kb():
    found = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line.split(":")[0]] = int(line.split()[1])
    return found
def reset_peak():  # VmHWM := VmRSS (Linux >= 4.0); the baseline is then what is resident
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return memory_kb()["VmRSS"], True
    except OSError:
        return memory_kb()["VmHWM"], False
"""

CHILD = _PROBES + r"""
from busi_classifier.serving.decode import InvalidImageError, decode_image, inspect_image
data = open(sys.argv[2], "rb").read()
for warm in sys.argv[3:]:  # imports and both plugins loaded
    decode_image(open(warm, "rb").read(), 224)
baseline, reset = reset_peak()
start, wall = cpu(), time.perf_counter()
try:
    decode_image(data, 224)
    answer = "decoded"
except InvalidImageError as exc:
    answer = f"{type(exc).__name__}: {exc}"
spent, took, peak = cpu() - start, time.perf_counter() - wall, memory_kb()["VmHWM"]
row = {"cpu_s": spent, "wall_s": took, "baseline_kb": baseline, "peak_kb": peak, "reset": reset, "answer": answer}
if answer == "decoded":
    intake = inspect_image(data)
    row.update(pixels=intake.pixels, orientation=intake.orientation, size=[intake.width, intake.height])
print(json.dumps(row))
"""

REQUEST_CHILD = _PROBES + r"""
import base64
from pathlib import Path
from busi_classifier.serving.api import make_handler
from busi_classifier.serving.events import rest_v1_event
from busi_classifier.serving.settings import ServingSettings
event_path, model, warm_path, out_path = sys.argv[2:6]
timeout_s = float(sys.argv[6])

class Context:  # a Lambda context with the function's whole Timeout left when the request starts
    aws_request_id = "intake-worst-case"
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
    def get_remaining_time_in_millis(self):
        return max(0, int((self.end - time.monotonic()) * 1000))

handler = make_handler(ServingSettings(model_path=Path(model)))
predictor = handler.predictor
if predictor is None:
    sys.exit(f"the model did not load: {handler.load_error}")
load_peak = memory_kb()["VmHWM"]
explain = bool(getattr(predictor, "has_maps", False))
warm = rest_v1_event("POST", "/predict", {"image": base64.b64encode(open(warm_path, "rb").read()).decode(),
                                          "explain": explain})
assert handler(warm, Context(timeout_s))["statusCode"] == 200
event = json.load(open(event_path))  # parsed by the Lambda runtime before the handler runs
import busi_classifier.serving.predictor as predictor_module
decodes, real_decode = [], predictor_module.decode_image
def timed_decode(data, size):  # what predict_bytes calls: the CPU of each decode, and its pixels
    begin = cpu()
    try:
        return real_decode(data, size)
    finally:
        decodes.append([getattr(data, "pixels", None), cpu() - begin, getattr(data, "size", None)])
predictor_module.decode_image = timed_decode
baseline, reset = reset_peak()
start, wall = cpu(), time.perf_counter()
answer = handler(event, Context(timeout_s))
spent, took, peak = cpu() - start, time.perf_counter() - wall, memory_kb()["VmHWM"]
body = json.loads(answer["body"])
json.dump({"cpu_s": spent, "wall_s": took, "baseline_kb": baseline, "peak_kb": peak, "load_peak_kb": load_peak,
           "reset": reset, "status": answer["statusCode"], "error": body.get("error"),
           "predictions": len(body.get("predictions", [])) or int("prediction" in body), "decoded": len(decodes),
           "decodes": decodes,
           "image_size": predictor.image_size, "variant": predictor.variant, "threads": predictor.num_threads,
           "explain_available": explain, "model_version": predictor.model_version}, open(out_path, "w"))
"""


def measure(name: str, data: bytes, folder: Path, warm: list[Path]) -> dict:
    path = folder / "input.bin"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), *map(str, warm)],
                         capture_output=True, text=True, timeout=600)
    row = {"name": name, "bytes": len(data)}
    if out.returncode != 0:
        return {**row, "answer": f"child failed: {out.stderr.strip()[-300:]}"}
    return {**row, **json.loads(out.stdout.strip().splitlines()[-1])}


def measure_request(name: str, images: list[bytes], explain: bool, model: Path, timeout_s: float,
                    folder: Path, warm: Path) -> dict:
    from busi_classifier.serving.decode import InvalidImageError, inspect_image
    from busi_classifier.serving.events import rest_v1_event

    pixels = 0
    for data in images:
        try:
            pixels += inspect_image(data).pixels
        except InvalidImageError:
            pass
    payload = {"images": [base64.b64encode(data).decode() for data in images]}
    if explain:
        payload["explain"] = True
    event_path, out_path = folder / "event.json", folder / "answer.json"
    event_path.write_text(json.dumps(rest_v1_event("POST", "/predict", payload)))
    out_path.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", REQUEST_CHILD, str(ROOT), str(event_path), str(model), str(warm),
                          str(out_path), str(timeout_s)], capture_output=True, text=True, timeout=900)
    row = {"name": name, "images": len(images), "bytes": sum(map(len, images)), "pixels": pixels}
    if out.returncode != 0 or not out_path.is_file():
        return {**row, "answer": f"child failed: {out.stderr.strip()[-300:]}"}
    return {**row, **json.loads(out_path.read_text())}


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(len(os.sched_getaffinity(0)))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    return (f"{model} (`nproc` = {_nproc()}), Python {platform.python_version()}, Pillow {Image.__version__}, "
            f"NumPy {numpy.__version__}")


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}" if pixels >= 1_000_000 else f"{pixels / 1e6:.2g}"


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


PER_MP_FROM = 100_000  # CPU s per MP is given for images of at least 0.1 MP: below, a decode's fixed cost dominates


def _per_mp(row: dict) -> float | None:
    return row["cpu_s"] / (row["pixels"] / 1e6) if row.get("pixels", 0) >= PER_MP_FROM else None


def format_answer(row: dict) -> str:
    answer = row["answer"]
    if answer == "decoded" and row["name"].startswith("DROPPED"):
        turned = f", turned (orientation {row['orientation']})" if row.get("orientation", 1) != 1 else ""
        return f"decoded{turned}, metadata dropped"
    return answer


def unexpected(row: dict) -> bool:
    """A REFUSED row that decoded, or another row that did not."""
    if "cpu_s" not in row:
        return True
    return (row["answer"] == "decoded") == row["name"].startswith("REFUSED")


def table(rows: list[dict]) -> str:
    lines = ["| input | bytes | MP | answer | CPU s | CPU s / MP | peak RSS MB (baseline) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        flag = " **(unexpected)**" if unexpected(r) else ""
        if "cpu_s" not in r:
            lines.append(f"| {r['name']} | {r['bytes']:,} | | {r['answer']}{flag} | | | |")
            continue
        per_mp = _per_mp(r)
        lines.append(f"| {r['name']} | {r['bytes']:,} | {_mp(r['pixels'])} | " if r.get("pixels")
                     else f"| {r['name']} | {r['bytes']:,} | | ")
        lines[-1] += (f"{format_answer(r)}{flag} | {r['cpu_s']:.2f} | {'' if per_mp is None else f'{per_mp:.3f}'} | "
                      f"{_mb(r['peak_kb'])} ({_mb(r['baseline_kb'])}) |")
    return "\n".join(lines)


def request_answer(row: dict) -> str:
    if "status" not in row:
        return row["answer"]
    if row["error"]:
        return f"{row['status']} {row['error']['code']}: {row['error']['message']}"
    return f"{row['status']}, {row['predictions']} prediction{'s' if row['predictions'] != 1 else ''}"


def request_table(rows: list[dict], limits: dict) -> str:
    lines = ["| request | images | MP | image bytes | answer | images decoded | decode CPU s | decode CPU s / MP | "
             f"CPU s (Timeout {limits['timeout_s']:g} s) | wall s | peak RSS MB, baseline "
             f"(MemorySize {limits['memory_mb']} MB) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        refused = r["name"].startswith("REFUSED")
        flag = " **(unexpected)**" if "status" not in r or (r["status"] == 200) == refused or (
            refused and r.get("decoded")) else ""
        lead = f"| {r['name']} | {r['images']} | {_mp(r['pixels'])} | {r['bytes']:,} | {request_answer(r)}{flag} |"
        if "status" not in r:
            lines.append(lead + " | | | | | |")
            continue
        decode_s = sum(d[1] for d in r["decodes"])
        decoded_pixels = sum(d[0] or 0 for d in r["decodes"])
        per_mp = f"{decode_s / (decoded_pixels / 1e6):.3f}" if decoded_pixels else ""
        lines.append(f"{lead} {r['decoded']} | {decode_s:.2f} | {per_mp} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
                     f"{_mb(r['peak_kb'])} ({_mb(r['baseline_kb'])}) |")
    return "\n".join(lines)


def bound_sentence(measured: list[tuple[float, int, int, str]], what: str) -> str:
    """Whether the request deadline's decode estimate (api.decode_estimate_s: pixels x
    DECODE_SECONDS_PER_MEGAPIXEL + bytes x DECODE_SECONDS_PER_MEGABYTE) bounds every
    (CPU s, pixels, bytes, name) decode measured, and the highest CPU s per megapixel of
    the decodes of at least PER_MP_FROM pixels."""
    parts = []
    ratios = [(spent / decode_estimate_s(pixels, size), spent, name) for spent, pixels, size, name in measured
              if pixels and size]
    if ratios:
        ratio, spent, name = max(ratios)
        verdict = "bounds every one" if ratio <= 1 else "is exceeded"
        parts.append(f"The deadline's decode estimate ({DECODE_SECONDS_PER_MEGAPIXEL:g} s per megapixel + "
                     f"{DECODE_SECONDS_PER_MEGABYTE:g} s per megabyte of file) {verdict} {what}: at most "
                     f"{ratio:.2f} of it ({spent:.2f} s, {name}).")
    big = [(spent / (pixels / 1e6), name) for spent, pixels, _, name in measured if pixels and pixels >= PER_MP_FROM]
    if big:
        worst, name = max(big)
        parts.append(f"Highest decode CPU s per megapixel {what} of at least {PER_MP_FROM / 1e6:g} MP: {worst:.3f} "
                     f"({name}).")
    return " ".join(parts)


def replace_section(document: str, markers: tuple[str, str], text: str) -> str:
    start, end = markers
    if start not in document or end not in document:
        raise ValueError(f"no {start} ... {end} section")
    before, rest = document.split(start, 1)
    return f"{before}{start}\n{text}\n{end}{rest.split(end, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="markdown file whose intake-worst-case and intake-per-request "
                                                   "sections are replaced")
    parser.add_argument("--only", help="run only the cases (per format and per request) whose name contains this")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="trained model folder for the per-request "
                                                                          "table (default artifacts/model)")
    parser.add_argument("--no-requests", action="store_true", help="skip the per-request table")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="SAM template giving MemorySize and Timeout")
    args = parser.parse_args(argv)
    if args.write:
        if not args.write.is_file():
            parser.error(f"{args.write} does not exist")
        document = args.write.read_text()
        for key, (start, end) in MARKERS.items():
            if (key == "format" or not args.no_requests) and (start not in document or end not in document):
                parser.error(f"{args.write} has no {start} ... {end} section")
    if not args.no_requests and not (args.model / "model.json").is_file():
        parser.error(f"{args.model} holds no model.json: train one (make demo) or give --model, or --no-requests")
    limits = template_limits(args.template)
    command = shlex.join(["python", "benchmarks/intake_worst_case.py", *argv])
    where = machine()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm = [folder / "warm.png", folder / "warm.jpg"]
        warm[0].write_bytes(encode(Image.new("L", (8, 8)), "PNG"))
        warm[1].write_bytes(encode(Image.new("RGB", (8, 8)), "JPEG"))
        for name, data in worst_cases(args.only).items():
            assert len(data) <= MAX_IMAGE_BYTES, (name, len(data))
            rows.append(measure(name, data, folder, warm))
            print(f"  {name}: {rows[-1].get('cpu_s', rows[-1]['answer'])}", file=sys.stderr, flush=True)

        request_rows = []
        if not args.no_requests:
            decoded = [r for r in rows if r.get("answer") == "decoded" and r.get("pixels", 0) >= PER_MP_FROM]
            at_cap = [r for r in decoded if r["pixels"] >= MAX_IMAGE_PIXELS * 0.99]
            singles = {}
            # the 40 MP inputs that cost the most CPU and the most memory, the input that costs the most per MP
            for candidates, key in ((at_cap, lambda r: r["cpu_s"]), (at_cap, lambda r: r["peak_kb"]),
                                    (decoded, _per_mp)):
                if candidates:
                    singles[max(candidates, key=key)["name"]] = None
            if singles:
                built = worst_cases(lambda name: name in singles)
                singles = {name: built[name] for name in singles}
            typical_warm = folder / "typical.png"
            typical_warm.write_bytes(speckle_png(*TYPICAL_IMAGE, seed=99))
            for name, (images, explain) in request_cases(singles or None).items():
                if args.only and args.only not in name:
                    continue
                request_rows.append(measure_request(name, images, explain, args.model, limits["timeout_s"],
                                                    folder, typical_warm))
                print(f"  {name}: {request_rows[-1].get('cpu_s', request_rows[-1].get('answer'))}", file=sys.stderr,
                      flush=True)

    reset = all(r.get("reset", True) for r in rows + request_rows)
    peak_note = ("the VmHWM of the subprocess after its high-water mark was reset at the baseline "
                 "(/proc/self/clear_refs), i.e. the most resident memory of the whole process during that decode"
                 if reset else "the subprocess's VmHWM (could not be reset: it includes the warm-up)")
    format_text = (
        f"{table(rows)}\n\n"
        f"Measured with `{command}` on {where}. CPU s: user + system CPU of `decode_image(data, 224)` alone, one "
        f"subprocess per input, after a warm-up decode of a PNG and a JPEG; CPU s / MP: the same per megapixel "
        f"of the image header, for the decoded inputs of at least {PER_MP_FROM / 1e6:g} MP. Peak RSS: {peak_note}; "
        f"baseline: what was resident "
        f"before it (Python, NumPy and Pillow loaded). "
        + bound_sentence([(r["cpu_s"], r["pixels"], r["bytes"], r["name"]) for r in rows
                          if r.get("answer") == "decoded"],
                         "of a decoded input"))
    texts = {"format": format_text}
    print(format_text)
    if request_rows:
        model_rows = [r for r in request_rows if "status" in r]
        about = model_rows[0] if model_rows else {}
        load_peak = _mb(max(r["load_peak_kb"] for r in model_rows)) if model_rows else "?"
        request_text = (
            f"{request_table(request_rows, limits)}\n\n"
            f"Measured with `{command}` on {where}, against template.yaml's {limits['function']}: MemorySize "
            f"{limits['memory_mb']} MB, Timeout {limits['timeout_s']:g} s. Each request is an API Gateway REST event "
            f"(`POST /predict`, JSON body) given to `api.make_handler(ServingSettings(model_path={args.model.name}/))` "
            f"in its own subprocess, after the model load and one warm-up request; the Lambda context says the whole "
            f"Timeout is left. Model: `{about.get('model_version', '?')}`, variant {about.get('variant', '?')}, "
            f"{about.get('image_size', '?')} px input, {about.get('threads', '?')} interpreter threads; the process's "
            f"peak during the model load and warm-up: {load_peak} MB. CPU s: user + "
            f"system CPU of the handler call alone (base64 and JSON decoding, the pre-scan, decoding, the model, "
            f"explain's overlays); decode CPU s: the part of it spent in `decode_image` (at the model's input size), "
            f"and per megapixel of the images decoded; images decoded: calls of `decode_image`. Peak RSS: "
            f"{peak_note.replace('that decode', 'the request')}; baseline: what was resident after the model load and "
            f"the warm-up. "
            + bound_sentence([(d[1], d[0], d[2], r["name"]) for r in request_rows for d in r.get("decodes", [])
                              if d[0]], "of an image decoded in a request"))
        texts["request"] = request_text
        print(f"\n{request_text}")
    if args.write:
        document = args.write.read_text()
        for key, text in texts.items():
            document = replace_section(document, MARKERS[key], text)
        args.write.write_text(document)
    bad = [r["name"] for r in rows if unexpected(r)]
    if bad:
        print(f"unexpected answers: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
