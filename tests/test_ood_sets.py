"""The out-of-distribution sets the input check is measured on (busi_classifier.evaluation.ood_sets):
built from what is installed, nothing downloaded, deterministic, every image one the API
would accept and decode, near-misses that really are transforms of the given images, and
the report and figure on constructed scores."""

import io
import socket

import numpy as np
import pytest
from conftest import BUSI_DIR
from PIL import Image

from busi_classifier.evaluation import ood_sets as o
from busi_classifier.evaluation.metrics import roc_auc
from busi_classifier.serving.api import MAX_IMAGE_BYTES
from busi_classifier.serving.constants import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from busi_classifier.serving.decode import decode_image, letterbox_geometry, sniff_format

N = 8  # covers the six text layouts and chart kinds, both noise colours, both gradient kinds
SEED = 3
# sets drawn here (not picked from the caller's images)
MADE = (o.TEXT, o.CHARTS, o.NOISE, o.GRADIENTS, o.PHOTOGRAPHS, o.MEDICAL, o.OTHER_ULTRASOUND)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ood_sets tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A tiny synthetic dataset: its images stand in for BUSI test images, its masks for BUSI masks."""
    from busi_classifier.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("ood-synthetic"), per_class=2, seed=0, min_side=200,
                            max_side=300, progress=False)
    images = sorted(p for p in root.rglob("*.png") if "_mask" not in p.name)
    masks = sorted(p for p in root.rglob("*_mask*.png"))
    return root, [p.read_bytes() for p in images], [p.read_bytes() for p in masks]


@pytest.fixture(scope="module")
def sets(stand_in):
    root, images, masks = stand_in
    with pytest.MonkeyPatch.context() as mp:
        _no_network(mp)  # everything comes from the installed packages
        return o.ood_sets(images, masks, root, n_per_set=N, seed=SEED)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _array(data: bytes) -> np.ndarray:
    return np.asarray(_open(data))


# --------------------------------------------------------------------------- the sets


def test_every_available_set_is_built_non_empty_in_order(sets, stand_in):
    root, images, masks = stand_in
    reasons = o.available_sources(images, masks, root)
    assert list(reasons) == list(o.SET_NAMES)
    expected = [name for name in o.SET_NAMES if reasons[name] is None]
    assert list(sets) == expected
    # scikit-image and pydicom are in the train extra: here every set is there
    assert expected == list(o.SET_NAMES), {k: v for k, v in reasons.items() if v}
    for name, items in sets.items():
        assert items and all(isinstance(b, bytes) for b in items), name
    for name in MADE:
        assert len(sets[name]) == N, name
    for name in o.NEAR_MISSES:
        assert len(sets[name]) == min(N, len(images)), name


@pytest.mark.parametrize("name", o.SET_NAMES)
def test_every_image_is_one_the_api_accepts_and_decode_image_reads(sets, name):
    for k, data in enumerate(sets[name]):
        assert sniff_format(data) in ("PNG", "JPEG"), (name, k)
        assert len(data) <= MAX_IMAGE_BYTES, (name, k, len(data))
        image = _open(data)
        w, h = image.size
        assert w * h <= MAX_IMAGE_PIXELS and max(w, h) <= MAX_IMAGE_SIDE and max(w, h) <= MAX_ASPECT_RATIO * min(w, h)
        assert image.mode in ("L", "RGB", "1"), (name, k, image.mode)  # "1": BUSI masks as the dataset has them
        pixels = decode_image(data)  # what the service runs on them
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("name", MADE)
def test_made_images_have_realistic_sizes_and_are_all_different(sets, name):
    items = sets[name]
    assert len(set(items)) == len(items), f"{name}: duplicate images"
    for k, data in enumerate(items):
        image = _open(data)
        assert o.MIN_SIDE <= min(image.size) and max(image.size) <= o.MAX_SIDE, (name, k, image.size)
        assert np.asarray(image.convert("L")).std() > 2, (name, k, "a blank image")


def test_made_sets_mix_png_and_jpeg_and_gray_and_colour(sets):
    formats = {_open(b).format for name in MADE for b in sets[name]}
    modes = {_open(b).mode for name in MADE for b in sets[name]}
    assert formats == {"PNG", "JPEG"} and {"L", "RGB"} <= modes


def test_same_seed_same_bytes_and_fewer_images_are_a_prefix(sets, stand_in):
    """Image k of a set depends only on (seed, set, k): a second build with fewer images per
    set gives the first ones byte for byte; another seed draws other images."""
    root, images, masks = stand_in
    again = o.ood_sets(images, masks, root, n_per_set=3, seed=SEED)
    assert list(again) == list(sets)
    for name, items in again.items():
        assert items == sets[name][:3], name
    other = o.ood_sets(images, masks, root, n_per_set=3, seed=SEED + 1)
    for name in (*MADE, o.OVERLAY):
        assert other[name] != again[name], name


def test_noise_and_gradient_variants_are_what_their_index_says():
    """Twelve noise images: the three kinds, gray and colour, plain and blurred (blur
    removes the pixel-to-pixel variation); four gradients: linear/radial, gray/colour."""
    for i in range(12):
        image = o.noise(o._rng(0, o.NOISE, i), i)
        a = np.asarray(image, dtype=np.float64)
        assert (a.ndim == 3) == ((i // 3) % 2 == 1), i
        gray = a.mean(axis=-1) if a.ndim == 3 else a
        neighbours = np.corrcoef(gray[:, :-1].ravel(), gray[:, 1:].ravel())[0, 1]
        assert (neighbours > 0.5) == ((i // 6) % 2 == 1), (i, neighbours)
        if o.NOISE_KINDS[i % 3] == "salt and pepper" and (i // 6) % 2 == 0:
            assert (a == 0).any() and (a == 255).any()
    for i in range(4):
        a = np.asarray(o.gradient(o._rng(0, o.GRADIENTS, i), i))
        assert (a.ndim == 3) == ((i // 2) % 2 == 1)
        assert np.abs(np.diff(a.astype(np.float64), axis=1)).max() <= 16  # smooth: no edges


def test_masks_are_the_given_masks_with_a_lesion_as_they_are(sets, stand_in):
    _, _, masks = stand_in
    with_lesion = [m for m in masks if _array(m).any()]
    assert 0 < len(with_lesion) < len(masks)  # the normal class's masks are empty
    assert len(sets[o.MASKS]) == min(N, len(with_lesion))
    assert all(m in with_lesion for m in sets[o.MASKS])
    empty = [m for m in masks if not _array(m).any()]
    assert o.available_sources(mask_images=empty)[o.MASKS] == "every mask given is empty (all black)"
    assert o.MASKS not in o.ood_sets(mask_images=empty, n_per_set=1)


def test_synthetic_ultrasound_is_the_folder_images_as_they_are(sets, stand_in):
    root = stand_in[0]
    files = {p.read_bytes() for p in root.rglob("*.png") if "_mask" not in p.name}
    assert len(sets[o.SYNTHETIC]) == min(N, len(files)) and set(sets[o.SYNTHETIC]) <= files


# --------------------------------------------------------------------------- near-misses


@pytest.fixture(scope="module")
def originals(stand_in):
    images = stand_in[1]
    return [np.asarray(o._open_given(b)) for b in o.near_miss_originals(images, n_per_set=N, seed=SEED)]


def _inside(size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of decode_image's output that the image covers (not the padding)."""
    (w, h), (x, y) = letterbox_geometry(*size, 224)
    return slice(y, y + h), slice(x, x + w)


def test_inverted_is_255_minus_the_original_also_after_decode(sets, stand_in, originals):
    near = o.near_miss_originals(stand_in[1], n_per_set=N, seed=SEED)
    assert len(sets[o.INVERTED]) == len(originals)
    for data, original, source in zip(sets[o.INVERTED], originals, near, strict=True):
        assert np.array_equal(_array(data), 255 - original)
        rows, cols = _inside(original.shape[1::-1])
        served = decode_image(data).astype(int)[rows, cols]
        expected = 255 - decode_image(source).astype(int)[rows, cols]
        # the bilinear resize commutes with 255 - x up to its (two-pass) rounding
        assert np.abs(served - expected).max() <= 2 and np.abs(served - expected).mean() < 0.5


def test_cropped_is_the_central_quarter_of_each_side_at_its_own_resolution(sets, originals):
    for data, original in zip(sets[o.CROPPED], originals, strict=True):
        h, w = original.shape[:2]
        left, top, right, bottom = o.central_crop_box(w, h)
        assert (right - left, bottom - top) == (round(w * o.CROP_FRACTION), round(h * o.CROP_FRACTION))
        assert abs((left + right) / 2 - w / 2) <= 1 and abs((top + bottom) / 2 - h / 2) <= 1
        assert np.array_equal(_array(data), original[top:bottom, left:right])


def test_rotated_is_a_quarter_turn_of_the_original_also_after_decode(sets, stand_in, originals):
    near = o.near_miss_originals(stand_in[1], n_per_set=N, seed=SEED)
    turns = set()
    for k, (data, original, source) in enumerate(zip(sets[o.ROTATED], originals, near, strict=True)):
        turn = 1 if k % 2 == 0 else -1  # counter-clockwise, clockwise
        turns.add(turn)
        assert np.array_equal(_array(data), np.rot90(original, turn))
        # compared where each image lies on its canvas (the centring floors the offsets: the
        # turned image may sit one pixel off the turned canvas)
        served = decode_image(data).astype(int)[_inside(_open(data).size)]
        h, w = original.shape[:2]
        expected = np.rot90(decode_image(source)[_inside((w, h))], turn).astype(int)
        assert served.shape == expected.shape and np.abs(served - expected).mean() < 1.0
    assert turns == {1, -1}


def test_colour_overlay_adds_colour_to_part_of_the_original_and_leaves_the_rest(sets, originals):
    for data, original in zip(sets[o.OVERLAY], originals, strict=True):
        overlaid = _array(data).astype(int)
        rgb = np.asarray(Image.fromarray(original).convert("RGB")).astype(int)
        assert overlaid.shape == rgb.shape
        changed = (overlaid != rgb).any(axis=-1)
        assert 0.01 < changed.mean() < 0.5, changed.mean()
        spread = overlaid.max(axis=-1) - overlaid.min(axis=-1)
        assert spread[changed].mean() > 40  # the changed pixels are coloured (the originals are gray)


# --------------------------------------------------------------------------- sources


def test_bundled_files_are_used_only_where_the_installed_package_ships_them():
    files = o.source_files()
    assert "matplotlib/mpl-data/sample_data/grace_hopper.jpg" in files[o.PHOTOGRAPHS]
    assert any(f.startswith("skimage/data/") for f in files[o.PHOTOGRAPHS])
    assert {"pydicom/data/test_files/CT_small.dcm", "pydicom/data/test_files/MR_small.dcm"} <= set(files[o.MEDICAL])
    assert all(f.startswith("pydicom/") for f in files[o.OTHER_ULTRASOUND]) and files[o.OTHER_ULTRASOUND]
    assert any(f.endswith(".ttf") for f in files[o.TEXT])


def test_inputs_not_given_are_absent_with_the_reason(tmp_path):
    reasons = o.available_sources()
    assert reasons[o.MASKS] == "no mask images given"
    assert reasons[o.SYNTHETIC] == "no synthetic dataset folder given"
    assert all(reasons[name] == "no BUSI test images given" for name in o.NEAR_MISSES)
    assert o.available_sources(synthetic_dir=tmp_path)[o.SYNTHETIC] == f"no images in {tmp_path}"
    built = o.ood_sets(synthetic_dir=tmp_path, n_per_set=1)
    assert set(built) == {name for name, why in reasons.items() if why is None}


def test_a_missing_package_drops_its_sets_with_the_reason(monkeypatch):
    """Without pydicom and scikit-image: no other ultrasound, medical only from
    matplotlib's MRI, photographs only matplotlib's; without matplotlib too, no charts,
    photographs or medical images, each with its reason."""
    real = o._package_dir
    gone: set[str] = {"pydicom", "skimage"}
    monkeypatch.setattr(o, "_package_dir", lambda name: None if name in gone else real(name))
    o._font_files.cache_clear()
    try:
        reasons = o.available_sources()
        assert reasons[o.OTHER_ULTRASOUND] == "pydicom is not installed (ultrasound test files)"
        assert reasons[o.PHOTOGRAPHS] is None and reasons[o.MEDICAL] is None
        files = o.source_files()
        assert files[o.PHOTOGRAPHS] == ["matplotlib/mpl-data/sample_data/grace_hopper.jpg"]
        assert files[o.MEDICAL] == ["matplotlib/mpl-data/sample_data/s1045.ima.gz"]
        built = o.ood_sets(n_per_set=2)
        assert o.OTHER_ULTRASOUND not in built and len(built[o.MEDICAL]) == 2

        gone.add("matplotlib")
        o._font_files.cache_clear()
        reasons = o.available_sources()
        for name in (o.CHARTS, o.PHOTOGRAPHS, o.MEDICAL):
            assert reasons[name] and "is not installed" in reasons[name], name
        assert "pydicom is not installed" in reasons[o.MEDICAL] and "skimage is not installed" in reasons[o.MEDICAL]
        built = o.ood_sets(n_per_set=1)
        assert set(built) == {o.TEXT, o.NOISE, o.GRADIENTS}  # Pillow and NumPy only, Pillow's font
        decode_image(built[o.TEXT][0])
    finally:
        o._font_files.cache_clear()


@pytest.mark.parametrize("kwargs", [{"n_per_set": 0}, {"n_per_set": 2.5}, {"n_per_set": True}, {"seed": -1},
                                    {"seed": "0"}])
def test_bad_arguments_fail_at_once(kwargs):
    with pytest.raises(ValueError):
        o.ood_sets(**kwargs)


# --------------------------------------------------------------------------- report and figure


def _pairwise_auroc(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(((b[:, None] > a[None, :]) + 0.5 * (b[:, None] == a[None, :])).mean())


def test_auroc_counts_out_as_positive_and_ties_as_half():
    assert o.auroc([0, 1, 2, 3], [4, 5]) == 1.0
    assert o.auroc([0, 1, 2, 3], [-1]) == 0.0
    assert o.auroc([1, 1], [1]) == 0.5
    assert o.auroc([0, 2], [1, 2]) == 0.625  # (1 + 0 + 1 + 0.5) / 4
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 20, 60), rng.integers(5, 25, 40)  # many ties
        expected = _pairwise_auroc(a, b)
        assert o.auroc(a, b) == pytest.approx(expected, abs=1e-12)
        assert roc_auc(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b]) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        o.auroc([], [1.0])


def test_ood_report_on_constructed_scores():
    test = np.arange(100.0)  # threshold 94.5: 5 of 100 in-distribution images flagged
    val = np.arange(200.0) / 2  # 10 of 200 above 94.5
    report = o.ood_report(test, {"far": np.full(10, 1000.0), "half": np.r_[np.full(5, 1000.0), np.full(5, -1.0)],
                                 "mixed": np.array([50.0, 50.0, 200.0]), "none": np.array([])}, 94.5,
                          in_val_scores=val)
    assert report["threshold"] == 94.5
    assert report["in_distribution"] == {"n": 100, "flag_rate": 0.05}
    assert report["validation"] == {"n": 200, "flag_rate": 0.05}
    assert report["sets"]["far"] == {"n": 10, "auroc": 1.0, "flag_rate": 1.0}
    assert report["sets"]["half"] == {"n": 10, "auroc": 0.5, "flag_rate": 0.5}
    mixed = report["sets"]["mixed"]
    assert mixed["flag_rate"] == pytest.approx(1 / 3) and mixed["auroc"] == pytest.approx((0.505 * 2 + 1) / 3)
    assert report["sets"]["none"] == {"n": 0, "auroc": None, "flag_rate": None}
    assert report["mean_auroc"] == pytest.approx(np.mean([1.0, 0.5, mixed["auroc"]]))
    assert "validation" not in o.ood_report(test, {}, 94.5)
    # a score exactly at the threshold is not flagged (InputCheck: in distribution when score <= threshold)
    assert o.ood_report([1.0, 2.0], {"at": [2.0]}, 2.0)["sets"]["at"]["flag_rate"] == 0.0


@pytest.mark.parametrize("bad", [{"in_test_scores": []}, {"in_test_scores": [np.nan, 1.0]},
                                 {"set_scores": {"x": [np.nan]}}, {"threshold": np.inf}])
def test_ood_report_refuses_what_it_cannot_measure(bad):
    args = {"in_test_scores": [1.0, 2.0], "set_scores": {"x": [3.0]}, "threshold": 1.5, **bad}
    with pytest.raises(ValueError):
        o.ood_report(**args)


@pytest.mark.parametrize("scale", ["wide positive", "signed"])
def test_ood_figure_is_written_with_its_title(tmp_path, scale):
    rng = np.random.default_rng(0)
    if scale == "wide positive":  # Mahalanobis-like: log x
        test, sets = rng.gamma(4, 10, 80), {"noise": rng.gamma(4, 1000, 30), "inverted": rng.gamma(4, 20, 30)}
    else:  # e.g. a negative max-softmax score
        test, sets = -rng.uniform(0.6, 1, 80), {"noise": -rng.uniform(0.3, 0.9, 30), "empty": np.array([])}
    threshold = float(np.quantile(test, 0.95))
    path = o.ood_figure(test, sets, threshold, tmp_path / "figs" / f"{scale}.png", title=f"scores ({scale})")
    assert path == tmp_path / "figs" / f"{scale}.png" and path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.text.get("Title") == f"scores ({scale})"
        assert image.width >= 800 and image.height >= 200


# --------------------------------------------------------------------------- the real BUSI images


@pytest.mark.real_data
@pytest.mark.skipif(not BUSI_DIR.is_dir(), reason=f"the BUSI dataset is not at {BUSI_DIR}")
def test_real_busi_images_and_masks_make_decodable_near_misses():
    images, masks = [], []
    for label in ("normal", "benign", "malignant"):
        files = sorted(p for p in (BUSI_DIR / label).glob("*.png") if "_mask" not in p.name)
        images += [p.read_bytes() for p in files[:3]]
        masks += [p.read_bytes() for p in sorted((BUSI_DIR / label).glob("*_mask.png"))[:3]]
    built = o.ood_sets(images, masks, None, n_per_set=4, seed=0)
    assert set(o.NEAR_MISSES) | {o.MASKS} <= set(built)
    assert len(built[o.MASKS]) == 4  # the normal masks are empty: only lesion masks are kept
    originals = [np.asarray(o._open_given(b)) for b in o.near_miss_originals(images, n_per_set=4, seed=0)]
    for name in (*o.NEAR_MISSES, o.MASKS):
        for data in built[name]:
            assert len(data) <= MAX_IMAGE_BYTES
            decode_image(data)
    for data, original in zip(built[o.INVERTED], originals, strict=True):
        assert np.array_equal(_array(data), 255 - original)
    for data, original in zip(built[o.CROPPED], originals, strict=True):
        h, w = original.shape[:2]
        assert _open(data).size == (round(w * o.CROP_FRACTION), round(h * o.CROP_FRACTION))
