"""Tests of busi_classifier.data.synthetic: BUSI layout, determinism, lesion cues, learnability."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from busi_classifier.data.synthetic import generate_dataset, main
from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.decode import decode_image

PER_CLASS = 40
MIN_SIDE, MAX_SIDE = 160, 260
NAME = re.compile(r"^(?P<label>[a-z]+) \((?P<n>\d+)\)(?P<suffix>_mask(_\d+)?)?\.png$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 images per class at small sizes (fast), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synthetic") / "busi"
    returned = generate_dataset(out, per_class=PER_CLASS, seed=3, min_side=MIN_SIDE, max_side=MAX_SIDE, progress=False)
    assert returned == out
    return out


def _images(folder, label):
    """Image paths of one class, in numeric order (masks excluded)."""
    paths = [p for p in (folder / label).glob("*.png") if "_mask" not in p.name]
    return sorted(paths, key=lambda p: int(NAME.match(p.name)["n"]))


def _gray(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def _mask(path, k: int = 0) -> np.ndarray:
    suffix = "_mask" if k == 0 else f"_mask_{k}"
    return np.asarray(Image.open(path.with_name(f"{path.stem}{suffix}.png"))) > 0


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max(), xs.min(), xs.max()


# --------------------------------------------------------------------------- layout


def test_busi_layout_names_and_masks(dataset):
    from busi_classifier.data.synthetic import SYNTHETIC_MARKER

    assert sorted(p.name for p in dataset.iterdir()) == sorted([*CLASSES, SYNTHETIC_MARKER])
    assert "Not real ultrasound" in (dataset / SYNTHETIC_MARKER).read_text()  # training records it (dataset.synthetic)
    for label in CLASSES:
        files = sorted(p.name for p in (dataset / label).iterdir())
        for name in files:
            match = NAME.match(name)
            assert match, f"unexpected file name {name!r}"
            assert match["label"] == label
        images = _images(dataset, label)
        assert [p.name for p in images] == [f"{label} ({n}).png" for n in range(1, PER_CLASS + 1)]
        for path in images:
            mask_path = path.with_name(f"{path.stem}_mask.png")
            assert mask_path.exists()
            with Image.open(path) as image, Image.open(mask_path) as mask:
                assert mask.mode == "L"
                assert mask.size == image.size
                values = set(np.unique(np.asarray(mask)).tolist())
                assert values <= {0, 255}
                if label == "normal":
                    assert values == {0}, f"{mask_path.name} should be all black"
                else:
                    assert 255 in values, f"{mask_path.name} should mark a lesion"


def test_second_lesion_masks_only_for_some_benign(dataset):
    second = sorted((dataset / "benign").glob("*_mask_1.png"))
    assert 1 <= len(second) <= PER_CLASS // 4  # about 10 %
    for path in second:
        stem = path.name[: -len("_mask_1.png")]
        first = np.asarray(Image.open(path.with_name(f"{stem}_mask.png"))) > 0
        extra = np.asarray(Image.open(path)) > 0
        assert Image.open(path).mode == "L"
        assert extra.shape == first.shape
        assert extra.any()
        assert not (extra & first).any(), "the two lesions must not overlap"
        assert extra.sum() < first.sum(), "the second lesion is the small one"
    for label in ("normal", "malignant"):
        assert not list((dataset / label).glob("*_mask_*.png"))


def test_sizes_within_range_and_both_color_modes(dataset):
    modes, widths, heights = set(), set(), set()
    for label in CLASSES:
        for path in _images(dataset, label):
            with Image.open(path) as image:
                width, height = image.size
                assert MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE
                modes.add(image.mode)
                widths.add(width)
                heights.add(height)
                if image.mode == "RGB":
                    rgb = np.asarray(image)
                    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert modes == {"L", "RGB"}
    assert len(widths) > 10 and len(heights) > 10, "sizes should vary"


def test_images_look_like_ultrasound_not_blank(dataset):
    for label in CLASSES:
        for path in _images(dataset, label)[:5]:
            gray = _gray(path)
            assert 20 < gray.mean() < 200
            assert gray.std() > 15
            # speckle grains: neighbouring pixels are correlated (not white noise)
            center = gray[
                gray.shape[0] // 3 : 2 * gray.shape[0] // 3,
                gray.shape[1] // 3 : 2 * gray.shape[1] // 3,
            ]
            a, b = center[:, :-1].ravel(), center[:, 1:].ravel()
            assert np.corrcoef(a, b)[0, 1] > 0.3


# --------------------------------------------------------------------------- determinism


def _all_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_same_seed_identical_bytes_other_seed_different(tmp_path):
    kwargs = dict(per_class=3, min_side=100, max_side=160, progress=False)
    a = _all_bytes(generate_dataset(tmp_path / "a", seed=5, **kwargs))
    b = _all_bytes(generate_dataset(tmp_path / "b", seed=5, **kwargs))
    c = _all_bytes(generate_dataset(tmp_path / "c", seed=6, **kwargs))
    assert a == b
    images = [k for k in a if "_mask" not in k]
    assert len(images) == 9 and all(k in c for k in images)
    assert all(a[k] != c[k] for k in images)


def test_image_does_not_depend_on_how_many_are_generated(tmp_path):
    kwargs = dict(seed=9, min_side=100, max_side=160, progress=False)
    few = _all_bytes(generate_dataset(tmp_path / "few", per_class=2, **kwargs))
    more = _all_bytes(generate_dataset(tmp_path / "more", per_class=4, **kwargs))
    assert few.keys() <= more.keys()
    assert all(few[k] == more[k] for k in few)


def test_rerun_with_other_seed_removes_stale_second_mask(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, per_class=40, seed=3, min_side=100, max_side=140, progress=False)
    stale = sorted((out / "benign").glob("*_mask_1.png"))
    assert stale
    generate_dataset(out, per_class=40, seed=4, min_side=100, max_side=140, progress=False)
    fresh = _all_bytes(tmp_path / "ds")
    generate_dataset(tmp_path / "clean", per_class=40, seed=4, min_side=100, max_side=140, progress=False)
    assert fresh == _all_bytes(tmp_path / "clean")


@pytest.mark.parametrize(
    "kwargs",
    [dict(per_class=0), dict(min_side=10), dict(min_side=300, max_side=200), dict(seed=-1)],
)
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, progress=False, **kwargs)


# --------------------------------------------------------------------------- lesion cues


def test_malignant_taller_than_wide_benign_wider_than_tall(dataset):
    def mean_ratio(label):
        ratios = []
        for path in _images(dataset, label):
            y0, y1, x0, x1 = _bbox(_mask(path))
            ratios.append((y1 - y0 + 1) / (x1 - x0 + 1))
        return float(np.mean(ratios))

    assert mean_ratio("malignant") > 1.1
    assert mean_ratio("benign") < 0.9


def _posterior_ratio(gray, mask):
    """Mean brightness of the column below the lesion / mean brightness beside it at
    the same depth (black margins excluded). None when there is no room to measure."""
    h, w = gray.shape
    y0, y1, x0, x1 = _bbox(mask)
    height, width = y1 - y0 + 1, x1 - x0 + 1
    r0 = y1 + max(2, height // 10)
    r1 = min(h, r0 + height)
    if r1 - r0 < 3:
        return None
    below = gray[r0:r1, x0 + width // 4 : x1 - width // 4 + 1].ravel()
    beside = np.concatenate(
        [
            gray[r0:r1, max(0, x0 - width) : max(0, x0 - width // 2)].ravel(),
            gray[r0:r1, min(w, x1 + width // 2) : min(w, x1 + width)].ravel(),
        ]
    )
    below, beside = below[below > 0], beside[beside > 0]
    if below.size < 10 or beside.size < 10:
        return None
    return below.mean() / beside.mean()


def test_posterior_shadowing_and_enhancement(dataset):
    ratios = {}
    for label in ("benign", "malignant"):
        values = [_posterior_ratio(_gray(p), _mask(p)) for p in _images(dataset, label)]
        values = [v for v in values if v is not None]
        assert len(values) >= PER_CLASS // 2
        ratios[label] = np.array(values)
    # malignant: acoustic shadow (darker column below the lesion)
    assert ratios["malignant"].mean() < 0.8
    assert (ratios["malignant"] < 0.9).mean() > 0.6
    # benign: posterior enhancement in most images (brighter column)
    assert ratios["benign"].mean() > 1.15
    assert (ratios["benign"] > 1.1).mean() > 0.5


def test_lesions_are_hypoechoic(dataset):
    """The lesion is darker than the tissue above and beside it (the column below is
    left out: it holds the shadow or the enhancement)."""
    for label in ("benign", "malignant"):
        ratios = []
        for path in _images(dataset, label):
            gray, mask = _gray(path), _mask(path)
            y0, y1, x0, x1 = _bbox(mask)
            pad = max(y1 - y0, x1 - x0) // 2 + 3
            ring = np.zeros_like(mask)
            ring[max(0, y0 - pad) : y1 + 1, max(0, x0 - pad) : x1 + pad + 1] = True
            ring &= ~mask & (gray > 0)
            ratios.append(gray[mask].mean() / gray[ring].mean())
        ratios = np.array(ratios)
        assert ratios.mean() < 0.65, label
        assert (ratios < 0.8).mean() > 0.9, label


def test_mean_brightness_alone_does_not_separate_classes(dataset):
    """Per-image gain/contrast varies, so a nearest-centroid on mean brightness of the
    model input is little better than chance (even evaluated on its own fitting data)."""
    features, labels = [], []
    for index, label in enumerate(CLASSES):
        for path in _images(dataset, label):
            features.append(decode_image(path.read_bytes(), 64).mean())
            labels.append(index)
    features, labels = np.array(features), np.array(labels)
    centroids = np.array([features[labels == i].mean() for i in range(len(CLASSES))])
    predicted = np.abs(features[:, None] - centroids[None, :]).argmin(axis=1)
    assert (predicted == labels).mean() < 0.55


# --------------------------------------------------------------------------- CLI and imports


def test_module_imports_no_tensorflow_or_scipy():
    code = (
        "import sys, busi_classifier.data.synthetic; "
        "bad = [m for m in ('tensorflow', 'keras', 'scipy', 'cv2') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_main_writes_dataset_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--per-class", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "6" in printed
    for label in CLASSES:
        assert len(_images(out, label)) == 2
    with pytest.raises(SystemExit):
        main(["--per-class", "2"])  # --out is required


# --------------------------------------------------------------------------- learnability


@pytest.mark.slow
def test_classes_learnable_by_tiny_cnn_at_64px(tmp_path):
    keras = pytest.importorskip("keras")
    per_class, size = 50, 64
    out = generate_dataset(tmp_path / "learn", per_class=per_class, seed=1, progress=False)
    x, y = [], []
    for index, label in enumerate(CLASSES):
        for path in _images(out, label):
            x.append(decode_image(path.read_bytes(), size))
            y.append(index)
    x, y = np.stack(x).astype("float32"), np.array(y)

    rng = np.random.default_rng(0)
    train, test = [], []
    for index in range(len(CLASSES)):
        members = rng.permutation(np.nonzero(y == index)[0])
        cut = int(round(0.7 * len(members)))
        train += members[:cut].tolist()
        test += members[cut:].tolist()
    train = rng.permutation(train)
    # augmentation: horizontal flips and small shifts (the data set is tiny)
    x_train = np.concatenate([x[train], x[train][:, :, ::-1]])
    x_train = np.concatenate([x_train, np.roll(x_train, 3, axis=1), np.roll(x_train, -3, axis=2)])
    y_train = np.tile(y[train], 6)

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Rescaling(1 / 255.0),
            layers.AveragePooling2D(2),  # averages the speckle away
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalMaxPooling2D(),
            layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=15, batch_size=16, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(x[test], y[test], verbose=0)
    print(
        f"held-out accuracy of a tiny CNN on synthetic data at {size}px: {accuracy:.3f}",
        file=sys.stderr,
    )
    assert accuracy >= 0.8
