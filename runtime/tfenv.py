"""TensorFlow's environment, set in one place before TensorFlow is first imported."""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

log = logging.getLogger(__name__)

# tensorflow-hub's KerasLayer needs legacy Keras (tf-keras); C++ info and warning logs drown the progress bars.
ENVIRONMENT = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def configure() -> None:
    """Set TensorFlow's environment variables unless the user set them; warn if TensorFlow was imported before."""
    missing = {key: value for key, value in ENVIRONMENT.items() if key not in os.environ}
    os.environ.update(missing)
    if missing and "tensorflow" in sys.modules:
        log.warning("TensorFlow was imported before its environment was set (%s); call runtime.tfenv.configure() "
                    "first", ", ".join(missing))


def tensorflow(needed_for: str = "") -> ModuleType:
    """Return the `tensorflow` module, imported after `configure()`.

    Raises:
        ImportError: TensorFlow is not installed (a lean service install), saying what needed it and how to fix it.
    """
    configure()
    try:
        import tensorflow
    except ImportError as exc:
        what = needed_for or "this"
        raise ImportError(f"{what} needs TensorFlow, which is not installed here: pip install -r "
                          "requirements-tensorflow.txt (deploy adds it to the bundle when the index's extractor "
                          f"needs it) ({exc})") from None
    return tensorflow


def keras() -> ModuleType:
    """Return legacy Keras (`tf_keras`, what TF Hub's KerasLayer works with), imported after `configure()`."""
    configure()
    import tf_keras

    return tf_keras
