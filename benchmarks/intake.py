"""What the intake costs per image, as the function runs it: base64 decoding
(``api.decode_base64``), the structural pre-scan (``decode.inspect_image``) and the
decode to the model input (``decode.decode_image`` of the Intake: pixels, resize,
letterbox), per stage and in total, p50 and p90 in ms.

    python benchmarks/intake.py --data ../shared/busi/Dataset_BUSI_with_GT --images 64 --compare-ref --out intake.json

Images: ``--images`` of the real BUSI images (spread evenly over the sorted file list of
the three classes, masks left out), made what users send (the shared copy stores most
as grayscale PNG): RGB PNGs at their original size, and JPEGs (quality 90) of the same
RGB pixels, written to a temporary folder and read back. Each is base64-encoded as a
client sends it (no line breaks).

``--compare-ref``: the pipeline as it was before issue 24 (a frozen copy,
benchmarks/_intake_reference.py) runs on the same images in the same process,
interleaved with the current one (image by image, the order of the two alternating),
so that whatever else the machine runs weighs on both alike: read the paired figures
(p50 of the per-image differences, and of the per-image ratios) rather than the
difference of two p50s. Also: the largest and the mean absolute difference between the
two model inputs, over every pixel of every image (0 where the new path is exact).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.intake_worst_case import machine  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"
CLASSES = ("benign", "malignant", "normal")
FORMATS = {"png": "RGB PNG", "jpeg": "RGB JPEG, quality 90"}
STAGES = ("base64", "pre-scan", "decode", "total")


def busi_paths(folder: Path, count: int) -> list[Path]:
    paths = sorted(p for label in CLASSES for p in (folder / label).glob("*.png") if "_mask" not in p.name)
    if not paths:
        raise SystemExit(f"error: no BUSI images under {folder} (expected {', '.join(CLASSES)} folders)")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def user_files(paths: list[Path], into: Path) -> dict[str, list[bytes]]:
    """Each image as an RGB PNG and an RGB JPEG (quality 90), written to ``into`` and read back."""
    files = {fmt: [] for fmt in FORMATS}
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        for fmt, suffix, options in (("png", "png", {}), ("jpeg", "jpg", {"quality": 90})):
            target = into / f"{i:04d}.{suffix}"
            rgb.save(target, format=fmt.upper(), **options)
            files[fmt].append(target.read_bytes())
    return files


def pipelines(compare: bool) -> dict[str, tuple]:
    from busi_classifier.serving import api, decode

    found = {"new": (api.decode_base64, decode.inspect_image, decode.decode_image)}
    if compare:
        from benchmarks import _intake_reference as reference

        found["old"] = (reference.decode_base64, reference.inspect_image, reference.decode_image)
    return found


def run_once(pipeline: tuple, text: str, size: int) -> tuple[dict[str, float], np.ndarray]:
    b64, inspect, decode = pipeline
    t0 = time.perf_counter()
    data = b64(text)
    t1 = time.perf_counter()
    intake = inspect(data)
    t2 = time.perf_counter()
    pixels = decode(intake, size)
    t3 = time.perf_counter()
    ms = {"base64": t1 - t0, "pre-scan": t2 - t1, "decode": t3 - t2, "total": t3 - t0}
    return {k: v * 1000 for k, v in ms.items()}, pixels


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(texts: list[str], size: int, rounds: int, found: dict[str, tuple]) -> dict:
    names = list(found)
    times = {name: {stage: [] for stage in STAGES} for name in names}
    outputs = {name: [None] * len(texts) for name in names}
    for name in names:  # warm-up: imports, Pillow's plugins, first allocations
        run_once(found[name], texts[0], size)
    order = 0
    for _ in range(rounds):
        for i, text in enumerate(texts):
            for name in (names if order % 2 == 0 else names[::-1]):
                ms, pixels = run_once(found[name], text, size)
                for stage in STAGES:
                    times[name][stage].append(ms[stage])
                outputs[name][i] = pixels
            order += 1
    result = {"stages": {}}
    for stage in STAGES:
        row = {name: {"p50": statistics.median(times[name][stage]), "p90": percentile(times[name][stage], 90)}
               for name in names}
        if "old" in times:
            new, old = times["new"][stage], times["old"][stage]
            row["paired_difference_p50"] = statistics.median([n - o for n, o in zip(new, old, strict=True)])
            row["paired_ratio_p50"] = statistics.median([n / o for n, o in zip(new, old, strict=True) if o > 0])
        result["stages"][stage] = row
    if "old" in outputs:
        differences = [np.abs(n.astype(np.int16) - o.astype(np.int16))
                       for n, o in zip(outputs["new"], outputs["old"], strict=True)]
        result["pixel_difference"] = {
            "max_abs": int(max(d.max() for d in differences)),
            "mean_abs": float(np.mean([d.mean() for d in differences])),
            "identical_images": sum(int(not d.any()) for d in differences),
            "images": len(differences),
        }
    return result


def table(results: dict, compare: bool) -> str:
    if compare:
        lines = ["| format | stage | old p50 ms | new p50 ms | old p90 ms | new p90 ms | paired new - old (p50) "
                 "| paired new / old (p50) |", "|---|---|---|---|---|---|---|---|"]
    else:
        lines = ["| format | stage | p50 ms | p90 ms |", "|---|---|---|---|"]
    for fmt, result in results.items():
        for stage, row in result["stages"].items():
            name = f"**{stage}**" if stage == "total" else stage
            if compare:
                lines.append(f"| {FORMATS[fmt]} | {name} | {row['old']['p50']:.2f} | {row['new']['p50']:.2f} "
                             f"| {row['old']['p90']:.2f} | {row['new']['p90']:.2f} "
                             f"| {row['paired_difference_p50']:+.2f} | {row['paired_ratio_p50']:.2f} |")
            else:
                lines.append(f"| {FORMATS[fmt]} | {name} | {row['new']['p50']:.2f} | {row['new']['p90']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the BUSI folder (benign/, malignant/, normal/)")
    parser.add_argument("--images", type=int, default=64, help="images, spread over the file list (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the images (default 5)")
    parser.add_argument("--size", type=int, default=224, help="the model input side (default 224)")
    parser.add_argument("--compare-ref", action="store_true",
                        help="also run the pre-issue-24 pipeline (benchmarks/_intake_reference.py), interleaved")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"{args.data} is not a folder: give --data (the BUSI Dataset_BUSI_with_GT folder)")
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be at least 1")

    command = shlex.join(["python", "benchmarks/intake.py", *argv])
    load_start = os.getloadavg()
    paths = busi_paths(args.data, args.images)
    found = pipelines(args.compare_ref)
    results, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="busi-intake-") as temp:
        files = user_files(paths, Path(temp))
    for fmt, datas in files.items():
        texts = [base64.b64encode(data).decode("ascii") for data in datas]
        sizes[fmt] = {"bytes_median": statistics.median(len(d) for d in datas),
                      "base64_chars_median": statistics.median(len(t) for t in texts)}
        print(f"{FORMATS[fmt]}: {len(datas)} images, {args.rounds} rounds", file=sys.stderr, flush=True)
        results[fmt] = {**sizes[fmt], **measure(texts, args.size, args.rounds, found)}
    load_end = os.getloadavg()

    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(max(image.size))
    side = statistics.median(sides)
    lines = [
        f"Command: `{command}`",
        f"Machine: {machine()}",
        f"Load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load_start)} at the start, "
        f"{' '.join(f'{v:.2f}' for v in load_end)} at the end, on {os.cpu_count()} CPUs",
        "",
        f"{len(paths)} BUSI images (median longer side {side:.0f} px) as users send them; model input {args.size} px; "
        f"{args.rounds} rounds; median file: "
        + ", ".join(f"{FORMATS[f]} {s['bytes_median'] / 1000:.0f} KB" for f, s in sizes.items()) + ".",
        "",
        table(results, args.compare_ref),
    ]
    if args.compare_ref:
        lines.append("")
        for fmt, result in results.items():
            d = result["pixel_difference"]
            lines.append(f"Model input, new against old, {FORMATS[fmt]}: max abs difference {d['max_abs']}, mean abs "
                         f"difference {d['mean_abs']:.6f}, {d['identical_images']} of {d['images']} images identical.")
    print("\n".join(lines))
    if args.out:
        record = {"command": command, "machine": machine(), "load_average": {"start": load_start, "end": load_end},
                  "images": len(paths), "rounds": args.rounds, "size": args.size,
                  "files": [str(p.relative_to(args.data)) for p in paths], "formats": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
