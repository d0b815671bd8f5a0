"""Training-time augmentation, each transform switchable (``--augment flip,rotate,...``).

Applied in the tf.data pipeline to uint8-range float images before the model (never
inside the exported model). Every random layer is seeded from the run's seed. The
geometric transforms (flip, rotate, zoom) move an image and its lesion mask together
(``Augmenter.pair``: the mask rides along as a fourth channel); the photometric ones
(brightness, contrast, speckle) touch the image only.
"""

from __future__ import annotations

import keras
from keras import layers

from busi_classifier.config import AUGMENTATIONS, parse_augmentations  # noqa: F401  (re-exported)


@keras.saving.register_keras_serializable(package="busi_classifier")
class SpeckleNoise(layers.Layer):
    """Multiplicative noise, as ultrasound speckle is: x * (1 + stddev * N(0, 1)), clipped
    to 0..255. Only in training."""

    def __init__(self, stddev: float = 0.08, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = stddev
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        noise = keras.random.normal(keras.ops.shape(inputs), stddev=self.stddev, seed=self.seed_generator)
        return keras.ops.clip(inputs * (1.0 + noise), 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class Augmenter:
    """The chosen transforms: geometric ones first, then photometric ones, each a
    seeded Keras layer applied in training mode."""

    def __init__(self, geometric: list, photometric: list):
        self.geometric, self.photometric = geometric, photometric

    def __call__(self, images, training: bool = True):
        """Augmented images (batch, h, w, 3), float 0..255."""
        for layer in (*self.geometric, *self.photometric):
            images = layer(images, training=training)
        return images

    def pair(self, images, masks):
        """(images, masks) augmented together: the same flip, rotation and zoom for the
        image (batch, h, w, 3) and its mask (batch, h, w, 1, values 0..1, interpolated
        like the image); brightness, contrast and speckle for the image only."""
        import tensorflow as tf

        stacked = tf.concat([images, masks * 255.0], axis=-1)
        for layer in self.geometric:
            stacked = layer(stacked, training=True)
        images, masks = stacked[..., :3], tf.clip_by_value(stacked[..., 3:] / 255.0, 0.0, 1.0)
        for layer in self.photometric:
            images = layer(images, training=True)
        return images, masks


def build_augmenter(names: tuple[str, ...], seed: int) -> Augmenter | None:
    """The chosen transforms (None when there are none). Geometry is mild: ultrasound has
    a meaningful up (skin) and down (depth), so no vertical flip."""
    if not names:
        return None
    F32 = "float32"  # noqa: N806  (augmentation stays float32 under a mixed-precision policy)
    geometric, photometric = [], []
    if "flip" in names:
        geometric.append(layers.RandomFlip("horizontal", seed=seed, dtype=F32))
    if "rotate" in names:
        geometric.append(layers.RandomRotation(0.03, fill_mode="constant", fill_value=0.0, seed=seed + 1, dtype=F32))
    if "zoom" in names:
        geometric.append(layers.RandomZoom((-0.15, 0.0), fill_mode="constant", fill_value=0.0, seed=seed + 2,
                                           dtype=F32))
    if "brightness" in names:
        photometric.append(layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3, dtype=F32))
    if "contrast" in names:
        photometric.append(layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4, dtype=F32))
    if "speckle" in names:
        photometric.append(SpeckleNoise(0.08, seed=seed + 5, dtype=F32))
    return Augmenter(geometric, photometric)
