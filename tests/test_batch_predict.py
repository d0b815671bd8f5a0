"""`python -m busi_classifier predict DIR|FILES --out results.csv|.jsonl` as a user types it:
which files, which rows and codes, the exit status, resuming, CSV against JSONL, workers.

The fast tests classify with a stub predictor (tests/api_stub.py: the REAL intake,
deterministic probabilities); the slow ones with the session's trained model."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_stub import CheckedStubPredictor, StubPredictor
from conftest import ROOT
from PIL import Image

from busi_classifier.cli import main
from busi_classifier.local.batch_predict import MAX_FILE_BYTES, columns, find_images, is_mask

CLASSES = ["normal", "benign", "malignant"]


class Stub(StubPredictor):
    """StubPredictor with Predictor's keyword arguments and no model card."""

    card = None

    def __init__(self, model_path=None, variant=None, num_threads=None):
        super().__init__(model_path, variant, num_threads)


class CheckedStub(CheckedStubPredictor):
    """CheckedStubPredictor (every answer carries input_check) with Predictor's arguments."""

    card = None

    def __init__(self, model_path=None, variant=None, num_threads=None):
        super().__init__(model_path, variant, num_threads)


@pytest.fixture
def stub(monkeypatch):
    import busi_classifier.serving.predictor as predictor

    monkeypatch.setattr(predictor, "Predictor", Stub)
    return Stub


def _image(path: Path, shade: int, kind: str = "PNG", mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (80, 60), (shade, shade // 2, 255 - shade) if mode == "RGB" else shade).save(path, kind)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Good PNGs and JPEGs (one with an upper-case extension, one nested), two masks, a
    text file named .png, a truncated PNG, a file that is not an image by extension."""
    root = tmp_path / "scans"
    _image(root / "a.png", 40)
    _image(root / "B.JPG", 200, "JPEG")
    _image(root / "sub" / "c.jpeg", 120, "JPEG", "L")
    _image(root / "a_mask.png", 255, mode="L")
    _image(root / "a_mask_1.png", 255, mode="L")
    (root / "notes.png").write_text("not an image")
    whole = _image(tmp_path / "whole.png", 90).read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "readme.txt").write_text("scans of the day")
    return root


EXPECTED = {"B.JPG": "", "a.png": "", "cut.png": "invalid_image", "notes.png": "invalid_image", "sub/c.jpeg": ""}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _predict(argv, capsys) -> tuple[int, str, str]:
    code = main(["predict", "--model", "stub", "--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- which files


@pytest.mark.parametrize(("name", "mask"), [("benign (1)_mask.png", True), ("benign (1)_mask_1.png", True),
                                            ("x_MASK_12.PNG", True), ("benign (1).png", False),
                                            ("mask.png", False), ("a_masks.png", False), ("a_mask_x.png", False)])
def test_masks_are_told_by_the_stem(name, mask):
    assert is_mask(name) is mask


def test_a_folder_is_walked_in_sorted_order_without_masks_and_other_files(folder):
    found = find_images([str(folder)])
    assert [item.path for item in found.items] == [f"{folder.as_posix()}/{name}" for name in EXPECTED]
    assert found.masks == 2


def test_files_given_are_taken_as_given_once(folder, tmp_path):
    found = find_images([str(folder / "notes.png"), str(folder / "a_mask.png"), str(folder), "missing.png"])
    paths = [item.path for item in found.items]
    assert paths[0] == str(folder / "notes.png") and paths[-1] == "missing.png"
    assert len(paths) == 1 + len(EXPECTED) and found.masks == 3  # the given mask and the folder's two


def test_the_file_cap_is_the_apis():
    from busi_classifier.serving.api import MAX_IMAGE_BYTES

    assert MAX_FILE_BYTES == MAX_IMAGE_BYTES


def test_help_says_masks_are_skipped(capsys):
    assert main(["predict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "_mask or _mask_N" in text and "skipped" in text and "--workers" in text and "--out" in text


# --------------------------------------------------------------------------- rows and codes


def test_rows_and_codes_of_a_folder(stub, folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    code, stdout, err = _predict([str(folder), str(tmp_path / "missing.png"), "--out", str(out)], capsys)
    assert code == 1 and stdout == ""
    rows = _csv(out)
    assert list(rows[0]) == columns(CLASSES)
    assert [r["path"] for r in rows] == [f"{folder.as_posix()}/{n}" for n in EXPECTED] + [str(tmp_path / "missing.png")]
    assert [r["error_code"] for r in rows] == [*EXPECTED.values(), "unreadable_file"]
    for row, name in zip(rows, EXPECTED, strict=False):
        data = (folder / name).read_bytes()
        assert int(row["size"]) == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["model_version"] == "stub-1"
        if EXPECTED[name]:
            assert row["class"] == "" and row["p_normal"] == "" and row["error_message"]
        else:
            answer = Stub().predict_bytes(data)
            assert row["class"] == answer["prediction"] and row["error_message"] == ""
            assert [float(row[f"p_{c}"]) for c in CLASSES] == pytest.approx(
                [answer["probabilities"][c] for c in CLASSES], abs=1e-6)
        assert row["in_distribution"] == row["input_check_score"] == ""  # a model without the input check
    assert rows[-1]["error_message"].startswith("cannot read: ") and rows[-1]["sha256"] == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("3 classified, 3 refused (invalid_image 2, unreadable_file 1), 2 skipped (2 masks)")
    assert "images/s" in last and "Traceback" not in err


def _noise(path: Path, seed: int = 0) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path, "PNG")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_the_input_check_columns(monkeypatch, tmp_path, capsys, suffix):
    """A model with the input check: every classified row says in_distribution (true/false,
    in CSV as in JSON) and the score; a refused file leaves both empty."""
    import busi_classifier.serving.predictor as predictor

    monkeypatch.setattr(predictor, "Predictor", CheckedStub)
    scans = tmp_path / "scans"
    _image(scans / "a.png", 40)
    _noise(scans / "b-noise.png")
    (scans / "c.png").write_text("not an image")
    out = tmp_path / f"results{suffix}"
    code, _, _ = _predict([str(scans), "--out", str(out)], capsys)
    assert code == 1  # c.png is refused; a flagged image is not a refusal
    if suffix == ".csv":
        rows = _csv(out)
        assert [r["in_distribution"] for r in rows] == ["true", "false", ""]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["in_distribution"] for r in rows] == [True, False, None]
    assert list(rows[0]) == columns(CLASSES)
    for row, name in zip(rows[:2], ("a.png", "b-noise.png"), strict=True):
        check = CheckedStub().predict_bytes((scans / name).read_bytes())["input_check"]
        assert float(row["input_check_score"]) == pytest.approx(check["score"], abs=1e-4)
        assert row["class"] and not row["error_code"]
    assert rows[2]["input_check_score"] in ("", None) and rows[2]["error_code"] == "invalid_image"


def test_the_refusal_sentences_are_the_apis(stub, folder, tmp_path, capsys):
    from busi_classifier.serving.decode import CorruptImageError, UnsupportedFormatError

    out = tmp_path / "results.csv"
    _predict([str(folder / "notes.png"), str(folder / "cut.png"), "--out", str(out)], capsys)
    messages = [r["error_message"] for r in _csv(out)]
    assert messages == [UnsupportedFormatError.message, CorruptImageError.message]


def test_a_file_over_the_cap_is_refused_unread(stub, tmp_path, capsys):
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    out = tmp_path / "results.jsonl"
    assert _predict([str(big), "--out", str(out)], capsys)[0] == 1
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["error_code"] == "file_too_large" and row["size"] == MAX_FILE_BYTES + 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_a_row(stub, tmp_path, capsys):
    locked = _image(tmp_path / "locked.png", 10)
    locked.chmod(0)
    out = tmp_path / "results.csv"
    try:
        assert _predict([str(locked), "--out", str(out)], capsys)[0] == 1
    finally:
        locked.chmod(0o644)
    [row] = _csv(out)
    assert row["error_code"] == "unreadable_file" and row["error_message"].startswith("cannot read: ")


def test_exit_status_0_when_every_file_is_classified(stub, folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    code, _, err = _predict([str(folder / "a.png"), str(folder / "sub"), "--out", str(out)], capsys)
    assert code == 0 and len(_csv(out)) == 2
    assert err.strip().splitlines()[-1].startswith("2 classified, 0 refused, 0 skipped")


def test_without_out_the_table_lists_a_folders_files(stub, folder, capsys):
    code, stdout, err = _predict([str(folder)], capsys)
    lines = stdout.strip().splitlines()
    assert code == 1 and lines[0].split() == ["file", "prediction", *CLASSES]
    assert [line.split()[0] for line in lines[1:]] == [f"{folder.as_posix()}/{n}" for n in EXPECTED]
    assert "error:" in lines[3] and "error:" in lines[4]
    assert err.strip().splitlines()[-1].startswith("3 classified, 2 refused")


def test_a_folder_without_images_is_one_line(stub, tmp_path, capsys):
    _image(tmp_path / "only_mask.png", 255, mode="L")
    code, _, err = _predict([str(tmp_path)], capsys)
    assert code == 1 and err.startswith("error: no PNG or JPEG files in ") and "1 mask files skipped" in err


@pytest.mark.parametrize("argv", [["--out", "results.txt"], ["--out", "results.jsonl", "--json"],
                                  ["--workers", "0"]])
def test_flag_mistakes_fail_before_the_model_loads(argv, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["predict", "--model", str(tmp_path / "no-model"), str(folder), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "model not found" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- resume, CSV and JSONL


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_rerun_adds_nothing_and_a_changed_file_one_row(suffix, stub, folder, tmp_path, capsys):
    out = tmp_path / f"results{suffix}"
    _predict([str(folder), "--out", str(out)], capsys)
    first = out.read_bytes()
    code, _, err = _predict([str(folder), "--out", str(out)], capsys)
    assert out.read_bytes() == first
    assert code == 1  # the refused files of the first run are still refused
    assert err.strip().splitlines()[-1].startswith(
        f"0 classified, 0 refused, 7 skipped (2 masks, 5 already in {out}, 2 of them refused)")
    _image(folder / "a.png", 250)  # changed since
    code, _, err = _predict([str(folder), "--out", str(out)], capsys)
    text = out.read_text()
    assert text.startswith(first.decode()) and len(text.splitlines()) == len(first.decode().splitlines()) + 1
    assert err.strip().splitlines()[-1].startswith("1 classified, 0 refused, 6 skipped")
    if suffix == ".csv":
        assert text.count("path,size,sha256") == 1  # the header once


def test_jsonl_is_one_object_per_line_with_typed_values(stub, folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    _predict([str(folder), "--out", str(out)], capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(EXPECTED) and all(list(r) == columns(CLASSES) for r in rows)
    good, refused = rows[0], rows[2]
    assert isinstance(good["size"], int) and isinstance(good["p_benign"], float) and good["error_code"] is None
    assert refused["class"] is None and refused["p_normal"] is None and refused["error_code"] == "invalid_image"
    assert sum(good[f"p_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)


def test_csv_and_jsonl_hold_the_same_rows(stub, folder, tmp_path, capsys):
    _predict([str(folder), "--out", str(tmp_path / "r.csv")], capsys)
    _predict([str(folder), "--out", str(tmp_path / "r.jsonl")], capsys)
    from_csv = _csv(tmp_path / "r.csv")
    from_jsonl = [{k: "" if v is None else str(v) for k, v in json.loads(line).items()}
                  for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert from_csv == from_jsonl


def test_an_interrupted_last_line_is_dropped_and_redone(stub, folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    _predict([str(folder), "--out", str(out)], capsys)
    whole = out.read_text()
    out.write_text(whole[: whole.rindex("\n", 0, len(whole) - 1) + 10])  # the last row cut short
    code, _, err = _predict([str(folder), "--out", str(out)], capsys)
    assert out.read_text() == whole and "dropped the incomplete last line" in err


def test_a_results_file_of_other_columns_is_refused(stub, folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.write_text("file,prediction\nx.png,benign\n")
    code, _, err = _predict([str(folder), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: --out ") and "other columns" in err
    assert out.read_text() == "file,prediction\nx.png,benign\n"


def test_another_model_version_classifies_again(stub, folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.csv"
    _predict([str(folder / "a.png"), "--out", str(out)], capsys)
    monkeypatch.setattr(Stub, "model_version", "stub-2")
    assert _predict([str(folder / "a.png"), "--out", str(out)], capsys)[0] == 0
    assert [r["model_version"] for r in _csv(out)] == ["stub-1", "stub-2"]


# --------------------------------------------------------------------------- the real model, workers


def _copies(folder: Path, synthetic_dir: Path, n: int) -> None:
    """``n`` synthetic scans (and their masks) copied into ``folder``."""
    for source in sorted(synthetic_dir.rglob("*.png"))[: n * 2]:
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


@pytest.mark.slow
def test_two_workers_give_the_rows_of_one_and_import_no_tensorflow(trained_model, synthetic_dir, folder, tmp_path):
    """As a user types it (a fresh process): --workers 2 spawns two interpreters; the rows,
    their order included, are those of --workers 1; TensorFlow is never imported."""
    _copies(folder, synthetic_dir, 24)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}.csv"
        code = ("import sys; from busi_classifier.local import batch_predict as b; b.MIN_IMAGES_PER_WORKER = 1; "
                "counts = []; count = b.worker_count; "
                "b.worker_count = lambda w, n: counts.append(count(w, n)) or counts[-1]; "
                "from busi_classifier.cli import main; "
                f"rc = main(['predict', '--model', {str(trained_model)!r}, {str(folder)!r}, '--out', {str(out)!r}, "
                f"'--workers', '{workers}', '--quiet']); "
                "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'; "
                f"assert counts == [{workers}], counts; sys.exit(rc)")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr  # the folder's two refused files
        assert "XNNPACK" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        outputs[workers] = out.read_text()
    assert outputs[1] == outputs[2]
    rows = list(csv.DictReader(io.StringIO(outputs[1])))
    assert len(rows) == len(find_images([str(folder)]).items) > 24
    assert sum(bool(r["error_code"]) for r in rows) == 2


@pytest.mark.slow
def test_rows_match_the_lambda_handler(trained_model, synthetic_dir, lambda_module, tmp_path, capsys):
    import base64

    _copies(tmp_path / "scans", synthetic_dir, 3)
    out = tmp_path / "results.csv"
    assert main(["predict", "--model", str(trained_model), str(tmp_path / "scans"), "--out", str(out),
                 "--quiet"]) == 0
    for row in _csv(out):
        data = Path(row["path"]).read_bytes()
        answer = lambda_module.lambda_handler({"image": base64.b64encode(data).decode()}, None)
        assert row["class"] == answer["prediction"] and row["model_version"] == answer["model_version"]
        assert [float(row[f"p_{c}"]) for c in CLASSES] == pytest.approx(
            [answer["probabilities"][c] for c in CLASSES], abs=1e-5)
