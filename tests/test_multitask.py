"""The multitask model (issue 20): the task is chosen from the dataset, impossible
combinations are refused before anything runs, image and mask are augmented together,
the lesion loss and targets, and the decoder's cost."""

import shutil

import numpy as np
import pytest

from busi_classifier.cli import config_from_args, train_main, train_parser
from busi_classifier.config import ConfigError, TrainConfig


def _copy_without_masks(source, target):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*_mask*"))
    return target


def test_the_task_follows_the_masks_and_a_folder_without_them_says_so(synthetic_dir, tmp_path, capsys):
    from busi_classifier.training.preflight import preflight

    config = config_from_args(train_parser().parse_args(["--data", str(synthetic_dir), "--weights", "none"]))
    assert config.task is None
    _, resolved = preflight(config)
    assert resolved.task == "multitask" and resolved.cache_features is False
    bare = _copy_without_masks(synthetic_dir, tmp_path / "bare")
    _, resolved = preflight(TrainConfig(data_dir=str(bare), weights="none"))
    assert resolved.task == "classify"
    assert "task: classify (no mask files" in capsys.readouterr().out


def test_multitask_on_a_folder_without_masks_fails_before_the_split(synthetic_dir, tmp_path, capsys):
    bare = _copy_without_masks(synthetic_dir, tmp_path / "bare")
    out = tmp_path / "run"
    assert train_main(["--data", str(bare), "--out", str(out), "--weights", "none", "--task", "multitask"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs lesion mask files" in err and "--task classify" in err
    assert not (out / "split.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--task", "multitask", "--cache-features", "--weights", "WEIGHTS"], "--cache-features cannot apply"),
    (["--cache-features", "--weights", "WEIGHTS"], "--cache-features cannot apply"),  # multitask from the masks
    (["--task", "multitask", "--image-size", "100", "--weights", "none"], "a multiple of 32"),
    (["--seg-weight", "-1", "--weights", "none"], "--seg-weight"),
])
def test_combinations_that_cannot_run_are_refused_first(synthetic_dir, tmp_path, capsys, argv, message):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # passes the cheap signature check only
    out = tmp_path / "run"
    argv = [str(weights) if a == "WEIGHTS" else a for a in argv]
    assert train_main(["--data", str(synthetic_dir), "--out", str(out), *argv]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (out / "split.csv").exists()


def test_classify_with_cached_features_is_still_accepted():
    TrainConfig(data_dir="d", weights="imagenet", task="classify", cache_features=True).check()
    assert TrainConfig(data_dir="d", weights="imagenet", task="classify").uses_cached_features()
    assert not TrainConfig(data_dir="d", weights="imagenet", task="multitask").uses_cached_features()
    with pytest.raises(ConfigError, match="cannot apply"):
        TrainConfig(data_dir="d", weights="imagenet", task="multitask", cache_features=True).check()


def _asymmetric_mask(size: int) -> np.ndarray:
    """An L: a tall bar on the left and a foot to the right, off centre (no symmetry a
    flip or small rotation could map onto itself)."""
    mask = np.zeros((size, size), dtype=np.float32)
    mask[10:50, 12:22] = 1.0
    mask[40:50, 12:44] = 1.0
    return mask


def test_augmentation_moves_image_and_mask_together():
    """Every geometric transform on, photometric ones too: in each augmented pair the
    image's bright pixels are where the mask is, and the geometry did change."""
    from busi_classifier.training.augmentation import build_augmenter

    size = 64
    mask = _asymmetric_mask(size)
    images = np.repeat((20.0 + 200.0 * mask)[None, ..., None], 3, axis=-1).repeat(16, axis=0)
    masks = mask[None, ..., None].repeat(16, axis=0)
    augmenter = build_augmenter(("flip", "rotate", "zoom", "brightness", "contrast", "speckle"), seed=3)
    out_images, out_masks = (np.asarray(a) for a in augmenter.pair(images.astype("float32"), masks))
    moved = 0
    for image, m in zip(out_images, out_masks[..., 0], strict=True):
        bright = image.mean(axis=-1) > image.mean()
        lesion = m > 0.5
        iou = (bright & lesion).sum() / (bright | lesion).sum()
        assert iou > 0.8, iou
        moved += (lesion != (mask > 0.5)).mean() > 0.02
    assert moved >= 4, "the geometric transforms hardly ever changed the mask"
    assert out_masks.min() >= 0.0 and out_masks.max() <= 1.0


def test_multitask_targets_are_the_mask_share_of_each_cell_and_the_weights_follow(tmp_path):
    from busi_classifier.training.loop import make_multitask_dataset

    size = 64
    mask = _asymmetric_mask(size).astype(np.uint8)
    x = np.zeros((3, size, size, 3), dtype=np.uint8)
    masks = np.stack([np.zeros_like(mask), mask, mask])
    y = np.array([0, 1, 2])
    known = np.array([1.0, 1.0, 0.0])
    (images, targets, weights), = make_multitask_dataset(x, y, masks, known, 3, False, 0,
                                                         weights={0: 2.0, 1: 1.0, 2: 0.5})
    grid = np.asarray(targets["lesion"])
    assert grid.shape == (3, 16, 16, 1)
    expected = mask.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(grid[1, ..., 0], expected, atol=1e-6)
    assert grid[0].max() == 0.0  # a normal image: no lesion
    np.testing.assert_allclose(np.asarray(weights["probabilities"]), [2.0, 1.0, 0.5])
    np.testing.assert_allclose(np.asarray(weights["lesion"]), known)


def test_lesion_loss_rewards_the_right_map_and_pushes_an_empty_mask_to_an_empty_map():
    from busi_classifier.training.loop import lesion_loss

    mask = _asymmetric_mask(64).reshape(16, 4, 16, 4).mean(axis=(1, 3))[None, ..., None]
    right = np.clip(mask, 0.02, 0.98).astype("float32")
    wrong = np.clip(1.0 - mask, 0.02, 0.98).astype("float32")
    assert float(lesion_loss(mask, right)[0]) < 0.5 < float(lesion_loss(mask, wrong)[0])
    empty = np.zeros_like(mask)
    assert float(lesion_loss(empty, np.full_like(mask, 0.02))[0]) < float(lesion_loss(empty, np.full_like(mask, 0.5))[0])


def test_decoder_costs_under_15_percent_of_the_classifier_at_224_px():
    from busi_classifier.training.model import build_model, explain_model, multiply_adds

    config = TrainConfig(data_dir="d", weights="none", image_size=224, task="multitask")
    model, _ = build_model(config)
    total, decoder = multiply_adds(model), multiply_adds(model, "lesion")
    classifier = total - decoder
    assert 3.8e9 < classifier < 4.2e9  # ResNet50 at 224 px: ~3.9 G multiply-adds
    assert 0 < decoder <= 0.15 * classifier
    outputs = explain_model(model).output
    assert set(outputs) == {"probabilities", "class_maps", "lesion", "features"}
    assert tuple(outputs["lesion"].shape[1:]) == (56, 56, 1)
