"""Pick the model files the Lambda image carries (run by the Dockerfile's model stage).

    python3 select_model.py SOURCE_DIR TARGET_DIR [VARIANT ...]

Copies model.json and the file of model.json's ``default_variant`` (the one the function
serves unless MODEL_VARIANT says otherwise) from SOURCE_DIR to TARGET_DIR, plus the
files of the variants named after it (the Dockerfile passes the EXTRA_VARIANTS build
argument; ``all`` takes every variant). model.json is copied unchanged. Standard library
only: it runs on the base image's Python (3.12) and on the tests' Python alike.
Exit status 2 with a one-line message when the folder, model.json or a variant is missing.
"""

from __future__ import annotations

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


def select(source: Path, target: Path, extra: list[str]) -> list[str]:
    """Copy model.json and the selected .tflite files; return the names copied."""
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
