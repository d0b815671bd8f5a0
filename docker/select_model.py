"""Pick the model files the Lambda image carries (run by the Dockerfile's model stage).

    python3 select_model.py SOURCE_DIR TARGET_DIR [VARIANT ...]

Copies model.json and the file of model.json's ``default_variant`` (the one the function
serves unless MODEL_VARIANT says otherwise) from SOURCE_DIR to TARGET_DIR, plus the
files of the variants named after it (the Dockerfile passes the EXTRA_VARIANTS build
argument; ``all`` takes every variant), and the input check's file where model.json has
an ``input_check`` (``input_check.npz``: every variant's answers are scored with it),
checked here against the card's sha256 and size so that a build never ships a check the
function would refuse at init. model.json is copied unchanged. Standard library only: it
runs on the base image's Python (3.12) and on the tests' Python alike.
Exit status 2 with a one-line message when the folder, model.json, a variant or the
input check file is missing, or the check file is not the card's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path


class SelectionError(Exception):
    """A mistake in the model folder or the variant names (one line for the build log)."""


def selected_files(metadata: dict, extra: list[str]) -> list[str]:
    """The .tflite file names to keep: the default variant's, then those in ``extra``."""
    variants = metadata.get("variants")
    default = metadata.get("default_variant")
    if not isinstance(variants, dict) or not variants or default not in variants:
        raise SelectionError("model.json has no variants table with its default_variant; export the model again")
    names = list(variants) if "all" in extra else [default, *extra]
    unknown = [name for name in names if name not in variants]
    if unknown:
        raise SelectionError(f"EXTRA_VARIANTS names {', '.join(unknown)}, not in model.json "
                             f"(available: {', '.join(variants)}, or all)")
    return list(dict.fromkeys(variants[name]["file"] for name in names))


def input_check_file(metadata: dict, source: Path) -> list[str]:
    """[the input check's file name] where model.json has an input_check (checked: beside
    the model, the card's size and sha256), else []."""
    check = metadata.get("input_check")
    if check is None:
        return []
    name = check.get("file") if isinstance(check, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise SelectionError("model.json's input_check names no plain file beside the model; export the model again")
    path = source / name
    if not path.is_file():
        raise SelectionError(f"{source} lacks {name}, the input check model.json describes (the function would "
                             "refuse to start without it); export the model again")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != check.get("sha256") or path.stat().st_size != check.get("bytes"):
        raise SelectionError(f"{source / name} is not the input check model.json describes (sha256 or size "
                             "differs); export the model again")
    return [name]


def select(source: Path, target: Path, extra: list[str]) -> list[str]:
    """Copy model.json, the selected .tflite files and the input check file; return the
    names copied."""
    card = source / "model.json"
    if not card.is_file():
        raise SelectionError(f"no model.json in {source} (MODEL_DIR must be a model folder written by train.py)")
    try:
        metadata = json.loads(card.read_text())
    except ValueError as exc:
        raise SelectionError(f"{card} is not valid JSON: {exc}") from None
    files = selected_files(metadata, extra)
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise SelectionError(f"{source} lacks {', '.join(missing)}, which model.json lists")
    files += input_check_file(metadata, source)
    target.mkdir(parents=True, exist_ok=True)
    for name in ["model.json", *files]:
        shutil.copy2(source / name, target / name)
    return ["model.json", *files]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: select_model.py SOURCE_DIR TARGET_DIR [VARIANT ...]", file=sys.stderr)
        return 2
    extra = [word for arg in argv[2:] for word in arg.replace(",", " ").split()]
    try:
        copied = select(Path(argv[0]), Path(argv[1]), extra)
    except SelectionError as exc:
        print(f"select_model: {exc}", file=sys.stderr)
        return 2
    print("model files in the image: " + " ".join(copied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
