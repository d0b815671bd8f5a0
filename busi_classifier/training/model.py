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
           "unfreeze_top", "inference_copy", "explain_model", "CAM_OUTPUT", "FEATURES_OUTPUT", "LESION_OUTPUT",
           "PYRAMID_LAYERS", "multiply_adds"]

RANDOM_INIT_BN_MOMENTUM = 0.9
LESION_OUTPUT = "lesion"
# The feature pyramid the lesion decoder reads: the last block of each ResNet50 stage,
# strides 4, 8, 16, 32 of the input (256, 512, 1024, 2048 channels).
PYRAMID_LAYERS = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
DECODER_CHANNELS = 64
LESION_STRIDE = 4


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
    BatchNorm statistics are kept even when layers are unfrozen for fine-tuning).

    ``config.task`` "multitask": the model's outputs are a dict, the probabilities and
    the lesion map (``lesion_decoder``); otherwise the probabilities alone."""
    base = build_base(config.weights, config.image_size)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = ResNet50Preprocess(name="resnet50_preprocess")(inputs)
    multitask = config.task == "multitask"
    if multitask:  # the same base, returning its pyramid as well
        base = keras.Model(base.inputs, [base.get_layer(n).output for n in PYRAMID_LAYERS], name="resnet50")
    features = base(x, training=False) if is_pretrained(config.weights) else base(x)
    top = features[-1] if multitask else features
    x = layers.GlobalAveragePooling2D(name="avg_pool")(top)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="probabilities", dtype="float32")(x)
    if not multitask:
        return keras.Model(inputs, outputs, name="busi_resnet50"), base
    lesion = lesion_decoder(features)
    return keras.Model(inputs, {"probabilities": outputs, LESION_OUTPUT: lesion}, name="busi_resnet50_multitask"), base


def lesion_decoder(pyramid) -> keras.KerasTensor:
    """A light FPN-style decoder: each pyramid level projected to DECODER_CHANNELS by a
    1x1 convolution, merged top-down (bilinear x2 upsampling and addition) down to
    stride 4, one 3x3 convolution, then a 1x1 convolution to the lesion probability
    (sigmoid) at a quarter of the input side (56 x 56 at 224 px)."""
    merged = None
    for level, feature in reversed(list(enumerate(pyramid, start=2))):
        lateral = layers.Conv2D(DECODER_CHANNELS, 1, name=f"lesion_lateral{level}")(feature)
        if merged is not None:
            lateral = layers.Add(name=f"lesion_merge{level}")(
                [lateral, layers.UpSampling2D(2, interpolation="bilinear", name=f"lesion_up{level}")(merged)])
        merged = lateral
    x = layers.Conv2D(DECODER_CHANNELS, 3, padding="same", activation="relu", name="lesion_conv")(merged)
    return layers.Conv2D(1, 1, activation="sigmoid", name=LESION_OUTPUT, dtype="float32")(x)


def multiply_adds(model: keras.Model, prefix: str | None = None) -> int:
    """Multiply-adds of one image through the model's convolutions and dense layers
    (nested models included), optionally only of the layers whose name starts with
    ``prefix``: k_h * k_w * c_in / groups * c_out per output position."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer, prefix)
            continue
        if prefix is not None and not layer.name.startswith(prefix):
            continue
        if isinstance(layer, layers.Conv2D):
            out = layer.output.shape
            c_in = layer.input.shape[-1]
            k_h, k_w = layer.kernel_size
            total += int(out[1] * out[2] * out[3] * k_h * k_w * c_in // layer.groups)
        elif isinstance(layer, layers.Dense):
            total += int(layer.input.shape[-1] * layer.units)
    return total


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
    return keras.Model(model.inputs, model.output, name=model.name)


CAM_OUTPUT = "class_maps"
# The pooled ResNet50 features (the classifier's input): what the input check scores
# (busi_classifier.serving.input_check), from the same invoke as the probabilities.
FEATURES_OUTPUT = "features"
FEATURES_LAYER = "avg_pool"


def explain_model(model: keras.Model, features: bool = True) -> keras.Model:
    """The served graph: ``model``'s layers and weights with more outputs: the class
    activation maps (batch, h, w, classes): the feature map that enters the global
    average pooling (the last ResNet50 block) weighted by the dense layer's kernel, as a
    1x1 convolution without bias (dropout is the identity at inference); the pooled
    features (batch, channels), the ``avg_pool`` output the input check scores; and a
    multitask model's lesion map. The probabilities are ``model``'s, unchanged.

    Args:
        model: a functional model with an ``avg_pool`` (GlobalAveragePooling2D) layer
            feeding a ``probabilities`` dense layer, as ``build_model`` makes.
        features: add the pooled features output (``FEATURES_OUTPUT``); False for an
            export without an input check (its card says so).

    Returns:
        an uncompiled model with the outputs {"probabilities", "class_maps"} (and
        "features" unless ``features`` is False, "lesion" where ``model`` has it) sharing
        ``model``'s layers.
    """
    pooled = model.get_layer(FEATURES_LAYER)
    kernel = keras.ops.convert_to_numpy(model.get_layer("probabilities").kernel)  # (channels, classes)
    cam = layers.Conv2D(kernel.shape[1], 1, use_bias=False, name=CAM_OUTPUT, dtype="float32")
    maps = cam(pooled.input)
    cam.set_weights([kernel.reshape(1, 1, *kernel.shape)])
    outputs = {"probabilities": model.get_layer("probabilities").output, CAM_OUTPUT: maps}
    if features:
        outputs[FEATURES_OUTPUT] = pooled.output
    if has_lesion(model):
        outputs[LESION_OUTPUT] = model.get_layer(LESION_OUTPUT).output
    return keras.Model(model.inputs, outputs, name=f"{model.name}_explain")


def has_lesion(model: keras.Model) -> bool:
    """Whether ``model`` has the lesion decoder (``--task multitask``)."""
    return any(layer.name == LESION_OUTPUT for layer in model.layers)
