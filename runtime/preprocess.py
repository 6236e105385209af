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


def _fit(image: Any, size: int) -> Any:
    """Resize a uint8 image tensor to size x size (bilinear, antialiased), rounding back to uint8."""
    tf = tfenv.tensorflow()
    same = tf.logical_and(tf.shape(image)[0] == size, tf.shape(image)[1] == size)
    return tf.cond(same, lambda: image, lambda: tf.cast(tf.round(tf.clip_by_value(
        tf.image.resize(image, [size, size], method="bilinear", antialias=True), 0, 255)), tf.uint8))


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


_FIT_FUNCTIONS: dict[int, Any] = {}


def prepare_array(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize one RGB uint8 array [H, W, 3] exactly as `decode_image` does, for images already in memory."""
    rgb = np.asarray(rgb, np.uint8)
    if rgb.shape == (size, size, 3):
        return rgb  # what _fit does too, without a TensorFlow call on the service's hot path
    if size not in _FIT_FUNCTIONS:
        tf = tfenv.tensorflow()
        _FIT_FUNCTIONS[size] = tf.function(lambda image: _fit(image, size),
                                           input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    return _FIT_FUNCTIONS[size](rgb).numpy()
