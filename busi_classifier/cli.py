"""Command-line entry points (train.py and ``python -m busi_classifier``)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import CLASSES, DEFAULT_IMAGE_SIZE, ConfigError, TrainConfig

DEFAULTS = TrainConfig()
DEFAULT_AUDIT_DIR = "artifacts/audit"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train the ResNet50 breast-ultrasound classifier (normal/benign/malignant) "
        "on a folder in the BUSI layout and export model.keras, model.tflite and model.json.",
        epilog="examples:\n"
        "  python train.py --data data/Dataset_BUSI_with_GT --out artifacts/model\n"
        "  python train.py --data data/synthetic --weights none --epochs-head 3 --epochs-fine-tune 0\n"
        "  python train.py --data DIR --weights ~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder with normal/, benign/, malignant/")
    p.add_argument("--out", default=None,
                   help=f"output folder (default {DEFAULTS.out_dir}; with --audit: {DEFAULT_AUDIT_DIR})")
    p.add_argument(
        "--weights",
        default=DEFAULTS.weights,
        help="'imagenet' (default, downloads once), 'none' (random init) or a path to a ResNet50 no-top weights file",
    )
    p.add_argument("--image-size", type=_positive_int, default=DEFAULT_IMAGE_SIZE, help="input side in pixels (default 224)")
    p.add_argument("--epochs-head", type=int, default=DEFAULTS.epochs_head,
                   help="phase 1 epochs: head on the frozen base (with --weights none: whole network)")
    p.add_argument("--epochs-fine-tune", type=int, default=DEFAULTS.epochs_fine_tune,
                   help="phase 2 epochs: top of the base unfrozen (with --weights none: added to phase 1)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--lr-head", type=float, default=DEFAULTS.lr_head, help="phase 1 learning rate")
    p.add_argument("--lr-fine-tune", type=float, default=DEFAULTS.lr_fine_tune, help="phase 2 learning rate")
    p.add_argument("--fine-tune-from", default=DEFAULTS.fine_tune_from, help="first base layer unfrozen in phase 2")
    p.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="drives split, initialisation and shuffling")
    p.add_argument("--max-per-class", type=_positive_int, default=None, help="cap on images per class (quick runs)")
    p.add_argument("--no-class-weights", action="store_true", help="do not weight the loss by inverse class frequency")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("data audit and split")
    g.add_argument("--audit", action="store_true",
                   help="only audit the dataset: write audit.md, audit.json and figures into --out, then stop")
    g.add_argument("--figures", default=None, help="with --audit: folder for the figures (default: --out)")
    g.add_argument("--split-only", action="store_true", help="only write OUT/split.csv, then stop (no training)")
    g.add_argument("--split", choices=("grouped", "random"), default=DEFAULTS.split,
                   help="grouped (default): near-duplicate groups never straddle train/val/test; "
                   "random: image-level split (leaks near-duplicates, for comparison only)")
    g.add_argument("--near-duplicate-bits", type=int, default=DEFAULTS.near_duplicate_bits,
                   help=f"perceptual-hash distance at or below which two images are near-duplicates "
                   f"(default {DEFAULTS.near_duplicate_bits})")
    g.add_argument("--conflict-label", choices=CLASSES, default=None,
                   help="keep groups whose images carry different labels, all relabelled to this class "
                   "(default: leave them out of training and evaluation)")
    g.add_argument("--folds", type=int, default=0, help="grouped k-fold cross-validation with K folds (K >= 3)")
    g.add_argument("--fold", type=int, default=0, help="with --folds: the test fold (0..K-1); fold+1 is validation")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_dir=args.data,
        out_dir=args.out or DEFAULTS.out_dir,
        weights=args.weights,
        image_size=args.image_size,
        epochs_head=args.epochs_head,
        epochs_fine_tune=args.epochs_fine_tune,
        batch_size=args.batch_size,
        lr_head=args.lr_head,
        lr_fine_tune=args.lr_fine_tune,
        fine_tune_from=args.fine_tune_from,
        dropout=args.dropout,
        seed=args.seed,
        max_per_class=args.max_per_class,
        class_weights=not args.no_class_weights,
        split=args.split,
        near_duplicate_bits=args.near_duplicate_bits,
        conflict_label=args.conflict_label,
        folds=args.folds,
        fold=args.fold,
    )


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    if args.audit:
        return audit_main(args)
    if args.split_only:
        return split_main(args)
    if args.epochs_head < 0 or args.epochs_fine_tune < 0 or args.epochs_head + args.epochs_fine_tune < 1:
        print("error: epochs must be >= 0 and at least one epoch in total", file=sys.stderr)
        return 2
    config = config_from_args(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ log noise out
    from .dataset import DatasetError
    from .model import WeightsError

    try:
        from .training import train

        meta = train(config, progress=not args.quiet)
    except (DatasetError, WeightsError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    test = meta["metrics"]["test"]
    print(
        f"done in {meta['wall_time_s']} s: test accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} "
        f"(n={test['n']}), model {meta['model_version']} -> {config.out_dir}"
    )
    return 0


def audit_main(args: argparse.Namespace) -> int:
    from .audit import run_audit
    from .dataset import DatasetError

    out = args.out or DEFAULT_AUDIT_DIR
    try:
        report = run_audit(args.data, out, args.figures, args.near_duplicate_bits, progress=not args.quiet)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    nd = report["near_duplicates"]
    print(f"audited {report['images']} images: {len(report['exact_duplicates'])} exact-duplicate groups, "
          f"{nd['groups']} near-duplicate groups ({nd['images_in_groups']} images), "
          f"{len(report['conflicting_groups'])} with conflicting labels, "
          f"{len(report['coloured_annotations'])} images with coloured annotations -> {out}/audit.md")
    return 0


def split_main(args: argparse.Namespace) -> int:
    from .dataset import DatasetError
    from .training import prepare_split, split_counts

    config = config_from_args(args)
    try:
        _, samples, result = prepare_split(config, progress=not args.quiet)
    except (DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{config.split} split of {len(samples)} images: {split_counts(result)} -> {config.out_dir}/split.csv")
    return 0
