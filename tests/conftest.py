"""Shared fixtures: generated catalogs, a tiny TF Hub-style SavedModel, demo indexes, the real data in ../shared."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import tfenv
from scripts.make_sample_catalog import make_catalog
from tests.helpers import SHARED, free_port, moto_s3, start_gunicorn, stop

# The longest modules, first: under `make test`'s two pytest-xdist workers (`--dist loadscope
# --no-loadscope-reorder`, a module per worker, in this order) each worker starts one of them at once and the other
# modules fill the time around them, instead of a quality run starting when everything else is done.
LONGEST_FIRST = ("test_quality.py", "test_quality_grocery.py", "test_quality_lite2.py", "test_s3_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the modules of `LONGEST_FIRST` to the front; the sort is stable, so every module keeps its own order."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared, skipping the test with a clear message when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the project's ../shared folder (CI has it)")
    return path


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated catalog in the Kaggle layout, with its deliberate broken and missing images."""
    out = tmp_path_factory.mktemp("sample") / "catalog"
    make_catalog(out, n_products=80, seed=3)
    return out


@pytest.fixture(scope="session")
def tiny_hub_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SavedModel built here, loaded through the TF Hub code path (hub.KerasLayer) like BiT."""
    keras = tfenv.keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.AveragePooling2D(28)(inputs)  # 8x8 colour layout
    x = keras.layers.Conv2D(12, 3, activation="relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Concatenate()([outputs, keras.layers.Flatten()(
        keras.layers.AveragePooling2D(2)(keras.layers.AveragePooling2D(28)(inputs)))]))
    path = tmp_path_factory.mktemp("hub") / "tiny_backbone"
    model.save(str(path), save_format="tf")
    return path


@pytest.fixture(scope="session")
def built(sample_catalog: Path, tiny_hub_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir taken through acquire (20% held out), finetune (hub encoder), vectorize and index."""
    from pipeline import acquire, finetune, index, vectorize

    data = tmp_path_factory.mktemp("built")
    acquire.run(f"fashion:{sample_catalog}", data, holdout=0.2)
    finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=60)
    vectorize.run(data, shard_rows=16)
    index.run(data, trees=8)
    return data


@pytest.fixture(scope="session")
def demo_index(sample_catalog: Path, tiny_hub_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with an index built from the sample catalog (hub encoder on a local SavedModel); read-only: tests
    that add or prune index versions take `own_index`."""
    from pipeline import acquire, finetune, index, vectorize

    data = tmp_path_factory.mktemp("demo")
    acquire.run(f"fashion:{sample_catalog}", data)
    finetune.run(data, encoder=f"hub:{tiny_hub_model}", dim=32, epochs=40)
    vectorize.run(data)
    index.run(data, trees=8)
    return data


@pytest.fixture()
def own_index(demo_index: Path, tmp_path: Path) -> Path:
    """A copy of the demo data dir for one test: reindexing and reloads there never touch the shared one."""
    data = tmp_path / "own"
    for folder in ("catalog", "model", "embeddings", "index"):
        shutil.copytree(demo_index / folder, data / folder, symlinks=True)
    return data


def assert_uploads_find_their_products(data_dir: Path, cache: Path, positions: list[int]) -> None:
    """Upload catalog photos (those at `positions` among photos with no exact twin) to a service over the data dir's
    current index and assert each one's own product comes first, with a score of 1."""
    from pipeline.catalog.table import read_catalog
    from runtime.layout import Layout
    from service import create_app

    layout = Layout(data_dir)
    client = create_app({"ARTIFACTS": str(layout.index / "current"), "LOAD_IN_BACKGROUND": False,
                         "ARTIFACTS_CACHE": str(cache)}).test_client()
    catalog = read_catalog(layout.catalog_csv)
    unique = catalog[catalog["sha256"].map(catalog["sha256"].value_counts()) == 1]  # no exact twin to tie with
    for row in unique.iloc[positions].itertuples():
        data = (layout.catalog / row.image).read_bytes()
        body = client.post("/api/search?k=3", data={"image": (io.BytesIO(data), "q.jpg")}).get_json()
        assert str(body["results"][0]["product_id"]) == str(row.product_id), body
        assert body["results"][0]["score"] > 0.999, body


@pytest.fixture()
def s3_server(monkeypatch: pytest.MonkeyPatch):
    """S3 and IAM APIs (moto's server) on 127.0.0.1, with boto3 pointed at it through the environment."""
    with moto_s3(monkeypatch) as endpoint:
        yield endpoint


@contextlib.contextmanager
def gunicorn_over(index: Path, tmp: Path, env: dict[str, str]) -> Iterator[str]:
    """gunicorn with 2 gthread workers on 127.0.0.1, started from the Procfile's config over `index` (a cache and
    its log in `tmp`); yields its base URL once both workers have loaded it. A failed start fails the test with
    the end of gunicorn's log."""
    port, log = free_port(), tmp / "gunicorn.log"
    try:
        process, _ = start_gunicorn(index, port, 2, tmp / "cache", deadline_s=120, env=env, log=log)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
