"""Throughput of ``python -m busi_classifier predict DIR --out results.csv``: images per
second for one interpreter with 1 and 2 threads, and for N worker processes with one
interpreter (1 thread) each. Writes the "predict-throughput" section of BENCHMARKS.md.

    python benchmarks/predict_throughput.py --model artifacts/model [--images 300] [--rounds 2]

Each configuration runs the command as a user types it, in a fresh process, on a folder
of ``--images`` images and a new results file: "images/s" is the rate the command's own
summary line reports (the classifying phase, worker start included); "command s" is the
whole process's wall time (imports, model load, finding the files, classifying, writing).
The best of ``--rounds`` rounds, the configurations interleaved in each round.

Image sets: the synthetic dataset (``--data``, default data/synthetic) and, where the
shared copy exists (../shared/busi/Dataset_BUSI_with_GT), the real BUSI scans as users
send them: RGB PNGs at their original size, converted in a temporary folder (never
written into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_section  # noqa: E402

BUSI = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"
# (workers, threads per interpreter)
CONFIGS = [(1, 1), (1, 2), (2, 1), (3, 1), (4, 1)]
RATE = re.compile(r"(\d+) classified, (\d+) refused.*?, ([\d.]+) images/s")


def scans(folder: Path) -> list[Path]:
    from busi_classifier.local.batch_predict import find_images

    return [Path(item.file) for item in find_images([str(folder)]).items]


def synthetic_set(data: Path, n: int, into: Path) -> str:
    files = _spread(scans(data), n)
    for source in files:
        target = into / source.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return f"{len(files)} synthetic PNGs from `{_shown(data)}`"


def busi_rgb_set(n: int, into: Path) -> str:
    from PIL import Image

    files = _spread(scans(BUSI), n)
    for source in files:
        target = into / source.relative_to(BUSI)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as image:
            image.convert("RGB").save(target, format="PNG")
    return f"{len(files)} real BUSI scans as RGB PNGs at their original size (converted from `{_shown(BUSI)}`)"


def _spread(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread evenly over the sorted list (all classes, deterministic)."""
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(Path("..") / path.resolve().relative_to(ROOT.parent))


def run_once(model: str, folder: Path, workers: int, threads: int, scratch: Path) -> tuple[float, float, float]:
    """(images/s from the summary line, whole command's seconds, its CPU seconds: user + system
    of the command and its worker processes)."""
    out = scratch / f"results-{workers}-{threads}-{time.monotonic_ns()}.csv"
    command = [sys.executable, "-m", "busi_classifier", "predict", str(folder), "--model", model, "--out", str(out),
               "--workers", str(workers), "--threads", str(threads), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = RATE.search(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "")
    if result.returncode not in (0, 1) or match is None:
        raise SystemExit(f"error: {shlex.join(command)} failed ({result.returncode}):\n{result.stderr}")
    out.unlink()
    return float(match.group(3)), seconds, cpu


LOADS: list[float] = []  # the 1-minute load average before each run


def measure(model: str, folder: Path, rounds: int, scratch: Path) -> dict[tuple[int, int], tuple[float, ...]]:
    best: dict[tuple[int, int], tuple[float, ...]] = {}
    for round_ in range(rounds):
        for workers, threads in CONFIGS:
            LOADS.append(os.getloadavg()[0])
            rate, seconds, cpu = run_once(model, folder, workers, threads, scratch)
            print(f"round {round_ + 1}: {workers} workers x {threads} threads: {rate:.1f} images/s, "
                  f"{seconds:.1f} s, {cpu:.1f} CPU s (load {LOADS[-1]:.2f})", file=sys.stderr)
            old = best.get((workers, threads))
            best[(workers, threads)] = ((max(rate, old[0]), min(seconds, old[1]), min(cpu, old[2])) if old
                                        else (rate, seconds, cpu))
    return best


def table(results: dict[str, dict], n_images: dict[str, int]) -> str:
    names = list(results)
    header = "| workers x threads | " + " | ".join(f"{name}: images/s | command s | CPU ms per image"
                                                   for name in names) + " |"
    rule = "|---|" + "---:|---:|---:|" * len(names)
    lines = [header, rule]
    for workers, threads in CONFIGS:
        cells = []
        for name in names:
            rate, seconds, cpu = results[name][(workers, threads)]
            base = results[name][(1, 1)][0]
            cells += [f"{rate:.1f} ({rate / base:.2f}x)", f"{seconds:.1f}", f"{1000 * cpu / n_images[name]:.0f}"]
        kind = "one interpreter" if workers == 1 else f"{workers} worker processes"
        lines.append(f"| {workers} x {threads} ({kind}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="artifacts/model", help="model folder (its default variant is served)")
    p.add_argument("--data", default="data/synthetic", help="synthetic dataset in the BUSI layout")
    p.add_argument("--images", type=int, default=300, help="images per set")
    p.add_argument("--rounds", type=int, default=2, help="rounds (the best of them is reported)")
    p.add_argument("--no-busi", action="store_true", help="leave out the real BUSI set even where it exists")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)

    from busi_classifier.local.batch_predict import MAX_DEFAULT_WORKERS, MIN_IMAGES_PER_WORKER, default_workers
    from busi_classifier.serving.card import ModelCard

    card = ModelCard.read(Path(args.model))
    results, sources, counts = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="predict-throughput-") as temp:
        temp = Path(temp)
        sets = [("synthetic", lambda into: synthetic_set(Path(args.data), args.images, into))]
        if BUSI.is_dir() and not args.no_busi:
            sets.append(("BUSI RGB", lambda into: busi_rgb_set(args.images, into)))
        for name, build in sets:
            folder = temp / name.replace(" ", "-")
            folder.mkdir()
            sources.append(f"- {name}: {build(folder)}")
            counts[name] = len(scans(folder))
            print(f"{name}: {counts[name]} images", file=sys.stderr)
            results[name] = measure(args.model, folder, args.rounds, temp)

    command = "python benchmarks/predict_throughput.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    best = {name: max(CONFIGS, key=lambda c, r=r: r[c][0]) for name, r in results.items()}
    body = f"""Model `{card.model_version}` (`{_shown(Path(args.model))}`), variant `{card.default_variant}`
(the one the function serves), {card.input.size} px. Image sets:
{chr(10).join(sources)}

Each row is `python -m busi_classifier predict DIR --out results.csv --workers W --threads T --quiet`
in a fresh process, best of {args.rounds} rounds. images/s: the rate of the command's own summary line (the
classifying phase: reading, hashing, decoding, resizing, inference, writing; worker start included);
in brackets against 1 x 1. command s: the whole process (imports and model load included). CPU ms per
image: user + system CPU time of the command and its workers, divided by the images (what the
configuration costs, whatever else the machine runs). Load average (1 min, this benchmark's own runs
included) before each run: {min(LOADS):.2f} to {max(LOADS):.2f} on {os.cpu_count()} CPUs.

{table(results, counts)}

Fastest: {"; ".join(f"{name} {w} x {t}" for name, (w, t) in best.items())}. Default `--workers`: one per
CPU, at most {MAX_DEFAULT_WORKERS} (**{default_workers()}** here), 1 interpreter thread each; a run of fewer than
{MIN_IMAGES_PER_WORKER} images per worker starts fewer workers. Why: docs/predict.md.
"""
    print(body)
    if not args.no_write:
        write_section("predict-throughput", "Batch predict: images per second, threads against worker processes",
                      command.strip(), body)
    print(json.dumps({name: {f"{w}x{t}": v for (w, t), v in r.items()} for name, r in results.items()}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
