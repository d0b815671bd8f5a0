"""The model's lesion map -> the API's ``lesion`` object, on the uploaded image's own pixels.

The multitask model outputs a lesion probability map with one cell per ``MAP_STRIDE`` x
``MAP_STRIDE`` pixels of the square model input (56 x 56 at 224 px): cell (r, c) covers
input pixels [4r, 4r + 4) x [4c, 4c + 4), whose centre is (4c + 2, 4r + 2). The input is
the image letterboxed by ``decode_image`` (``letterbox_geometry``: the image fills
``new_w x new_h`` pixels at ``offset``, black elsewhere). ``lesion_answer`` undoes the
letterbox:

1. the map is interpolated bilinearly (cell-centre aligned, edges replicated: the one
   interpolation of ``upsample_map``) at the centre of every pixel of the *mask*, a grid
   over the upright image alone (the black padding is never part of it) at the image's
   own size, or scaled so that its longer side is ``MASK_MAX_SIDE``: the work is bounded
   by 256 x 256 pixels whatever the image's size, and nothing is allocated at the
   image's resolution;
2. pixels at or above the threshold are lesion (compared in float32, as upsample_map's
   output is); connected regions (8-connectivity) are labelled on the mask's row runs
   (vectorised union of overlapping runs); the largest by pixel count is "the" region
   (a tie: the first in raster order);
3. the largest region's outer boundary is traced along the pixel edges (a closed
   staircase polygon that encloses exactly its pixels, holes ignored) and simplified to
   at most ``MAX_OUTLINE_POINTS`` vertices (top-down Douglas-Peucker from 8 vertices
   spaced along it: the farthest vertex of each edge is added until the budget is spent
   or none is more than ``OUTLINE_TOLERANCE`` mask pixels off the polygon);
4. bbox and outline are scaled from the mask's pixels to the image's (bbox outward, to
   whole pixels), clipped to the image; the mask itself is a small 0/255 PNG.

NumPy, Pillow and the standard library only (the serving world's rule).
"""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
from PIL import Image

from .decode import letterbox_geometry

METHOD = ("Lesion probability predicted by the model's segmentation decoder (trained on the BUSI lesion masks), "
          "one value per 4x4 pixels of the square model input, interpolated bilinearly onto the upright image "
          "and thresholded at the model card's threshold.")
COVERS = "the uploaded image, upright (EXIF orientation applied), in its own pixel coordinates"
MEDIA_TYPE = "image/png"
MAX_OUTLINE_POINTS = 64
MASK_MAX_SIDE = 256
MAP_STRIDE = 4  # model-input pixels per map cell, a side
# The outline simplification stops early when no traced vertex is farther than this from
# the polygon, in mask pixels (a staircase is within a pixel of the boundary it steps along).
OUTLINE_TOLERANCE = 1.0
# The simplification starts from this many vertices evenly spaced along the traced contour.
INITIAL_ANCHORS = 8


# --------------------------------------------------------------------------- interpolation


def _check_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """The map as float64 (h, w), non-finite values 0, clipped to 0..1; ValueError unless
    it is (size / 4, size / 4)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MAP_STRIDE \
            or size % MAP_STRIDE:
        raise ValueError(f"the model input side must be a positive multiple of {MAP_STRIDE}, got {size!r}")
    values = np.asarray(grid, dtype=np.float64)
    side = int(size) // MAP_STRIDE
    if values.shape != (side, side):
        raise ValueError(f"a lesion map for a {size} px input is {side}x{side}, got shape {values.shape}")
    values = np.where(np.isfinite(values), values, 0.0)
    return np.clip(values, 0.0, 1.0)


def _axis_weights(centres: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: input-pixel coordinates (pixel i's centre is i + 0.5)
    -> (lower cell, upper cell, weight of the upper), cell centres at 4c + 2, edges replicated."""
    u = np.clip(centres / MAP_STRIDE - 0.5, 0.0, cells - 1)
    low = np.floor(u).astype(np.intp)
    high = np.minimum(low + 1, cells - 1)
    return low, high, u - low


def _sample(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The map interpolated at input coordinates ys (rows) x xs (columns): (len(ys), len(xs))
    float32 (each pass gathers whole rows: the column pass runs on the transpose)."""
    grid = grid.astype(np.float32)
    y0, y1, ty = _axis_weights(ys, grid.shape[0])
    x0, x1, tx = _axis_weights(xs, grid.shape[1])
    ty, tx = ty.astype(np.float32)[:, None], tx.astype(np.float32)[:, None]
    columns = (grid[y0] * (1 - ty) + grid[y1] * ty).T
    return (columns[x0] * (1 - tx) + columns[x1] * tx).T


def upsample_map(grid: np.ndarray, size: int) -> np.ndarray:
    """A lesion map (size / 4, size / 4) -> (size, size) float32 probabilities over the
    square model input: bilinear, cell-centre aligned (cell c's value sits at input pixel
    coordinate 4c + 2), edges replicated. The one upsampling, used by ``lesion_answer``
    (at the mask's pixels) and by evaluation (at the input's). Non-finite values count as
    0, values are clipped to 0..1; ValueError for a map of another shape."""
    values = _check_grid(grid, size)
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.ascontiguousarray(_sample(values, centres, centres))


def mask_size(width: int, height: int) -> tuple[int, int]:
    """The lesion mask's (width, height): the image's own, or scaled (``letterbox_geometry``'s
    rounding) so that the longer side is ``MASK_MAX_SIDE``."""
    if max(width, height) <= MASK_MAX_SIDE:
        return int(width), int(height)
    return letterbox_geometry(width, height, MASK_MAX_SIDE)[0]


# --------------------------------------------------------------------------- regions


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row runs of True pixels, in raster order: (row, start column, end column exclusive)."""
    height, width = mask.shape
    framed = np.zeros((height, width + 2), dtype=np.int8)
    framed[:, 1:-1] = mask
    # in raster order a row's changes alternate: run start, run end, start, end...
    changes = np.flatnonzero(np.diff(framed, axis=1))
    rows, starts = np.divmod(changes[0::2], width + 1)
    return rows, starts, changes[1::2] % (width + 1)


def _label_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Region label (0..k-1, in order of each region's first run) of every run: runs on
    consecutive rows are joined when they touch, diagonals included (8-connectivity)."""
    n = len(rows)
    key = width + 2
    start_keys = rows * key + starts
    end_keys = rows * key + ends
    # run a (row r, [s, e)) touches the runs of row r + 1 whose end >= s and start <= e
    first = np.searchsorted(end_keys, (rows + 1) * key + starts, side="left")
    last = np.searchsorted(start_keys, (rows + 1) * key + ends, side="right")
    counts = np.maximum(last - first, 0)
    a = np.repeat(np.arange(n), counts)
    b = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    parent = np.arange(n)
    while len(a):  # hook every root onto the smallest root it touches, then shortcut
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return np.unique(parent, return_inverse=True)[1].ravel()


# --------------------------------------------------------------------------- outline


def _turn_table() -> bytes:
    """(corner code * 4 + incoming direction) -> outgoing direction, for the crack walk.
    A corner's code says which of its four pixels are region: 1 top-left, 2 top-right,
    4 bottom-left, 8 bottom-right. With the region on the right of every step, the walk
    leaves east when the bottom-right pixel is in and the top-right out, south for
    bottom-left in / bottom-right out, west for top-left in / bottom-left out, north for
    top-right in / top-left out. Two pixels meeting only at the corner (codes 6 and 9)
    leave two ways: the walk turns left, across to the other pixel (8-connectivity)."""
    table = bytearray(64)
    for code in range(16):
        tl, tr, bl, br = (code & 1, code & 2, code & 4, code & 8)
        ways = [d for d, ok in enumerate((br and not tr, bl and not br, tl and not bl, tr and not tl)) if ok]
        for incoming in range(4):
            left = (incoming + 3) % 4
            table[code * 4 + incoming] = left if len(ways) == 2 else (ways[0] if ways else 255)
    return bytes(table)


_TURNS = _turn_table()


def _trace(region: np.ndarray) -> np.ndarray:
    """The outer boundary of one 8-connected region (bool (h, w)) along the pixel edges:
    the corners where it turns, (n, 2) as (x, y) in pixel-corner coordinates, clockwise on
    screen (y down), the region on the right of every step; holes are not followed.
    Vectorised corner codes, then one walk that looks up each corner's code: a Python
    step per boundary edge (a few hundred for a lesion; bounded by the mask's pixel
    edges, and about 10 ms for the most jagged maps measured on a 256 x 256 mask)."""
    h, w = region.shape
    padded = np.pad(region, 1).view(np.uint8)
    codes = (padded[:-1, :-1] | (padded[:-1, 1:] << 1) | (padded[1:, :-1] << 2) | (padded[1:, 1:] << 3)).tobytes()
    stride = w + 1
    steps = (1, stride, -1, -stride)  # east, south, west, north
    # the first region pixel in raster order: its top-left corner has only it inside, the walk leaves east
    first = int(np.argmax(region.ravel()))
    start = (first // w) * stride + first % w
    turns, position, direction = [start], start + 1, 0
    while position != start:
        turn = _TURNS[codes[position] * 4 + direction]
        if turn != direction:
            turns.append(position)
            direction = turn
        position += steps[direction]
    y, x = np.divmod(np.asarray(turns), stride)
    return np.stack([x, y], axis=1).astype(np.float64)


def simplify_closed(points: np.ndarray, max_points: int = MAX_OUTLINE_POINTS,
                    tolerance: float = OUTLINE_TOLERANCE) -> np.ndarray:
    """A closed polygon (n, 2) reduced to at most ``max_points`` of its vertices, in
    order: top-down Douglas-Peucker, starting from ``INITIAL_ANCHORS`` vertices evenly
    spaced along the contour; each round, every edge of the kept polygon gains the vertex
    farthest from it (the farthest first when fewer places are left than edges), until
    ``max_points`` are kept or no vertex is farther than ``tolerance`` from the polygon.
    Each round is a few vectorised passes over the n vertices and at most doubles the
    kept count: 3 rounds to the budget from 8 anchors, a few more where some edges are
    done early (3-5 on lesion-like shapes)."""
    if max_points < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, asked for {max_points}")
    n = len(points)
    if n <= max_points:
        return points
    closed = np.vstack([points, points[:1]])  # vertex n is vertex 0 again
    anchors = min(INITIAL_ANCHORS, max_points)
    kept = np.append(np.arange(anchors) * n // anchors, n)  # distinct: n > max_points >= anchors
    while len(kept) - 1 < max_points:
        starts = kept[:-1]
        segment = np.repeat(np.arange(len(starts)), np.diff(kept))  # vertex -> the kept edge it lies on
        chord = closed[kept[1:]] - closed[starts]
        length = np.hypot(chord[:, 0], chord[:, 1])
        offset = points - closed[starts][segment]
        cross = np.abs(chord[segment, 0] * offset[:, 1] - chord[segment, 1] * offset[:, 0])
        # distance to the edge's line (to its start where the edge is a point: a pinch kept twice)
        distance = np.where((length > 0)[segment], cross / np.maximum(length, 1e-12)[segment],
                            np.hypot(offset[:, 0], offset[:, 1]))
        distance[starts] = -1.0
        worst = np.maximum.reduceat(distance, starts)
        ties = np.flatnonzero(distance == worst[segment])
        tied = segment[ties]
        keep = np.empty(len(ties), dtype=bool)
        keep[0], keep[1:] = True, tied[1:] != tied[:-1]
        first = ties[keep]  # the first farthest vertex of each edge
        gaps = worst[tied[keep]]
        wanted = gaps > tolerance
        candidates, gaps = first[wanted], gaps[wanted]
        if not len(candidates):
            break
        room = max_points - len(starts)
        if len(candidates) > room:
            candidates = candidates[np.argsort(-gaps, kind="stable")[:room]]
        kept = np.sort(np.concatenate([kept, candidates]))
    return points[kept[:-1]]


# --------------------------------------------------------------------------- the answer


def _shortest(value: np.float32) -> float:
    """A float32 as the shortest decimal that reads back as the same float32 (0.3, not
    0.30000001192092896): the value compared with the threshold, printed plainly."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _png(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.view(np.uint8) * np.uint8(255), mode="L").save(buffer, format="PNG", compress_level=9,
                                                                     compress_type=zlib.Z_RLE)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def lesion_answer(grid: np.ndarray, threshold: float, width: int, height: int, size: int) -> dict:
    """The API's ``lesion`` object for one image.

    Args:
        grid: the lesion map, (size / 4, size / 4) probabilities (non-finite values count as 0).
        threshold: probability at or above which a pixel is lesion (model.json), 0 < threshold <= 1.
        width, height: the UPRIGHT image's size (EXIF orientations 5-8 swap the header's).
        size: the model input side.

    Returns:
        found, area_fraction, regions, bbox (largest region, [x_min, y_min, x_max, y_max],
        max exclusive, image pixels, or None), outline (at most MAX_OUTLINE_POINTS [x, y]
        vertices of the largest region's outer boundary, the last joined to the first,
        image pixels to 0.1, or []), peak_probability, threshold, mask_png (base64 PNG, L,
        255 lesion), mask_size [w, h], mask_media_type, method, covers.
    Raises:
        ValueError: a map of the wrong shape, a threshold outside (0, 1], a side below 1.
    """
    values = _check_grid(grid, size)
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the lesion threshold must be in (0, 1], got {threshold!r}")
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"the image's sides must be positive integers, got {width!r} x {height!r}")
    width, height = int(width), int(height)
    (new_w, new_h), (offset_x, offset_y) = letterbox_geometry(width, height, size)
    mask_w, mask_h = mask_size(width, height)
    # centre of mask pixel j, in model-input pixels: offset + (j + 0.5) * new / mask
    xs = offset_x + (np.arange(mask_w) + 0.5) * (new_w / mask_w)
    ys = offset_y + (np.arange(mask_h) + 0.5) * (new_h / mask_h)
    probability = _sample(values, ys, xs)
    mask = probability >= threshold
    answer = {
        "found": False, "area_fraction": 0.0, "regions": 0, "bbox": None, "outline": [],
        "peak_probability": _shortest(probability.max()), "threshold": threshold,
        "mask_png": _png(mask), "mask_size": [mask_w, mask_h], "mask_media_type": MEDIA_TYPE,
        "method": METHOD, "covers": COVERS,
    }
    rows, starts, ends = _runs(mask)
    if not len(rows):
        return answer
    labels = _label_runs(rows, starts, ends, mask_w)
    lengths = ends - starts
    areas = np.bincount(labels, weights=lengths)
    largest = labels == int(np.argmax(areas))
    r, s, e = rows[largest], starts[largest], ends[largest]
    top, left, bottom, right = int(r.min()), int(s.min()), int(r.max()) + 1, int(e.max())
    region = np.zeros((bottom - top, right - left + 1), dtype=np.int8)
    np.add.at(region, (r - top, s - left), 1)
    np.add.at(region, (r - top, e - left), -1)
    region = np.cumsum(region, axis=1)[:, :-1] > 0
    corners = _trace(region)
    corners = simplify_closed(corners)
    scale_x, scale_y = width / mask_w, height / mask_h
    outline = [[round(min(max((cx + left) * scale_x, 0.0), width), 1),
                round(min(max((cy + top) * scale_y, 0.0), height), 1)] for cx, cy in corners.tolist()]
    answer.update(
        found=True,
        area_fraction=round(float(lengths.sum()) / (mask_w * mask_h), 6),
        regions=int(len(areas)),
        bbox=[left * width // mask_w, top * height // mask_h,
              min(width, -(-right * width // mask_w)), min(height, -(-bottom * height // mask_h))],
        outline=outline,
    )
    return answer
