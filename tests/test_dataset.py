"""Reading the BUSI layout: masks attached not counted, clear errors for broken layouts."""

import numpy as np
import pytest
from PIL import Image

from busi_classifier.data.dataset import DatasetError, cap_per_class, load_images, read_dataset
from busi_classifier.data.splitting import stratified_split, write_split_csv
from busi_classifier.serving.constants import CLASSES


def write_png(path, mode="L", size=(30, 20), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def make_layout(root, per_class=3, masks_for=(1,)):
    for label in CLASSES:
        for i in range(1, per_class + 1):
            write_png(root / label / f"{label} ({i}).png", mode="RGB" if i % 2 else "L")
            write_png(root / label / f"{label} ({i})_mask.png", value=0 if label == "normal" else 255)
        for i in masks_for:
            write_png(root / label / f"{label} ({i})_mask_1.png")
    return root


def test_masks_are_attached_not_counted(tmp_path):
    samples = read_dataset(make_layout(tmp_path, per_class=3))
    assert len(samples) == 9
    assert [s.label for s in samples] == [c for c in CLASSES for _ in range(3)]  # class order, not alphabetical
    assert not any("_mask" in s.path.name for s in samples)
    first = samples[0]
    assert first.path.name == "normal (1).png"
    assert [m.name for m in first.masks] == ["normal (1)_mask.png", "normal (1)_mask_1.png"]
    assert [m.name for m in samples[1].masks] == ["normal (2)_mask.png"]


def test_natural_order_and_jpeg_and_nested_root(tmp_path):
    root = make_layout(tmp_path / "Dataset_BUSI_with_GT", per_class=2)
    Image.new("RGB", (10, 10)).save(root / "benign" / "benign (10).jpg")
    (root / "benign" / ".DS_Store").write_bytes(b"junk")
    (root / "benign" / "notes.txt").write_text("not an image")
    samples = read_dataset(tmp_path)  # the folder above Dataset_BUSI_with_GT also works
    names = [s.path.name for s in samples if s.label == "benign"]
    assert names == ["benign (1).png", "benign (2).png", "benign (10).jpg"]


def test_missing_class_folder(tmp_path):
    make_layout(tmp_path)
    for f in (tmp_path / "malignant").iterdir():
        f.unlink()
    (tmp_path / "malignant").rmdir()
    with pytest.raises(DatasetError, match="missing class folder.*malignant"):
        read_dataset(tmp_path)


def test_empty_class_folder(tmp_path):
    make_layout(tmp_path)
    for f in (tmp_path / "benign").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="benign holds no images"):
        read_dataset(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "benign" / "benign (2).png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=r"unreadable image .*benign \(2\)\.png"):
        read_dataset(tmp_path)


def test_mask_without_image(tmp_path):
    make_layout(tmp_path)
    write_png(tmp_path / "malignant" / "malignant (99)_mask.png")
    with pytest.raises(DatasetError, match=r"no image.*malignant \(99\)_mask\.png"):
        read_dataset(tmp_path)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        read_dataset(tmp_path)


def test_load_images_uses_shared_decoding(tmp_path):
    samples = read_dataset(make_layout(tmp_path, per_class=2))
    arrays = load_images(samples, 16, progress=False)
    assert arrays.shape == (6, 16, 16, 3) and arrays.dtype == np.uint8
    # 30x20 image of value 100, letterboxed: middle rows are 100, top rows black
    assert arrays[0, 8, 8, 0] == 100 and arrays[0, 0, 8, 0] == 0


def test_cap_and_stratified_split_are_seeded(tmp_path):
    samples = read_dataset(make_layout(tmp_path, per_class=20, masks_for=()))
    capped = cap_per_class(samples, 10, seed=1)
    assert [sum(s.label == c for s in capped) for c in CLASSES] == [10, 10, 10]
    a = stratified_split(capped, 0.2, 0.2, seed=3)
    b = stratified_split(capped, 0.2, 0.2, seed=3)
    c = stratified_split(capped, 0.2, 0.2, seed=4)
    assert a == b and a != c
    for name, expected in (("train", 6), ("val", 2), ("test", 2)):
        assert [sum(s.label == cls for s in a[name]) for cls in CLASSES] == [expected] * 3
    all_paths = [s.path for part in a.values() for s in part]
    assert len(all_paths) == len(set(all_paths)) == 30
    write_split_csv(a, tmp_path, tmp_path / "split.csv")
    lines = (tmp_path / "split.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,group" and len(lines) == 31
    assert lines[1].startswith("normal/normal (")
