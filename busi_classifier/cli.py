"""Command-line entry points (train.py and ``python -m busi_classifier``)."""

from __future__ import annotations

import argparse
import os
import sys

from busi_classifier.config import AUGMENTATIONS, ConfigError, TrainConfig, parse_augmentations
from busi_classifier.serving.constants import CLASSES, DEFAULT_IMAGE_SIZE

DEFAULTS = TrainConfig()
DEFAULT_AUDIT_DIR = "artifacts/audit"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def train_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train the ResNet50 breast-ultrasound classifier (normal/benign/malignant) "
        "on a folder in the BUSI layout, calibrate and evaluate it, and export model.keras, "
        "model.tflite and model.json.",
        epilog="examples:\n"
        "  python train.py --data data/Dataset_BUSI_with_GT --out artifacts/model\n"
        "  python train.py --data data/synthetic --weights none --epochs-head 3 --epochs-fine-tune 0\n"
        "  python train.py --data DIR --weights ~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5\n"
        "  python train.py --data DIR --audit --out docs/audit --figures imgs\n"
        "  python train.py --data DIR --out DIR --split-only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder with normal/, benign/, malignant/")
    p.add_argument("--out", default=None,
                   help=f"output folder (default {d.out_dir}; with --audit: {DEFAULT_AUDIT_DIR})")
    p.add_argument("--figures", default=None, help="folder for the figures (default: --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("model and phases")
    g.add_argument("--weights", default=d.weights,
                   help="'imagenet' (default, downloads once), 'none' (random init) or a path to a ResNet50 "
                   "no-top weights file")
    g.add_argument("--image-size", type=_positive_int, default=DEFAULT_IMAGE_SIZE,
                   help="input side in pixels (default 224)")
    g.add_argument("--epochs-head", type=int, default=d.epochs_head,
                   help=f"phase 1 epochs: head on the frozen base (with --weights none: whole network; default "
                   f"{d.epochs_head})")
    g.add_argument("--epochs-fine-tune", type=int, default=d.epochs_fine_tune,
                   help=f"phase 2 epochs per unfreezing stage (with --weights none: added to phase 1; default "
                   f"{d.epochs_fine_tune})")
    g.add_argument("--fine-tune-stages", default=",".join(d.fine_tune_stages),
                   help="gradual unfreezing: comma-separated base layers, each stage unfreezes from that layer on "
                   "(default %(default)s; e.g. conv5_block1_1_conv,conv4_block1_1_conv)")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    g.add_argument("--lr-head", type=float, default=d.lr_head, help="phase 1 learning rate (default %(default)g)")
    g.add_argument("--lr-fine-tune", type=float, default=d.lr_fine_tune,
                   help="phase 2 learning rate (default %(default)g)")
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--seed", type=int, default=d.seed, help="drives split, initialisation, augmentation, shuffling")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=d.deterministic,
                   help="TensorFlow op determinism (default on)")
    g.add_argument("--max-per-class", type=_positive_int, default=None, help="cap on images per class (quick runs)")

    g = p.add_argument_group("loss, schedule, selection")
    g.add_argument("--loss", choices=("crossentropy", "focal"), default=d.loss)
    g.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=d.class_weights,
                   help="weight the loss by inverse class frequency (default on)")
    g.add_argument("--lr-schedule", choices=("plateau", "cosine", "constant"), default=d.lr_schedule,
                   help="plateau: ReduceLROnPlateau; cosine: cosine decay after --warmup-epochs (default %(default)s)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    g.add_argument("--monitor", choices=("val_macro_f1", "val_macro_auc"), default=d.monitor,
                   help="validation metric that picks the kept epoch and drives early stopping")
    g.add_argument("--early-stopping", type=int, default=d.early_stopping, metavar="PATIENCE",
                   help="stop a phase after PATIENCE epochs without improvement (0: off; default %(default)s)")
    g.add_argument("--augment", default=",".join(d.augment),
                   help=f"augmentations: comma list of {', '.join(AUGMENTATIONS)}, or 'all' / 'none' "
                   "(default %(default)s)")
    g.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=d.cache_features,
                   help="with pretrained weights: train the head on base features computed once per view "
                   "instead of running the frozen base every epoch (default on)")
    g.add_argument("--feature-views", type=_positive_int, default=d.feature_views,
                   help="views per image for --cache-features: the image plus N-1 augmented copies")
    g.add_argument("--bootstrap", type=int, default=d.bootstrap_resamples, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default %(default)s)")

    g = p.add_argument_group("hardware")
    g.add_argument("--distribute", choices=("none", "mirrored"), default=d.distribute,
                   help="mirrored: tf.distribute.MirroredStrategy over every visible GPU")
    g.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (for GPUs; exports float32)")

    g = p.add_argument_group("data audit and split")
    g.add_argument("--audit", action="store_true",
                   help="only audit the dataset: write audit.md, audit.json and figures into --out, then stop")
    g.add_argument("--split-only", action="store_true", help="only write OUT/split.csv, then stop (no training)")
    g.add_argument("--split", choices=("grouped", "random"), default=d.split,
                   help="grouped (default): near-duplicate groups never straddle train/val/test; "
                   "random: image-level split (leaks near-duplicates, for comparison only)")
    g.add_argument("--near-duplicate-bits", type=int, default=d.near_duplicate_bits,
                   help=f"perceptual-hash distance at or below which two images are near-duplicates "
                   f"(default {d.near_duplicate_bits})")
    g.add_argument("--conflict-label", choices=CLASSES, default=None,
                   help="keep groups whose images carry different labels, all relabelled to this class "
                   "(default: leave them out of training and evaluation)")
    g.add_argument("--folds", type=int, default=0, help="grouped k-fold cross-validation with K folds (K >= 3)")
    g.add_argument("--fold", type=int, default=0, help="with --folds: the test fold (0..K-1); fold+1 is validation")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments; raises ConfigError for values that cannot work."""
    augment = parse_augmentations(args.augment)
    stages = tuple(s.strip() for s in args.fine_tune_stages.split(",") if s.strip())
    config = TrainConfig(
        data_dir=args.data,
        out_dir=args.out or DEFAULTS.out_dir,
        figures_dir=args.figures,
        weights=args.weights,
        image_size=args.image_size,
        epochs_head=args.epochs_head,
        epochs_fine_tune=args.epochs_fine_tune,
        batch_size=args.batch_size,
        lr_head=args.lr_head,
        lr_fine_tune=args.lr_fine_tune,
        fine_tune_stages=stages,
        dropout=args.dropout,
        seed=args.seed,
        deterministic=args.deterministic,
        max_per_class=args.max_per_class,
        loss=args.loss,
        focal_gamma=args.focal_gamma,
        label_smoothing=args.label_smoothing,
        class_weights=args.class_weights,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        monitor=args.monitor,
        early_stopping=args.early_stopping,
        augment=augment,
        cache_features=args.cache_features,
        feature_views=args.feature_views,
        distribute=args.distribute,
        mixed_precision=args.mixed_precision,
        split=args.split,
        near_duplicate_bits=args.near_duplicate_bits,
        conflict_label=args.conflict_label,
        folds=args.folds,
        fold=args.fold,
        bootstrap_resamples=args.bootstrap,
    )
    config.check()
    return config


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    if args.audit:
        return audit_main(args)
    if args.split_only:
        return split_main(args)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ log noise out
    from busi_classifier.data.dataset import DatasetError
    from busi_classifier.training.model import WeightsError

    try:
        from busi_classifier.training.loop import train

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
    from busi_classifier.data.audit import run_audit
    from busi_classifier.data.dataset import DatasetError

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
    from busi_classifier.data.dataset import DatasetError
    from busi_classifier.training.loop import prepare_split, split_counts

    try:
        config = config_from_args(args)
        _, samples, result = prepare_split(config, progress=not args.quiet)
    except (DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{config.split} split of {len(samples)} images: {split_counts(result)} -> {config.out_dir}/split.csv")
    return 0
