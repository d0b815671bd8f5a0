"""What every command shares about the console: argparse help and option types, --quiet
and --verbose, progress bars only on a terminal, TensorFlow's and LiteRT's native log
lines kept off stderr.

Imported by cli.py and by the commands that live with their stage (evaluate, invoke,
serve); it imports nothing of this package, so any module may import it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def bounded_int(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number >= ``minimum``, with a one-line error."""

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


positive_int = bounded_int(1)  # a whole number >= 1 (argparse ``type=``)


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


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log file a bar is hundreds of carriage returns."""
    return not args.quiet and sys.stderr.isatty()


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
