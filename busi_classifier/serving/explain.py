"""Class activation maps: what the answer's ``explanation`` holds. NumPy and Pillow only.

The exported model's second output is, for every class c, the last ResNet50 feature map
weighted by the dense layer's column c (the class activation map, CAM): a (h, w, C)
grid, 7x7 at 224 px, over the square model input (the image letterboxed as
``decode_image`` does). Its mean over the cells is the class's logit less the bias.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

METHOD = "class activation map: last ResNet50 feature map x the dense layer's weights of the class"
OVERLAY_MAX_SIDE = 224  # pixels of the overlay PNG's longer side (the model input is square)
OVERLAY_ALPHA = 0.45  # opacity of the heat map over the image in the PNG
GRID_DECIMALS = 3

# Anchor colours of the heat map (low -> high), a perceptually ordered ramp ("inferno"-like).
_RAMP = np.array([[0, 0, 4], [66, 10, 104], [147, 38, 103], [221, 81, 58], [252, 165, 10], [252, 255, 164]],
                 dtype=np.float64)


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """One class's map scaled to 0..1: negative evidence clipped to 0, divided by the
    largest value (all zeros when nothing is positive). Non-finite cells count as 0."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    cam = np.maximum(cam, 0.0)
    peak = cam.max() if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def colourise(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 heat map of a 0..1 grid, bilinearly upsampled to ``size`` (width, height)."""
    values = np.asarray(Image.fromarray(np.asarray(grid, np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    t = (position - low)[..., None]
    return np.round(_RAMP[low] * (1 - t) + _RAMP[low + 1] * t).astype(np.uint8)


def overlay_png(model_input: np.ndarray, grid: np.ndarray, max_side: int = OVERLAY_MAX_SIDE,
                alpha: float = OVERLAY_ALPHA) -> bytes:
    """PNG of the heat map over the model input (uint8, size x size x 3), at most
    ``max_side`` pixels a side."""
    image = Image.fromarray(np.asarray(model_input, dtype=np.uint8), mode="RGB")
    side = max(1, min(max_side, max(image.size)))
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    heat = colourise(grid, image.size)
    blended = np.round(np.asarray(image, np.float64) * (1 - alpha) + heat * alpha).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended, mode="RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def explanation(maps: np.ndarray, class_index: int, classes, model_input: np.ndarray,
                max_side: int = OVERLAY_MAX_SIDE) -> dict:
    """The answer's ``explanation`` for the predicted class: its map as a grid of 0..1
    numbers (rows top to bottom, over the square model input) and a PNG overlay."""
    grid = normalise_map(np.asarray(maps)[..., class_index])
    return {
        "method": METHOD,
        "class": classes[class_index],
        "grid": np.round(grid, GRID_DECIMALS).tolist(),
        "grid_shape": list(grid.shape),
        "overlay_png": base64.b64encode(overlay_png(model_input, grid, max_side)).decode("ascii"),
        "overlay_media_type": "image/png",
        "covers": "the model input: the image resized to fit a square, centred, padded with black",
    }
