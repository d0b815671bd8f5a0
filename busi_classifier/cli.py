"""The command line: ``python -m busi_classifier COMMAND`` (``python train.py`` = ``train``).

Commands that only read files (audit, split, predict, synthesize) never import
TensorFlow; train checks everything cheap (flags, dataset layout, weights, stage names)
before it hashes an image or imports TensorFlow. Imported by no module of the package:
the helpers the commands share (help formatting, --quiet/--verbose, quiet TensorFlow)
live in busi_classifier.console.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.console import (
    HelpFormatter,
    add_output_options,
    bounded_int,
    native_stderr_silenced,
    quiet_tensorflow,
    show_progress,
)

DEFAULTS = TrainConfig()
DEFAULT_AUDIT_DIR = "artifacts/audit"
DEFAULT_MODEL_DIR = "artifacts/model"

# TrainConfig fields the `split` command takes (the rest only matter for training).
SPLIT_SETTINGS = ("data_dir", "out_dir", "seed", "max_per_class", "val_fraction", "test_fraction", "split",
                  "near_duplicate_bits", "conflict_label", "folds", "fold")


def add_config_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One option per TrainConfig field (all, or ``names``), built from the field's
    metadata: flag name, help, choices, type; comma-list settings stay text until
    ``config_from_args`` parses them (so their errors are one clear line).

    Args:
        parser: the parser to add the options to (in argument groups).
        names: the TrainConfig fields to offer; None: every field.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = getattr(DEFAULTS, f.name)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs: dict = {"dest": f.name, "help": meta["help"]}
        is_flag = isinstance(default, bool) or meta["kind"] == "flag"
        if not is_flag and not meta["choices"]:
            kwargs["metavar"] = meta["metavar"] or flag.lstrip("-").upper().replace("-", "_")
        if is_flag:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif meta["parse"]:
            kwargs.update(default=",".join(default))
        else:
            kind = {"positive": bounded_int(1), "nonneg": bounded_int(0)}.get(meta["kind"])
            kwargs.update(type=kind or (type(default) if default is not None else str), default=default,
                          choices=meta["choices"])
        if f.name == "data_dir":
            kwargs.pop("default")
            kwargs["required"] = True
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments (the fields the parser offered; the others keep
    their defaults); raises ConfigError for values that cannot work."""
    values = {}
    for f in fields(TrainConfig):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            parse = f.metadata["parse"]
            values[f.name] = parse(value) if parse and isinstance(value, str) else value
    config = TrainConfig(**values)
    config.check()
    return config


def _parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = _parser(
        prog,
        "Train the ResNet50 breast-ultrasound classifier (normal/benign/malignant) on a folder in the BUSI\n"
        "layout, calibrate and evaluate it, and export model.keras, the TFLite variants and model.json.",
        "examples:\n"
        "  python train.py --data data/Dataset_BUSI_with_GT --out artifacts/model\n"
        "  python train.py --data data/synthetic --weights none --epochs-head 3 --epochs-fine-tune 0\n"
        "  python train.py --data DIR --weights ~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5\n"
        "  python train.py --data DIR --variants float32,int8_dynamic\n"
        "The old flags still work: `train.py --audit ...` runs `python -m busi_classifier audit ...` and\n"
        "`train.py --split-only ...` runs `python -m busi_classifier split ...`.",
    )
    add_config_arguments(p)
    add_output_options(p)
    return p


def _error(exc: Exception | str, code: int = 1) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


def variant_flag_problem(model: str | os.PathLike | None, variant: str | None) -> str | None:
    """What is wrong with ``--variant VARIANT`` for ``--model MODEL``, naming the flag,
    or None when nothing is (no --variant, not a folder, a variant model.json lists, or a
    folder whose model.json the command's own loading reports on). The serving code's
    message names MODEL_VARIANT, the setting the function reads; on the command line the
    user typed --variant."""
    if variant is None or model is None or not Path(model).is_dir():
        return None
    path = Path(model)
    from busi_classifier.serving.card import ModelCard, ModelLoadError

    try:
        card = ModelCard.read(path)
    except ModelLoadError:
        return None
    if variant in card.variants:
        return None
    return (f"--variant {variant!r} is not a variant of {path / 'model.json'}; choose from "
            f"{', '.join(card.variants)}")


# --------------------------------------------------------------------------- train


def train_main(argv=None, prog: str = "train.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for legacy, command in (("--audit", audit_main), ("--split-only", split_main)):
        if legacy in argv:
            argv.remove(legacy)
            return command(argv)
    args = train_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return _error(exc, 2)
    quiet_tensorflow(args.verbose)
    from busi_classifier.data.dataset import DatasetError
    from busi_classifier.training.loop import train
    from busi_classifier.training.preflight import WeightsError

    try:
        meta = train(config, progress=show_progress(args), verbose=args.verbose)
    except (DatasetError, WeightsError, ConfigError) as exc:
        return _error(exc)
    served = meta["metrics"]["served"]
    test, ci = served["test"], served["test"]["ci95"]
    print(
        f"done in {meta['wall_time_s']} s: served {served['file']} on the test split (n={test['n']}): accuracy "
        f"{test['accuracy']:.3f} {_interval(ci['accuracy'])}, macro-F1 {test['macro_f1']:.3f} "
        f"{_interval(ci['macro_f1'])}, model {meta['model_version']} -> {config.out_dir}"
    )
    return 0


def _interval(interval) -> str:
    return "[n/a]" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


# --------------------------------------------------------------------------- audit, split


def audit_main(argv=None) -> int:
    p = _parser("python -m busi_classifier audit",
                "Audit a dataset in the BUSI layout (duplicates, near-duplicates, conflicting labels, coloured "
                "annotations): write audit.md, audit.json and figures. No training, no TensorFlow.",
                "example:\n  python -m busi_classifier audit --data data/Dataset_BUSI_with_GT --out docs/busi-audit "
                "--figures imgs")
    p.add_argument("--data", required=True, help="dataset folder with normal/, benign/, malignant/ "
                   "(see data/README.md)")
    p.add_argument("--out", default=DEFAULT_AUDIT_DIR, help="folder for audit.md and audit.json")
    p.add_argument("--figures", default=None, help="folder for the figures (default: --out)")
    p.add_argument("--near-duplicate-bits", type=bounded_int(0), default=DEFAULTS.near_duplicate_bits,
                   help="perceptual-hash distance at or below which two images are near-duplicates")
    add_output_options(p, tensorflow=False)
    args = p.parse_args(argv)
    from busi_classifier.data.audit import run_audit
    from busi_classifier.data.dataset import DatasetError, find_dataset_root

    try:
        find_dataset_root(args.data)
        report = run_audit(args.data, args.out, args.figures, args.near_duplicate_bits, progress=show_progress(args))
    except DatasetError as exc:
        return _error(exc)
    nd = report["near_duplicates"]
    print(f"audited {report['images']} images: {len(report['exact_duplicates'])} exact-duplicate groups, "
          f"{nd['groups']} near-duplicate groups ({nd['images_in_groups']} images), "
          f"{len(report['conflicting_groups'])} with conflicting labels, "
          f"{len(report['coloured_annotations'])} images with coloured annotations -> {args.out}/audit.md")
    return 0


def split_main(argv=None) -> int:
    p = _parser("python -m busi_classifier split",
                "Split a dataset in the BUSI layout into train/val/test (grouped by near-duplicates unless "
                "--split random) and write OUT/split.csv, exactly as train does. No training, no TensorFlow.",
                "example:\n  python -m busi_classifier split --data data/Dataset_BUSI_with_GT --out artifacts/model")
    add_config_arguments(p, SPLIT_SETTINGS)
    add_output_options(p, tensorflow=False)
    args = p.parse_args(argv)
    from busi_classifier.data.dataset import DatasetError
    from busi_classifier.data.prepare import prepare_split, split_counts

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return _error(exc, 2)
    try:
        _, samples, result = prepare_split(config, progress=show_progress(args))
    except (DatasetError, ConfigError) as exc:
        return _error(exc)
    print(f"{config.split} split of {len(samples)} images: {split_counts(result)} -> {config.out_dir}/split.csv")
    return 0


# --------------------------------------------------------------------------- predict


def predict_main(argv=None) -> int:
    from busi_classifier.console import positive_int
    from busi_classifier.local.batch_predict import MAX_DEFAULT_WORKERS, MIN_IMAGES_PER_WORKER, default_workers

    p = _parser("python -m busi_classifier predict",
                "Classify local image files, or every PNG and JPEG in folders (recursively), with an exported model "
                "(LiteRT and the same intake as the Lambda function; no TensorFlow). Without --out, one row per file "
                "on stdout; with --out, one row per file in a CSV or JSONL results file that a rerun resumes.\n\n"
                "In folders, files are taken by extension (.png, .jpg, .jpeg, any case), in sorted order. BUSI's "
                "masks are not scans: files whose name ends in _mask or _mask_N (before the extension) are skipped, "
                "in folders and on the command line. A file that cannot be read or that the intake refuses is a row "
                "with its error code; the exit status is 1 when any file was refused, 0 otherwise.",
                "examples:\n  python -m busi_classifier predict scan1.png scan2.jpg\n"
                "  python -m busi_classifier predict data/Dataset_BUSI_with_GT --out results.csv\n"
                "  python -m busi_classifier predict --model artifacts/model --variant float32 --json scan.png\n"
                "details: docs/predict.md")
    p.add_argument("images", nargs="+", metavar="DIR|FILE", help="folders (searched recursively) and PNG or JPEG files")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR,
                   help="model folder (model.json and the .tflite variants) or one .tflite file beside model.json")
    p.add_argument("--variant", default=None,
                   help="TFLite variant of a model folder (default: the one model.json names, as the function "
                   "serves)")
    p.add_argument("--out", default=None, metavar="RESULTS.csv|RESULTS.jsonl",
                   help="write the rows to this file (CSV or JSON lines, by the extension) instead of stdout; when it "
                   "exists, files it already holds (same path, sha256 and model version) are not classified again "
                   "and new rows are appended (default: a table on stdout)")
    p.add_argument("--json", action="store_true", help="without --out: one JSON object per line instead of a table")
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="worker processes, each with its own interpreter; fewer are started for a short run (each "
                   f"gets at least {MIN_IMAGES_PER_WORKER} images, else this process classifies them) (default: "
                   f"one per CPU this process may use, at most {MAX_DEFAULT_WORKERS}: %(default)s here)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="interpreter threads per process (default: the CPUs this process may use, divided among the "
                   "workers)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is off anyway when stderr is not a "
                   "terminal, e.g. a log file)")
    args = p.parse_args(argv)
    from busi_classifier.local.batch_predict import (
        BatchError,
        ResultsFile,
        Summary,
        columns,
        find_images,
        probability_column,
        run,
    )
    from busi_classifier.serving.predictor import ModelLoadError, Predictor, available_cpus

    if args.out is not None and args.json:
        return _error("--json is for stdout; with --out, a .jsonl results file holds JSON lines", 2)
    try:
        if args.out is not None:
            ResultsFile(args.out, [])  # the extension, before the model is loaded
    except BatchError as exc:
        return _error(exc, 2)
    problem = variant_flag_problem(args.model, args.variant)
    if problem:
        return _error(problem, 2)
    found = find_images(args.images)
    if not found.items:
        masks = f" ({found.masks} mask files skipped)" if found.masks else ""
        return _error(f"no PNG or JPEG files in {', '.join(args.images)}{masks}")
    cpus = available_cpus()
    try:
        with native_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            predictor = Predictor(args.model, variant=args.variant, num_threads=args.threads or cpus)
    except ModelLoadError as exc:
        return _error(exc)
    results = None
    if args.out is not None:
        results = ResultsFile(args.out, columns(predictor.classes))
        try:
            results.read()
        except BatchError as exc:
            return _error(exc, 2)
        if results.dropped_partial_line:
            print(f"note: dropped the incomplete last line of {args.out} (an interrupted run); its file is "
                  "classified again", file=sys.stderr)
    rows: list[dict] = []
    summary = Summary(masks=found.masks)
    try:
        run(found.items, predictor, model=args.model, variant=args.variant, workers=args.workers,
            threads=args.threads or max(1, cpus // args.workers), results=results,
            progress=show_progress(args), on_row=None if results else rows.append,
            summary=summary)
    except KeyboardInterrupt:
        where = f"; the rows so far are in {args.out}: rerun the same command to resume" if results else ""
        print(f"interrupted{where}", file=sys.stderr)
        return 130
    except BatchError as exc:
        return _error(exc)
    if results is None:
        from busi_classifier.serving.model_summary import model_summary, summary_line

        classes = list(predictor.classes)
        table = [{"file": r["path"], "error": r["error_message"]} if r["error_code"] else
                 {"file": r["path"], "prediction": r["class"],
                  "probabilities": {c: r[probability_column(c)] for c in classes},
                  **({"input_check": {"score": r["input_check_score"], "in_distribution": r["in_distribution"]}}
                     if r["in_distribution"] is not None else {})} for r in rows]
        # how good the model is (its card's test figures; None for a .tflite without model.json)
        model = model_summary(predictor.card) if predictor.card is not None else None
        if args.json:  # every line one self-contained JSON object: the summary is a field of each
            for row in table:
                print(json.dumps({**row, "model": model}))
        else:
            print(_table(table, classes))
            # after the table, on stderr: stdout stays the table alone (for pipes and scripts)
            print(summary_line(model) if model is not None else "model: no model.json, no test figures",
                  file=sys.stderr)
    print(summary.line(args.out), file=sys.stderr)
    # 1 when any file of the inputs was refused: in this run, or in the rows a resumed run kept
    return 1 if summary.refused or summary.already_refused else 0


def _check_cell(row: dict) -> str:
    """The input check column: "ok", "FLAGGED" (not like the training images), "" without a check."""
    check = row.get("input_check")
    return "" if check is None else "ok" if check["in_distribution"] else "FLAGGED"


def _table(rows: list[dict], classes: list[str]) -> str:
    """Aligned text: file, prediction, one probability column per class, and the input
    check's verdict where the model has one; an error row carries its message after the
    file name."""
    checked = any("input_check" in row for row in rows)
    header = ["file", "prediction", *classes, *(["input check"] if checked else [])]

    def values(row: dict) -> list[str]:
        probabilities = [f"{row['probabilities'][c]:.3f}" for c in classes]
        return [row["file"], row["prediction"], *probabilities, *([_check_cell(row)] if checked else [])]

    cells = [header] + [values(row) for row in rows if "error" not in row]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    widths[0] = max(widths[0], *(len(row["file"]) for row in rows))

    def line(cells_of_row: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i < 2 or i > 1 + len(classes) else v.rjust(widths[i])
                         for i, v in enumerate(cells_of_row)).rstrip()

    out = [line(header)]
    for row in rows:
        if "error" in row:
            out.append(f"{row['file'].ljust(widths[0])}  error: {row['error']}")
        else:
            out.append(line(values(row)))
    return "\n".join(out)


# --------------------------------------------------------------------------- the other commands


def crossval_main(argv=None) -> int:
    p = _parser(
        "python -m busi_classifier crossval",
        "Grouped k-fold cross-validation: train one model per fold (every train option applies), then report\n"
        "the mean and spread over the folds of the served model's test metrics (the Keras model's beside\n"
        "them) in OUT/crossval.md and OUT/crossval.json. Each fold's model is in OUT/fold-K.",
        "examples:\n"
        "  python -m busi_classifier crossval --data data/Dataset_BUSI_with_GT --out artifacts/cv --folds 5\n"
        "  python -m busi_classifier crossval --data data/synthetic --out artifacts/cv --weights none "
        "--image-size 96 --epochs-head 8 --epochs-fine-tune 0 --variants float32,int8_dynamic",
    )
    add_config_arguments(p)
    p.add_argument("--compare-tasks", action="store_true",
                   help="cross-validate --task classify and --task multitask with the same folds, seeds and "
                        "settings (OUT/classify, OUT/multitask) and write the paired comparison to OUT/compare.md")
    p.add_argument("--resume", action="store_true",
                   help="keep every fold that an earlier run into the same OUT finished with exactly these settings "
                        "(its model.json, metrics.json and model.tflite are there) and train only the others")
    add_output_options(p)
    p.set_defaults(folds=5, out_dir="artifacts/crossval")
    args = p.parse_args(argv)
    try:
        config = config_from_args(args)
        from busi_classifier.training.crossval import fold_configs

        fold_configs(config)  # --folds and --split checked before anything runs
    except ConfigError as exc:
        return _error(exc, 2)
    quiet_tensorflow(args.verbose)
    from busi_classifier.data.dataset import DatasetError
    from busi_classifier.training.crossval import cross_validate, markdown
    from busi_classifier.training.preflight import WeightsError

    command = "python -m busi_classifier crossval " + " ".join(argv if argv is not None else sys.argv[2:])
    try:
        if args.compare_tasks:
            from busi_classifier.training.crossval import compare_markdown, compare_tasks

            comparison = compare_tasks(config, command, progress=show_progress(args), verbose=args.verbose,
                                       resume=args.resume)
        else:
            result = cross_validate(config, command, progress=show_progress(args), verbose=args.verbose,
                                    resume=args.resume)
    except (DatasetError, WeightsError, ConfigError) as exc:
        return _error(exc)
    if args.compare_tasks:
        print(compare_markdown(comparison, config, command))
        print(f"-> {Path(config.out_dir) / 'compare.md'}, {Path(config.out_dir) / 'compare.json'}")
        return 0
    print(markdown(result, config, command))
    print(f"-> {Path(config.out_dir) / 'crossval.md'}, {Path(config.out_dir) / 'crossval.json'}")
    return 0


def evaluate_main(argv=None) -> int:
    from busi_classifier.evaluation.scoring import main

    # --variant is checked here, where the user's flag is known: the serving code's own
    # message for a variant the card lacks names the function's MODEL_VARIANT setting
    tokens = list(sys.argv[1:] if argv is None else argv)
    problem = variant_flag_problem(*_flag_values(tokens, "--model", "--variant"))
    if problem and not {"-h", "--help"} & set(tokens):
        return _error(problem, 2)
    return main(argv)


def _flag_values(argv: list[str], *flags: str) -> list[str | None]:
    """The last value of each of ``flags`` in ``argv`` (``--flag VALUE`` or
    ``--flag=VALUE``; None when absent), read without the command's parser."""
    values: dict[str, str | None] = dict.fromkeys(flags)
    for i, token in enumerate(argv):
        name, equals, value = token.partition("=")
        if name in values:
            values[name] = value if equals else (argv[i + 1] if i + 1 < len(argv) else None)
    return [values[f] for f in flags]


def synthesize_main(argv=None) -> int:
    from busi_classifier.data.synthetic import main

    return main(argv) or 0


def serve_main(argv=None) -> int:
    from busi_classifier.local.server import serve_main as main

    return main(argv)


def invoke_main(argv=None) -> int:
    from busi_classifier.local.invoke import invoke_main as main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (lambda argv: train_main(argv, "python -m busi_classifier train"),
              "train, calibrate, evaluate and export a model (= python train.py)"),
    "audit": (audit_main, "audit a dataset: duplicates, near-duplicates, conflicting labels"),
    "split": (split_main, "write split.csv (grouped train/val/test split) without training"),
    "crossval": (crossval_main, "grouped k-fold cross-validation: mean and spread of the served model's metrics"),
    "evaluate": (evaluate_main, "score an exported model (folder, model.keras or .tflite) on a split"),
    "predict": (predict_main, "classify local image files with an exported model"),
    "serve": (serve_main, "a local HTTP endpoint (POST /predict, GET /health) for the Lambda handler"),
    "invoke": (invoke_main, "run the Lambda handler on a few images through every event shape"),
    "synthesize": (synthesize_main, "write a synthetic dataset in the BUSI layout"),
    "archive": (lambda argv: __import__("busi_classifier.local.archive", fromlist=["main"]).main(argv),
                "classify an S3 prefix with the deployed function (S3 Batch Operations): submit, status, results"),
}


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m busi_classifier", formatter_class=HelpFormatter,
        description="Breast-ultrasound classifier (normal / benign / malignant): train, evaluate, serve.",
        epilog="`python -m busi_classifier COMMAND --help` lists a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for name, (_, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, add_help=False)
        command.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv=None) -> int:
    """``python -m busi_classifier COMMAND [options]``: runs COMMAND's own parser on the rest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = main_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"python -m busi_classifier: error: unknown command {argv[0]!r}; choose from "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv[:1])
    except SystemExit as exc:
        return int(exc.code or 0)
    run, _ = COMMANDS[args.command]
    try:
        return run(argv[1:])
    except SystemExit as exc:  # argparse's own errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
