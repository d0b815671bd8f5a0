"""Issue 19: no metadata, shape or batch buys more than its budget. Pillow sees only the
pixels (the pre-scan rewrites each file into a minimal stream), the EXIF orientation is
read by the project's own bounded parser, shapes are capped on the header, and a
request has a pixel budget and a deadline. Every hostile input is built here
(benchmarks/intake_attacks.py) at the size the issue measured; each one cost seconds to
minutes of CPU or gigabytes of memory before, and must now cost almost nothing."""

from __future__ import annotations

import base64
import io
import struct
import time
import tracemalloc

import numpy as np
import pytest
from api_stub import Context, StubPredictor, body_of, stub_handler
from PIL import Image, ImageOps

from benchmarks.intake_attacks import (
    amplified_ifd,
    exif_jpeg,
    exif_png,
    jpeg_with_app,
    jpeg_without_dc_scan,
    mpf_jpeg,
    palette_png_past_plte,
    png_raw,
    png_with_bad_crc,
    thin_png,
    tiff_ifd,
)
from benchmarks.intake_worst_case import encode, jpeg_segments, png_chunk, progressive_scans_jpeg
from busi_classifier.serving import api, decode
from busi_classifier.serving.constants import MAX_ASPECT_RATIO, MAX_IMAGE_SIDE, MAX_REQUEST_PIXELS
from busi_classifier.serving.decode import (
    CorruptImageError,
    ImageShapeError,
    ImageTooLargeError,
    InvalidImageError,
    decode_image,
    exif_orientation,
    inspect_image,
)
from busi_classifier.serving.events import rest_v1_event

SIZE = 32


def cost(data: bytes, size: int = SIZE):
    """(the result or the error, CPU seconds, peak Python-allocated bytes) of decode_image."""
    tracemalloc.start()
    start = time.process_time()
    try:
        result = decode_image(data, size)
    except InvalidImageError as exc:
        result = exc
    spent = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, spent, peak


def speckle(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).gamma(2.0, 40.0, (height, width)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def seen_by_pillow(monkeypatch) -> list[bytes]:
    """Every byte stream Image.open is given from now on."""
    streams = []
    real_open = Image.open

    def recording(fp, *args, **kwargs):
        streams.append(fp.getvalue() if isinstance(fp, io.BytesIO) else b"")
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording)
    return streams


# --------------------------------------------------------------------------- Pillow sees only pixels


def test_jpeg_mpf_index_never_reaches_pillow(monkeypatch):
    """Old code: Pillow's jpeg_factory read the MP index at open (and again for the
    truncation probe): this 65 KB file cost minutes of CPU and gigabytes."""
    data = mpf_jpeg(2700, 32_768)
    streams = seen_by_pillow(monkeypatch)
    out, spent, peak = cost(data)
    assert isinstance(out, np.ndarray) and spent < 0.3 and peak < 5_000_000, (spent, peak)
    assert streams and all(b"MPF\0" not in s for s in streams)


@pytest.mark.parametrize("build", [lambda: exif_png(5000, 200_000), lambda: exif_jpeg(4000, 16_000)],
                         ids=["png-eXIf", "jpeg-APP1"])
def test_exif_entries_pointing_at_one_block_cost_nothing(build, monkeypatch):
    """N entries x S bytes: old code peaked at ~1 GB for the 0.26 MB PNG."""
    data = build()
    streams = seen_by_pillow(monkeypatch)
    out, spent, peak = cost(data)
    assert isinstance(out, np.ndarray) and spent < 0.3 and peak < 5_000_000, (spent, peak)
    assert all(b"eXIf" not in s and b"Exif\0\0" not in s for s in streams)


@pytest.mark.parametrize("build", [lambda: exif_jpeg(4000, 16_000, orientation=6),
                                   lambda: exif_png(3000, 10_000, orientation=6)], ids=["jpeg", "png"])
def test_exif_orientation_among_many_entries_is_cheap_and_applied(build):
    """Old code: ImageOps.exif_transpose re-serialised the block (85 CPU-s for the JPEG)."""
    data = build()
    out, spent, _ = cost(data)
    assert isinstance(out, np.ndarray) and spent < 0.3
    assert inspect_image(data).orientation == 6


def test_every_metadata_segment_is_dropped_and_the_pixels_stay_the_same(monkeypatch):
    image = speckle().convert("RGB")
    plain = encode(image, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x010F] = "scanner"
    rich = encode(image, "JPEG", quality=90, exif=exif, icc_profile=b"\0" * 3000, comment=b"a comment")
    rich = jpeg_with_app(0xED, [b"Photoshop 3.0\0" + b"8BIM" * 100], rich)
    rich = jpeg_with_app(0xE2, [b"MPF\0" + tiff_ifd([(0xB000, 7, 4, b"0100")])], rich)
    streams = seen_by_pillow(monkeypatch)
    assert np.array_equal(decode_image(rich, 64), decode_image(plain, 64))
    for stream in streams:
        markers = [marker for marker, _, _ in jpeg_segments(stream)]
        assert set(markers) <= {0xE0, 0xEE, 0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xDA}, [hex(m) for m in markers]
        for marker, start, end in jpeg_segments(stream):  # only the canonical colour markers
            if marker in (0xE0, 0xEE):
                assert stream[start:end] in (decode._JFIF_SEGMENT, decode._adobe_segment(stream[end - 1]))


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_the_rewritten_jpeg_decodes_to_the_same_pixels_as_the_original(mode, progressive):
    """The JFIF and Adobe markers decide libjpeg's colour transform: they are written anew
    where the original had one, so CMYK (Adobe) and YCbCr (JFIF) files keep their colours."""
    image = speckle(80, 48).convert(mode)
    data = encode(image, "JPEG", quality=92, progressive=progressive)
    reference = Image.open(io.BytesIO(data))
    reference.draft(None, (64, 64))
    rewritten = Image.open(io.BytesIO(inspect_image(data).stream))
    rewritten.draft(None, (64, 64))
    assert reference.mode == rewritten.mode and np.array_equal(np.asarray(reference), np.asarray(rewritten))


def test_rgb_jpeg_without_jfif_keeps_its_colour_transform():
    """An Adobe marker with transform 0 means RGB (no YCbCr): dropping it would change colours."""
    image = Image.new("RGB", (32, 32), (200, 40, 90))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, keep_rgb=True)  # libjpeg writes Adobe transform 0
    data = buffer.getvalue()
    decoded = decode_image(data, 32)[16, 16]
    assert np.allclose(decoded, (200, 40, 90), atol=6), decoded


def test_png_keeps_only_the_chunks_decoding_needs(monkeypatch):
    extra = (png_chunk(b"tEXt", b"k\0v") + png_chunk(b"eXIf", amplified_ifd(3, 64)) + png_chunk(b"gAMA", b"\0\0\0\1")
             + png_chunk(b"pHYs", b"\0" * 9) + png_chunk(b"vpAg", b"\0" * 9))
    data = png_raw(8, 8, (b"\0" + b"\x40" * 8) * 8, before_idat=extra, after_idat=png_chunk(b"tIME", b"\0" * 7))
    stream = inspect_image(data).stream
    kinds, position = [], 8
    while position < len(stream):
        length, kind = struct.unpack_from(">I4s", stream, position)
        kinds.append(kind)
        position += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert decode_image(data, 8).max() == 0x40


# --------------------------------------------------------------------------- the orientation parser


def orientation_ifd(value: int, order: str = "<", kind: int = 3, before: int = 0) -> bytes:
    rows = [(0x0001 + i, 3, 1, struct.pack(order + "H", 1)) for i in range(before)]  # tags below 0x0112
    rows.append((0x0112, kind, 1, struct.pack(order + "H", value)))
    return tiff_ifd(rows, order=order)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("value", range(1, 9))
def test_orientation_is_read_in_both_byte_orders(order, value):
    assert exif_orientation(orientation_ifd(value, order)) == value


@pytest.mark.parametrize("tiff", [
    b"", b"II*\0", b"XX*\0\x08\0\0\0", b"II+\0\x08\0\0\0\0\0", b"II*\0\xff\xff\xff\xff",
    orientation_ifd(9), orientation_ifd(0), orientation_ifd(6, kind=4),
    b"II*\0\x08\0\0\0\xff\xff" + b"\0" * 12,  # 65535 entries claimed, one there
], ids=["empty", "short", "bad-order", "bad-magic", "offset-past-end", "value-9", "value-0", "LONG", "count-lies"])
def test_malformed_exif_means_upright(tiff):
    assert exif_orientation(tiff) == 1


def test_the_parser_looks_at_a_bounded_number_of_entries():
    assert exif_orientation(orientation_ifd(6, before=decode.MAX_EXIF_ENTRIES - 1)) == 6
    assert exif_orientation(orientation_ifd(6, before=decode.MAX_EXIF_ENTRIES)) == 1
    huge = orientation_ifd(6, before=5000)
    start = time.process_time()
    for _ in range(1000):
        assert exif_orientation(huge) == 1
    assert time.process_time() - start < 1.0


@pytest.mark.parametrize("value", range(1, 9))
def test_orientation_turns_the_image_as_pillows_exif_transpose_does(value):
    """Same picture as ImageOps.exif_transpose followed by the same decode: the geometry
    of every orientation (the resize runs before the transpose, so pixels agree within
    rounding)."""
    picture = Image.new("L", (90, 40), 0)
    picture.paste(255, (0, 0, 30, 10))  # a bright block in one corner: asymmetric
    exif = Image.Exif()
    exif[0x0112] = value
    data = encode(picture.convert("RGB"), "PNG", exif=exif.tobytes())
    ours = decode_image(data, 64).astype(int)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    theirs = decode_image(encode(upright.convert("RGB"), "PNG"), 64).astype(int)
    assert inspect_image(data).orientation == value
    assert np.abs(ours - theirs).max() <= 2


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("data", [
    lambda: thin_png(1, 40_000_000),  # palette + tRNS: 78 KB, +2.2 GB before
    lambda: thin_png(1, 40_000_000, 8, 6),  # RGBA8
    lambda: thin_png(2, 20_000_000, 16, 6),  # RGBA16
    lambda: thin_png(40_000_000, 1, 8, 0),
    lambda: thin_png(MAX_IMAGE_SIDE + 1, 100, 8, 0),
    lambda: thin_png(100, 100 * MAX_ASPECT_RATIO + 1, 8, 0),
], ids=["1x40M-palette-tRNS", "1x40M-RGBA8", "2x20M-RGBA16", "40Mx1-gray", "side-cap", "aspect-cap"])
def test_degenerate_shapes_are_refused_on_the_header(data, monkeypatch):
    payload = data()
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("reached Pillow"))
    out, spent, peak = cost(payload)
    assert isinstance(out, (ImageShapeError, ImageTooLargeError)) and spent < 0.2 and peak < 2_000_000
    assert str(out) in decode.FIXED_MESSAGES


def test_a_jpeg_strip_is_refused_on_its_frame_header(monkeypatch):
    jpeg = bytearray(encode(Image.new("L", (8, 8)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 8, 8 * MAX_ASPECT_RATIO + 8)  # height, width
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("reached Pillow"))
    assert isinstance(cost(bytes(jpeg))[0], ImageShapeError)


def test_the_shapes_at_the_caps_still_decode():
    assert decode_image(encode(Image.new("L", (4, 4 * MAX_ASPECT_RATIO), 9)), SIZE).shape == (SIZE, SIZE, 3)
    assert decode_image(encode(Image.new("L", (MAX_IMAGE_SIDE, 1000), 9)), SIZE).shape == (SIZE, SIZE, 3)


# --------------------------------------------------------------------------- strict structure


def test_a_png_chunk_with_a_wrong_crc_is_refused():
    for chunk in (b"IDAT", b"IHDR"):
        out, _, _ = cost(png_with_bad_crc(chunk))
        assert isinstance(out, CorruptImageError) and str(out) == decode.BAD_CHECKSUM_MESSAGE
    bad_text = bytearray(png_raw(8, 8, (b"\0" + b"\1" * 8) * 8, before_idat=png_chunk(b"tEXt", b"k\0v")))
    crc = bad_text.index(b"tEXt") + 4 + 3
    bad_text[crc] ^= 1  # an ancillary chunk, dropped anyway, is checked too
    assert isinstance(cost(bytes(bad_text))[0], CorruptImageError)


def test_palette_indices_past_the_plte_are_refused():
    out, _, _ = cost(palette_png_past_plte(2))
    assert isinstance(out, CorruptImageError) and str(out) == decode.BAD_PALETTE_MESSAGE
    assert isinstance(cost(palette_png_past_plte(256))[0], np.ndarray)  # every index defined


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_ac_scans_without_a_dc_scan_are_refused(mode):
    """libjpeg only warns (a bogus progression) and decodes grey; Pillow answered 200."""
    out, _, _ = cost(jpeg_without_dc_scan(64, mode))
    assert isinstance(out, CorruptImageError) and str(out) == decode.INCOMPLETE_SCANS_MESSAGE


def test_a_repeated_first_pass_scan_is_refused_and_a_valid_long_progression_accepted():
    assert isinstance(cost(progressive_scans_jpeg(5, 256, valid=False))[0], CorruptImageError)
    assert isinstance(cost(progressive_scans_jpeg(decode.MAX_JPEG_SCANS, 256))[0], np.ndarray)


@pytest.mark.parametrize("bad", [
    (b"IHDR", lambda body: body[:8] + b"\x08\x05" + body[10:]),  # colour type 5 does not exist
    (b"IHDR", lambda body: body[:8] + b"\x03\x02" + body[10:]),  # RGB at 3 bits
    (b"IHDR", lambda body: body[:12] + b"\x02"),  # interlace method 2
])
def test_png_header_fields_are_checked(bad):
    kind, change = bad
    data = bytearray(png_raw(8, 8, (b"\0" + b"\1" * 8) * 8))
    start = data.index(kind)
    body = change(bytes(data[start + 4:start + 17]))
    data[start + 4:start + 21] = body + struct.pack(">I", __import__("zlib").crc32(kind + body))
    assert isinstance(cost(bytes(data))[0], CorruptImageError)


def test_png_chunk_order_is_checked():
    rows = (b"\0" + b"\1" * 8) * 8
    plte = png_chunk(b"PLTE", b"\0\0\0" * 4)
    assert isinstance(cost(png_raw(8, 8, rows, 8, 3, after_idat=plte))[0], CorruptImageError)  # PLTE after IDAT
    assert isinstance(cost(png_raw(8, 8, rows, 8, 3))[0], CorruptImageError)  # palette image without PLTE
    two_idat = png_raw(8, 8, rows, after_idat=png_chunk(b"tEXt", b"k\0v") + png_chunk(b"IDAT", b""))
    assert isinstance(cost(two_idat)[0], CorruptImageError)  # IDAT chunks not contiguous
    assert isinstance(cost(png_raw(8, 8, rows, before_idat=png_chunk(b"ABCD", b"")))[0], CorruptImageError)


# --------------------------------------------------------------------------- the request budget


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Recording(StubPredictor):
    """The stub predictor, counting the images it decodes; ``delay_s`` per image."""

    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self.calls, self.delay_s = 0, delay_s

    def predict_bytes(self, data, explain=False):
        self.calls += 1
        time.sleep(self.delay_s)
        return super().predict_bytes(data, explain)


class Remaining(Context):
    """A Lambda context with ``ms`` milliseconds left when the request starts."""

    def __init__(self, ms: int):
        super().__init__()
        self.end = time.monotonic() + ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self.end - time.monotonic()) * 1000)


def flat(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 77), "PNG", compress_level=9)


def test_a_batch_over_the_request_pixel_budget_is_refused_before_any_decode():
    """Issue: 16 progressive 40 MP JPEGs with cheap refinement scans cost 29 CPU-s."""
    bomb = progressive_scans_jpeg(decode.MAX_JPEG_SCANS)  # 6320 x 6320, valid, 32 scans
    predictor = Recording()
    start = time.process_time()
    answer = stub_handler(predictor)({"images": [b64(bomb)] * 16}, Context())
    assert answer["error"]["code"] == "request_too_large" and predictor.calls == 0
    assert str(MAX_REQUEST_PIXELS) in answer["error"]["message"]
    assert time.process_time() - start < 2.0  # the pre-scan of 16 files, no decode


def test_a_batch_within_the_budget_is_answered():
    predictor = Recording()
    frame = flat(1920, 1080)  # 16 Full-HD frames: 33.2 MP together
    answer = stub_handler(predictor)({"images": [b64(frame)] * 16}, Context())
    assert len(answer["predictions"]) == 16 and predictor.calls == 16


def test_a_bad_last_image_is_refused_before_the_others_are_decoded():
    predictor = Recording()
    good = encode(speckle(), "PNG")
    answer = stub_handler(predictor)({"images": [b64(good)] * 15 + [b64(png_with_bad_crc())]}, Context())
    assert answer["error"]["code"] == "invalid_image" and answer["error"]["message"].startswith("images[15]: ")
    assert predictor.calls == 0


def test_a_request_that_cannot_finish_in_time_answers_504_before_decoding():
    predictor = Recording()
    frame = flat(2000, 1250)  # 2.5 MP each
    answer = stub_handler(predictor)({"images": [b64(frame)] * 16}, Remaining(300))
    assert answer["error"]["code"] == "deadline_exceeded" and predictor.calls == 0
    assert answer["error"]["message"] == api.ERRORS["deadline_exceeded"][1]


def test_a_slow_batch_stops_at_the_deadline_with_its_own_answer():
    """Each image takes 0.4 s; 1.5 s are left after the margin: the request answers 504
    well before the 6.4 s the batch would need, and before the context's time is up."""
    predictor = Recording(delay_s=0.4)
    started = time.monotonic()
    context = Remaining(int((api.DEADLINE_MARGIN_S + 1.5) * 1000))
    answer = stub_handler(predictor)({"images": [b64(encode(speckle(), "PNG"))] * 16}, context)
    assert answer["error"]["code"] == "deadline_exceeded"
    assert 1 <= predictor.calls < 16
    assert time.monotonic() - started < 1.5 + api.DEADLINE_MARGIN_S
    assert context.get_remaining_time_in_millis() > 0


def test_through_api_gateway_the_deadline_is_a_504():
    event = rest_v1_event("POST", "/predict", raw=flat(2000, 1250), content_type="image/png")
    answer = stub_handler(Recording())(event, Remaining(100))
    assert answer["statusCode"] == 504 and body_of(answer)["error"]["code"] == "deadline_exceeded"


def test_a_function_with_a_short_timeout_keeps_a_proportional_margin():
    """A 1 s function timeout: the margin is a quarter of it, not the whole second."""
    deadline = api.Deadline(Remaining(1000))
    assert 0.7 < deadline.left() <= 0.75
    assert stub_handler(Recording())({"image": b64(encode(speckle(), "PNG"))}, Remaining(1000))["prediction"]
    assert 27.0 - 0.1 < api.Deadline(Remaining(28_000)).left() <= 27.0


def test_a_context_with_time_enough_answers_as_before():
    answer = stub_handler(Recording())({"image": b64(encode(speckle(), "PNG"))}, Remaining(20_000))
    assert "prediction" in answer


# --------------------------------------------------------------------------- routing and messages


@pytest.mark.parametrize("stage", ["predict", "health", "prod"])
def test_routes_match_whatever_the_stage_is_called(stage):
    handler = stub_handler(Recording())
    image = b64(encode(speckle(), "PNG"))
    rest = rest_v1_event("POST", "/predict", raw=encode(speckle(), "PNG"), stage=stage, content_type="image/png")
    assert handler(rest, Context())["statusCode"] == 200
    health = rest_v1_event("GET", "/health", stage=stage)
    assert handler(health, Context())["statusCode"] == 200
    v2 = {"version": "2.0", "rawPath": f"/{stage}/predict", "headers": {"content-type": "image/png"},
          "requestContext": {"http": {"method": "POST", "path": f"/{stage}/predict"}, "stage": stage},
          "body": image, "isBase64Encoded": True}
    assert handler(v2, Context())["statusCode"] == 200
    v2_health = {"version": "2.0", "rawPath": f"/{stage}/health",
                 "requestContext": {"http": {"method": "GET", "path": f"/{stage}/health"}, "stage": stage}}
    assert handler(v2_health, Context())["statusCode"] == 200


def test_no_answer_echoes_the_method():
    handler = stub_handler(Recording())
    answer = handler(rest_v1_event("<SCRIPT>ALERT(1)", "/predict"), Context())
    assert answer["statusCode"] == 405
    assert "script" not in answer["body"].lower() and "alert" not in answer["body"].lower()


@pytest.mark.parametrize("payload", [
    {"images": ["x"] * 17}, {"image": "aGk=", "images": ["aGk="]}, {"image": "aGk=", "url": "https://e.org/x"},
], ids=["17-images", "image-and-images", "image-and-url"])
def test_request_shape_errors_are_fixed_sentences(payload):
    answer = stub_handler(Recording())(payload, Context())
    message = answer["error"]["message"]
    assert "17" not in message and " and " not in message.replace("image, images or url", "")


# --------------------------------------------------------------------------- docs agree with the code


def test_the_docs_error_table_lists_every_fixed_message_of_decode():
    from conftest import ROOT

    text = (ROOT / "docs" / "input-limits.md").read_text()
    table = text.split("<!-- decode-errors -->")[1].split("<!-- /decode-errors -->")[0]
    quoted = set(__import__("re").findall(r"`([^`]+)`", table))
    for message in decode.FIXED_MESSAGES:
        assert message in quoted, f"docs/input-limits.md lacks {message!r}"
    assert api.ERRORS["image_too_large"][1] == decode.ImageTooLargeError.message


def test_the_docs_state_the_caps_the_code_applies():
    from conftest import ROOT

    text = (ROOT / "docs" / "input-limits.md").read_text()
    for value in (f"{MAX_IMAGE_SIDE:,} px", f"| {MAX_ASPECT_RATIO} (", f"{MAX_REQUEST_PIXELS:,}",
                  f"{decode.MAX_EXIF_ENTRIES} entries", f"{api.DECODE_SECONDS_PER_MEGAPIXEL} s per megapixel", f"{api.DECODE_SECONDS_PER_MEGABYTE} s per megabyte",
                  f"less {api.DEADLINE_MARGIN_S:g} s"):
        assert value in text, value
