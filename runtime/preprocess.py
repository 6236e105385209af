"""Images to the model's input: the pipeline's files and the service's uploads become the same uint8 pixels.

`decode_image` (TensorFlow ops, for tf.data over files) and `prepare_array` (an image already decoded in
memory) share one resize, so a photo uploaded to the service gets the same embedding as the same file
in the catalog.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime import tfenv

INPUT_SIZE = 224  # every extractor takes square images of this side, values 0..255


def _resize(image: Any, size: int, shrinks: bool) -> Any:
    """Resize a uint8 image tensor to size x size (bilinear), rounding back to uint8; antialiased if it `shrinks`.

    An image smaller than `size` both ways is enlarged with the plain bilinear kernel: antialiasing widens the
    kernel only when shrinking, so both compute the same interpolation (to float rounding: 0.05% of values differ
    by 1 after rounding, on grocery photos enlarged to 448), and the plain one costs half as much, which a
    multi-crop query (prepared at 448) pays on every photo under 448 pixels.
    """
    tf = tfenv.tensorflow()
    return tf.cast(tf.round(tf.clip_by_value(tf.image.resize(image, [size, size], method="bilinear",
                                                             antialias=shrinks), 0, 255)), tf.uint8)


def _fit(image: Any, size: int) -> Any:
    """Resize a uint8 image tensor to size x size as `_resize` does (in a graph: the shape is known only there)."""
    tf = tfenv.tensorflow()
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cond(tf.logical_and(height == size, width == size), lambda: image, lambda: tf.cond(
        tf.logical_or(height > size, width > size), lambda: _resize(image, size, True),
        lambda: _resize(image, size, False)))


def decode_image(path: Any, size: int = INPUT_SIZE) -> Any:
    """Read and decode one image file into a uint8 [size, size, 3] tensor (TF ops, for tf.data).

    A JPEG much larger than `size` is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (DCT scaling, far
    cheaper than decoding every pixel and averaging them away); an image already `size` square is not resized.
    Batches stay uint8 (a quarter of float32's bytes to move); the models convert them. The accurate integer
    DCT makes the pixels identical to Pillow's, so a photo uploaded to the service (decoded by Pillow) gets
    the same embedding as the same file in the catalog.
    """
    tf = tfenv.tensorflow()
    data = tf.io.read_file(path)

    def jpeg() -> Any:
        shape = tf.image.extract_jpeg_shape(data)
        shorter = tf.minimum(shape[0], shape[1])
        branch = tf.reduce_sum(tf.cast(shorter >= size * tf.constant([2, 4, 8]), tf.int32))  # 0..3
        return tf.switch_case(branch, [lambda r=r: tf.io.decode_jpeg(
            data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE") for r in (1, 2, 4, 8)])

    is_jpeg = tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff"
    image = tf.cond(is_jpeg, jpeg, lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return _fit(image, size)


_RESIZE_FUNCTIONS: dict[tuple[int, bool], Any] = {}


def prepare_array(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize one RGB uint8 array [H, W, 3] exactly as `decode_image` does, for images already in memory."""
    rgb = np.asarray(rgb, np.uint8)
    if rgb.shape == (size, size, 3):
        return rgb  # what _fit does too, without a TensorFlow call on the service's hot path
    key = (size, bool(rgb.shape[0] > size or rgb.shape[1] > size))  # _fit's choice, made here where the shape
    if key not in _RESIZE_FUNCTIONS:  # is known: one graph each, without _fit's conditions to run per call
        tf = tfenv.tensorflow()
        _RESIZE_FUNCTIONS[key] = tf.function(lambda image: _resize(image, *key),
                                             input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    return _RESIZE_FUNCTIONS[key](rgb).numpy()
