"""The layer names of Keras' ResNet50 (include_top=False), without importing Keras.

``TrainConfig.check`` (config.py) checks ``--fine-tune-stages`` against them in the first
second, not after phase 1 has trained; tests/test_cli.py proves the list equals the real
model's. Data only: config imports it, so it imports nothing.
"""

from __future__ import annotations

# blocks per stage of ResNet50 (conv2_x .. conv5_x)
_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


def _names() -> tuple[str, ...]:
    names = ["conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"]
    for stage, blocks in _BLOCKS.items():
        for block in range(1, blocks + 1):
            prefix = f"conv{stage}_block{block}"
            if block == 1:  # the projection shortcut
                names += [f"{prefix}_1_conv", f"{prefix}_1_bn", f"{prefix}_1_relu", f"{prefix}_2_conv",
                          f"{prefix}_2_bn", f"{prefix}_2_relu", f"{prefix}_0_conv", f"{prefix}_3_conv",
                          f"{prefix}_0_bn", f"{prefix}_3_bn"]
            else:
                names += [f"{prefix}_{i}_{kind}" for i in (1, 2) for kind in ("conv", "bn", "relu")]
                names += [f"{prefix}_3_conv", f"{prefix}_3_bn"]
            names += [f"{prefix}_add", f"{prefix}_out"]
    return tuple(names)


RESNET50_LAYER_NAMES: tuple[str, ...] = _names()
