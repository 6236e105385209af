"""Images to the model's input: the pipeline's files and the service's uploads become the same uint8 pixels.

Both go through `runtime.imaging.model_pixels` (Pillow: JPEGs decoded at the scale the model needs, EXIF
orientation applied, a bilinear resize); `decode_image` wraps it as a TensorFlow op for tf.data over files,
and `prepare_array` resizes an image already decoded in memory with the same filter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from runtime import imaging, tfenv

INPUT_SIZE = 224  # every extractor takes square images of this side, values 0..255


def file_pixels(path: str | bytes, size: int = INPUT_SIZE) -> np.ndarray:
    """Read one image file and return its model input, uint8 [size, size, 3] (`imaging.model_pixels`).

    Catalog files were checked by acquire, so only what cannot be decoded at all is refused (ImageRejected).
    """
    with open(path, "rb") as handle:
        data = handle.read()
    return imaging.model_pixels(data, size, min_side=1, max_aspect=float("inf")).pixels


def decode_image(path: Any, size: int = INPUT_SIZE) -> Any:
    """Read and decode one image file into a uint8 [size, size, 3] tensor (a TF op, for tf.data).

    The work is `file_pixels`, run through `tf.numpy_function`: Pillow releases the interpreter lock while it
    decodes and resizes, so tf.data's parallel calls still decode several files at once.
    """
    tf = tfenv.tensorflow()
    image = tf.numpy_function(lambda p: file_pixels(np.asarray(p).item(), size), [path], tf.uint8, stateful=False)
    image.set_shape([size, size, 3])
    return image


def prepare_array(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize one RGB uint8 array [H, W, 3] to [size, size, 3] with `model_pixels`'s filter."""
    rgb = np.asarray(rgb, np.uint8)
    if rgb.shape == (size, size, 3):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.uint8)
