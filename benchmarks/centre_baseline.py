"""The centre baseline of the class-map checks on a whole dataset (no model): how often a
map that always points at the image centre hits the lesion, and how much of its energy
falls on it. Writes the "centre-baseline" section of BENCHMARKS.md.

    python benchmarks/centre_baseline.py [--data ../shared/busi/Dataset_BUSI_with_GT] [--size 224]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"))
    p.add_argument("--size", type=int, default=224, help="model input size (the grid is size / 32 cells a side)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import numpy as np

    from busi_classifier.data.dataset import read_dataset
    from busi_classifier.evaluation.localisation import centre_map, localisation_report, mask_for_input

    samples = [s for s in read_dataset(args.data) if s.label != "normal"]
    masks = [mask_for_input(s.masks, args.size) for s in samples]
    grid = (args.size // 32, args.size // 32)
    maps = [centre_map(grid)] * len(samples)
    rows = []
    for dilate in (1, 0):
        r = localisation_report(maps, masks, map_of="centre baseline", dilate_cells=dilate)
        rows.append((dilate, r))
    n = rows[0][1]["n"]
    energy = rows[0][1]["energy_inside"]
    lesion_share = float(np.mean([m.mean() for m in masks if m is not None]))
    body = f"""{n} benign and malignant images of `{Path(args.data).name}` with a lesion mask, {args.size} px,
{grid[0]}x{grid[1]} cells; the centre baseline is a Gaussian centred on the square input (sigma a quarter of the side).

| measure | centre baseline | 95 % CI (images resampled) |
|---|---:|---:|
""" + "".join(_pointing_row(d, r) for d, r in rows) + f"""| energy inside the lesion | {energy['model']:.3f} | {energy['model_ci95'][0]:.3f} – {energy['model_ci95'][1]:.3f} |
| share of the input covered by the lesion (a flat map's energy inside) | {lesion_share:.3f} | |
"""
    print(body)
    if not args.no_write:
        write_section("centre-baseline", "The centre baseline of the class-map checks",
                      f"python benchmarks/centre_baseline.py --size {args.size}", body)
    return 0


def _pointing_row(dilate: int, report: dict) -> str:
    game = report["pointing_game"]
    if game.get("model") is None:  # the centre cell touches every cell of so coarse a grid
        return f"| pointing game, {dilate} cell(s) of slack | n/a ({game.get('not_meaningful', 'grid too coarse')}) | |\n"
    return (f"| pointing game, {dilate} cell(s) of slack | {game['model']:.3f} | "
            f"{game['model_ci95'][0]:.3f} – {game['model_ci95'][1]:.3f} |\n")


if __name__ == "__main__":
    sys.exit(main())
