"""Checks that run in the first second of a training run, before any image is hashed,
split.csv is written or TensorFlow is imported: the settings, the dataset layout, the
pretrained weights. No Keras, no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.error
import urllib.request
from pathlib import Path

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.data.dataset import DatasetError, find_dataset_root
from busi_classifier.serving.constants import CLASSES

WEIGHTS_FILE_HINT = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{WEIGHTS_FILE_HINT}"
DOWNLOAD_CHECK_TIMEOUT_S = 5.0
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained or loaded."""


def keras_cache_candidates() -> list[Path]:
    """Where Keras keeps the downloaded ImageNet weights ($KERAS_HOME, ~/.keras, /tmp/.keras)."""
    homes = [os.environ.get("KERAS_HOME"), os.path.expanduser("~/.keras"), "/tmp/.keras"]
    return [Path(home) / "models" / WEIGHTS_FILE_HINT for home in homes if home]


def imagenet_unavailable(reason: str) -> str:
    """The one-line message for ImageNet weights that cannot be had (``reason``: why)."""
    return (f"cannot download the ImageNet weights for ResNet50 ({reason}); without internet train from random "
            f"initialisation with --weights none, or give a local file with --weights PATH/TO/{WEIGHTS_FILE_HINT} "
            f"(Keras also reads it from {keras_cache_candidates()[0].parent}/ if it was downloaded before)")


def check_weights(weights: str, timeout: float = DOWNLOAD_CHECK_TIMEOUT_S) -> None:
    """Raise WeightsError unless ``weights`` can be had: 'none'; 'imagenet' when Keras'
    cache holds the file or the download address answers within ``timeout`` seconds; a
    path when it is a readable HDF5 file.

    Args:
        weights: the --weights value.
        timeout: seconds to wait for the download server.
    """
    if weights.lower() == "none":
        return
    if weights.lower() == "imagenet":
        if any(path.is_file() for path in keras_cache_candidates()):
            return
        try:
            request = urllib.request.Request(IMAGENET_WEIGHTS_URL, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = " ".join(str(getattr(exc, "reason", exc)).split())
            raise WeightsError(imagenet_unavailable(reason)) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (--weights takes 'imagenet', 'none' or a path to "
                           f"{WEIGHTS_FILE_HINT})")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_SIGNATURE))
    except OSError as exc:
        raise WeightsError(f"cannot read the weights file {path}: {exc.strerror or exc}") from None
    if head != HDF5_SIGNATURE:
        raise WeightsError(f"{path} is not an HDF5 weights file (expected ResNet50 no-top weights such as "
                           f"{WEIGHTS_FILE_HINT})")


def check_dataset(data_dir: str) -> Path:
    """The dataset root, after checking it holds the three class folders.

    Returns:
        the folder holding normal/, benign/, malignant/.
    """
    root = find_dataset_root(data_dir)
    missing = [name for name in CLASSES if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"missing class folder(s) {', '.join(missing)} in {root} (expected "
                           f"{', '.join(CLASSES)}; see data/README.md)")
    return root


def has_mask_files(root: Path) -> bool:
    """Whether the dataset ships lesion masks (BUSI's ``<stem>_mask.png`` beside the images)."""
    return any(path.is_file() for name in CLASSES for path in (root / name).glob("*_mask*"))


def resolve_task(config: TrainConfig, root: Path) -> TrainConfig:
    """``config`` with its task decided: multitask where the dataset has mask files, else
    classify (said on the console); an explicit multitask on a folder without masks, or
    a task the other settings cannot run, is a ConfigError."""
    masks = has_mask_files(root)
    task = config.task
    if task is None:
        task = "multitask" if masks else "classify"
        if not masks:
            print(f"task: classify (no mask files in {root}: the lesion decoder needs <image>_mask.png files)",
                  flush=True)
    elif task == "multitask" and not masks:
        raise ConfigError(f"--task multitask needs lesion mask files (<image>_mask.png beside each image, as BUSI "
                          f"ships them), and {root} has none (use --task classify)")
    config.check_task(task)
    resolved = dataclasses.replace(config, task=task)
    return dataclasses.replace(resolved, cache_features=resolved.uses_cached_features())


def preflight(config: TrainConfig) -> tuple[Path, TrainConfig]:
    """Everything cheap, in the order a user fixes things: settings, dataset, task,
    weights.

    Returns:
        (the dataset root, ``config`` with its task decided).
    """
    config.check()
    root = check_dataset(config.data_dir)
    config = resolve_task(config, root)
    check_weights(config.weights)
    return root, config
