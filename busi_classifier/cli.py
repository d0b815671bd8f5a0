"""The command line: ``python -m busi_classifier COMMAND`` (``python train.py`` = ``train``).

Commands that only read files (audit, split, predict, synthesize) never import
TensorFlow; train checks everything cheap (flags, dataset layout, weights, stage names)
before it hashes an image or imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig

DEFAULTS = TrainConfig()
DEFAULT_AUDIT_DIR = "artifacts/audit"
DEFAULT_MODEL_DIR = "artifacts/model"

# TrainConfig fields the `split` command takes (the rest only matter for training).
SPLIT_SETTINGS = ("data_dir", "out_dir", "seed", "max_per_class", "val_fraction", "test_fraction", "split",
                  "near_duplicate_bits", "conflict_label", "folds", "fold")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def _bounded_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


positive_int = _bounded_int(1)  # a whole number >= 1 (argparse ``type=``)


def add_output_options(parser: argparse.ArgumentParser, tensorflow: bool = True) -> None:
    """--quiet and --verbose, shared by the commands that run long.

    Args:
        parser: the command's parser.
        tensorflow: whether the command imports TensorFlow (then --verbose shows its log
            lines); audit and split do not, and their --verbose says so.
    """
    parser.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway when stderr is "
                        "not a terminal, e.g. a log file)")
    if tensorflow:
        parser.add_argument("--verbose", action="store_true",
                            help="show TensorFlow's, absl's and the TFLite converter's own log lines (hidden "
                            "otherwise)")
    else:
        parser.add_argument("--verbose", action="store_true",
                            help="no effect: this command imports no TensorFlow, so it has no TensorFlow log lines "
                            "to show (accepted so that `train.py --audit/--split-only ... --verbose` works)")


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
        if not isinstance(default, bool) and not meta["choices"]:
            kwargs["metavar"] = meta["metavar"] or flag.lstrip("-").upper().replace("-", "_")
        if isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif meta["parse"]:
            kwargs.update(default=",".join(default))
        else:
            kind = {"positive": _bounded_int(1), "nonneg": _bounded_int(0)}.get(meta["kind"])
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


def quiet_tensorflow(verbose: bool) -> None:
    """Before TensorFlow is imported: keep its C++ and absl log lines (the oneDNN notice,
    CPU feature lines, duplicated warnings) out of the console unless ``verbose``.

    TF_CPP_MIN_LOG_LEVEL (set here unless the environment sets it) hides what TensorFlow
    logs once its logging is set up; but what its two shared libraries log while they load,
    before absl::InitializeLog runs ("WARNING: All log messages before absl::InitializeLog()
    ...", "I0000 ... oneDNN custom operations are on", once per library), absl writes to
    stderr whatever the level. So the first ``import tensorflow`` in the process, wherever
    it happens (keras imports it too), runs with file descriptor 2 sent to /dev/null
    (``SilentTensorFlowImport``). oneDNN stays on: the numbers do not change.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")  # the C++ absl logger (its E0000 lines)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules and not any(isinstance(f, SilentTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, SilentTensorFlowImport())
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


class SilentTensorFlowImport:
    """An import hook (``sys.meta_path``) for the one module ``tensorflow``: the first
    import of it runs with file descriptor 2 silenced (``native_stderr_silenced``), then the
    hook removes itself. The module is the one the other finders find, with its own loader
    (only the package's execution is wrapped); an import that fails still raises."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        import importlib.util

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _SilencedLoader(spec.loader)
        return spec


class _SilencedLoader:
    """Runs ``loader.exec_module`` with file descriptor 2 silenced; the module keeps
    ``loader`` as its own (``__loader__``, ``__spec__.loader``)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec) if hasattr(self.loader, "create_module") else None

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        with native_stderr_silenced():
            self.loader.exec_module(module)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what C/C++ code writes to file descriptor 2 (the TFLite converter's MLIR
    notes, LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate") to /dev/null for the
    duration; Python's own sys.stderr is flushed first and works again after."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log file a bar is hundreds of carriage returns."""
    return not args.quiet and sys.stderr.isatty()


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
    p.add_argument("--near-duplicate-bits", type=_bounded_int(0), default=DEFAULTS.near_duplicate_bits,
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
    from busi_classifier.training.loop import prepare_split, split_counts

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
    p = _parser("python -m busi_classifier predict",
                "Classify local image files with an exported model (LiteRT, as the Lambda function does; no "
                "TensorFlow) and print one row per file.",
                "examples:\n  python -m busi_classifier predict scan1.png scan2.jpg\n"
                "  python -m busi_classifier predict --model artifacts/model --variant float32 --json scan.png")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--model", default=DEFAULT_MODEL_DIR,
                   help="model folder (model.json and the .tflite variants) or one .tflite file beside model.json")
    p.add_argument("--variant", default=None,
                   help="TFLite variant of a model folder (default: the one model.json names, as the function "
                   "serves)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = p.parse_args(argv)
    from busi_classifier.serving.predictor import ModelLoadError, Predictor

    problem = variant_flag_problem(args.model, args.variant)
    if problem:
        return _error(problem, 2)
    try:
        with native_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            predictor = Predictor(args.model, variant=args.variant) if args.variant else Predictor(args.model)
    except ModelLoadError as exc:
        return _error(exc)
    from busi_classifier.serving.model_summary import model_summary, summary_line

    rows = [_predict_file(predictor, path) for path in args.images]
    # how good the model is (its card's test figures; None for a .tflite without model.json)
    summary = model_summary(predictor.card) if predictor.card is not None else None
    if args.json:  # every line one self-contained JSON object: the summary is a field of each
        for row in rows:
            print(json.dumps({**row, "model": summary}))
    else:
        print(_table(rows, list(predictor.classes)))
        # after the table, on stderr: stdout stays the table alone (for pipes and scripts)
        print(summary_line(summary) if summary is not None else "model: no model.json, no test figures",
              file=sys.stderr)
    return 1 if any("error" in row for row in rows) else 0


def _predict_file(predictor, path: str) -> dict:
    """{"file", "prediction", "probabilities"} or {"file", "error"}: one file's row."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {"file": path, "error": f"cannot read: {exc.strerror or exc}"}
    try:
        answer = predictor.predict_bytes(data)
    except Exception as exc:  # a file that is not an image, or one the decoder refuses
        return {"file": path, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {"file": path, "prediction": answer["prediction"], "probabilities": answer["probabilities"]}


def _table(rows: list[dict], classes: list[str]) -> str:
    """Aligned text: file, prediction, one probability column per class; an error row
    carries its message after the file name."""
    header = ["file", "prediction", *classes]
    cells = [header] + [[row["file"], row["prediction"], *(f"{row['probabilities'][c]:.3f}" for c in classes)]
                        for row in rows if "error" not in row]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    widths[0] = max(widths[0], *(len(row["file"]) for row in rows))

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i < 2 else v.rjust(widths[i]) for i, v in enumerate(values)).rstrip()

    out = [line(header)]
    for row in rows:
        if "error" in row:
            out.append(f"{row['file'].ljust(widths[0])}  error: {row['error']}")
        else:
            out.append(line([row["file"], row["prediction"], *(f"{row['probabilities'][c]:.3f}" for c in classes)]))
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
        result = cross_validate(config, command, progress=show_progress(args), verbose=args.verbose)
    except (DatasetError, WeightsError, ConfigError) as exc:
        return _error(exc)
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
