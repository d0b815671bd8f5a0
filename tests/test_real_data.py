"""Real BUSI data (../shared/busi/Dataset_BUSI_with_GT): read, train briefly, export, serve.

Skipped where the folder is absent (a user's fresh clone): the dataset is never committed.
"""

import csv
import importlib
import json
import sys

import pytest
from conftest import BUSI_DIR

from busi_classifier.serving.constants import CLASSES
from busi_classifier.serving.events import http_v2_event

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(
        not BUSI_DIR.is_dir(),
        reason=f"real BUSI data not found at {BUSI_DIR} (it is not part of the repository; see data/README.md)",
    ),
]


def test_reader_sees_every_busi_image_and_attaches_masks():
    from busi_classifier.data.dataset import read_dataset

    samples = read_dataset(BUSI_DIR)
    on_disk = {label: {p.name for p in (BUSI_DIR / label).glob("*.png") if "_mask" not in p.name} for label in CLASSES}
    assert len(samples) == sum(len(names) for names in on_disk.values())
    for label in CLASSES:
        assert {s.path.name for s in samples if s.label == label} == on_disk[label]
    assert all(s.masks for s in samples), "every BUSI image has at least one mask"
    assert any(len(s.masks) > 1 for s in samples), "BUSI has images with several masks"
    assert not any("_mask" in s.path.name for s in samples)


@pytest.mark.slow
def test_short_run_on_busi_trains_exports_and_serves(tmp_path, monkeypatch):
    from busi_classifier.cli import train_main

    out = tmp_path / "model"
    code = train_main([
        "--data", str(BUSI_DIR), "--out", str(out), "--weights", "none", "--image-size", "64",
        "--max-per-class", "8", "--epochs-head", "1", "--epochs-fine-tune", "0", "--batch-size", "8", "--variants", "float32",
        "--seed", "0", "--quiet",
    ])
    assert code == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["dataset"]["images"] == 24 and meta["classes"] == list(CLASSES)
    with open(out / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and all((BUSI_DIR / r["path"]).is_file() for r in rows)

    monkeypatch.setenv("MODEL_PATH", str(out))
    sys.modules.pop("lambda_function", None)
    try:
        module = importlib.import_module("lambda_function")
        # an original-size RGB image with coloured annotations and a grayscale one, as raw bodies
        rgb = next(p for p in sorted((BUSI_DIR / "malignant").glob("*.png")) if "_mask" not in p.name
                   and _mode(p) == "RGB")
        gray = BUSI_DIR / "benign" / "benign (1).png"
        for path in (rgb, gray):
            answer = module.lambda_handler(http_v2_event("POST", "/predict", raw=path.read_bytes()), None)
            assert answer["statusCode"] == 200, answer
            body = json.loads(answer["body"])
            assert list(body["probabilities"]) == list(CLASSES)
            assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    finally:
        sys.modules.pop("lambda_function", None)


def _mode(path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode
