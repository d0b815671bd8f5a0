"""CAM localisation against lesion masks: constructed cases with known answers (no
TensorFlow, no model), letterboxing kept in sync with decode_image, and the real BUSI
masks where the data set is present."""

import io

import numpy as np
import pytest
from conftest import BUSI_DIR
from PIL import Image

from busi_classifier.evaluation import localisation
from busi_classifier.evaluation.localisation import (
    cam_figure,
    cell_mask,
    centre_map,
    distinct_frames,
    energy_inside,
    hit_label,
    localisation_report,
    mask_for_input,
    peak_cell,
    pointing_game_not_meaningful,
    pointing_hit,
    served_cam_figure,
)
from busi_classifier.serving.decode import decode_image

SIZE = 224
GRID = (7, 7)  # 32 px cells at 224 px


def peaked(row: int, col: int, shape=GRID, background: float = -0.5) -> np.ndarray:
    cam = np.full(shape, background)
    cam[row, col] = 3.0
    return cam


def box_mask(top: int, left: int, bottom: int, right: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def write_mask(path, array: np.ndarray, mode: str = "L"):
    Image.fromarray(np.asarray(array, np.uint8) * 255 if array.dtype == bool else array).convert(mode).save(path)
    return path


TOP_LEFT = box_mask(0, 0, SIZE // 2, SIZE // 2)


# --------------------------------------------------------------------------- pointing game


def test_peak_in_the_lesion_quarter_hits_and_far_away_misses():
    assert pointing_hit(peaked(1, 1), TOP_LEFT)
    assert pointing_hit(peaked(0, 3), TOP_LEFT, dilate_cells=0)  # cell 3 holds pixels 96..127: half lesion
    assert not pointing_hit(peaked(6, 6), TOP_LEFT)
    assert not pointing_hit(peaked(6, 6), TOP_LEFT, dilate_cells=0)


def test_peak_next_to_a_small_lesion_hits_with_dilation_only():
    mask = box_mask(40, 40, 60, 60)  # inside cell (1, 1) alone (pixels 32..63)
    np.testing.assert_array_equal(np.argwhere(cell_mask(mask, GRID, 0)), [[1, 1]])
    assert pointing_hit(peaked(1, 1), mask, dilate_cells=0)
    for neighbour in [(2, 2), (0, 1), (1, 2), (2, 0)]:  # 8-neighbourhood, diagonals included
        assert pointing_hit(peaked(*neighbour), mask, dilate_cells=1)
        assert not pointing_hit(peaked(*neighbour), mask, dilate_cells=0)
    assert not pointing_hit(peaked(3, 3), mask, dilate_cells=1)
    assert pointing_hit(peaked(3, 3), mask, dilate_cells=2)


def test_cells_split_the_square_evenly_with_floor_edges():
    # 10 px over 3 cells: edges 0, 3, 6, 10
    for pixel, cell in [(0, 0), (2, 0), (3, 1), (5, 1), (6, 2), (9, 2)]:
        mask = np.zeros((10, 10), dtype=bool)
        mask[pixel, 9] = True
        np.testing.assert_array_equal(np.argwhere(cell_mask(mask, (3, 3), 0)), [[cell, 2]])
    # a lesion pixel on the last row/column of the square lands in the last cell
    corner = box_mask(SIZE - 1, SIZE - 1, SIZE, SIZE)
    assert np.argwhere(cell_mask(corner, GRID, 0)).tolist() == [[6, 6]]
    assert cell_mask(corner, GRID, 1).sum() == 4  # dilation stops at the border


def test_ties_go_to_the_first_maximum_and_a_map_with_nothing_positive_misses():
    flat = np.ones(GRID)
    assert peak_cell(flat) == (0, 0)
    assert pointing_hit(flat, TOP_LEFT) and not pointing_hit(flat, box_mask(200, 200, 224, 224))
    tie = peaked(6, 6)
    tie[0, 5] = 3.0  # ties with (6, 6); (0, 5) comes first in row-major order
    assert peak_cell(tie) == (0, 5)
    assert peak_cell(np.zeros(GRID)) is None
    assert not pointing_hit(np.zeros(GRID), TOP_LEFT)
    assert not pointing_hit(np.full(GRID, -1.0), TOP_LEFT)
    nan = peaked(1, 1)
    nan[5, 5] = np.nan
    assert peak_cell(nan) == (1, 1)
    # raw and normalised maps point at the same cell
    rng = np.random.default_rng(0)
    cam = rng.normal(size=GRID)
    assert peak_cell(cam) == np.unravel_index(np.argmax(cam), GRID)


# --------------------------------------------------------------------------- energy


def test_energy_is_high_for_a_map_that_is_the_mask_and_zero_far_away():
    mask = box_mask(32, 32, 128, 128)  # cells 1..3 x 1..3 exactly
    cam = np.zeros(GRID)
    cam[1:4, 1:4] = 1.0
    assert energy_inside(cam, mask) > 0.75
    assert energy_inside(peaked(6, 6), mask) < 0.01
    assert energy_inside(peaked(6, 6, background=0.0), mask) == pytest.approx(0.0, abs=1e-9)
    # a flat map spreads its energy evenly: the share is the mask's area share
    assert energy_inside(np.ones(GRID), mask) == pytest.approx(mask.mean(), abs=1e-6)
    assert energy_inside(np.zeros(GRID), mask) == 0.0
    assert energy_inside(np.full(GRID, -2.0), mask) == 0.0
    # scaling the raw map does not matter (it is normalised first)
    assert energy_inside(7 * cam, mask) == pytest.approx(energy_inside(cam, mask))


# --------------------------------------------------------------------------- masks and letterboxing


def test_wide_mask_is_letterboxed_like_decode_image(tmp_path):
    width, height = 200, 100
    lesion = np.zeros((height, width), dtype=bool)
    lesion[30:70, 0:40] = True  # at the left edge
    mask = mask_for_input([write_mask(tmp_path / "wide_mask.png", lesion)], SIZE)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool

    picture = io.BytesIO()
    Image.fromarray(lesion.astype(np.uint8) * 255).convert("RGB").save(picture, format="PNG")
    decoded = decode_image(picture.getvalue(), SIZE)[..., 0] > 127
    # same place in the square, up to one pixel of bilinear vs nearest at the edges
    assert (mask & decoded).sum() / (mask | decoded).sum() > 0.95
    for a, b in ((mask, decoded),):
        rows_a, cols_a = np.nonzero(a)
        rows_b, cols_b = np.nonzero(b)
        assert abs(rows_a.min() - rows_b.min()) <= 1 and abs(rows_a.max() - rows_b.max()) <= 1
        assert abs(cols_a.min() - cols_b.min()) <= 1 and abs(cols_a.max() - cols_b.max()) <= 1
    np.testing.assert_array_equal(cell_mask(mask, GRID, 0), cell_mask(decoded, GRID, 0))
    # 200x100 -> 224x112 pasted at y=56: lesion rows 56+30*1.12 .. 56+70*1.12, columns 0 .. 40*1.12
    rows, cols = np.nonzero(mask)
    assert rows.min() == 56 + 34 and rows.max() == 56 + 78 - 1 and cols.min() == 0 and cols.max() == 44
    assert np.argwhere(cell_mask(mask, GRID, 0).any(axis=1)).ravel().tolist() == [2, 3, 4]
    assert np.argwhere(cell_mask(mask, GRID, 0).any(axis=0)).ravel().tolist() == [0, 1]


def test_tall_odd_sized_mask_follows_decode_image_rounding(tmp_path):
    width, height = 77, 301
    lesion = np.zeros((height, width), dtype=bool)
    lesion[250:301, 60:77] = True  # bottom-right corner
    mask = mask_for_input([write_mask(tmp_path / "tall_mask.png", lesion)], SIZE)
    picture = io.BytesIO()
    Image.fromarray(lesion.astype(np.uint8) * 255).save(picture, format="PNG")
    decoded = decode_image(picture.getvalue(), SIZE)[..., 0] > 127
    np.testing.assert_array_equal(cell_mask(mask, GRID, 0), cell_mask(decoded, GRID, 0))
    rows, cols = np.nonzero(mask)
    rows_b, cols_b = np.nonzero(decoded)
    assert abs(cols.max() - cols_b.max()) <= 1 and abs(cols.min() - cols_b.min()) <= 1 and rows.max() == SIZE - 1


def test_mask_union_and_empty_masks(tmp_path):
    a = np.zeros((50, 80), dtype=bool)
    a[5:15, 5:15] = True
    b = np.zeros((50, 80), dtype=bool)
    b[30:40, 60:70] = True
    pa, pb = write_mask(tmp_path / "x_mask.png", a), write_mask(tmp_path / "x_mask_1.png", b, mode="RGB")
    union = mask_for_input([pa, pb], 160)
    np.testing.assert_array_equal(union, mask_for_input([pa], 160) | mask_for_input([pb], 160))
    assert union.sum() > mask_for_input([pa], 160).sum() > 0
    gray = np.full((50, 80), 100, np.uint8)  # below the threshold of 127: no lesion
    assert mask_for_input([write_mask(tmp_path / "n_mask.png", gray)], 160) is None
    assert mask_for_input([write_mask(tmp_path / "z_mask.png", np.zeros((50, 80), bool))], 160) is None
    assert mask_for_input([], 160) is None
    with pytest.raises(ValueError, match="mask"):
        mask_for_input([pa, write_mask(tmp_path / "other_mask.png", np.ones((10, 10), bool))], 160)


def test_synthetic_masks_give_lesions_for_benign_and_malignant_only(tmp_path):
    from busi_classifier.data.dataset import read_dataset
    from busi_classifier.data.synthetic import generate_dataset

    samples = read_dataset(generate_dataset(tmp_path, per_class=2, seed=3, progress=False))
    for sample in samples:
        mask = mask_for_input(sample.masks, 64)
        assert (mask is None) == (sample.label == "normal"), sample.path.name


# --------------------------------------------------------------------------- centre baseline


def test_centre_map_peaks_in_the_centre_cell():
    grid = centre_map(GRID)
    assert grid.shape == GRID and grid.max() == 1.0 and peak_cell(grid) == (3, 3)
    np.testing.assert_allclose(grid, grid.T)
    np.testing.assert_allclose(grid, grid[::-1, ::-1])
    assert grid[0, 3] == pytest.approx(np.exp(-(3 / 7) ** 2 / (2 * 0.25 ** 2)))  # sigma a quarter of the side
    for shape, peak in [((4, 4), (2, 2)), ((6, 8), (3, 4)), ((1, 1), (0, 0))]:
        grid = centre_map(shape)
        assert peak_cell(grid) == peak
        assert (grid == grid.max()).sum() == 1


def test_centre_baseline_hits_a_centred_lesion_and_misses_a_corner_lesion():
    centre = centre_map(GRID)
    centred = box_mask(92, 92, 132, 132)
    corner = box_mask(0, 0, 40, 40)  # same area
    assert pointing_hit(centre, centred, dilate_cells=0)
    assert not pointing_hit(centre, corner, dilate_cells=1)
    assert energy_inside(centre, centred) > energy_inside(centre, corner) * 5
    assert energy_inside(centre, box_mask(0, 0, SIZE, SIZE)) == pytest.approx(1.0)


# --------------------------------------------------------------------------- report


def test_report_leaves_out_images_without_a_lesion_and_counts_by_hand():
    lesion = box_mask(0, 0, 64, 64)  # cells (0..1, 0..1)
    maps = [peaked(0, 0), peaked(6, 6), peaked(1, 1), peaked(0, 0), peaked(5, 5)]
    masks = [lesion, lesion, lesion, None, np.zeros((SIZE, SIZE), bool)]
    report = localisation_report(maps, masks, n_resamples=200, seed=1, map_of="predicted")
    assert report["n"] == 3 and report["n_without_lesion"] == 2 and report["map_of"] == "predicted"
    assert report["dilate_cells"] == 1
    pg = report["pointing_game"]
    assert pg["model"] == pytest.approx(2 / 3) and pg["centre_baseline"] == 0.0
    assert pg["model_minus_centre"] == pytest.approx(2 / 3)
    assert pg["model_minus_centre_ci95"] == pytest.approx(pg["model_ci95"])  # the baseline is 0 on every image
    assert 0.0 <= pg["model_ci95"][0] <= 2 / 3 <= pg["model_ci95"][1] <= 1.0
    energies = [energy_inside(m, lesion) for m in maps[:3]]
    assert report["energy_inside"]["model"] == pytest.approx(np.mean(energies))
    assert report["energy_inside"]["centre_baseline"] == pytest.approx(energy_inside(centre_map(GRID), lesion))
    assert report["energy_inside"]["uniform_baseline"] == pytest.approx(lesion.mean())
    flat = localisation_report([np.ones(GRID)] * 2, [lesion, TOP_LEFT], n_resamples=10, map_of="predicted")
    assert flat["energy_inside"]["model"] == pytest.approx(flat["energy_inside"]["uniform_baseline"], abs=1e-6)
    assert set(report["definition"]) >= {"pointing_game", "energy_inside", "centre_baseline", "uniform_baseline"}
    # dilation is passed through: (1, 1) is a lesion cell already, (2, 2) only with dilation
    strict = localisation_report([peaked(2, 2)], [lesion], n_resamples=10, map_of="true", dilate_cells=0)
    assert strict["pointing_game"]["model"] == 0.0 and strict["map_of"] == "true"
    assert localisation_report([peaked(2, 2)], [lesion], n_resamples=10, map_of="true")["pointing_game"]["model"] == 1


def test_report_without_any_lesion_has_no_numbers():
    report = localisation_report([peaked(0, 0), peaked(1, 1)], [None, np.zeros((SIZE, SIZE), bool)],
                                 map_of="predicted", groups=["a", "b"])
    assert report["n"] == 0 and report["n_without_lesion"] == 2
    for measure in ("pointing_game", "energy_inside"):
        assert set(report[measure].values()) == {None}
    empty = localisation_report([], [], map_of="predicted")
    assert empty["n"] == 0 and empty["pointing_game"]["model"] is None


def test_group_bootstrap_of_triplicated_data_equals_the_single_copy():
    rng = np.random.default_rng(5)
    masks = [box_mask(*rng.integers(0, 100, 2), *rng.integers(120, 224, 2)) for _ in range(12)]
    maps = [rng.normal(size=GRID) for _ in range(12)]
    single = localisation_report(maps, masks, n_resamples=300, seed=7, map_of="predicted")
    tripled = localisation_report(maps * 3, masks * 3, n_resamples=300, seed=7, map_of="predicted",
                                  groups=list(range(12)) * 3)
    assert tripled["n"] == 36 and tripled["bootstrap_units"] == 12 and tripled["bootstrap_unit"] == "group"
    for measure in ("pointing_game", "energy_inside"):
        assert tripled[measure]["model"] == pytest.approx(single[measure]["model"])
        np.testing.assert_allclose(tripled[measure]["model_ci95"], single[measure]["model_ci95"], atol=1e-12)
    # resampling the copies one by one instead makes the interval narrower
    naive = localisation_report(maps * 3, masks * 3, n_resamples=300, seed=7, map_of="predicted")
    width = np.diff(single["energy_inside"]["model_ci95"])[0]
    assert np.diff(naive["energy_inside"]["model_ci95"])[0] < 0.8 * width
    with pytest.raises(ValueError, match="group"):
        localisation_report(maps, masks, map_of="predicted", groups=[0, 1])


# --------------------------------------------------------------------------- coarse grids


def every_one_cell_lesion(grid, size):
    """One mask per grid cell, holding one pixel in the middle of that cell."""
    h, w = grid
    for row in range(h):
        for col in range(w):
            mask = np.zeros((size, size), dtype=bool)
            mask[(2 * row + 1) * size // (2 * h), (2 * col + 1) * size // (2 * w)] = True
            yield (row, col), mask


@pytest.mark.parametrize("grid, dilate, trivial", [
    ((1, 1), 0, True), ((2, 2), 0, False), ((3, 3), 0, False), ((7, 7), 0, False),
    ((1, 1), 1, True), ((2, 2), 1, True), ((3, 3), 1, True), ((2, 3), 1, True), ((3, 4), 1, False),
    ((4, 4), 1, False), ((7, 7), 1, False), ((5, 5), 2, True), ((6, 6), 2, False),
])
def test_the_pointing_game_is_not_meaningful_where_the_centre_cell_covers_the_grid(grid, dilate, trivial):
    """The rule (the centre cell, dilated, covers every cell) is exactly "the centre
    baseline hits a lesion in any cell", checked cell by cell."""
    reason = pointing_game_not_meaningful(grid, dilate)
    assert (reason is not None) == trivial
    size = 32 * max(grid)
    centre = centre_map(grid)
    hits_everywhere = all(pointing_hit(centre, mask, dilate) for _, mask in every_one_cell_lesion(grid, size))
    assert hits_everywhere == trivial
    if trivial:
        assert f"{grid[0]}x{grid[1]} grid" in reason and "1.0" in reason


@pytest.mark.parametrize("size", [64, 96])  # the test model (2x2 cells) and make demo (3x3 cells)
def test_report_on_a_coarse_grid_gives_no_pointing_game_number(size):
    grid = (size // 32, size // 32)
    lesion = box_mask(0, 0, 20, 20, size)  # in the top-left cell only
    maps = [peaked(0, 0, grid), peaked(grid[0] - 1, grid[1] - 1, grid), peaked(0, 0, grid)]
    report = localisation_report(maps, [lesion] * 3, n_resamples=50, map_of="predicted")
    pointing = report["pointing_game"]
    assert report["grid"] == list(grid) and report["n"] == 3
    assert pointing["model"] is None and pointing["model_ci95"] is None
    assert pointing["model_minus_centre"] is None and pointing["model_minus_centre_ci95"] is None
    assert pointing["centre_baseline"] == 1.0  # the reason, kept
    assert "not meaningful" in pointing["not_meaningful"] and f"{grid[0]}x{grid[1]}" in pointing["not_meaningful"]
    assert report["energy_inside"]["model"] is not None  # energy inside is still measured
    # without slack the game means something on these grids: the corner peak misses
    strict = localisation_report(maps, [lesion] * 3, n_resamples=50, map_of="predicted", dilate_cells=0)
    assert strict["pointing_game"]["not_meaningful"] is None
    assert strict["pointing_game"]["model"] == pytest.approx(2 / 3)
    # and at 224 px (7x7) with slack, as before
    fine = localisation_report([peaked(0, 0)], [TOP_LEFT], n_resamples=10, map_of="predicted")
    assert fine["pointing_game"]["not_meaningful"] is None and fine["pointing_game"]["model"] == 1.0
    assert "not_meaningful" in report["definition"]


def test_report_refuses_maps_of_different_grids():
    with pytest.raises(ValueError, match="grid"):
        localisation_report([peaked(0, 0), peaked(0, 0, (3, 3))], [TOP_LEFT, box_mask(0, 0, 9, 9, 96)],
                            map_of="predicted")


def test_hit_label_is_the_metrics_own_test():
    # 7x7: the label is pointing_hit with one cell of slack, the report's headline, for every peak
    for row in range(7):
        for col in range(7):
            cam = peaked(row, col)
            one = localisation_report([cam], [TOP_LEFT], n_resamples=5, map_of="predicted")
            expected = "hit" if one["pointing_game"]["model"] == 1.0 else "miss"
            assert hit_label(cam, TOP_LEFT) == expected == ("hit" if pointing_hit(cam, TOP_LEFT) else "miss")
    # 2x2 (64 px): the lesion in the top-left quadrant, the peak in the opposite one. With one
    # cell of slack that is a "hit" (every cell touches every other): the label says miss
    lesion = box_mask(0, 0, 20, 20, 64)
    opposite = peaked(1, 1, (2, 2))
    assert pointing_hit(opposite, lesion, dilate_cells=1)  # why the old label said hit
    assert hit_label(opposite, lesion) == "miss, no slack"
    assert hit_label(peaked(0, 0, (2, 2)), lesion) == "hit, no slack"
    strict = localisation_report([opposite], [lesion], n_resamples=5, map_of="predicted", dilate_cells=0)
    assert strict["pointing_game"]["model"] == 0.0  # the same verdict as the dilate_0 figure
    assert hit_label(peaked(0, 0, (1, 1)), box_mask(0, 0, 9, 9, 32)) == "pointing n/a"


def smooth_image(seed: int, size: int = 96) -> np.ndarray:
    """A letterboxed model input: smooth random texture, black bars top and bottom."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8), dtype=np.uint8)
    picture = np.asarray(Image.fromarray(small).resize((size, size * 3 // 4), Image.Resampling.BICUBIC))
    image = np.zeros((size, size, 3), dtype=np.uint8)
    top = (size - picture.shape[0]) // 2
    image[top:top + picture.shape[0]] = picture[..., None]
    return image


def test_distinct_frames_keeps_one_image_per_frame():
    images = [smooth_image(s) for s in range(5)]
    marked = images[1].copy()
    marked[40:43, 30:60] = 255  # the same frame with a caliper line drawn on it
    brighter = np.clip(images[3].astype(int) + 6, 0, 255).astype(np.uint8)
    brighter[images[3] == 0] = 0  # the padding stays black
    batch = images + [images[0].copy(), marked, brighter]
    assert distinct_frames(batch) == [0, 1, 2, 3, 4]
    # the split's groups decide where they are given; identical pixels are one frame anyway
    assert distinct_frames(batch, groups=list("abcdeafg")) == [0, 1, 2, 3, 4, 6, 7]
    assert distinct_frames(batch, groups=list("aacdefgh")) == [0, 2, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="group"):
        distinct_frames(batch, groups=["a"])


def test_served_cam_figure_shows_each_frame_once_with_the_metrics_labels(tmp_path, monkeypatch):
    drawn = {}

    def record(images, maps, masks, titles, path, max_images=8, title=""):
        drawn.update(images=np.asarray(images), titles=list(titles), title=title)
        return cam_figure(images, maps, masks, titles, path, max_images=max_images, title=title)

    monkeypatch.setattr(localisation, "cam_figure", record)
    size, grid = 64, (2, 2)  # what the tests' model exports: the pointing game needs no slack here
    frames = [smooth_image(s, size) for s in range(4)]
    images = np.stack([frames[0], frames[0], frames[1], frames[1], frames[2], frames[3], frames[0]])
    lesion = box_mask(0, 0, 20, 20, size)  # top-left quadrant
    masks = [lesion, lesion, lesion, lesion, None, lesion, lesion]
    peaks = [(1, 1), (1, 1), (0, 0), (0, 0), (0, 0), (1, 0), (1, 1)]
    maps = np.full((len(images), *grid, 3), -1.0)
    for i, (row, col) in enumerate(peaks):
        maps[i, row, col, 1] = 2.0  # the benign map peaks there
    probabilities = np.tile([0.1, 0.8, 0.1], (len(images), 1))
    path = served_cam_figure(images, maps, probabilities, [1] * len(images), masks, ["normal", "benign", "malignant"],
                             tmp_path / "cams.png", "test split, model.tflite")
    assert path.is_file()
    shown = [bytes(image.tobytes()) for image in drawn["images"]]
    assert len(shown) == len(set(shown)) == 3  # frames 0, 1 and 3 (2 has no lesion), each once
    assert drawn["titles"] == ["benign: predicted benign 0.80, miss, no slack",
                               "benign: predicted benign 0.80, hit, no slack",
                               "benign: predicted benign 0.80, miss, no slack"]
    assert "one image per frame" in drawn["title"] and "on a 2x2 grid" in drawn["title"]


# --------------------------------------------------------------------------- figure


def test_cam_figure_writes_a_readable_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(10)]
    maps = [peaked(i % 7, (2 * i) % 7) for i in range(10)]
    masks = [TOP_LEFT if i % 3 else None for i in range(10)]
    titles = [f"malignant, predicted benign 0.{i}1, {'hit' if i % 2 else 'miss'}" for i in range(10)]
    path = cam_figure(images, maps, masks, titles, tmp_path / "figs" / "cams.png", title="CAMs, test split")
    assert path.is_file()
    with Image.open(path) as png:
        assert png.format == "PNG" and 700 <= png.width <= 1600 and 400 <= png.height <= 1400
        assert png.info.get("Title") == "CAMs, test split"
    one = cam_figure(images[:1], [np.zeros(GRID)], [TOP_LEFT], ["normal map"], tmp_path / "one.png")
    with Image.open(one) as png:
        assert 200 <= png.width <= 600


# --------------------------------------------------------------------------- real BUSI masks


@pytest.mark.real_data
@pytest.mark.skipif(not BUSI_DIR.is_dir(),
                    reason=f"real BUSI data not found at {BUSI_DIR} (it is not part of the repository; "
                           "see data/README.md)")
def test_real_busi_masks():
    from busi_classifier.data.dataset import read_dataset

    samples = read_dataset(BUSI_DIR)
    size = 64  # small: the checks are about presence and unions, not detail
    several = [s for s in samples if len(s.masks) > 1]
    assert several, "BUSI has images with several masks"
    for sample in several:
        union = mask_for_input(sample.masks, SIZE)
        singles = [mask_for_input([m], SIZE) for m in sample.masks]
        expected = np.zeros((SIZE, SIZE), bool)
        for single in singles:
            if single is not None:
                assert (union >= single).all()
                expected |= single
        np.testing.assert_array_equal(union, expected)
    for sample in samples:
        mask = mask_for_input(sample.masks, size)
        if sample.label == "normal":
            assert mask is None, sample.path.name
        else:
            assert mask is not None and mask.any(), sample.path.name
