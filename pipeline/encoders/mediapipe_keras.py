"""The MediaPipe image embedder as a Keras graph carrying the TFLite file's weights, so that its backbone can be
trained; and a trained graph written back to a TFLite file of the same form, for vectorize, Spark and the service.

The file is Keras's own architecture: `MobileNetV3Small(alpha=0.75, include_top=False)` has its 52 convolutions,
shape for shape and in the same order, and the file adds a 1x1 convolution to 1,024 channels with hard-swish
after the global pooling (Keras's `Conv_2` of the classification top). Two things differ in the file:
- batch normalisation is folded into each convolution's bias. It is put back as a BatchNormalization layer that
  computes the identity plus that bias (gamma 1, mean 0, variance 1 - epsilon). Before training, `calibrate`
  gives each one the mean and variance its convolution's outputs have on the catalog, with gamma and beta that
  keep the same function: a layer that trains on batch statistics then starts where the file is, instead of
  normalising activations that the folded weights never expected to be normalised.
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

from pipeline.common.errors import StageError
from runtime import tfenv, views
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)

ALPHA = 0.75
EMBEDDING_DIM = 1024
CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D")
SE_GATE_OFFSET = 3.0  # hard-sigmoid's +3, folded into the gate convolution's bias in the file
# Keras's MobileNetV3 moves its batch statistics slowly (momentum 0.999); fine-tuning then evaluates on statistics
# far behind the weights, and held-out retrieval collapses (docs/quality.md, "Training the MediaPipe backbone").
BATCH_NORM_MOMENTUM = 0.99


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
        StageError: the file is not the MobileNetV3-small 0.75 embedder (another count or shape of convolutions).
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
        raise StageError(f"{path} is not the MediaPipe MobileNetV3-small {ALPHA} embedder: {len(found)} "
                         f"convolutions where MobileNetV3Small(alpha={ALPHA}) and its top have {len(convolutions)}, "
                         "or their shapes differ")
    for (kernel, bias), (position, layer) in zip(found, convolutions, strict=True):
        following = layers[position + 1] if position is not None and position + 1 < len(layers) else None
        if isinstance(following, keras.layers.BatchNormalization):
            following.momentum = BATCH_NORM_MOMENTUM
            layer.set_weights([kernel])
            following.set_weights([np.ones_like(bias), bias, np.zeros_like(bias),
                                   np.full_like(bias, 1.0 - following.epsilon)])
        else:
            gate = layer.name.endswith("squeeze_excite/Conv_1")
            layer.set_weights([kernel, bias - SE_GATE_OFFSET if gate else bias])
    return model


def _folded_layers(model: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """(convolution, the BatchNormalization after it) pairs of the backbone inside an embedder graph from `build`,
    and that backbone."""
    keras = tfenv.keras()
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    layers = base.layers
    return [(layer, layers[i + 1]) for i, layer in enumerate(layers[:-1])
            if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
            and isinstance(layers[i + 1], keras.layers.BatchNormalization)], base


def calibrate(model: Any, pixels: np.ndarray, batch_size: int = 32) -> None:
    """Give every batch normalisation of an embedder graph from `build` the mean and variance of its convolution's
    outputs over `pixels` (0..1, [N, 224, 224, 3]), keeping what the graph computes at inference.

    A layer computes gamma (x - mean) / sqrt(var + eps) + beta, i.e. scale x + offset; with the new mean and var,
    gamma = scale sqrt(var + eps) and beta = offset + scale mean compute the same. Training mode then normalises
    by statistics close to these from its first batch.
    """
    tf = tfenv.tensorflow()
    keras = tfenv.keras()
    pairs, base = _folded_layers(model)
    probe = keras.Model(base.inputs, [conv.output for conv, _ in pairs])

    @tf.function
    def moments(batch: Any) -> list[Any]:
        outputs = probe(batch * 2.0 - 1.0, training=False)
        return [tf.stack([tf.reduce_sum(o, [0, 1, 2]), tf.reduce_sum(tf.square(o), [0, 1, 2]),
                          tf.cast(tf.reduce_prod(tf.shape(o)[:3]), tf.float32) * tf.ones_like(o[0, 0, 0])])
                for o in outputs]

    totals = None
    for start in range(0, len(pixels), batch_size):
        sums = [m.numpy().astype(np.float64) for m in moments(tf.constant(pixels[start:start + batch_size],
                                                                          tf.float32))]
        totals = sums if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
    for (_, norm), (total, squares, count) in zip(pairs, totals, strict=True):
        gamma, beta, old_mean, old_var = (w.astype(np.float64) for w in norm.get_weights())
        scale = gamma / np.sqrt(old_var + norm.epsilon)  # the layer is scale * x + offset; keep that
        offset = beta - scale * old_mean
        mean = total / count
        var = np.maximum(squares / count - mean**2, 0.0)
        norm.set_weights([w.astype(np.float32) for w in (scale * np.sqrt(var + norm.epsilon), offset + scale * mean,
                                                          mean, var)])


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


# Six views in one call. `runtime.views` cuts an image's views in TensorFlow, and the interpreter then runs them;
# on a query that cutting and the copies between costs as much as the six backbone passes (docs/quality.md). At
# 0.5 (the prepared image twice the model's side) the file below does it all: it takes the prepared image, cuts
# the four corners and the centre, shrinks the whole image to the model's side with the same antialiased bilinear
# filter as `tf.image.resize` (at exactly half size: taps 1, 3, 3, 1 over 8, renormalised at the border), runs
# the six views as one batch, and pools their unit vectors as `runtime.views.pool` does. Its vectors equal the
# views cut one by one (tested), so the feature cache and fingerprint stay theirs.
HALF_SIZE_TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0


def one_call_possible(fraction: float) -> bool:
    """Whether `views_tflite` can pool the views of `fraction`: the prepared image twice the model's side and
    the crops the model's side, as at 0.5."""
    side = views.input_size(fraction)
    return bool(fraction) and side == 2 * INPUT_SIZE and round(side * fraction) == INPUT_SIZE


def views_tflite(path: Path, fraction: float, out: Path) -> Path:
    """Write a TFLite file that takes prepared images [B, 448, 448, 3] (uint8) and gives each one's features pooled
    over its six multi-crop views [B, 1024] (see above), for an embedder file of `build`'s form (the MediaPipe
    file, or one that `to_tflite` wrote).

    Raises:
        ValueError: `fraction` is not one `one_call_possible` accepts, or the file is not the embedder.
    """
    return graph_views_tflite(build(Path(path)), fraction, out)


def graph_views_tflite(graph: Any, fraction: float, out: Path) -> Path:
    """`views_tflite` for any Keras graph over 0..1 pixels [B, 224, 224, 3] (EfficientNet-Lite2 too).

    Raises:
        ValueError: `fraction` is not one `one_call_possible` accepts.
    """
    if not one_call_possible(fraction):
        raise ValueError(f"multi-crop fraction {fraction}: only views of half the prepared side are pooled inside "
                         "the backbone file; the others are cut by runtime.views")
    tf = tfenv.tensorflow()
    side, crop = 2 * INPUT_SIZE, INPUT_SIZE
    far, mid = side - crop, (side - crop) // 2
    taps = np.outer(HALF_SIZE_TAPS, HALF_SIZE_TAPS)
    kernel = tf.constant(np.repeat(taps[:, :, None, None], 3, axis=2), tf.float32)  # [4, 4, 3, 1], depthwise
    shrink = tf.function(lambda x: tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel,
                                                          [1, 2, 2, 1], "VALID"))
    border = tf.constant(1.0 / shrink(tf.ones([1, side, side, 3])).numpy())  # taps that fell off the image

    @tf.function(input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8)])
    def pooled(images: Any) -> Any:
        pixels = tf.cast(images, tf.float32) * (1.0 / 255.0)
        cuts = [shrink(pixels) * border] + [pixels[:, top:top + crop, left:left + crop] for top, left in
                                            ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
        batch = tf.reshape(tf.stack(cuts, axis=1), [-1, crop, crop, 3])  # an image's views consecutive
        features = graph(batch, training=False)
        unit = tf.math.l2_normalize(tf.reshape(features, [-1, views.VIEWS, features.shape[-1]]), axis=-1)
        return tf.reduce_mean(unit, axis=1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([pooled.get_concrete_function()], graph)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(converter.convert())
    log.info("wrote the embedder with its multi-crop views inside to %s", out)
    return out


def embedding_tflite(path: Path, head: Any, out: Path) -> Path:
    """Write a TFLite file from images (0..1, [B, 224, 224, 3]) to a trained head's embedding of an embedder file's
    features (`build`'s form): a composite encoder's trained MediaPipe part, one interpreter call per image."""
    keras = tfenv.keras()
    graph = build(Path(path))
    pixels = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="pixels")
    return to_tflite(keras.Model(pixels, head(graph(pixels), training=False), name="part_embedding"), out)
