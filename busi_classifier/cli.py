"""Command-line entry points (train.py and ``python -m busi_classifier``)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import DEFAULT_IMAGE_SIZE, ConfigError, TrainConfig

DEFAULTS = TrainConfig()


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
    p.add_argument("--out", default=DEFAULTS.out_dir, help=f"output folder (default {DEFAULTS.out_dir})")
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
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_dir=args.data,
        out_dir=args.out,
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
    )


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
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
