"""The feature extractor (backbone + trained feature layer + L2 normalisation): one loader for every format.

On disk (`model/extractor/`, copied into every index; `pipeline.training.export` writes it):
- `extractor.json`: format, encoder, dimensions, export id;
- format `savedmodel` (TF-graph backbones): `model/`, one SavedModel with functions `embed` (images -> unit
  vectors), `features` (images -> backbone features) and `head` (features -> unit vectors);
- format `tflite+head` (TFLite backbones): `backbone.tflite` plus `head/`, a SavedModel with `head`, and
  `head.npz` (the same head's kernel and bias, when it is a dense layer between L2 norms);
- format `composite` (several backbones, `--encoder a+b`): `parts/<i>/` holds backbone i (`backbone.tflite`, or
  `model/`, a SavedModel with `features`), `head/` the head over their L2-normalised features side by side
  (and `head.npz`, as above).
An extractor whose backbones are all TFLite files and whose head has `head.npz` runs without TensorFlow: the files
on LiteRT (`ai-edge-litert`, TFLite's successor; `tf.lite` where only TensorFlow is installed), the head and the
multi-crop views in numpy. Everything else loads TensorFlow.
Images are [B, S, S, 3] with values 0..255, as `runtime.preprocess` makes them at the config's `input_size`: 224,
or larger where `multicrop` (a fraction of the side) says the features are pooled over multi-crop views
(`runtime.views`); the saved functions then take 224x224 views, except a backbone file that cuts and pools the
views itself (`views_in_backbone`, `pipeline.encoders.mediapipe_keras.views_tflite`), which takes the whole image.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime import storage, tfenv, views
from runtime.layout import (
    EXTRACTOR_CONFIG,
    EXTRACTOR_HEAD,
    EXTRACTOR_HEAD_ARRAYS,
    EXTRACTOR_PARTS,
    EXTRACTOR_SAVEDMODEL,
    EXTRACTOR_TFLITE,
)

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite+head", "composite")


# Images per interpreter call of a file that runs six views of each (`views_in_backbone`): the interpreter's
# activations grow with the batch, and at 64 images EfficientNet-Lite2's views took 8 GB.
VIEWS_FILE_BATCH = 8


def tflite_runner(path: Path, scale: float = 1 / 255.0, threads: int | None = None,
                  max_batch: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function that runs a TFLite image model on a batch of square images of the side it takes (224, or
    more for a backbone that pools multi-crop views itself), resizing its batch dimension as needed (on `threads`
    threads, default one per CPU), `max_batch` images per call at most. A model over float pixels gets them times
    `scale`; one over uint8 pixels scales them itself and gets them as they are (no float copy of the batch to
    allocate and fill)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice, once per load
        interpreter = interpreter_class()(model_path=str(path), num_threads=threads or os.cpu_count())
    details = interpreter.get_input_details()[0]
    inp, side = details["index"], int(details["shape"][1])
    takes_bytes = details["dtype"] == np.uint8
    out = interpreter.get_output_details()[0]["index"]
    state = {"batch": None}
    lock = threading.Lock()  # an interpreter is not thread-safe; the service calls it from gthread threads

    def run(images: np.ndarray) -> np.ndarray:
        if max_batch and len(images) > max_batch:
            return np.concatenate([run(images[i:i + max_batch]) for i in range(0, len(images), max_batch)])
        with lock:
            if state["batch"] != len(images):
                interpreter.resize_tensor_input(inp, [len(images), side, side, 3])
                interpreter.allocate_tensors()
                state["batch"] = len(images)
            interpreter.set_tensor(inp, np.asarray(images).astype(np.uint8, copy=False) if takes_bytes else
                                   (np.asarray(images, np.float32) * scale).astype(np.float32, copy=False))
            interpreter.invoke()
            return interpreter.get_tensor(out).reshape(len(images), -1).copy()

    return run


def interpreter_class() -> type:
    """LiteRT's TFLite interpreter (`ai_edge_litert`), or TensorFlow's where LiteRT is not installed: the same
    runtime, so the same vectors (equal to the last bit on the MediaPipe embedder)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tfenv.tensorflow("a TFLite backbone without ai-edge-litert").lite.Interpreter
    return Interpreter


class Extractor:
    """Images in, unit vectors out: the one way vectorize, evaluate and the service embed images.

    Args:
        path: an extractor folder (`model/extractor/` of a data dir, `extractor/` of an index folder).
        threads: threads of a TFLite backbone (default one per CPU; a Spark task takes its share).

    Raises:
        FileNotFoundError: the folder holds no extractor.json.
        ValueError: extractor.json names an unknown format.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        config_file = self.path / EXTRACTOR_CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a feature extractor (no {EXTRACTOR_CONFIG}); "
                                    "run finetune first")
        self.config = storage.read_json(config_file)
        fmt = self.config.get("format")
        self.head_runs_in = "numpy"
        # Concrete functions skip the argument matching of restored tf.functions, paid on every query
        # (docs/service.md, "Hot path").
        if fmt == "savedmodel":
            tf = tfenv.tensorflow(f"{self.path} (a {self.config.get('encoder')} extractor, format savedmodel)")
            self._model = tf.saved_model.load(str(self.path / EXTRACTOR_SAVEDMODEL))
            self._features = _concrete(self._model.features)
            self._head = _concrete(self._model.head)
            self._embed = _concrete(self._model.embed)
            self.head_runs_in = "tensorflow"
        elif fmt == "tflite+head":
            self._head = self._load_head()
            run = tflite_runner(self.path / EXTRACTOR_TFLITE, threads=threads,
                                max_batch=VIEWS_FILE_BATCH if self.config.get("views_in_backbone") else None)
            self._features = run
            self._embed = lambda x: self._head(run(np.asarray(x)))
        elif fmt == "composite":
            self._head = self._load_head()
            self._parts = [self._load_part(self.path / EXTRACTOR_PARTS / str(i), part["format"], threads)
                           for i, part in enumerate(self.config["parts"])]
            self._features = self._concatenated
            self._embed = lambda x: self._head(self._concatenated(x))
        else:
            raise ValueError(f"{config_file}: unknown extractor format {fmt!r}; expected one of {FORMATS}")
        fraction = float(self.config.get("multicrop") or 0)
        if fraction and not self.config.get("views_in_backbone"):
            self._features = views.multicrop(self._features, fraction)
            self._embed = lambda x: self._head(self._features(x))

    def _load_head(self) -> Callable[[np.ndarray], np.ndarray]:
        """The head of a tflite+head or composite extractor: from `head.npz` without TensorFlow when it is there;
        else from its SavedModel, in numpy when it is a dense layer between L2 norms (`numpy_head`)."""
        arrays = self.path / EXTRACTOR_HEAD_ARRAYS
        if arrays.is_file():
            with np.load(arrays) as saved:
                return dense_head(saved.get("kernel"), saved.get("bias"), int(saved["dim"]))
        tf = tfenv.tensorflow(f"{self.path}'s head (exported without {EXTRACTOR_HEAD_ARRAYS})")
        model = tf.saved_model.load(str(self.path / EXTRACTOR_HEAD))
        tf_head = _concrete(model.head)
        head = numpy_head(model.head.concrete_functions[0], tf_head)
        self._model = model  # keeps the restored variables alive for tf_head
        self.head_runs_in = "tensorflow" if head is tf_head else "numpy"
        return head

    @staticmethod
    def _load_part(folder: Path, fmt: str, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        """One backbone of a composite extractor, as a function from images to its features."""
        if fmt == "tflite":
            return tflite_runner(folder / EXTRACTOR_TFLITE, threads=threads)
        if fmt == "savedmodel":
            tf = tfenv.tensorflow(f"{folder} (a SavedModel backbone)")
            features = _concrete(tf.saved_model.load(str(folder / EXTRACTOR_SAVEDMODEL)).features)
            return lambda x: np.asarray(features(np.asarray(x, np.float32)))
        raise ValueError(f"{folder}: unknown part format {fmt!r}; expected tflite or savedmodel")

    def _concatenated(self, images: np.ndarray) -> np.ndarray:
        """A composite's features: its parts' (`side_by_side`)."""
        return side_by_side([part(images) for part in self._parts])

    @property
    def dim(self) -> int:
        """Length of the unit vectors."""
        return int(self.config["dim"])

    @property
    def input_size(self) -> int:
        """Side of the square images the extractor takes."""
        return int(self.config["input_size"])

    @property
    def fingerprint(self) -> str:
        """The encoder's weights fingerprint (keys the backbone-feature cache)."""
        return str(self.config["encoder_fingerprint"])

    @property
    def export_id(self) -> str:
        """Identifies this export: embeddings made by another extractor never pass for this one's."""
        return str(self.config["export_id"])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Return unit vectors [B, dim] for images [B, S, S, 3] (S: `input_size`) of 0..255 values."""
        return np.asarray(self._embed(np.asarray(images)), dtype=np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the backbone's features [B, feature_dim] (no head)."""
        return np.asarray(self._features(np.asarray(images)), dtype=np.float32)

    def head(self, features: np.ndarray) -> np.ndarray:
        """Return unit vectors for backbone features (no backbone pass)."""
        return np.asarray(self._head(np.asarray(features, np.float32)), dtype=np.float32)


def tensorflow_free(path: Path) -> bool:
    """Whether the extractor folder at `path` runs without TensorFlow: every backbone a TFLite file, and the head
    in `head.npz`. Read from its files alone (deploy asks it to leave TensorFlow out of the bundle)."""
    path = Path(path)
    config = storage.read_json(path / EXTRACTOR_CONFIG)
    backbones = {"tflite+head": ["tflite"], "composite": [part["format"] for part in config.get("parts", [])]}
    formats = backbones.get(config.get("format"))
    return bool(formats) and set(formats) == {"tflite"} and (path / EXTRACTOR_HEAD_ARRAYS).is_file()


def side_by_side(features: list[np.ndarray]) -> np.ndarray:
    """Several backbones' features of the same images [B, F_i], each L2-normalised, concatenated [B, sum F_i]: a
    composite extractor's features (`pipeline.training.composite` trains its head on exactly these)."""
    out = [np.asarray(f, np.float32) for f in features]
    return np.concatenate([f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in out], axis=1)


def dense_head(kernel: np.ndarray | None, bias: np.ndarray | None, dim: int) -> Callable[[np.ndarray], np.ndarray]:
    """The head `pipeline.training.head.build_head` makes, in numpy: L2 norm, dense layer, L2 norm (or, with no
    kernel, the raw head's L2 norm alone) over features of length `dim`."""

    def normalise(x: np.ndarray) -> np.ndarray:  # as tf.math.l2_normalize: x / sqrt(max(sum(x^2), 1e-12))
        return x / np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x)[:, None], 1e-12))

    def head(features: np.ndarray) -> np.ndarray:
        x = normalise(np.asarray(features, np.float32).reshape(-1, int(dim)))
        return x if kernel is None else normalise(x @ kernel + bias)

    return head


def head_arrays(concrete: Any, tf_head: Callable[[np.ndarray], Any]) -> dict[str, np.ndarray] | None:
    """The head's kernel, bias and input length when it is a dense layer between L2 norms (or the raw head's L2
    norm alone), checked against the saved function on random features to 1e-5; None when it is anything else."""
    weights = [v.numpy() for v in concrete.variables]
    kernels = [w for w in weights if w.ndim == 2]
    biases = [w for w in weights if w.ndim == 1]
    dim = concrete.structured_input_signature[0][0].shape[-1]
    if len(weights) not in (0, 2) or len(kernels) != len(weights) // 2 or not dim:
        return None
    arrays = {"dim": np.asarray(int(dim))}
    if weights:
        arrays.update(kernel=kernels[0], bias=biases[0])
    head = dense_head(arrays.get("kernel"), arrays.get("bias"), int(dim))
    probe = np.abs(np.random.default_rng(0).normal(size=(4, int(dim)))).astype(np.float32)
    expected, got = np.asarray(tf_head(probe)), head(probe)
    if expected.shape != got.shape or not np.allclose(got, expected, atol=1e-5):
        return None
    return arrays


def numpy_head(concrete: Any, tf_head: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The head in numpy when it is what `pipeline.training.head.build_head` makes (`head_arrays`); else `tf_head`.

    A TensorFlow call costs about 0.5 ms of dispatch whatever its size; this matrix product takes microseconds,
    which is most of what a query costs after a TFLite backbone.
    """
    arrays = head_arrays(concrete, tf_head)
    if arrays is None:
        log.info("the head is not a dense layer between L2 norms; it runs in TensorFlow")
        return tf_head
    return dense_head(arrays.get("kernel"), arrays.get("bias"), int(arrays["dim"]))


def _concrete(function: Any) -> Any:
    """Return a callable on numpy arrays backed by the one concrete function of a restored tf.function."""
    tf = tfenv.tensorflow()  # already imported: a restored function exists
    concrete = function.concrete_functions[0]
    dtype = concrete.structured_input_signature[0][0].dtype
    return lambda x: concrete(tf.convert_to_tensor(np.asarray(x), dtype=dtype))


def load_extractor(path: Path, threads: int | None = None) -> Extractor:
    """Load an exported feature extractor folder (`threads`: see `Extractor`)."""
    return Extractor(path, threads)
