"""Keras ResNet50 transfer-learning model: raw RGB 0..255 in, class probabilities out.

The preprocessing layer inside it and the model.keras loader live in
busi_classifier.model_file (evaluation reads model.keras too); re-exported here."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from busi_classifier.config import ConfigError, TrainConfig
from busi_classifier.model_file import IMAGENET_BGR_MEAN, ResNet50Preprocess, load_keras_model  # noqa: F401
from busi_classifier.serving.constants import CLASSES
from busi_classifier.training.preflight import WEIGHTS_FILE_HINT, WeightsError, imagenet_unavailable

__all__ = ["ResNet50Preprocess", "WeightsError", "build_base", "build_model", "freeze_base", "load_keras_model",
           "unfreeze_top", "inference_copy", "explain_model", "CAM_OUTPUT"]

RANDOM_INIT_BN_MOMENTUM = 0.9


def is_pretrained(weights: str) -> bool:
    return weights.lower() != "none"


def build_base(weights: str, image_size: int) -> keras.Model:
    """ResNet50 without its top, from ImageNet, from a weights file, or random ("none")."""
    shape = (image_size, image_size, 3)
    if weights.lower() == "none":
        base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
        # From random init the BatchNorm moving statistics start at (0, 1) and, with
        # Keras' default momentum 0.99, are still far from the real ones after the few
        # hundred steps of a small-data run: the model then predicts well in training
        # mode and at chance in inference mode (and in the exported TFLite model).
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = RANDOM_INIT_BN_MOMENTUM
        return base
    if weights.lower() == "imagenet":
        try:
            return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:
            detail = " ".join(str(exc).split())[:200]
            raise WeightsError(imagenet_unavailable(f"{type(exc).__name__}: {detail}")) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (--weights takes 'imagenet', 'none' or a path to {WEIGHTS_FILE_HINT})"
        )
    try:
        return keras.applications.ResNet50(include_top=False, weights=str(path), input_shape=shape)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(f"could not load weights from {path}: {type(exc).__name__}: {detail} "
                           f"(expected ResNet50 no-top weights such as {WEIGHTS_FILE_HINT})") from None


def build_model(config: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """(model, base). With pretrained weights the base runs in inference mode (its
    BatchNorm statistics are kept even when layers are unfrozen for fine-tuning)."""
    base = build_base(config.weights, config.image_size)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = ResNet50Preprocess(name="resnet50_preprocess")(inputs)
    x = base(x, training=False) if is_pretrained(config.weights) else base(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="busi_resnet50"), base


def freeze_base(base: keras.Model) -> None:
    base.trainable = False


def unfreeze_top(base: keras.Model, first_layer: str) -> int:
    """Unfreeze the base from ``first_layer`` on; BatchNorm layers stay frozen.
    Returns the number of unfrozen layers."""
    names = [layer.name for layer in base.layers]
    if first_layer not in names:
        raise ConfigError(f"--fine-tune-stages: {first_layer!r} is not a ResNet50 layer (e.g. conv5_block1_1_conv)")
    start = names.index(first_layer)
    base.trainable = True
    unfrozen = 0
    for i, layer in enumerate(base.layers):
        trainable = i >= start and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += trainable
    return unfrozen


def inference_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights as ``model`` in a new, uncompiled functional model:
    saved, it holds no optimizer state (``clone_model`` of a compiled model compiles the
    clone, and Keras 3 saves a compiled model's optimizer variables into the .keras file).

    Args:
        model: a functional model, compiled or not.

    Returns:
        an uncompiled model sharing ``model``'s layers.
    """
    return keras.Model(model.inputs, model.outputs, name=model.name)


CAM_OUTPUT = "class_maps"


def explain_model(model: keras.Model) -> keras.Model:
    """The served graph: ``model``'s layers and weights with a second output, the class
    activation maps (batch, h, w, classes): the feature map that enters the global
    average pooling (the last ResNet50 block) weighted by the dense layer's kernel, as a
    1x1 convolution without bias (dropout is the identity at inference). The first
    output is ``model``'s probabilities, unchanged.

    Args:
        model: a functional model with an ``avg_pool`` (GlobalAveragePooling2D) layer
            feeding a ``probabilities`` dense layer, as ``build_model`` makes.

    Returns:
        an uncompiled two-output model (probabilities, class_maps) sharing ``model``'s layers.
    """
    features = model.get_layer("avg_pool").input
    kernel = keras.ops.convert_to_numpy(model.get_layer("probabilities").kernel)  # (channels, classes)
    cam = layers.Conv2D(kernel.shape[1], 1, use_bias=False, name=CAM_OUTPUT, dtype="float32")
    maps = cam(features)
    cam.set_weights([kernel.reshape(1, 1, *kernel.shape)])
    return keras.Model(model.inputs, {"probabilities": model.outputs[0], CAM_OUTPUT: maps},
                       name=f"{model.name}_explain")
