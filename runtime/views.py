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

from runtime import tfenv
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


def views(images: Any, fraction: float) -> Any:
    """Turn images [B, S, S, 3] (0..255) into their VIEWS views [B * VIEWS, INPUT_SIZE, INPUT_SIZE, 3], float32.

    Views of one image are consecutive: the whole image (resized to INPUT_SIZE), then the top-left, top-right,
    bottom-left, bottom-right and centre crops, each round(S * fraction) wide (resized to INPUT_SIZE if not so).
    """
    tf = tfenv.tensorflow()
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    side = int(x.shape[1])
    crop = round(side * fraction)
    far, mid = side - crop, (side - crop) // 2
    resize = (lambda v: v) if crop == INPUT_SIZE else \
        (lambda v: tf.image.resize(v, [INPUT_SIZE, INPUT_SIZE], method="bilinear", antialias=True))
    whole = x if side == INPUT_SIZE else tf.image.resize(x, [INPUT_SIZE, INPUT_SIZE], method="bilinear",
                                                         antialias=True)
    crops = [resize(x[:, top:top + crop, left:left + crop]) for top, left in
             ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
    return tf.reshape(tf.stack([whole, *crops], axis=1), [-1, INPUT_SIZE, INPUT_SIZE, 3])


def pool(features: np.ndarray) -> np.ndarray:
    """Mean of each image's VIEWS L2-normalised feature vectors: [B * VIEWS, F] -> [B, F] float32."""
    f = np.asarray(features, np.float32).reshape(-1, VIEWS, np.shape(features)[-1])
    f = f / np.maximum(np.linalg.norm(f, axis=2, keepdims=True), 1e-12)
    return f.mean(axis=1)


def multicrop(backbone: Any, fraction: float) -> Any:
    """Wrap a function from [B, 224, 224, 3] images to features as one from [B, S, S, 3] to pooled features."""
    return lambda images: pool(backbone(views(images, fraction).numpy()))
