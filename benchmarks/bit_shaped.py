"""Write a SavedModel with BiT-M R50x3's architecture and random weights, to measure serving memory offline.

BiT's weights come from TF Hub, which this machine cannot reach; memory depends on the architecture (parameter
count, activation sizes), not on the weights' values. The model is a pre-activation ResNet-50 widened 3x
(GroupNorm, 6,144-d pooled output, about 211M parameters), as in Kolesnikov et al., "Big Transfer".

    python -m benchmarks.bit_shaped --out /tmp/bit-m-r50x3-shaped --width 3
    python -m pipeline run --source fashion:CATALOG --data-dir DIR --encoder hub:/tmp/bit-m-r50x3-shaped ...
    python -m benchmarks.worker_memory --index DIR/index/current --workers 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime import tfenv

UNITS = (3, 4, 6, 3)  # ResNet-50


def build(width: int = 3):
    """Return the randomly initialised backbone: images [B, 224, 224, 3] in 0..1 -> pooled features."""
    keras = tfenv.keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)

    def norm_relu(x):
        return layers.ReLU()(layers.GroupNormalization(32)(x))

    inputs = keras.Input((224, 224, 3))
    x = layers.Conv2D(64 * width, 7, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, units in enumerate(UNITS):
        out = 256 * width * 2**stage
        for unit in range(units):
            stride = 2 if unit == 0 and stage > 0 else 1
            pre = norm_relu(x)
            shortcut = layers.Conv2D(out, 1, strides=stride, use_bias=False)(pre) if unit == 0 else x
            y = layers.Conv2D(out // 4, 1, use_bias=False)(pre)
            y = layers.Conv2D(out // 4, 3, strides=stride, padding="same", use_bias=False)(norm_relu(y))
            y = layers.Conv2D(out, 1, use_bias=False)(norm_relu(y))
            x = layers.Add()([shortcut, y])
    outputs = layers.GlobalAveragePooling2D()(norm_relu(x))
    return keras.Model(inputs, outputs, name=f"bit_shaped_r50x{width}")


def main(argv: list[str] | None = None) -> None:
    """Build and save the model; print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="SavedModel folder to write")
    parser.add_argument("--width", type=int, default=3, help="width multiplier: 3 for R50x3, 1 for R50x1")
    args = parser.parse_args(argv)
    model = build(args.width)
    model.save(str(args.out), save_format="tf")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{model.name}: {model.count_params():,} parameters, output {model.output_shape[-1]}-d, "
          f"{size / 2**20:,.0f} MiB on disk at {args.out}")


if __name__ == "__main__":
    main()
