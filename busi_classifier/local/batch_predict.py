"""Classify a folder (or a list) of local image files into a results file, resumably.

``python -m busi_classifier predict DIR|FILES... --out results.csv|results.jsonl``:

* ``find_images``: folders are walked recursively (PNG and JPEG by extension, any case;
  BUSI's masks, ``*_mask.png`` and ``*_mask_N.png``, are skipped), each folder's files in
  sorted order; files named on the command line are taken as they are (any extension)
  except masks. A file's ``path`` is the path as given, a folder's files are the folder
  as given joined with their path inside it (as ``find DIR`` prints them).
* ``classify_file``: one row per file through the serving intake
  (``Predictor.predict_bytes``); what the decoder refuses becomes the API's error code and
  sentence (``serving.api.app.error_for``), a file that cannot be read ``unreadable_file``,
  one over the API's byte cap ``file_too_large``. A refused file is a row, never an end.
* ``classify``: the rows in input order, from this process's interpreter or from worker
  processes with one interpreter each (multiprocessing "spawn": nothing of a parent that
  has imported TensorFlow is inherited).
* ``ResultsFile``: CSV (header once) or JSONL (one object per line), chosen by the
  extension; rows already in it (same path, sha256 and model_version) are not redone,
  new rows are appended and flushed one by one, so an interrupted run resumes.

The row's columns are ``columns(classes)``: the one list to extend for new columns. Where
the model has the input check, ``in_distribution`` (true/false: the image looks like the
training images, or it was flagged) and ``input_check_score`` (the check's score; its
threshold is the card's) are filled; they are empty for a model without the check and
for a refused file.
Imports the serving world (and tqdm) only: no TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# BUSI ships each scan's lesion mask(s) beside it: "benign (1)_mask.png", "benign (1)_mask_1.png"
MASK_STEM = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)
# A file over the API's cap on image bytes is refused as the API would refuse it (and is
# never read into memory whole)
MAX_FILE_BYTES = 4_400_000  # = serving.api.MAX_IMAGE_BYTES (checked by the tests)
# Worker processes are started only when each gets at least this many images: starting
# one (spawn, imports, model load) costs about as much as classifying a few dozen.
MIN_IMAGES_PER_WORKER = 32
# --workers' default: one worker per CPU, one interpreter thread each (BENCHMARKS.md
# "predict-throughput": processes beat threads; more workers than CPUs gain nothing), at
# most this many (each worker holds its own copy of the model: ~120 MB of int8_dynamic)
MAX_DEFAULT_WORKERS = 8
PROBABILITY_DIGITS = 6
SCORE_DIGITS = 4

# Local error codes (the others are the API's, serving/api.py ERRORS)
LOCAL_ERRORS = {
    "unreadable_file": "cannot read: {reason}",
    "file_too_large": f"the file is larger than the API accepts ({MAX_FILE_BYTES} bytes of image)",
}

# --- the columns: ONE list; a later column is added here and filled in classify_file ----
COLUMNS_BEFORE_PROBABILITIES = ("path", "size", "sha256", "class")
COLUMNS_AFTER_PROBABILITIES = ("in_distribution", "input_check_score", "model_version", "error_code", "error_message")
RESUME_KEY = ("path", "sha256", "model_version")


def probability_column(name: str) -> str:
    return f"p_{name}"


def columns(classes: Iterable[str]) -> list[str]:
    """The results file's columns, probabilities in the model's class order."""
    return [*COLUMNS_BEFORE_PROBABILITIES, *(probability_column(c) for c in classes), *COLUMNS_AFTER_PROBABILITIES]


class BatchError(Exception):
    """A user mistake found before any image is classified (one line for the console)."""


# --- finding the images ----------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One file to classify: ``file`` to open, ``path`` as the row names it."""

    file: str
    path: str


@dataclass
class Found:
    items: list[Item] = field(default_factory=list)
    masks: int = 0  # mask files skipped
    folders: int = 0


def is_mask(name: str) -> bool:
    return MASK_STEM.search(Path(name).stem) is not None


def _walk(folder: str) -> Iterator[str]:
    """Every file under ``folder``, as paths relative to it, sorted by their parts
    (symbolic links to folders are not followed)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        relative = os.path.relpath(root, folder)
        for name in files:
            found.append(name if relative == "." else os.path.join(relative, name))
    yield from sorted(found, key=lambda p: Path(p).parts)


def find_images(inputs: Iterable[str]) -> Found:
    """The files to classify, in a deterministic order: the inputs in the order given,
    each folder's images sorted; a path met twice is taken once."""
    found, seen = Found(), set()
    for given in inputs:
        if os.path.isdir(given):
            found.folders += 1
            for relative in _walk(given):
                if not relative.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if is_mask(relative):
                    found.masks += 1
                    continue
                path = Path(given, relative).as_posix()
                if path not in seen:
                    seen.add(path)
                    found.items.append(Item(os.path.join(given, relative), path))
        elif is_mask(given):
            found.masks += 1
        elif given not in seen:
            seen.add(given)
            found.items.append(Item(given, given))
    return found


# --- one file -----------------------------------------------------------------


def _row(classes: list[str], model_version: str, path: str, size: int | None = None, sha256: str = "",
         answer: dict | None = None, code: str = "", message: str = "") -> dict:
    row = {"path": path, "size": size, "sha256": sha256, "class": answer["prediction"] if answer else "",
           "model_version": model_version, "error_code": code, "error_message": message}
    for name in classes:
        row[probability_column(name)] = round(answer["probabilities"][name], PROBABILITY_DIGITS) if answer else None
    check = answer.get("input_check") if answer else None
    score = check["score"] if check else None
    row["in_distribution"] = check["in_distribution"] if check else None
    row["input_check_score"] = round(score, SCORE_DIGITS) if score is not None else None
    return row


def classify_file(predictor, item: Item) -> dict:
    """One row: the prediction, or the error code and sentence of a refused file."""
    classes, version = list(predictor.classes), predictor.model_version
    try:
        with open(item.file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                return _row(classes, version, item.path, size, code="file_too_large",
                            message=LOCAL_ERRORS["file_too_large"])
            data = handle.read()
    except OSError as exc:
        return _row(classes, version, item.path, code="unreadable_file",
                    message=LOCAL_ERRORS["unreadable_file"].format(reason=exc.strerror or type(exc).__name__))
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        answer = predictor.predict_bytes(data)
    except Exception as exc:  # what the intake refuses, with the API's code; anything else: internal_error
        from busi_classifier.serving.api import ERRORS, app

        error = app.error_for(exc)
        if error is None:
            code, message = "internal_error", f"{ERRORS['internal_error'][1]} ({type(exc).__name__}: {exc})"
        else:
            code, message = error.code, error.message
        return _row(classes, version, item.path, len(data), sha256, code=code, message=message)
    return _row(classes, version, item.path, len(data), sha256, answer)


def file_sha256(file: str) -> str:
    """The sha256 of a file ("" when it cannot be read: as its row would say)."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES:
                return ""  # a refused file_too_large row has its size, not its hash
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


# --- many files: in this process or in worker processes ---------------------------

_worker_predictor = None
_worker_error = ""


def _start_worker(model: str, variant: str | None, threads: int) -> None:
    """A worker's own interpreter. Ctrl-C is the parent's to handle (it ends the pool); a
    model that does not load is reported by the first task (an initializer that raises
    would make the pool start new workers for ever)."""
    global _worker_predictor, _worker_error
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from busi_classifier.console import native_stderr_silenced
    from busi_classifier.serving.predictor import Predictor

    try:
        with native_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            _worker_predictor = Predictor(model, variant=variant, num_threads=threads)
    except Exception as exc:
        _worker_error = f"a worker process could not load the model: {exc}"


def _classify_in_worker(item: Item) -> dict:
    if _worker_predictor is None:
        raise BatchError(_worker_error)
    return classify_file(_worker_predictor, item)


def default_workers() -> int:
    """One worker per CPU this process may use, at most MAX_DEFAULT_WORKERS."""
    from busi_classifier.serving.predictor import available_cpus

    return min(MAX_DEFAULT_WORKERS, available_cpus())


def worker_count(workers: int, images: int) -> int:
    """Worker processes to start for ``images`` files (1: classify in this process)."""
    return max(1, min(workers, images // MIN_IMAGES_PER_WORKER))


def classify(items: list[Item], predictor, *, model: str | os.PathLike | None = None, variant: str | None = None,
             workers: int = 1, threads: int = 1) -> Iterator[dict]:
    """The rows of ``items`` in their order. ``workers`` > 1: that many spawned processes,
    each with its own interpreter of ``threads`` threads loaded from ``model`` (and
    ``variant``); otherwise ``predictor`` classifies them here."""
    if workers <= 1 or not items:
        for item in items:
            yield classify_file(predictor, item)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow
    with context.Pool(workers, initializer=_start_worker, initargs=(str(model), variant, threads)) as pool:
        try:
            yield from pool.imap(_classify_in_worker, items, chunksize=4)
        finally:
            pool.terminate()


# --- the results file ----------------------------------------------------------------


class ResultsFile:
    """A CSV or JSONL results file (by extension), read for the rows it holds and appended to."""

    KINDS = {".csv": "csv", ".jsonl": "jsonl"}

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path = Path(path)
        self.kind = self.KINDS.get(self.path.suffix.lower())
        if self.kind is None:
            raise BatchError(f"--out {self.path}: the results file must end in .csv or .jsonl")
        if self.path.is_dir():
            raise BatchError(f"--out {self.path} is a folder; give a file name ending in .csv or .jsonl")
        self.fields = list(fields)
        self.done: dict[tuple, str] = {}  # RESUME_KEY of the rows already there -> their error code
        self.rows_before = 0
        self.dropped_partial_line = False
        self._handle = None
        self._writer = None

    def read(self) -> None:
        """The rows already there (and drop an incomplete last line, from an interrupted run)."""
        if not self.path.exists():
            return
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            raise BatchError(f"--out {self.path}: cannot read it ({exc.strerror or exc})") from None
        if text and not text.endswith(b"\n"):
            text = text[: text.rfind(b"\n") + 1]
            self.dropped_partial_line = True
            with open(self.path, "r+b") as handle:
                handle.truncate(len(text))
        try:
            lines = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BatchError(f"--out {self.path} is not a UTF-8 {self.kind.upper()} file of results") from None
        rows = self._parse(lines)
        for row in rows:
            self.done[tuple(str(row.get(k) or "") for k in RESUME_KEY)] = str(row.get("error_code") or "")
        self.rows_before = len(rows)

    def _parse(self, text: str) -> list[dict]:
        if not text.strip():
            return []
        mismatch = (f"--out {self.path} holds other columns than this run writes ({', '.join(self.fields)}); "
                    "give another --out")
        if self.kind == "csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames != self.fields:
                raise BatchError(mismatch)
            return list(reader)
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise BatchError(f"--out {self.path}, line {number}: not a JSON object; give another --out") from None
            if not isinstance(row, dict) or list(row) != self.fields:
                raise BatchError(mismatch)
            rows.append(row)
        return rows

    def done_code(self, path: str, sha256: str, model_version: str) -> str | None:
        """The error code ("" for a success) of this file's row, None when there is none."""
        return self.done.get((path, sha256, model_version))

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        if self.kind == "csv":
            self._writer = csv.writer(self._handle, lineterminator="\n")
            if new:
                self._writer.writerow(self.fields)
                self._handle.flush()
        return self

    def write(self, row: dict) -> None:
        if self.kind == "csv":  # booleans as JSON writes them (true/false), None as an empty cell
            self._writer.writerow(["" if row[k] is None else str(row[k]).lower() if isinstance(row[k], bool)
                                   else row[k] for k in self.fields])
        else:
            self._handle.write(json.dumps({k: (None if row[k] == "" else row[k]) for k in self.fields}) + "\n")
        self._handle.flush()  # a row written is a row kept, should the run be interrupted

    def __exit__(self, *exc) -> None:
        self._handle.close()


# --- the whole run ----------------------------------------------------------------


@dataclass
class Summary:
    classified: int = 0
    refused: int = 0
    masks: int = 0
    already_done: int = 0
    already_refused: int = 0  # of already_done
    seconds: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.masks + self.already_done

    def count(self, row: dict) -> None:
        if row["error_code"]:
            self.refused += 1
            self.codes[row["error_code"]] = self.codes.get(row["error_code"], 0) + 1
        else:
            self.classified += 1

    def line(self, out: str | None = None) -> str:
        rate = (self.classified + self.refused) / self.seconds if self.seconds > 0 else 0.0
        skipped = []
        if self.masks:
            skipped.append(f"{self.masks} masks")
        if self.already_done:
            refused = f", {self.already_refused} of them refused" if self.already_refused else ""
            skipped.append(f"{self.already_done} already in {out}{refused}")
        codes = f" ({', '.join(f'{c} {n}' for c, n in sorted(self.codes.items()))})" if self.codes else ""
        return (f"{self.classified} classified, {self.refused} refused{codes}, {self.skipped} skipped"
                f"{' (' + ', '.join(skipped) + ')' if skipped else ''}, {rate:.1f} images/s"
                + (f" -> {out}" if out else ""))


def pending(items: list[Item], results: ResultsFile | None, model_version: str) -> tuple[list[Item], int, int]:
    """(the items to classify, how many the results file already holds, how many of those
    are refusals). Only a file whose path is in the results file is hashed here."""
    if results is None or not results.done:
        return list(items), 0, 0
    paths = {key[0] for key in results.done}
    todo, done, refused = [], 0, 0
    for item in items:
        code = results.done_code(item.path, file_sha256(item.file), model_version) if item.path in paths else None
        if code is None:
            todo.append(item)
        else:
            done += 1
            refused += bool(code)
    return todo, done, refused


def run(items: list[Item], predictor, *, model, variant: str | None = None, workers: int = 1,
        threads: int = 1, results: ResultsFile | None = None, progress: bool = False,
        on_row: Callable[[dict], None] | None = None, summary: Summary | None = None) -> Summary:
    """Classify ``items`` (those not in ``results`` already), write each row to ``results``
    and hand it to ``on_row``; the counts and the rate in the Summary."""
    import time

    from tqdm import tqdm

    summary = summary or Summary()
    todo, summary.already_done, summary.already_refused = pending(items, results, predictor.model_version)
    started = time.perf_counter()
    rows = classify(todo, predictor, model=model, variant=variant, workers=worker_count(workers, len(todo)),
                    threads=threads)
    with results if results is not None else _nothing():
        for row in tqdm(rows, total=len(todo), desc="classifying", unit="img", disable=not progress):
            if results is not None:
                results.write(row)
            if on_row is not None:
                on_row(row)
            summary.count(row)
    summary.seconds = time.perf_counter() - started
    return summary


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None
