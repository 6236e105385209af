"""Visual product search pipeline: acquire, finetune, vectorize, index, evaluate (one module per stage)."""

import os

# tensorflow-hub needs legacy Keras; set it before any module imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
STAGES = ("acquire", "finetune", "vectorize", "index", "evaluate")
