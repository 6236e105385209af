"""The MediaPipe image embedder as a Keras graph carrying the TFLite file's weights, so that its backbone can be
trained; and a trained graph written back to a TFLite file of the same form, for vectorize, Spark and the service.

The file is Keras's own architecture: `MobileNetV3Small(alpha=0.75, include_top=False)` has its 52 convolutions,
shape for shape and in the same order, and the file adds a 1x1 convolution to 1,024 channels with hard-swish
after the global pooling (Keras's `Conv_2` of the classification top). Two things differ in the file:
- batch normalisation is folded into each convolution's bias. It is put back as a BatchNormalization layer that
  starts as the identity plus that bias (gamma 1, mean 0, variance 1 - epsilon), so training can still move it.
- the squeeze-excite gate's +3 of hard-sigmoid (relu6(x + 3) / 6) is folded into its second convolution's bias;
  Keras adds the 3 itself, so 3 is taken off.
The file takes pixels scaled to 0..1 and scales them to -1..1 itself (x * 2 - 1), as the graph here does.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from runtime import tfenv
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)

ALPHA = 0.75
EMBEDDING_DIM = 1024
CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D")
SE_GATE_OFFSET = 3.0  # hard-sigmoid's +3, folded into the gate convolution's bias in the file


def file_convolutions(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (kernel, bias) of every convolution of a TFLite file, in graph order, as Keras lays kernels out:
    [H, W, in, out] for a convolution, [H, W, channels, 1] for a depthwise one."""
    tf = tfenv.tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    found = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the one API that lists a graph's operators
        if op["op_name"] in CONVOLUTIONS:
            kernel = interpreter.get_tensor(op["inputs"][1])  # [out, H, W, in], or [1, H, W, channels]
            found.append((np.transpose(kernel, (1, 2, 3, 0)), interpreter.get_tensor(op["inputs"][2])))
    return found


def _hard_swish(x: Any) -> Any:
    keras = tfenv.keras()
    return keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])


def build(path: Path, name: str = "mediapipe_embedder") -> Any:
    """The embedder as a Keras model over 0..1 pixels [B, 224, 224, 3] -> [B, 1024], with the file's weights.

    Raises:
        ValueError: the file is not the MobileNetV3-small 0.75 embedder (another count or shape of convolutions).
    """
    keras = tfenv.keras()
    found = file_convolutions(Path(path))
    base = keras.applications.MobileNetV3Small(input_shape=(INPUT_SIZE, INPUT_SIZE, 3), alpha=ALPHA,
                                               include_top=False, weights=None, include_preprocessing=False)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(base(keras.layers.Rescaling(2.0, offset=-1.0)(
        inputs)))
    top = keras.layers.Conv2D(EMBEDDING_DIM, 1, use_bias=True, name="Conv_2")
    model = keras.Model(inputs, keras.layers.Flatten()(_hard_swish(top(pooled))), name=name)
    layers = base.layers
    convolutions = [(i, layer) for i, layer in enumerate(layers)
                    if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)] + [(None, top)]
    if len(found) != len(convolutions) or any(tuple(kernel.shape) != tuple(layer.weights[0].shape)
                                              for (kernel, _), (_, layer) in zip(found, convolutions, strict=True)):
        raise ValueError(f"{path} is not the MediaPipe MobileNetV3-small {ALPHA} embedder: {len(found)} "
                         f"convolutions where MobileNetV3Small(alpha={ALPHA}) and its top have {len(convolutions)}, "
                         "or their shapes differ")
    for (kernel, bias), (position, layer) in zip(found, convolutions, strict=True):
        following = layers[position + 1] if position is not None and position + 1 < len(layers) else None
        if isinstance(following, keras.layers.BatchNormalization):
            layer.set_weights([kernel])
            following.set_weights([np.ones_like(bias), bias, np.zeros_like(bias),
                                   np.full_like(bias, 1.0 - following.epsilon)])
        else:
            gate = layer.name.endswith("squeeze_excite/Conv_1")
            layer.set_weights([kernel, bias - SE_GATE_OFFSET if gate else bias])
    return model


def to_tflite(model: Any, path: Path) -> Path:
    """Write a (trained) embedder graph as a TFLite file that takes and gives what the MediaPipe file does."""
    tf = tfenv.tensorflow()
    run = tf.function(lambda pixels: model(pixels, training=False),
                      input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()], model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    log.info("wrote the embedder as TFLite to %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return path
