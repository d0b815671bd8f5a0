"""The crop- and shift-robust near-duplicate comparison: cropped and shifted copies of a
frame (with a black wedge) are grouped with their original where the hash misses them,
unrelated images are not, it measures the leak of a split independently of the hash, and
the audit and the split accept a relative dataset path reached through a symlink."""

import csv
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from busi_classifier.cli import main, train_main
from busi_classifier.config import NEAR_DUPLICATE_BITS
from busi_classifier.data import crop_match as cm
from busi_classifier.data.audit import group_samples, leak_counts, run_audit
from busi_classifier.data.dataset import read_dataset
from busi_classifier.data.splitting import grouped_split, leaked_images, write_split_csv
from busi_classifier.data.synthetic import generate_dataset


def _crop(image: Image.Image) -> Image.Image:
    """Other borders: 18 % off the left, 6 % off the top, 9 % off the right."""
    w, h = image.size
    return image.crop((int(0.18 * w), int(0.06 * h), int(0.91 * w), h))


def _shift_with_wedge(image: Image.Image) -> Image.Image:
    """Shifted 7 px right and 5 px down (black fill), a black wedge over the top-left
    corner, as BUSI's ``malignant (106)`` has, and calipers drawn."""
    gray = image.convert("L")
    out = Image.new("L", gray.size, 0)
    out.paste(gray, (7, 5))
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.polygon([(0, 0), (int(0.2 * w), 0), (0, int(0.45 * h))], fill=0)
    for x, y in ((w // 3, h // 2), (2 * w // 3, h // 2)):
        draw.line([(x - 6, y), (x + 6, y)], fill=255, width=2)
        draw.line([(x, y - 6), (x, y + 6)], fill=255, width=2)
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A synthetic dataset with a cropped copy (benign) and a shifted copy with a black
    wedge (malignant), each the next image number of its class."""
    root = generate_dataset(tmp_path_factory.mktemp("crops"), per_class=10, seed=11, progress=False)
    copies = {}
    for kind, label, transform in (("cropped", "benign", _crop), ("shifted", "malignant", _shift_with_wedge)):
        original = f"{label}/{label} (3).png"
        copy = f"{label}/{label} (11).png"
        with Image.open(root / original) as image:
            transform(image).save(root / copy)
        copies[kind] = (original, copy)
    samples = read_dataset(root)
    return root, samples, copies, group_samples(samples, root, progress=False)


def _index(grouping, relative: str) -> int:
    return [r.path for r in grouping.records].index(relative)


@pytest.mark.parametrize("kind", ["cropped", "shifted"])
def test_cropped_and_shifted_copies_are_grouped_with_their_original(planted, kind):
    _, _, copies, g = planted
    i, j = (_index(g, p) for p in copies[kind])
    assert g.groups[i] == g.groups[j], f"{kind} copy not grouped with its original"
    assert (min(i, j), max(i, j)) in {(a, b) for a, b, _ in g.crop_pairs}
    if kind == "cropped":  # the reason for the second comparison: the hash alone misses it
        assert g.distances[i, j] > NEAR_DUPLICATE_BITS
        assert g.hash_groups[i] != g.hash_groups[j]


def test_unrelated_images_are_not_matched(planted):
    """Every pair the crop comparison joins is a planted copy: the 30 unrelated synthetic
    images (same generator, same tissue layers) stay apart, and two of them compared
    directly correlate far below the threshold."""
    _, _, copies, g = planted
    planted_pairs = {tuple(sorted((_index(g, a), _index(g, b)))) for a, b in copies.values()}
    assert {(i, j) for i, j, _ in g.crop_pairs} == planted_pairs
    a, b = _index(g, "benign/benign (1).png"), _index(g, "benign/benign (2).png")
    match = cm.compare(g.records[a].small, g.records[b].small)
    assert not match.same_frame() and match.correlation < cm.MIN_CORRELATION - 0.2
    assert len(g.crop_checked) <= cm.CANDIDATES_PER_IMAGE * len(g.records), "candidates are filtered"


def test_compare_recovers_the_shift_of_a_crop(planted):
    root, _, copies, _ = planted
    original, copy = copies["cropped"]
    with Image.open(root / original) as a, Image.open(root / copy) as b:
        match = cm.compare(cm.small_image(a), cm.small_image(b))
        w, h = a.size
    assert match.same_frame()
    # the copy starts 18 % from the left and 6 % from the top of the original
    assert abs(match.shift[1] - int(0.18 * w)) <= 2 * cm.SMALL_FACTOR
    assert abs(match.shift[0] - int(0.06 * h)) <= 2 * cm.SMALL_FACTOR


def test_crop_match_can_be_switched_off(planted):
    root, samples, copies, _ = planted
    g = group_samples(samples, root, progress=False, crop_match=False)
    i, j = (_index(g, p) for p in copies["cropped"])
    assert g.crop_pairs == [] and g.groups[i] != g.groups[j]


def test_independent_leak_check_sees_a_crop_pair_across_the_split(planted):
    """A split that puts the cropped copy in test and its original in train leaks; the
    hash cannot see it, the crop comparison does."""
    root, samples, copies, g = planted
    split_of = {s.path: "train" for s in samples}
    original, copy = copies["cropped"]
    split_of[root.resolve() / copy] = "test"
    counts = leak_counts(split_of, g, [s.path for s in samples])
    assert counts["hash"] == 0
    assert counts["crop"] == 1
    # the hash-grouped split measured by the crop comparison: never more than the pairs it misses
    paths = [s.path for s in samples]
    for seed in range(4):
        split = grouped_split(samples, g.hash_groups, 0.2, 0.2, seed).split_of()
        assert leaked_images(split, g.pairs, paths) == set()
        assert len(leaked_images(split, g.crop_pairs, paths)) <= 2
        # the default grouping (both comparisons) has neither
        split = grouped_split(samples, g.groups, 0.2, 0.2, seed).split_of()
        assert leaked_images(split, g.crop_pairs, paths) == leaked_images(split, g.pairs, paths) == set()


def test_audit_report_has_the_crop_comparison_and_the_independent_leak(planted, tmp_path):
    root, _, copies, _ = planted
    report = run_audit(root, tmp_path, figures_dir=False, progress=False)
    crop = report["near_duplicates"]["crop_match"]
    assert crop["pairs"] == 2 and crop["pairs_the_hash_missed"] >= 1
    assert {copies["cropped"][0], copies["cropped"][1]} in [{p["a"], p["b"]} for p in crop["new_pair_list"]]
    leak = report["leak"]
    assert set(leak) >= {"random", "grouped_by_hash", "grouped_by_crop", "grouped"}
    assert set(leak["random"]["by_comparison"]) == {"hash", "crop"}
    assert leak["grouped"]["by_comparison"] == {"hash": 0, "crop": 0}
    markdown = (tmp_path / "audit.md").read_text()
    assert "leaked, by crop" in markdown and "grouped by the hash alone" in markdown


def test_relative_dataset_path_through_a_symlink(planted, tmp_path, monkeypatch):
    """``--data ../link`` where link -> the dataset: audit, grouping, split.csv and the
    split commands work (read_dataset resolves sample paths; the root is resolved too)."""
    root = planted[0]
    (tmp_path / "work").mkdir()
    os.symlink(root, tmp_path / "link")
    monkeypatch.chdir(tmp_path / "work")
    relative = "../link"
    samples = read_dataset(relative)
    g = group_samples(samples, relative, progress=False)
    assert g.records[0].path == samples[0].path.relative_to(root.resolve()).as_posix()
    result = grouped_split(samples, g.groups, 0.2, 0.2, seed=0)
    write_split_csv(result, relative, tmp_path / "split.csv")
    with open(tmp_path / "split.csv") as handle:
        assert all((root / row["path"]).is_file() for row in csv.DictReader(handle))
    assert run_audit(relative, "../audit", figures_dir=False, progress=False)["images"] == len(samples)
    assert main(["split", "--data", relative, "--out", "../split", "--quiet"]) == 0
    assert (tmp_path / "split" / "split.csv").is_file()
    assert train_main(["--data", relative, "--out", "../split-only", "--split-only", "--quiet"]) == 0
    assert (tmp_path / "split-only" / "split.csv").is_file()


def test_candidate_pairs_and_fast_lengths():
    scores = np.array([[0, 0.9, 0.1], [0.9, 0, 0.2], [0.1, 0.2, 0]], dtype=np.float32)
    assert cm.candidate_pairs(scores, 1) == [(0, 1), (1, 2)]  # each image's best partner
    assert cm.candidate_pairs(scores, 1, extra=[(2, 0)]) == [(0, 1), (0, 2), (1, 2)]
    assert cm.candidate_pairs(scores, 0) == []
    assert [cm._fast_length(n) for n in (7, 97, 128, 131)] == [8, 100, 128, 135]
