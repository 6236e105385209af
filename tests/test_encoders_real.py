"""The encoders that need no network: the auto-encoder trained here, and the real pretrained models in ../shared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import acquire, finetune, index, vectorize
from pipeline.catalog.table import read_catalog
from runtime import tfenv
from runtime.embeddings import load_embeddings
from runtime.extractor import load_extractor
from runtime.layout import Layout
from runtime.preprocess import decode_image
from tests.conftest import shared_path

MOBILENET = ("models", "mobilenet_2_5_224_tf_no_top.h5")
MEDIAPIPE = ("models", "mobilenet_v3_small_075_224_embedder.tflite")


@pytest.fixture(scope="module")
def acquired(sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("acquired")
    acquire.run(f"fashion:{sample_catalog}", data)
    return data


def _fresh(acquired: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(acquired / "catalog", data / "catalog")
    return data


def test_autoencoder_trains_on_the_catalog_and_serves_as_encoder(acquired: Path, tmp_path: Path) -> None:
    from pipeline.encoders.backbones import load_encoder

    data = _fresh(acquired, tmp_path)
    summary = finetune.run(data, encoder="autoencoder", dim=32, ae_epochs=2, epochs=5)
    weights = Layout(data).model / "autoencoder.weights.h5"
    assert weights.is_file() and summary["encoder_weights"] == str(weights)
    assert summary["feature_dim"] == 1024 and (Layout(data).model / "autoencoder_curves.png").is_file()
    encoder = load_encoder("autoencoder", weights)
    assert encoder.fingerprint == summary["encoder_fingerprint"]
    assert vectorize.run(data)["backbone_images_computed"] == 0
    assert index.run(data, trees=4)["encoder"] == "autoencoder"


@pytest.mark.parametrize("name, weights, feature_dim, fmt", [
    ("mobilenet-v1-0.25", MOBILENET, 256, "tflite+head"),  # its Keras graph served as a TFLite file
    ("mediapipe-embedder", MEDIAPIPE, 1024, "tflite+head"),
])
def test_real_pretrained_encoder_exports_a_working_extractor(acquired: Path, tmp_path: Path, name: str,
                                                             weights: tuple[str, str], feature_dim: int,
                                                             fmt: str) -> None:
    data = _fresh(acquired, tmp_path)
    summary = finetune.run(data, encoder=name, encoder_weights=str(shared_path(*weights)), dim=64, epochs=10)
    assert summary["feature_dim"] == feature_dim
    layout = Layout(data)
    extractor = load_extractor(layout.extractor)
    assert extractor.config["format"] == fmt
    assert json.loads((layout.extractor / "extractor.json").read_text())["dim"] == 64
    vectorize.run(data)
    vectors = load_embeddings(data)
    first = layout.catalog / "images"
    paths = sorted(first.rglob("*.jpg"))[:2]
    images = np.stack([decode_image(str(p)).numpy() for p in paths])
    embedded = extractor.embed(images)
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    # The same image gives the same vector through the extractor as through vectorize's cached features.
    rows = [str(p.relative_to(layout.catalog)) for p in paths]
    catalog = read_catalog(layout.catalog_csv)
    idx = [catalog.index[catalog["image"] == r][0] for r in rows]
    assert np.allclose(embedded, vectors[idx], atol=1e-4)
    if fmt == "tflite+head":  # the head runs as a numpy product, equal to the saved TensorFlow function's
        tf = tfenv.tensorflow()
        assert extractor.head_runs_in == "numpy"
        features = extractor.features(images)
        loaded = tf.saved_model.load(str(layout.extractor / "head"))  # kept: it owns the head's variables
        saved = loaded.head(tf.constant(features)).numpy()
        assert np.allclose(extractor.head(features), saved, atol=1e-5)


# The service in a process where TensorFlow cannot be imported: it must serve a TFLite index all the same.
WITHOUT_TENSORFLOW = """
import json, sys
for name in ("tensorflow", "tf_keras", "tensorflow_hub", "keras"):
    sys.modules[name] = None  # an import of any of them fails, as in an install without them
from pathlib import Path
from service import create_app
from service.uploads import decode
app = create_app({"ARTIFACTS": sys.argv[1], "ARTIFACTS_CACHE": sys.argv[2], "LOAD_IN_BACKGROUND": False})
client, searcher = app.test_client(), app.extensions["visual_search"].get()
out = {"vectors": [], "top": []}
for path in sys.argv[3:]:
    data = Path(path).read_bytes()
    out["vectors"].append(searcher.embed(decode(data, app.config, searcher.input_size).pixels).tolist())
    body = client.post("/api/search?k=1", data={"image": (__import__("io").BytesIO(data), "q.jpg")}).get_json()
    out["top"].append(body["results"][0]["product_id"])
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras") and
                       sys.modules[m] is not None)
print(json.dumps(out))
"""


def test_a_tflite_index_is_served_without_tensorflow(acquired: Path, tmp_path: Path) -> None:
    """MediaPipe's extractor (a TFLite file and head.npz) is served with TensorFlow impossible to import: LiteRT runs
    the file, numpy the head, and every vector equals the pipeline's to 1e-4."""
    import subprocess
    import sys

    from runtime.extractor import tensorflow_free
    from tests.helpers import ROOT

    data = _fresh(acquired, tmp_path)
    finetune.run(data, encoder="mediapipe-embedder", encoder_weights=str(shared_path(*MEDIAPIPE)), dim=32, epochs=5)
    vectorize.run(data)
    index.run(data, trees=4)
    layout = Layout(data)
    assert tensorflow_free(layout.extractor) and (layout.extractor / "head.npz").is_file()
    catalog = read_catalog(layout.catalog_csv)
    unique = catalog[catalog["sha256"].map(catalog["sha256"].value_counts()) == 1].iloc[[0, 5, 11]]
    paths = [str(layout.catalog / image) for image in unique["image"]]
    run = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(layout.index / "current"),
                          str(tmp_path / "cache"), *paths], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert np.allclose(np.asarray(out["vectors"]), load_embeddings(data)[unique.index], atol=1e-4)
    assert out["top"] == [str(p) for p in unique["product_id"]]


def test_tflite_extractor_is_safe_to_call_from_many_threads(acquired: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = _fresh(acquired, tmp_path)
    finetune.run(data, encoder="mediapipe-embedder", encoder_weights=str(shared_path(*MEDIAPIPE)), no_finetune=True)
    extractor = load_extractor(Layout(data).extractor)
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1 + i % 3, 224, 224, 3)).astype(np.float32) for i in range(12)]
    expected = [extractor.embed(batch) for batch in images]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(extractor.embed, images))
    for want, have in zip(expected, got, strict=True):
        assert np.allclose(want, have, atol=1e-5)
