"""What a model.keras file needs to be read back: the preprocessing layer inside the model
(``ResNet50Preprocess``) and the loader that knows it.

Training builds models with the layer (training/model.py), evaluation scores model.keras
files with the loader; neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="busi_classifier")
class ResNet50Preprocess(layers.Layer):
    """keras.applications.resnet50.preprocess_input as a layer ("caffe" mode: RGB->BGR,
    ImageNet mean subtracted). Inside the model, so no caller ever normalises."""

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        # RGB -> BGR by slicing and concatenating, not ops.flip: in full-integer
        # quantisation TFLite's REVERSE_V2 lost the input range (mean error -96 on 0..255
        # pixels); with slices and a concatenation the int8_full model's top-1 agreement
        # with Keras on BUSI rose from 0.35 to 0.71. Float results are identical.
        bgr = ops.concatenate([x[..., 2:3], x[..., 1:2], x[..., 0:1]], axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype="float32")


def load_keras_model(path: str | Path) -> keras.Model:
    """A model.keras file written by training (with its ``ResNet50Preprocess`` layer)."""
    return keras.models.load_model(path, custom_objects={"ResNet50Preprocess": ResNet50Preprocess})
