"""Lesion-map segmentation metrics: constructed maps and masks with known answers (no
TensorFlow, no model), the threshold rule, the cluster bootstrap, the pointing game's
guard on coarse grids, the figure, and score_served's segmentation of a file with a
lesion output (a stub predictor)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi_classifier.evaluation import segmentation
from busi_classifier.evaluation.localisation import centre_map, localisation_report, pointing_hit
from busi_classifier.evaluation.segmentation import (
    MIN_THRESHOLD_IMAGES,
    choose_threshold,
    image_scores,
    input_area,
    predicted_mask,
    segmentation_figure,
    segmentation_report,
)
from busi_classifier.serving.decode import decode_image, letterbox_geometry
from busi_classifier.serving.lesion import upsample_map

SIZE = 64  # a 16x16 lesion map, 4 px a cell
CELLS = SIZE // 4
NORMAL, BENIGN, MALIGNANT = 0, 1, 2


def box(top: int, left: int, bottom: int, right: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def disc(cy: float, cx: float, radius: float, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size] + 0.5
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2


def perfect(mask: np.ndarray) -> np.ndarray:
    """The best a map at a quarter of the side can do: each cell's share of lesion pixels."""
    size = mask.shape[0]
    return mask.reshape(size // 4, 4, size // 4, 4).mean(axis=(1, 3))


def empty(size: int = SIZE) -> np.ndarray:
    return np.zeros((size // 4, size // 4))


# --------------------------------------------------------------------------- Dice and IoU


def test_a_perfect_map_scores_dice_one_up_to_the_cell_blur_and_an_empty_one_zero():
    masks = [box(8, 8, 40, 40), box(20, 28, 52, 60), disc(32, 32, 13), disc(20, 44, 9)]
    labels = [BENIGN, BENIGN, MALIGNANT, MALIGNANT]
    report = segmentation_report([perfect(m) for m in masks], masks, labels, SIZE, 0.5, None, 200, 0)
    assert report["n_lesion"] == 4 and report["grid"] == [CELLS, CELLS] and report["stride"] == 4
    # cell-aligned boxes lose only their four corner pixels to the bilinear blur; discs a little more
    scores = image_scores([perfect(m) for m in masks], masks, SIZE, 0.5)
    assert scores["dice"][0] == pytest.approx(2 * (32 * 32 - 4) / (2 * 32 * 32 - 4), abs=1e-12)
    assert min(scores["dice"]) > 0.94 and min(scores["iou"]) > 0.9  # a 9 px disc: 0.95
    for key in ("dice", "iou"):
        assert report[key]["all"]["mean"] > 0.95 and report[key]["all"]["n"] == 4
        assert report[key]["benign"]["n"] == report[key]["malignant"]["n"] == 2
        low, high = report[key]["all"]["ci95"]
        assert low <= report[key]["all"]["mean"] <= high <= 1.0
    # nothing predicted: Dice and IoU 0 on every lesion image
    nothing = segmentation_report([empty()] * 4, masks, labels, SIZE, 0.5, None, 50, 0)
    assert nothing["dice"]["all"]["mean"] == 0.0 and nothing["iou"]["all"]["mean"] == 0.0
    assert nothing["dice"]["all"]["ci95"] == [0.0, 0.0]
    # a map shifted by half the box's side: Dice 0.5 by hand (IoU 1/3), up to the blur
    shifted = np.roll(perfect(masks[0]), 4, axis=1)
    dice = image_scores([shifted], [masks[0]], SIZE, 0.5)["dice"][0]
    assert dice == pytest.approx(0.5, abs=0.01)


def test_found_on_normal_images_counts_pixels_at_or_above_the_threshold_inside_the_image_area():
    spot = empty()
    spot[3, 3] = 0.8  # upsampled: peaks at 0.8 at pixel (14, 14)
    faint = np.full((CELLS, CELLS), 0.3)
    padding_only = empty()
    padding_only[0, 5] = 0.9  # the first row of cells: the letterbox padding below
    grids = [spot, faint, padding_only, empty(), perfect(box(8, 8, 24, 24))]
    masks = [None, None, None, None, box(8, 8, 24, 24)]
    labels = [NORMAL, NORMAL, NORMAL, NORMAL, BENIGN]
    report = segmentation_report(grids, masks, labels, SIZE, 0.5, None, 100, 0)
    assert report["n_normal"] == 4 and report["normal_found_rate"]["mean"] == pytest.approx(2 / 4)
    area = box(8, 0, 56, SIZE)  # a wide image letterboxed: black bars of 8 rows above and below
    in_area = segmentation_report(grids, masks, labels, SIZE, 0.5, None, 100, 0, areas=[area] * 5)
    assert in_area["normal_found_rate"]["mean"] == pytest.approx(1 / 4)  # the padding's lesion is not one
    assert in_area["normal_false_area"]["mean"] > 0
    lower = segmentation_report(grids, masks, labels, SIZE, 0.3, None, 100, 0, areas=[area] * 5)
    assert lower["normal_found_rate"]["mean"] == pytest.approx(2 / 4)  # 0.3 >= 0.3: found
    json.dumps(report)  # JSON-ready: floats, ints, None


def test_input_area_is_the_letterboxed_image_and_predictions_stay_inside_it():
    picture = Image.fromarray(np.full((30, 90), 128, np.uint8)).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    image = decode_image(buffer.getvalue(), SIZE)
    (new_w, new_h), (offset_x, offset_y) = letterbox_geometry(90, 30, SIZE)
    assert np.array_equal(input_area(image), box(offset_y, offset_x, offset_y + new_h, offset_x + new_w))
    assert input_area(np.zeros((SIZE, SIZE, 3), np.uint8)) is None
    everywhere = np.ones((CELLS, CELLS))
    assert np.array_equal(predicted_mask(everywhere, SIZE, 0.5, input_area(image)), input_area(image))
    np.testing.assert_array_equal(segmentation.lesion_probability(everywhere, SIZE), upsample_map(everywhere, SIZE))


# --------------------------------------------------------------------------- threshold


def test_the_threshold_is_the_one_with_the_best_mean_dice_ties_to_the_value_closest_to_half():
    # the mask is the left half, cell-aligned; the map 0.9 there and 0.6 on the right: only
    # thresholds between the boundary pixels' 0.7125 and 0.7875 draw the half exactly
    left = box(0, 0, SIZE, SIZE // 2)
    grid = np.where(perfect(left) > 0, 0.9, 0.6)
    masks = [left] * MIN_THRESHOLD_IMAGES + [None]
    grids = [grid] * MIN_THRESHOLD_IMAGES + [np.full((CELLS, CELLS), 0.5)]  # a normal image peaking at 0.5

    def brute_force(grids, masks):
        """Mean over the images: Dice where there is a lesion, 1 / 0 (nothing found / found) where not."""
        out = {}
        for t in segmentation.THRESHOLDS:
            scores = image_scores(grids, masks, SIZE, t)
            pairs = zip(scores["dice"], scores["found"], strict=True)
            out[t] = np.mean([d if d is not None else float(not f) for d, f in pairs])
        return out

    threshold, rule = choose_threshold(grids, masks, SIZE)
    assert threshold == 0.75 and f"over the {MIN_THRESHOLD_IMAGES} validation images with a lesion and the 1" in rule
    brute = brute_force(grids, masks)
    assert max(brute, key=brute.get) == threshold and f"mean {brute[0.75]:.3f}" in rule
    # normal images vote: the lesions light up only to 0.32 (drawn at 0.30 and below) and six
    # normal images carry a 0.35 haze ("found" at 0.35 and below): on the lesions alone a threshold
    # at or below 0.30 wins,
    # with the normal images every threshold from 0.40 up beats it (6 of 11 images right vs 5)
    lesion = np.where(perfect(left) > 0, 0.32, 0.02)
    hazy = np.full((CELLS, CELLS), 0.35)
    grids = [lesion] * MIN_THRESHOLD_IMAGES + [hazy] * (MIN_THRESHOLD_IMAGES + 1)
    masks = [left] * MIN_THRESHOLD_IMAGES + [None] * (MIN_THRESHOLD_IMAGES + 1)
    alone = choose_threshold(grids[:MIN_THRESHOLD_IMAGES], masks[:MIN_THRESHOLD_IMAGES], SIZE)[0]
    chosen = choose_threshold(grids, masks, SIZE)[0]
    brute = brute_force(grids, masks)
    assert alone <= 0.30 and chosen == 0.50 and brute[chosen] == max(brute.values()) > brute[alone]
    # the whole square is lesion and the map 0.32 everywhere: every threshold up to 0.30 is perfect
    full = np.ones((SIZE, SIZE), dtype=bool)
    assert choose_threshold([np.full((CELLS, CELLS), 0.32)] * 6, [full] * 6, SIZE)[0] == 0.30
    # ... and at 0.8 every threshold up to 0.80: 0.50 is the closest to 0.5
    assert choose_threshold([np.full((CELLS, CELLS), 0.8)] * 6, [full] * 6, SIZE)[0] == 0.50


def test_too_few_lesion_images_keep_the_midpoint_and_the_rule_says_so():
    threshold, rule = choose_threshold([np.full((CELLS, CELLS), 0.2)] * 3, [box(0, 0, 32, 32)] * 2 + [None], SIZE)
    assert threshold == 0.5 and "only 2 validation image(s) with a lesion" in rule
    assert choose_threshold([], [], SIZE)[0] == 0.5


# --------------------------------------------------------------------------- bootstrap


def test_groups_are_resampled_whole():
    """Nine near-duplicates of one perfectly segmented frame and one missed frame: resampling
    the two groups can only give the means 1, 0.9 (one of each, weighted by images) and 0;
    resampling images gives a narrow interval around 0.9."""
    lesion = box(8, 8, 40, 40)
    grids = [perfect(lesion)] * 9 + [empty()]
    masks, labels = [lesion] * 10, [BENIGN] * 10
    exact = image_scores(grids, masks, SIZE, 0.5)["dice"][0]
    by_group = segmentation_report(grids, masks, labels, SIZE, 0.5, ["a"] * 9 + ["b"], 400, 0)
    by_image = segmentation_report(grids, masks, labels, SIZE, 0.5, None, 400, 0)
    assert by_group["bootstrap_unit"] == "group" and by_group["bootstrap_units"] == 2
    assert by_group["dice"]["all"]["units"] == 2 and by_image["dice"]["all"]["units"] == 10
    low, high = by_group["dice"]["all"]["ci95"]
    possible = {0.0, 0.9 * exact, exact}  # the mean of one group drawn twice, or of one of each
    assert any(low == pytest.approx(v) for v in possible) and any(high == pytest.approx(v) for v in possible)
    assert low == 0.0  # both draws the missed frame: one resample in four
    assert by_image["dice"]["all"]["ci95"][0] > 0.5
    assert by_group["dice"]["all"]["mean"] == by_image["dice"]["all"]["mean"] == pytest.approx(0.9 * exact)


# --------------------------------------------------------------------------- pointing game


def test_the_pointing_game_scores_the_peak_against_localisations_centre_baseline():
    masks = [box(0, 0, 16, 16), box(40, 40, 64, 64), box(24, 24, 40, 40)]
    peaks = [(1, 1), (0, 15), (7, 7)]  # inside, far away, inside (the centre)
    grids = []
    for row, col in peaks:
        grid = np.full((CELLS, CELLS), 0.1)
        grid[row, col] = 0.9
        grids.append(grid)
    report = segmentation_report(grids, masks, [BENIGN] * 3, SIZE, 0.5, None, 100, 0)
    pointing = report["pointing_game"]
    assert pointing["not_meaningful"] is None and pointing["model"] == pytest.approx(2 / 3)
    centre = np.mean([pointing_hit(centre_map((CELLS, CELLS)), m, 1) for m in masks])
    assert pointing["centre_baseline"] == pytest.approx(centre) == pytest.approx(1 / 3)
    assert pointing["model_minus_centre"] == pytest.approx(pointing["model"] - pointing["centre_baseline"])
    # like for like with the class maps (a 4x4 grid at 128 px, 2x2 at 64): the centre baseline there is localisation's
    coarse = segmentation_report(grids, masks, [BENIGN] * 3, SIZE, 0.5, None, 100, 0, class_map_grid=(4, 4))
    cams = localisation_report([np.zeros((4, 4))] * 3, masks, 100, 0, map_of="predicted class")
    assert coarse["pointing_game_class_map_grid"]["centre_baseline"] == cams["pointing_game"]["centre_baseline"]
    assert coarse["pointing_game_class_map_grid"]["model"] == pytest.approx(2 / 3)


def test_the_pointing_game_is_not_meaningful_on_a_grid_the_dilated_centre_covers():
    size = 12  # a 3x3 lesion map: the centre cell with one cell of slack touches every cell
    mask = box(0, 0, 4, 4, size)
    grid = np.full((3, 3), 0.1)
    grid[2, 2] = 0.9  # a miss, and it does not matter
    report = segmentation_report([grid], [mask], [MALIGNANT], size, 0.5, None, 50, 0)
    pointing = report["pointing_game"]
    assert "not meaningful on a 3x3 grid" in pointing["not_meaningful"] and "16 px input" in pointing["not_meaningful"]
    assert pointing["model"] is None and pointing["model_ci95"] is None and pointing["model_minus_centre"] is None
    assert pointing["centre_baseline"] == 1.0  # why
    assert report["dice"]["all"]["mean"] == 0.0  # the Dice is still scored
    coarse = segmentation_report([perfect(box(0, 0, 16, 16))], [box(0, 0, 16, 16)], [BENIGN], SIZE, 0.5, None, 50, 0,
                                 class_map_grid=(2, 2))["pointing_game_class_map_grid"]
    assert "not meaningful on a 2x2 grid" in coarse["not_meaningful"] and coarse["model"] is None


def test_nothing_to_score_gives_none_not_an_error():
    report = segmentation_report([], [], [], SIZE, 0.5, None, 10, 0)
    assert report["n"] == 0 and report["dice"]["all"]["mean"] is None and report["pointing_game"]["model"] is None
    normals_only = segmentation_report([empty()], [None], [NORMAL], SIZE, 0.5, None, 10, 0)
    assert normals_only["dice"]["all"] == {"mean": None, "ci95": None, "n": 0, "units": 0}
    assert normals_only["normal_found_rate"]["mean"] == 0.0
    with pytest.raises(ValueError, match="masks"):
        segmentation_report([empty()], [None, None], [NORMAL], SIZE, 0.5, None, 10, 0)


# --------------------------------------------------------------------------- figure


def picture(seed: int, size: int = SIZE) -> np.ndarray:
    """A letterboxed gray model input: smooth texture, black bars top and bottom."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 255, (6, 8), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(small).resize((size, size * 3 // 4), Image.Resampling.BICUBIC))
    image = np.zeros((size, size, 3), dtype=np.uint8)
    top = (size - texture.shape[0]) // 2
    image[top:top + texture.shape[0]] = np.maximum(texture, 1)[..., None]
    return image


def test_the_figure_shows_the_best_and_the_worst_lesion_images_and_a_normal_one(tmp_path):
    n = 12
    images = np.stack([picture(s) for s in range(n)])
    masks = [disc(32, 16 + 2 * k, 8) for k in range(10)] + [None, None]
    labels = [BENIGN] * 5 + [MALIGNANT] * 5 + [NORMAL, NORMAL]
    # image k's map drifts k pixels away from its lesion: Dice falls with k; image 9 predicts nothing
    grids = [perfect(disc(32, 16 + 3 * k, 8)) for k in range(9)] + [empty()]
    spot = empty()
    spot[8, 8] = 0.95
    grids += [empty(), spot]  # the second normal image has a false lesion
    groups = [f"g{k}" for k in range(n)]
    groups[1] = "g0"  # a near-duplicate of image 0: one frame
    panels = segmentation._panels(images, grids, masks, labels, SIZE, 0.5, groups, segmentation.input_areas(images),
                                  ("normal", "benign", "malignant"))
    shown = [i for i, _ in panels]
    assert 1 not in shown and len(shown) == 2 * segmentation.FIGURE_EACH + 1
    assert shown[:4] == [0, 2, 3, 4] and shown[4:8] == [6, 7, 8, 9]  # best first, the worst (nothing found) last
    assert "Dice 0.00 (worst 1)" in panels[7][1] and "malignant" in panels[7][1]
    assert shown[-1] == 11 and "false lesion on" in panels[-1][1]
    path = segmentation_figure(images, grids, masks, labels, 0.5, tmp_path / "figs" / "lesions.png",
                               "Lesion outlines, test split", groups=groups)
    assert path == tmp_path / "figs" / "lesions.png" and path.stat().st_size > 10_000
    with Image.open(path) as png:
        assert png.size[0] > 600 and png.info.get("Title") == "Lesion outlines, test split"
    # nothing to show: no lesion mask and no normal image
    assert segmentation_figure(images[:1], grids[:1], [None], [BENIGN], 0.5, tmp_path / "none.png", "x") is None
    assert segmentation_figure(images[:0], [], [], [], 0.5, tmp_path / "none.png", "x") is None
    # a normal image without a false lesion says so
    only = segmentation._panels(images[10:11], [empty()], [None], [NORMAL], SIZE, 0.5, None, [None],
                                ("normal", "benign", "malignant"))
    assert only == [(0, "normal: nothing found")]


# --------------------------------------------------------------------------- the served file


class StubPredictor:
    """What evaluation.served asks of a LiteRT predictor: one invoke per image, every output."""

    def __init__(self, lesion: np.ndarray | None, maps: np.ndarray | None):
        self.lesion, self.maps = lesion, maps

    def raw_all(self, images):
        n = len(images)
        return {"probabilities": np.tile([0.2, 0.5, 0.3], (n, 1)), "class_maps": self.maps, "lesion": self.lesion}


def test_score_served_adds_the_segmentation_of_a_file_with_a_lesion_output(monkeypatch):
    from busi_classifier.evaluation import served

    images = np.stack([picture(s) for s in range(4)])
    masks = [box(16, 16, 32, 32), None, box(20, 8, 40, 30), None]
    lesion = np.stack([perfect(m) if m is not None else empty() for m in masks])
    maps = np.random.default_rng(0).normal(size=(4, 2, 2, 3))
    test = served.TestSet(images, np.array([BENIGN, NORMAL, MALIGNANT, NORMAL]), ["a", "b", "c", "c"], {}, masks,
                          1.0, 50, 0)
    stub = StubPredictor(lesion, maps)
    monkeypatch.setattr(served, "file_predictor", lambda *args, **kwargs: stub)
    score = served.score_served(Path("model_float16.tflite"), "float16", test, SIZE, lesion_threshold=0.5)
    assert score.lesion is lesion and score.file == "model_float16.tflite"
    seg = score.metrics["segmentation"]
    expected = segmentation_report(lesion, masks, test.labels, SIZE, 0.5, test.groups, 50, 0,
                                   areas=segmentation.input_areas(images), class_map_grid=(2, 2))
    assert seg == expected and seg["n_lesion"] == 2 and seg["bootstrap_units"] == 2
    assert "localisation" in score.metrics
    # no threshold: not scored; a classify-only file: as before, and no segmentation
    assert "segmentation" not in served.score_served(Path("m.tflite"), "float32", test, SIZE).metrics
    stub.lesion = None
    classify = served.score_served(Path("m.tflite"), "float32", test, SIZE, lesion_threshold=0.5)
    assert classify.lesion is None and "segmentation" not in classify.metrics
    assert "localisation" in classify.metrics and classify.metrics["n"] == 4
