"""Grouped k-fold cross-validation: one full training per fold into its own folder, then
the mean and spread of the served model's test metrics. The folds' training is the real
`train` in the slow path of other tests; here a recording stand-in checks what each fold
is asked to do and that the report is the arithmetic of the folds' model.json."""

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from busi_classifier.cli import main
from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.training import crossval
from busi_classifier.training.preflight import preflight


def fake_meta(k: int) -> dict:
    served = {"n": 30 + k, "accuracy": 0.6 + 0.05 * k, "balanced_accuracy": 0.55 + 0.05 * k,
              "macro_f1": 0.5 + 0.1 * k, "macro_auc": None if k == 1 else 0.7 + 0.02 * k,
              "malignant_auc": 0.8, "malignant_sensitivity_at_90_specificity": 0.4, "ece": 0.1 - 0.01 * k}
    keras = {key: (v + 0.01 if isinstance(v, float) else v) for key, v in served.items()}
    return {"model_version": f"0.1.0+{k}", "metrics": {"served": {"variant": "int8_dynamic", "test": served},
                                                        "keras": {"test": keras}}}


def test_every_fold_trains_into_its_own_folder_and_the_report_is_their_mean_and_spread(tmp_path):
    seen = []

    def train(config, progress, verbose):
        seen.append(config)
        return fake_meta(config.fold)

    config = TrainConfig(data_dir="d", out_dir=str(tmp_path / "cv"), folds=4, weights="none", image_size=32)
    result = crossval.cross_validate(config, "python -m busi_classifier crossval ...", progress=False, train=train)
    assert [c.fold for c in seen] == [0, 1, 2, 3] and all(c.folds == 4 for c in seen)
    assert [Path(c.out_dir) for c in seen] == [tmp_path / "cv" / f"fold-{k}" for k in range(4)]
    accuracies = [0.6 + 0.05 * k for k in range(4)]
    acc = result["served"]["accuracy"]
    assert acc["mean"] == pytest.approx(statistics.mean(accuracies))
    assert acc["sd"] == pytest.approx(statistics.stdev(accuracies))
    assert (acc["min"], acc["max"]) == (pytest.approx(0.6), pytest.approx(0.75))
    assert result["served"]["macro_auc"]["n"] == 3  # an undefined fold value is left out, not counted as 0
    assert result["keras"]["accuracy"]["mean"] == pytest.approx(statistics.mean(accuracies) + 0.01)
    written = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert written["served"] == result["served"] and len(written["folds"]) == 4
    table = (tmp_path / "cv" / "crossval.md").read_text()
    assert "Grouped 4-fold" in table and f"{statistics.mean(accuracies):.3f} ±" in table
    assert "python -m busi_classifier crossval ..." in table


def test_bad_fold_settings_are_refused_before_any_training(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--folds"):
        crossval.fold_configs(TrainConfig(data_dir="d", out_dir="o", folds=0))
    assert main(["crossval", "--data", str(tmp_path), "--folds", "2"]) == 2
    assert "--folds must be at least 3" in capsys.readouterr().err
    assert main(["crossval", "--data", str(tmp_path), "--split", "random"]) == 2
    assert "grouped" in capsys.readouterr().err


def test_compare_tasks_runs_both_tasks_on_the_same_folds_and_reports_the_paired_difference(tmp_path):
    seen = []

    def train(config, progress, verbose):
        seen.append((config.task, config.fold, config.seed))
        meta = fake_meta(config.fold)
        if config.task == "multitask":  # ahead by 0.02 macro-F1 in folds 0 and 2, behind by 0.01 in fold 1
            test = meta["metrics"]["served"]["test"]
            test["macro_f1"] += (0.02, -0.01, 0.02)[config.fold]
        return meta

    config = TrainConfig(data_dir="d", out_dir=str(tmp_path / "cmp"), folds=3, weights="none", image_size=32)
    result = crossval.compare_tasks(config, "python -m busi_classifier crossval --compare-tasks", progress=False,
                                    train=train)
    assert sorted(seen) == sorted([(t, k, 42) for t in ("classify", "multitask") for k in range(3)])
    assert (tmp_path / "cmp" / "classify" / "crossval.json").is_file()
    assert (tmp_path / "cmp" / "multitask" / "fold-2").parent.is_dir()
    diff = result["multitask_minus_classify"]["macro_f1"]
    assert diff["mean"] == pytest.approx(0.01) and diff["ahead"] == 2 and diff["n"] == 3
    assert diff["sd"] == pytest.approx(statistics.stdev([0.02, -0.01, 0.02]))
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| macro-F1 |" in table and "+0.010 ± 0.017" in table and "2 of 3" in table
    assert "does not help macro-F1 consistently" in table


def test_resume_keeps_the_folds_finished_with_the_same_settings_and_trains_the_rest(tmp_path, capsys,
                                                                                      synthetic_dir):
    config = TrainConfig(data_dir=str(synthetic_dir), out_dir=str(tmp_path / "cv"), folds=3, weights="none",
                         image_size=32)
    trained = []

    def train(fold_config, progress, verbose):
        trained.append(fold_config.fold)
        # what the real training records: the settings after preflight (task and feature caching decided)
        meta = {**fake_meta(fold_config.fold), "training": preflight(fold_config)[1].to_dict()}
        out = Path(fold_config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.json").write_text(json.dumps(meta))
        (out / "metrics.json").write_text("{}")
        (out / "model.tflite").write_bytes(b"TFL3")
        return meta

    first = crossval.cross_validate(config, "cmd", progress=False, train=train)
    assert trained == [0, 1, 2]
    # fold 1 was stopped inside (no metrics.json); fold 2 was trained with other settings
    (tmp_path / "cv" / "fold-1" / "metrics.json").unlink()
    fold2 = tmp_path / "cv" / "fold-2" / "model.json"
    fold2.write_text(json.dumps({**json.loads(fold2.read_text()),
                                 "training": {**json.loads(fold2.read_text())["training"], "epochs_head": 99}}))
    trained.clear()
    again = crossval.cross_validate(config, "cmd", progress=False, train=train, resume=True)
    assert trained == [1, 2]
    out = capsys.readouterr().out
    assert out.count("finished by an earlier run with the same settings, kept") == 1  # fold 0 only
    assert again["served"] == first["served"]
    trained.clear()
    crossval.cross_validate(config, "cmd", progress=False, train=train)  # without resume: every fold again
    assert trained == [0, 1, 2]
    trained.clear()
    crossval.compare_tasks(config, "cmd", progress=False, train=train)
    crossval.compare_tasks(config, "cmd", progress=False, train=train, resume=True)
    assert len(trained) == 6  # the second comparison trained nothing


def test_resume_recognises_a_folder_the_real_training_wrote(trained_model, synthetic_dir):
    """The session model was trained by train.py itself: a fold config with its settings
    finds it finished (the recorded settings are the preflight-resolved ones, e.g. the
    feature caching decided), and the same config with one setting changed does not."""
    from conftest import TRAINED_MODEL_ARGS

    from busi_classifier.cli import config_from_args, train_parser

    args = train_parser().parse_args(["--data", str(synthetic_dir), "--out", str(trained_model), *TRAINED_MODEL_ARGS])
    config = config_from_args(args)
    assert config.task is None and config.cache_features is None  # decided by preflight, recorded decided
    meta = crossval.finished_fold(config)
    assert meta is not None and meta["model_version"] == json.loads((trained_model / "model.json").read_text())[
        "model_version"]
    assert crossval.finished_fold(dataclasses.replace(config, epochs_head=config.epochs_head + 1)) is None
