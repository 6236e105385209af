"""Multi-crop views: an image's features as the mean of its whole and five crops', each seen at the model's size.

A backbone sees 224x224 pixels. Shrinking a whole shelf photo to that loses the details that tell one apple or
one yoghurt from another; five crops (the four corners and the centre, each `fraction` of the side) give the
backbone those details at full resolution, and the mean of the six L2-normalised feature vectors keeps the
whole picture. The image is prepared at `input_size(fraction)` (448 at 0.5), so a crop needs no upscaling:
pipeline and service both prepare images at the extractor's `input_size`, and both then call `views` and
`pool`, so a photo gets the same vector wherever it is embedded. Measured gain and cost: docs/quality.md, "Six
views in one call" and "Quality levers".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from runtime.preprocess import INPUT_SIZE

VIEWS = 6  # the whole image, its four corners and its centre


def check_fraction(fraction: float) -> float:
    """Return `fraction` if it is 0 (no crops) or within (0, 1); else raise ValueError saying so."""
    if fraction != 0 and not 0 < fraction < 1:
        raise ValueError(f"multi-crop fraction {fraction} must be 0 (off) or between 0 and 1 (the crops' share of "
                         "the side, e.g. 0.5)")
    return float(fraction)


def input_size(fraction: float) -> int:
    """Side of the images to prepare for a multi-crop `fraction`: crops of that share are then INPUT_SIZE wide."""
    return INPUT_SIZE if not fraction else round(INPUT_SIZE / check_fraction(fraction))


def views(images: Any, fraction: float) -> np.ndarray:
    """Turn images [B, S, S, 3] (0..255) into their VIEWS views [B * VIEWS, INPUT_SIZE, INPUT_SIZE, 3], float32.

    Views of one image are consecutive: the whole image (resized to INPUT_SIZE), then the top-left, top-right,
    bottom-left, bottom-right and centre crops, each round(S * fraction) wide (resized to INPUT_SIZE if not so).
    Resizing is Pillow's bilinear filter on float pixels, antialiased when it shrinks (what
    `tf.image.resize(..., antialias=True)` computes, to 0.004 of a level): numpy and Pillow only, so a service
    without TensorFlow cuts the views the pipeline cut.
    """
    x = np.asarray(images, np.float32)
    side = int(x.shape[1])
    crop = round(side * fraction)
    far, mid = side - crop, (side - crop) // 2
    out = np.empty((len(x), VIEWS, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    for n, image in enumerate(x):
        out[n, 0] = _resized(image)
        for v, (top, left) in enumerate(((0, 0), (0, far), (far, 0), (far, far), (mid, mid)), start=1):
            out[n, v] = _resized(image[top:top + crop, left:left + crop])
    return out.reshape(-1, INPUT_SIZE, INPUT_SIZE, 3)


def _resized(image: np.ndarray) -> np.ndarray:
    """One float image [H, W, 3] at INPUT_SIZE x INPUT_SIZE (itself when it already is)."""
    if image.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
        return image
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F").resize(
        (INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)) for c in range(3)], axis=-1)


def pool(features: np.ndarray) -> np.ndarray:
    """Mean of each image's VIEWS L2-normalised feature vectors: [B * VIEWS, F] -> [B, F] float32."""
    f = np.asarray(features, np.float32).reshape(-1, VIEWS, np.shape(features)[-1])
    f = f / np.maximum(np.linalg.norm(f, axis=2, keepdims=True), 1e-12)
    return f.mean(axis=1)


def multicrop(backbone: Any, fraction: float) -> Any:
    """Wrap a function from [B, 224, 224, 3] images to features as one from [B, S, S, 3] to pooled features."""
    return lambda images: pool(backbone(views(images, fraction)))
