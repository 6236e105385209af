"""vectorize on Spark in local[2]: the local engine's bytes from an empty cache, resumable, on a local or S3 data dir.

Needs Java (Debian's openjdk-17-jre-headless) and pyspark (requirements-spark.txt); without them these tests
skip with a message, except under CI=true, where a missing Spark is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import vectorize
from pipeline.common.errors import StageError
from pipeline.vectorizing import shards, spark_engine
from runtime.layout import Layout

MASTER = "local[2]"


@pytest.fixture(scope="module", autouse=True)
def spark_available() -> None:
    problems = []
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        problems.append("no Java (apt-get install openjdk-17-jre-headless)")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        problems.append("no pyspark (pip install -r requirements-spark.txt)")
    if problems and os.environ.get("CI") == "true":
        pytest.fail(f"the Spark tests cannot run under CI: {'; '.join(problems)}")
    if problems:
        pytest.skip(f"Spark tests skipped: {'; '.join(problems)}")


def fresh(built: Path, where: Path) -> Path:
    """A copy of a built data dir's catalog and extractor, with no feature cache and no embeddings."""
    shutil.copytree(built / "catalog", where / "catalog")
    shutil.copytree(built / "model", where / "model")
    return where


def shard_arrays(data: Path) -> list[np.ndarray]:
    layout = Layout(data)
    n = json.loads(layout.embeddings_summary.read_text())["shards"]
    return [np.load(layout.shard(i)) for i in range(n)]


def assert_same_embeddings(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) > 1
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert float(np.nanmax(np.abs(x - y))) <= 1e-5


def test_spark_local2_equals_the_local_engine_from_an_empty_cache(built: Path, tmp_path: Path) -> None:
    local = fresh(built, tmp_path / "local")
    spark = fresh(built, tmp_path / "spark")
    expected = vectorize.run(local, shard_rows=16, batch_size=8)
    summary = vectorize.run(spark, shard_rows=16, batch_size=8, engine="spark", spark_master=MASTER)
    assert summary["engine"] == "spark" and summary["shards_kept"] == 0
    assert summary["backbone_images_computed"] == expected["backbone_images_computed"] > 0
    assert summary["spark"]["tasks"] == summary["shards"] == expected["shards"]
    # each Python worker loaded the extractor once and kept it for its later tasks
    assert 1 <= summary["spark"]["extractor_loads"] == summary["spark"]["python_workers"] <= 2
    assert_same_embeddings(shard_arrays(local), shard_arrays(spark))
    for i in range(summary["shards"]):
        assert (Layout(spark).shard_stamp(i).read_text() == Layout(local).shard_stamp(i).read_text())
    again = vectorize.run(spark, shard_rows=16, batch_size=8, engine="spark", spark_master=MASTER)
    assert again["shards_kept"] == again["shards"] and again["spark"]["tasks"] == 0


def test_a_task_run_twice_writes_the_same_shard_and_cache_part(built: Path, tmp_path: Path) -> None:
    data = fresh(built, tmp_path / "data")
    layout = Layout(data)
    from pipeline.catalog.table import catalog_inputs

    catalog, keys, _ = catalog_inputs(layout)
    export_id = json.loads((layout.extractor / "extractor.json").read_text())["export_id"]
    stamp = shards.plan(layout, keys, export_id, 16)[1]
    task = {"root": str(data), "shard": 1, "stamp": stamp, "keys": keys[16:32],
            "images": catalog["image"].tolist()[16:32], "batch_size": 8, "threads": 1}
    first = spark_engine.embed_task(task)
    written = {p: p.read_bytes() for p in sorted(data.rglob("part-*"))}
    for keys_file in (data / "cache").rglob("part-*.keys"):
        keys_file.unlink()  # the second attempt cannot see the first's cache part: it computes and writes it again
    spark_engine._WORKER.clear()  # and runs in another worker, with its own cache handle
    second = spark_engine.embed_task(task)
    assert first["computed"] == second["computed"] == len(set(task["keys"])) > 0
    assert {p: p.read_bytes() for p in sorted(data.rglob("part-*"))} == written  # same files, same bytes
    assert not list(data.rglob(".part-*"))  # no temporary left behind
    spark_engine._WORKER.clear()


def test_a_killed_spark_job_resumes_at_the_first_unfinished_shard(built: Path, tmp_path: Path) -> None:
    data = fresh(built, tmp_path / "data")
    layout = Layout(data)
    command = [sys.executable, "-m", "pipeline", "vectorize", "--data-dir", str(data), "--engine", "spark",
               "--spark-master", "local[1]", "--shard-rows", "2", "--batch-size", "2"]
    # A killed JVM cannot delete its scratch folders: keep them in tmp_path, not /tmp.
    env = {**os.environ, "SPARK_LOCAL_DIRS": str(tmp_path / "spark-local")}
    job = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env)
    deadline = time.monotonic() + 180
    while not list(layout.embeddings.glob("part-*.json")) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers
    job.wait(timeout=30)
    finished = len(list(layout.embeddings.glob("part-*.json")))
    summary_written = layout.embeddings_summary.is_file()
    assert finished >= 1 and not summary_written, "the job was not killed while it ran"
    summary = vectorize.run(data, shard_rows=2, batch_size=2, engine="spark", spark_master=MASTER)
    assert summary["shards_kept"] >= finished and summary["spark"]["tasks"] == summary["shards"] - summary[
        "shards_kept"]
    reference = fresh(built, tmp_path / "reference")
    vectorize.run(reference, shard_rows=2, batch_size=2)
    assert_same_embeddings(shard_arrays(reference), shard_arrays(data))


def test_spark_on_an_s3_data_dir(built: Path, tmp_path: Path, s3_server: str) -> None:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="shop")
    source = fresh(built, tmp_path / "upload")
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        client.upload_file(str(path), "shop", f"catalogs/spring/{path.relative_to(source).as_posix()}")
    broken = Layout(source).catalog / sorted((Layout(source).catalog / "images").rglob("*.jpg"))[3]
    client.put_object(Bucket="shop", Key=f"catalogs/spring/catalog/{broken.relative_to(source / 'catalog')}",
                      Body=b"not an image")
    summary = vectorize.run("s3://shop/catalogs/spring", shard_rows=16, batch_size=8, engine="spark",
                            spark_master=MASTER)
    assert summary["unreadable"] == 1 and summary["spark"]["tasks"] == summary["shards"]
    down = tmp_path / "down"
    for obj in client.list_objects_v2(Bucket="shop", Prefix="catalogs/spring/embeddings/")["Contents"]:
        target = down / "embeddings" / obj["Key"].rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("shop", obj["Key"], str(target))
    rejects = client.get_object(Bucket="shop", Key="catalogs/spring/catalog/vectorize_rejects.csv")["Body"].read()
    assert broken.name.removesuffix(".jpg") in rejects.decode()
    (Layout(source).catalog / broken.relative_to(source / "catalog")).write_bytes(b"not an image")
    vectorize.run(source, shard_rows=16, batch_size=8)
    assert_same_embeddings(shard_arrays(source), shard_arrays(down))
    again = vectorize.run("s3://shop/catalogs/spring", shard_rows=16, batch_size=8, engine="spark",
                          spark_master=MASTER)
    assert again["shards_kept"] == again["shards"]


def test_the_local_engine_refuses_an_s3_data_dir_and_unknown_engines_are_named() -> None:
    with pytest.raises(StageError, match="needs --engine spark"):
        vectorize.run("s3://shop/catalogs/spring")
    with pytest.raises(StageError, match=r"unknown engine 'dask'.*local.*spark"):
        vectorize.run("data", engine="dask")


def test_a_worker_refuses_an_extractor_other_than_the_one_the_job_was_planned_with(built: Path, tmp_path: Path
                                                                                   ) -> None:
    data = fresh(built, tmp_path / "data")
    with pytest.raises(StageError, match="finetune ran during the job: run vectorize again"):
        spark_engine._worker(str(data), 1, "an-older-export")
    assert not spark_engine._WORKER
