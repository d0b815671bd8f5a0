"""Which training settings to make the defaults: a few variants on the real BUSI data
(grouped split, random initialisation, 128 px), chosen by validation macro-F1.

    python benchmarks/training_ablation.py [--data ../shared/busi/Dataset_BUSI_with_GT] [--epochs 20]

Each variant is one `train.py` run; the table gives the validation macro-F1 of the kept
epoch (what selects the default) and, for information, the test metrics. Writes the
"training settings" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "augment all, cross-entropy, plateau": [],
    "no augmentation": ["--augment", "none"],
    "augment all, label smoothing 0.1, cosine": ["--label-smoothing", "0.1", "--lr-schedule", "cosine"],
    "augment all, focal loss": ["--loss", "focal"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                   help="indices of the variants to run (default all)")
    args = p.parse_args(argv)
    from busi_classifier.cli import train_main

    names = list(VARIANTS)
    chosen = [names[int(i)] for i in args.variants.split(",")]
    common = ["--data", args.data, "--weights", "none", "--image-size", str(args.size), "--epochs-head",
              str(args.epochs), "--epochs-fine-tune", "0", "--early-stopping", "6", "--seed", "42", "--quiet"]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ablation-"))
    for name in chosen:
        out = tmp / str(names.index(name))
        started = time.time()
        assert train_main([*common, "--out", str(out), *VARIANTS[name]]) == 0
        minutes = (time.time() - started) / 60
        metrics = json.loads((out / "metrics.json").read_text())
        history = json.loads((out / "history.json").read_text())
        best = metrics["test"]["best_epoch"]
        test = metrics["test"]
        rows.append((name, history["val_macro_f1"][best - 1], best, len(history["loss"]), test, minutes))
        print(f"{name}: val macro-F1 {rows[-1][1]:.3f} (epoch {best}), test macro-F1 {test['macro_f1']:.3f}",
              flush=True)
    lines = ["| variant | extra flags | val macro-F1 (kept epoch) | epochs run | test macro-F1 | test macro AUC | "
             "test accuracy | minutes |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, val_f1, best, epochs, test, minutes in rows:
        flags = " ".join(VARIANTS[name]) or "(defaults)"
        lines.append(f"| {name} | `{flags}` | {val_f1:.3f} ({best}) | {epochs} | {test['macro_f1']:.3f} | "
                     f"{test['macro_auc']:.3f} | {test['accuracy']:.3f} | {minutes:.1f} |")
    winner = max(rows, key=lambda r: r[1])[0]
    body = "\n".join(lines) + f"""

Common settings: `{' '.join(common[2:])}` on the grouped split. Selected by validation macro-F1:
**{winner}**. The test columns are for information only (choosing by them would tune to the test set).
"""
    print(body)
    command = f"python benchmarks/training_ablation.py --data {args.data} --epochs {args.epochs} --size {args.size}"
    if args.variants != p.get_default("variants"):
        command += f" --variants {args.variants}"
    write_section("training-ablation", "Training settings on BUSI (random initialisation)", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
