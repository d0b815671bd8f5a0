"""Worst-case cost of image intake: CPU seconds and peak memory of ``decode_image`` for
the most expensive inputs each allowed format accepts at the largest accepted payload
(api.MAX_IMAGE_BYTES bytes, constants.MAX_IMAGE_PIXELS pixels), and for the hostile
inputs of issue 12 (refused). Each input is decoded in its own subprocess, so that its
peak RSS (resource.getrusage) is its own.

    python benchmarks/intake_worst_case.py                 # table to stdout
    python benchmarks/intake_worst_case.py --write docs/input-limits.md

``--write`` replaces the table between the ``<!-- intake-worst-case -->`` markers of the
given file. The builders below are also what tests/test_intake*.py use (at small sizes).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
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

from busi_classifier.serving.api import MAX_IMAGE_BYTES  # noqa: E402
from busi_classifier.serving.constants import MAX_IMAGE_PIXELS  # noqa: E402
from busi_classifier.serving.decode import MAX_JPEG_SCANS, MAX_METADATA_BYTES, MAX_METADATA_SEGMENTS, MAX_PNG_CHUNKS  # noqa: E402

BOMB_SIDE = 6320  # 6320 x 6320 = 39.9 MP, just under the pixel cap (the scan bomb)
MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")


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


def progressive_scans_jpeg(scans: int, side: int = BOMB_SIDE) -> bytes:
    """A progressive grayscale JPEG of side x side: one DC scan, then ``scans - 1``
    identical AC scans made of end-of-block runs (~65 bytes each). With thousands of
    scans this is the issue's scan bomb; with MAX_JPEG_SCANS it is the most scans
    accepted."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    sos = [i for i, s in enumerate(segments) if s[0] == 0xDA]
    dc_end = segments[sos[0]][2]
    ac_table_start = segments[sos[0] + 1][1]  # the DHT before the first AC scan
    ac_sos_start, ac_end = segments[sos[1]][1], segments[sos[1]][2]
    return (data[:dc_end] + data[ac_table_start:ac_end] + data[ac_sos_start:ac_end] * (scans - 2)
            + b"\xff\xd9")


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


def worst_cases() -> dict[str, bytes]:
    """Every benchmark input, largest accepted payload. Names say accepted/refused."""
    side16 = int(MAX_IMAGE_PIXELS ** 0.5)  # 6324: 39.99 MP
    tall = MAX_IMAGE_PIXELS // 447  # the widest strip JPEG's draft mode cannot reduce
    cases = {
        "png 8-bit gray, 40 MP, flat": flat_png(side16, side16, 8, 0),
        "png 16-bit RGBA, 40 MP, flat (320 MB raw)": flat_png(side16, side16, 16, 6),
        "png 16-bit gray, 40 MP, flat": flat_png(side16, side16, 16, 0),
        "png palette + tRNS, 40 MP": flat_png(side16, side16, 8, 3, extra=png_chunk(b"tRNS", b"\0")),
        "png 8-bit gray noise at the byte cap (2.1 MP)": flat_png(2096, 2096, 8, 0, noise_rows=2096),
        f"png {MAX_PNG_CHUNKS} chunks (text) at 40 MP": flat_png(
            side16, side16, 8, 0,
            extra=b"".join(png_chunk(b"tEXt", b"k\0" + b"v" * 400) for _ in range(MAX_PNG_CHUNKS - 3))),
        "jpeg RGB 4:4:4, 40 MP, ~4.4 MB of scan data": noise_jpeg_near_cap(BOMB_SIDE, BOMB_SIDE),
        f"jpeg RGB 447x{min(tall, 65500)} (no draft reduction), near the byte cap":
            noise_jpeg_near_cap(447, min(tall, 65500)),
        f"jpeg progressive 40 MP, {MAX_JPEG_SCANS} scans (the most accepted)": progressive_scans_jpeg(MAX_JPEG_SCANS),
        f"jpeg {MAX_METADATA_SEGMENTS} COM segments, {MAX_METADATA_BYTES // 1024} KiB of metadata":
            jpeg_with_segments(0xFE, MAX_METADATA_SEGMENTS - 1,  # + the encoder's JFIF APP0
                           b"c" * (MAX_METADATA_BYTES // MAX_METADATA_SEGMENTS - 40)),
        "REFUSED scan bomb 40 MP, 4.4 MB of AC scans": progressive_scans_jpeg((MAX_IMAGE_BYTES - 80_000) // 65),
        "REFUSED truncated JPEG + EOI": truncated_jpeg(2048),
        "REFUSED GIF comment bomb, 4.4 MB": gif_comment_bomb((MAX_IMAGE_BYTES - 100) // 3),
        "REFUSED EPS (never runs Ghostscript)": EPS,
        "REFUSED PNG over the chunk cap, 4.4 MB": flat_png(
            64, 64, extra=png_chunk(b"tEXt", b"k\0") * ((MAX_IMAGE_BYTES - 200) // 14)),
        "REFUSED JPEG with 4.4 MB of 4-byte COM segments": jpeg_with_segments(0xFE, (MAX_IMAGE_BYTES - 1000) // 4),
        "REFUSED PNG header 100000x100000": png_claiming(100_000, 100_000),
    }
    return cases


def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- measuring


CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[2])
from busi_classifier.serving.decode import InvalidImageError, decode_image
data = open(sys.argv[1], "rb").read()
decode_image(open(sys.argv[3], "rb").read(), 224)  # warm: imports and plugins loaded
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
def peak_kb():  # VmHWM: this process's own high-water mark (ru_maxrss survives exec on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before_rss = peak_kb()
start, wall = cpu(), time.perf_counter()
try:
    decode_image(data, 224)
    answer = "decoded"
except InvalidImageError as exc:
    answer = f"{type(exc).__name__}: {exc}"
print(f"{cpu() - start:.3f}\t{time.perf_counter() - wall:.3f}\t{before_rss}\t"
      f"{peak_kb()}\t{answer}")
"""


def measure(name: str, data: bytes, folder: Path, warm: Path) -> dict:
    path = folder / "input.bin"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ROOT), str(warm)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"name": name, "bytes": len(data), "answer": f"child failed: {out.stderr.strip()[-200:]}"}
    cpu, wall, before, peak, answer = out.stdout.strip().split("\t", 4)
    return {"name": name, "bytes": len(data), "cpu_s": float(cpu), "wall_s": float(wall),
            "baseline_mb": int(before) / 1024, "peak_mb": int(peak) / 1024, "answer": answer}


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, Pillow {Image.__version__}"


def table(rows: list[dict]) -> str:
    lines = ["| input | bytes | answer | CPU s | peak RSS MB (baseline) |", "|---|---:|---|---:|---:|"]
    for r in rows:
        if "cpu_s" not in r:
            lines.append(f"| {r['name']} | {r['bytes']} | {r['answer']} | | |")
            continue
        lines.append(f"| {r['name']} | {r['bytes']:,} | {r['answer']} | {r['cpu_s']:.2f} | "
                     f"{r['peak_mb']:.0f} ({r['baseline_mb']:.0f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="markdown file whose intake-worst-case section is replaced")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    if args.write and not args.write.is_file():
        parser.error(f"{args.write} does not exist")
    cases = worst_cases()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm = folder / "warm.png"
        warm.write_bytes(encode(Image.new("L", (8, 8)), "PNG"))
        for name, data in cases.items():
            if args.only and args.only not in name:
                continue
            assert len(data) <= MAX_IMAGE_BYTES, (name, len(data))
            rows.append(measure(name, data, folder, warm))
            print(f"  {name}: {rows[-1].get('cpu_s', '-')} s", file=sys.stderr, flush=True)
    text = (f"{table(rows)}\n\nMeasured with `python benchmarks/intake_worst_case.py` on {machine()}. "
            "CPU s: user + system CPU of decode_image alone (one subprocess per input, after a warm-up "
            "decode); peak RSS: the subprocess's VmHWM, its maximum resident set (baseline: Python, NumPy "
            "and Pillow loaded, before this decode).")
    print(text)
    if args.write:
        document = args.write.read_text()
        start, end = "<!-- intake-worst-case -->", "<!-- /intake-worst-case -->"
        if start not in document or end not in document:
            parser.error(f"{args.write} has no {start} ... {end} section")
        before, rest = document.split(start, 1)
        after = rest.split(end, 1)[1]
        args.write.write_text(f"{before}{start}\n{text}\n{end}{after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
