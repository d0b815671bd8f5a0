"""serving.lesion: the model's lesion map turned back into the uploaded image's pixels
(letterbox undone, regions, bbox, outline, mask PNG), and the one letterbox geometry that
decode_image, the training masks and the lesion answer share. NumPy and Pillow only."""

import base64
import io
import json
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from busi_classifier.evaluation.localisation import letterbox_mask
from busi_classifier.serving import lesion
from busi_classifier.serving.decode import decode_image, letterbox_geometry
from busi_classifier.serving.lesion import (
    COVERS,
    MASK_MAX_SIDE,
    MAX_OUTLINE_POINTS,
    METHOD,
    lesion_answer,
    upsample_map,
)

SIZE = 224
STRIDE = 4
KEYS = {"found", "area_fraction", "regions", "bbox", "outline", "peak_probability", "threshold", "mask_png",
        "mask_size", "mask_media_type", "method", "covers"}


# --------------------------------------------------------------------------- helpers


def ellipse(width, height, cx, cy, rx, ry) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def l_shape(width, height) -> np.ndarray:
    """An asymmetric L: a tall bar on the left, a foot to the right along the bottom."""
    shape = np.zeros((height, width), dtype=bool)
    shape[int(0.15 * height):int(0.85 * height), int(0.2 * width):int(0.4 * width)] = True
    shape[int(0.65 * height):int(0.85 * height), int(0.2 * width):int(0.8 * width)] = True
    return shape


def perfect_grid(shape: np.ndarray, size: int = SIZE) -> np.ndarray:
    """What a perfect model outputs for an image whose lesion is ``shape``: the training
    target (the mask letterboxed like the image, by the project's own letterbox_mask),
    each 4x4 cell's lesion fraction."""
    boxed = letterbox_mask(shape, size).astype(np.float64)
    side = size // STRIDE
    return boxed.reshape(side, STRIDE, side, STRIDE).mean(axis=(1, 3))


def rasterise(outline, width, height) -> np.ndarray:
    """The pixels whose centres the polygon (vertices in pixel-corner coordinates) holds,
    by the even-odd rule."""
    points = np.asarray(outline, dtype=np.float64)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (x1, y1), (x2, y2) in zip(points, np.roll(points, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        rows = (ys >= min(y1, y2)) & (ys < max(y1, y2))
        crossing = x1 + (ys[rows] - y1) * (x2 - x1) / (y2 - y1)
        inside[rows] ^= xs[None, :] < crossing[:, None]
    return inside


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def bbox_of(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]


def decode_mask(answer) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))) as image:
        assert image.format == "PNG" and image.mode == "L"
        assert list(image.size) == answer["mask_size"]
        pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels > 0


def cell_in_image_pixels(width, height, size=SIZE) -> float:
    """One map cell (4 model-input pixels) measured in the image's pixels."""
    return STRIDE * max(width, height) / size


# --------------------------------------------------------------------------- the shape comes back


@pytest.mark.parametrize("width, height, make", [
    (301, 187, lambda w, h: ellipse(w, h, 0.58 * w, 0.45 * h, 0.22 * w, 0.3 * h)),
    (123, 400, l_shape),  # portrait, the letterbox pads left and right
    (150, 97, lambda w, h: ellipse(w, h, 0.4 * w, 0.55 * h, 0.25 * w, 0.28 * h)),  # mask at the image's own size
    (187, 301, l_shape),
])
def test_a_known_shape_comes_back_in_image_pixels(width, height, make):
    shape = make(width, height)
    answer = lesion_answer(perfect_grid(shape), 0.5, width, height, SIZE)

    assert set(answer) == KEYS
    assert answer["found"] is True and answer["regions"] == 1
    assert answer["method"] == METHOD and answer["covers"] == COVERS and answer["mask_media_type"] == "image/png"
    assert answer["threshold"] == 0.5 and answer["peak_probability"] == pytest.approx(1.0)
    expected_mask_size = [width, height] if max(width, height) <= MASK_MAX_SIDE else None
    if expected_mask_size is None:
        assert max(answer["mask_size"]) == MASK_MAX_SIDE
        assert answer["mask_size"][0] / answer["mask_size"][1] == pytest.approx(width / height, rel=0.02)
    else:
        assert answer["mask_size"] == expected_mask_size

    # the bbox within a map cell (4 model-input pixels, in image pixels) of the shape's
    slack = cell_in_image_pixels(width, height) + 1
    for got, want in zip(answer["bbox"], bbox_of(shape), strict=True):
        assert abs(got - want) <= slack, (answer["bbox"], bbox_of(shape))
    assert all(isinstance(v, int) for v in answer["bbox"])
    assert 0 <= answer["bbox"][0] < answer["bbox"][2] <= width and 0 <= answer["bbox"][1] < answer["bbox"][3] <= height

    outline = answer["outline"]
    assert 3 <= len(outline) <= MAX_OUTLINE_POINTS
    assert all(0 <= x <= width and 0 <= y <= height for x, y in outline)
    assert iou(rasterise(outline, width, height), shape) >= 0.8
    assert answer["area_fraction"] == pytest.approx(shape.mean(), rel=0.15)

    mask = decode_mask(answer)
    full = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    assert iou(full, shape) >= 0.8
    assert len(answer["mask_png"]) < 4000  # a small PNG
    json.dumps(answer)  # plain JSON types only


def test_a_the_outline_follows_the_l_shapes_concave_corner():
    width, height = 301, 187
    shape = l_shape(width, height)
    outline = lesion_answer(perfect_grid(shape), 0.5, width, height, SIZE)["outline"]
    polygon = rasterise(outline, width, height)
    # inside the L's notch (above the foot, right of the bar) the polygon is empty
    notch = np.zeros_like(shape)
    notch[int(0.2 * height):int(0.55 * height), int(0.5 * width):int(0.75 * width)] = True
    assert not (polygon & notch).any()
    assert polygon[int(0.75 * height), int(0.7 * width)] and polygon[int(0.3 * height), int(0.3 * width)]


# --------------------------------------------------------------------------- nothing found


@pytest.mark.parametrize("level", [0.0, 0.3, 0.4999])
def test_b_nothing_above_the_threshold_is_not_found(level):
    answer = lesion_answer(np.full((56, 56), level), 0.5, 640, 480, SIZE)
    assert answer["found"] is False and answer["bbox"] is None and answer["outline"] == []
    assert answer["area_fraction"] == 0.0 and answer["regions"] == 0
    assert answer["peak_probability"] == pytest.approx(level, abs=1e-6)
    assert answer["mask_size"] == [256, 192] and not decode_mask(answer).any()


def test_b_non_finite_values_count_as_zero():
    grid = np.full((56, 56), np.nan)
    grid[0, 0], grid[1, 1] = np.inf, -np.inf
    answer = lesion_answer(grid, 0.5, 200, 200, SIZE)
    assert answer["found"] is False and answer["peak_probability"] == 0.0


def test_c_probability_in_the_black_padding_only_is_not_found():
    width, height = 400, 100  # 224 x 56 at y = 84: rows 0..83 and 140..223 of the input are padding
    (new_w, new_h), (offset_x, offset_y) = letterbox_geometry(width, height, SIZE)
    assert (new_w, new_h, offset_x, offset_y) == (224, 56, 0, 84)
    grid = np.zeros((56, 56))
    grid[:20] = 1.0  # input rows 0..79: padding
    grid[-20:] = 1.0  # input rows 144..223: padding
    answer = lesion_answer(grid, 0.5, width, height, SIZE)
    assert answer["found"] is False and answer["regions"] == 0 and answer["bbox"] is None
    assert answer["peak_probability"] == 0.0
    # the same value on the image's rows is found (the test is not vacuous)
    grid[25:30, 10:20] = 1.0
    assert lesion_answer(grid, 0.5, width, height, SIZE)["found"] is True


# --------------------------------------------------------------------------- regions


def test_d_two_regions_bbox_and_outline_are_the_larger():
    width, height = 301, 187
    large = ellipse(width, height, 90, 90, 50, 40)
    small = ellipse(width, height, 230, 120, 25, 20)
    answer = lesion_answer(perfect_grid(large | small), 0.5, width, height, SIZE)
    assert answer["regions"] == 2
    slack = cell_in_image_pixels(width, height) + 1
    for got, want in zip(answer["bbox"], bbox_of(large), strict=True):
        assert abs(got - want) <= slack
    assert iou(rasterise(answer["outline"], width, height), large) >= 0.8
    assert answer["area_fraction"] == pytest.approx((large | small).mean(), rel=0.15)  # all regions


def test_d_diagonal_neighbours_are_one_region():
    # two cells meeting at a corner: the bilinear map's saddle leaves two lesion pixels
    # touching only diagonally (8-connectivity: one region; 4-connectivity would say two)
    grid = np.zeros((56, 56))
    grid[10, 10] = grid[11, 11] = 1.0
    field = upsample_map(grid, SIZE) >= 0.5
    assert field[43, 43] and field[44, 44] and not field[43, 44] and not field[44, 43]
    answer = lesion_answer(grid, 0.5, SIZE, SIZE, SIZE)  # image = input: mask pixels are input pixels
    assert answer["regions"] == 1
    assert answer["bbox"] == bbox_of(field)
    assert answer["outline"].count([44.0, 44.0]) == 2  # the boundary crosses over at the shared corner
    assert rasterise(answer["outline"], SIZE, SIZE).tolist() == field.tolist()  # every lesion pixel, no other


def _reference_components(mask: np.ndarray, neighbours) -> list[set]:
    """Connected components by a plain flood fill (the slow, obvious way)."""
    seen, components = np.zeros_like(mask), []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start], stack, component = True, [start], set()
        while stack:
            r, c = stack.pop()
            component.add((r, c))
            for dr, dc in neighbours:
                q = (r + dr, c + dc)
                if 0 <= q[0] < h and 0 <= q[1] < w and mask[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        components.append(component)
    return components


EIGHT = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
FOUR = [(-1, 0), (0, -1), (0, 1), (1, 0)]


@pytest.mark.parametrize("seed", range(12))
def test_d_regions_and_traced_boundary_agree_with_a_flood_fill(seed):
    """On random masks full of diagonal pinches and holes: the run labelling finds the
    8-connected components a flood fill finds, and the traced outer boundary of each,
    filled (even-odd), is the component plus its holes (background not 4-connected to
    the outside), exactly."""
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(5, 40), rng.integers(5, 40))) < rng.uniform(0.3, 0.7)
    rows, starts, ends = lesion._runs(mask)
    labels = lesion._label_runs(rows, starts, ends, mask.shape[1])
    found = {}
    for label, r, s, e in zip(labels, rows, starts, ends, strict=True):
        found.setdefault(int(label), set()).update((int(r), c) for c in range(s, e))
    expected = _reference_components(mask, EIGHT)
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, expected))
    h, w = mask.shape
    for component in expected[:6]:
        region = np.zeros_like(mask)
        region[tuple(np.array(sorted(component)).T)] = True
        top, left = min(r for r, _ in component), min(c for _, c in component)
        bottom, right = max(r for r, _ in component) + 1, max(c for _, c in component) + 1
        corners = lesion._trace(region[top:bottom, left:right]) + [left, top]
        framed = np.pad(~region, 1, constant_values=True)  # background, with an outside ring
        outside = next(c for c in _reference_components(framed, FOUR) if (0, 0) in c)
        filled = np.ones((h + 2, w + 2), dtype=bool)
        filled[tuple(np.array(sorted(outside)).T)] = False
        assert rasterise(corners, w, h).tolist() == filled[1:-1, 1:-1].tolist()


# --------------------------------------------------------------------------- outline budget


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_e_a_jagged_region_is_outlined_with_at_most_64_points(seed):
    grid = np.random.default_rng(seed).random((56, 56))
    width, height = 640, 480
    answer = lesion_answer(grid, 0.5, width, height, SIZE)
    assert answer["regions"] > 1
    outline = answer["outline"]
    assert 3 <= len(outline) <= MAX_OUTLINE_POINTS
    assert all(0 <= x <= width and 0 <= y <= height for x, y in outline)
    assert all(round(v, 1) == v for point in outline for v in point)
    x0, y0, x1, y1 = answer["bbox"]
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in outline)


def test_e_a_comb_keeps_its_budget_and_its_extent():
    grid = np.zeros((56, 56))
    grid[5:50, 5] = 1.0
    grid[5:50:2, 5:50] = 1.0  # 23 teeth, rows apart: 90-odd corners to simplify
    answer = lesion_answer(grid, 0.5, SIZE, SIZE, SIZE)
    assert answer["regions"] == 1 and len(answer["outline"]) <= MAX_OUTLINE_POINTS
    xs, ys = zip(*answer["outline"], strict=True)
    x0, y0, x1, y1 = answer["bbox"]
    assert x0 <= min(xs) <= x0 + 2 and y0 <= min(ys) <= y0 + 2 and y1 - 2 <= max(ys) <= y1 and x1 - 2 <= max(xs) <= x1


# --------------------------------------------------------------------------- cost


def test_f_a_huge_image_is_answered_at_mask_resolution_quickly():
    width, height = 10000, 2000  # 224 x 45 in the input, the mask 256 x 51
    (new_w, new_h), (offset_x, offset_y) = letterbox_geometry(width, height, SIZE)
    grid = np.zeros((56, 56))
    rows = slice((offset_y + 16) // 4, (offset_y + 32) // 4)
    grid[rows, 20:30] = 1.0
    lesion_answer(grid, 0.5, width, height, SIZE)  # warm
    tracemalloc.start()
    started = time.perf_counter()
    answer = lesion_answer(grid, 0.5, width, height, SIZE)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert answer["mask_size"] == [256, 51] and decode_mask(answer).shape == (51, 256)
    assert peak < 4_000_000  # 10000 x 2000 bools alone would be 20 MB
    assert elapsed < 0.5  # about 3 ms on a laptop core; generous for shared CI
    # the block comes back in the image's pixels: columns 80..120 of the input, about 3571..5357
    x0, y0, x1, y1 = answer["bbox"]
    scale = width / new_w
    assert abs(x0 - (80 - 2) * scale) <= 2 * STRIDE * scale and abs(x1 - (120 + 2) * scale) <= 2 * STRIDE * scale
    assert 0 <= y0 < y1 <= height


def test_f_cost_is_small_for_a_lesion_like_map():
    yy, xx = np.mgrid[:56, :56]
    grid = np.exp(-((yy - 28) ** 2 / 100 + (xx - 25) ** 2 / 200))
    lesion_answer(grid, 0.5, 500, 450, SIZE)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        lesion_answer(grid, 0.5, 500, 450, SIZE)
        times.append(time.perf_counter() - started)
    assert sorted(times)[10] < 0.05  # about 3 ms; a bound that holds on a loaded machine


# --------------------------------------------------------------------------- contract errors


@pytest.mark.parametrize("shape", [(28, 28), (56, 55), (1, 56, 56, 1), (56,)])
def test_a_map_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError):
        lesion_answer(np.zeros(shape), 0.5, 100, 100, SIZE)
    with pytest.raises(ValueError):
        upsample_map(np.zeros(shape), SIZE)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, float("nan")])
def test_a_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError):
        lesion_answer(np.zeros((56, 56)), threshold, 100, 100, SIZE)


def test_upsample_map_is_cell_centre_aligned():
    grid = np.zeros((16, 16))
    grid[5, 9] = 1.0
    up = upsample_map(grid, 64)
    assert up.shape == (64, 64) and up.dtype == np.float32
    # cell (5, 9) covers rows 20..23, columns 36..39; its value sits at their centre (22, 38)
    assert np.unravel_index(np.argmax(up), up.shape) in {(21, 37), (21, 38), (22, 37), (22, 38)}
    assert up[21:23, 37:39] == pytest.approx(0.875 ** 2)
    np.testing.assert_allclose(up[16:28], up[16:28][::-1], atol=1e-7)  # symmetric about row 22 (21.5 + 0.5)
    np.testing.assert_allclose(up[:, 32:44], up[:, 32:44][:, ::-1], atol=1e-7)
    assert np.all(upsample_map(np.full((16, 16), 0.3), 64) == np.float32(0.3))
    # lesion_answer samples the same field: an image the size of the input gets upsample_map itself
    answer = lesion_answer(grid, 0.7, 64, 64, 64)
    assert decode_mask(answer).tolist() == (up >= 0.7).tolist()


# --------------------------------------------------------------------------- one geometry


def test_letterbox_geometry_is_symmetric_in_the_sides():
    for width in range(1, 400, 7):
        for height in range(max(1, width // 10), width * 10, 11):
            for size in (64, 96, 224):
                (w, h), (x, y) = letterbox_geometry(width, height, size)
                assert max(w, h) == size and (x, y) == ((size - w) // 2, (size - h) // 2)
                assert letterbox_geometry(height, width, size) == ((h, w), (y, x))
    with pytest.raises(ValueError):
        letterbox_geometry(0, 10, 224)


def _oriented(stored: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(stored, "L").save(buffer, format=fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt, stored_size, size", [
    ("PNG", (61, 37), 48),
    ("JPEG", (134, 311), 64),  # decoded in draft mode at 67 x 156: the geometry still follows the header
])
def test_g_letterbox_geometry_is_where_decode_image_puts_the_image(orientation, fmt, stored_size, size):
    width, height = stored_size
    stored = np.full((height, width), 90, dtype=np.uint8)
    block = (slice(height // 5, height // 5 + height // 4), slice(width // 6, width // 6 + width // 3))
    stored[block] = 250
    data = _oriented(stored, orientation, fmt)
    with Image.open(io.BytesIO(data)) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened))  # Pillow's reading of the orientation
    upright_h, upright_w = upright.shape
    assert (upright_w, upright_h) == ((height, width) if orientation >= 5 else (width, height))

    (new_w, new_h), (offset_x, offset_y) = letterbox_geometry(upright_w, upright_h, size)
    decoded = decode_image(data, size)[..., 0].astype(int)
    assert bbox_of(decoded > 30) == [offset_x, offset_y, offset_x + new_w, offset_y + new_h]  # exactly
    # the bright block lands where the geometry maps the upright block, within a pixel or two
    x0, y0, x1, y1 = bbox_of(upright > 170)
    sx, sy = new_w / upright_w, new_h / upright_h
    expected = [offset_x + x0 * sx, offset_y + y0 * sy, offset_x + x1 * sx, offset_y + y1 * sy]
    got = bbox_of(decoded > 170)
    assert all(abs(g - e) <= 1.5 for g, e in zip(got, expected, strict=True)), (got, expected)
