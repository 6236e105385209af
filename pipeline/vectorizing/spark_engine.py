"""vectorize on Apache Spark: one task per embeddings shard, for catalogs too big for one machine (EMR, YARN, local).

The driver plans the shards exactly as the local engine does and submits only those whose stamp is not
current, so a killed job resumes at the first unfinished shard. Each task runs `shards.embed_shard` (the
local engine's own function, hence the same bytes) and writes its shard, then its stamp, each atomically: a
retried or speculative attempt rewrites the same bytes, never a mix. An executor's Python worker loads the
extractor once and keeps it for every later task. The data dir is a local folder every executor can read
(local mode, a shared filesystem) or `s3://bucket/prefix`: then the driver reads the catalog, extractor and
stamps through boto3, tasks fetch their images and write their shards to S3, and the feature cache is each
executor's local scratch (a rerun skips finished shards by their stamps instead).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.catalog.table import catalog_inputs
from pipeline.common.errors import StageError
from pipeline.features.cache import FeatureCache
from pipeline.vectorizing import shards
from runtime import embeddings, storage, tfenv
from runtime.extractor import Extractor, load_extractor
from runtime.layout import (
    CATALOG_CSV,
    CATALOG_DIR,
    EMBEDDINGS_DIR,
    EMBEDDINGS_SUMMARY,
    EXTRACTOR_CONFIG,
    EXTRACTOR_DIR,
    MODEL_DIR,
    SHARD,
    SHARD_STAMP,
    VECTORIZE_REJECTS_CSV,
    Layout,
)

log = logging.getLogger(__name__)

APP_NAME = "visual-search vectorize"
# per Python worker process, by (data dir, export id): the loaded extractor and cache, reused by every task
_WORKER: dict[tuple[str, str], Any] = {}


def is_s3(root: str) -> bool:
    """Whether a data dir is an S3 prefix."""
    return str(root).startswith("s3://")


def spark_session(master: str | None) -> Any:
    """Return a SparkSession for `master` (None: what spark-submit configured, else local[*]).

    Local masters bind to 127.0.0.1 with no web UI, and their Python workers use this interpreter and this
    process's AWS settings.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    master = master or SparkConf().get("spark.master", None) or "local[*]"  # spark-submit sets spark.master
    builder = SparkSession.builder.appName(APP_NAME).master(master).config("spark.python.worker.reuse", "true")
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1"))
        for key in (k for k in os.environ if k.startswith("AWS_")):
            # Local workers are forked by a JVM that may predate this environment (a second job in one
            # process): hand them the driver's AWS settings as they are now.
            builder = builder.config(f"spark.executorEnv.{key}", os.environ[key])
    return builder.getOrCreate()


def _worker(root: str, threads: int, export_id: str) -> tuple[Extractor, FeatureCache, Path]:
    """This Python worker's extractor, feature cache and scratch folder, loaded on its first task only.

    Raises:
        StageError: the extractor found is not the one the driver planned with (finetune ran again meanwhile).
    """
    if (root, export_id) not in _WORKER:
        tf = tfenv.tensorflow()
        try:  # a task's share of the executor's cores (only before TensorFlow's first op in this process)
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            log.debug("TensorFlow already running in this process; its thread pools stay as they are")
        scratch = Path(tempfile.mkdtemp(prefix="visual-search-task-"))
        if is_s3(root):
            # one copy per node and export, shared by its workers (boto3 downloads to a temporary name, then
            # renames); a new export never reuses an older one's files
            folder = storage.mirror_s3(f"{root.rstrip('/')}/{MODEL_DIR}/{EXTRACTOR_DIR}",
                                       Path(tempfile.gettempdir()) / "visual-search-extractors" / export_id)
            extractor = load_extractor(folder, threads)
            cache = FeatureCache(scratch / "features")
        else:
            layout = Layout(Path(root))
            extractor = load_extractor(layout.extractor, threads)
            cache = FeatureCache(layout.features(extractor.fingerprint))
        if extractor.export_id != export_id:
            raise StageError(f"{root}: the extractor is export {extractor.export_id}, the job was planned with "
                             f"{export_id}; finetune ran during the job: run vectorize again")
        _WORKER[(root, export_id)] = (extractor, cache, scratch)
    return _WORKER[(root, export_id)]


def embed_task(task: dict) -> dict:
    """Embed one shard on an executor and write it and its stamp; return what it did (runs inside Spark)."""
    started = time.perf_counter()
    root, i, stamp = task["root"], task["shard"], task["stamp"]
    fresh = (root, stamp["export_id"]) not in _WORKER
    extractor, cache, scratch = _worker(root, task["threads"], stamp["export_id"])
    loaded = time.perf_counter()
    if is_s3(root):
        paths = _fetch_images(root, task["images"], scratch / f"shard-{i}")
    else:
        paths = [str(Path(root) / CATALOG_DIR / image) for image in task["images"]]
    vectors, stamp, computed = shards.embed_shard(extractor, cache, stamp, task["keys"], paths, task["batch_size"])
    if is_s3(root):
        bucket, prefix = storage.split_s3(f"{root.rstrip('/')}/{EMBEDDINGS_DIR}")
        client = storage.s3_client()
        client.put_object(Bucket=bucket, Key=f"{prefix}/{SHARD.format(index=i)}", Body=embeddings.shard_bytes(vectors))
        client.put_object(Bucket=bucket, Key=f"{prefix}/{SHARD_STAMP.format(index=i)}", Body=storage.json_bytes(stamp))
        for path in paths:
            Path(path).unlink(missing_ok=True)
    else:
        embeddings.write_shard(Layout(Path(root)), i, vectors, stamp)
    return {"shard": i, "computed": computed, "missing": len(stamp["missing"]), "pid": os.getpid(),
            "load_s": round(loaded - started, 3) if fresh else 0.0, "seconds": round(time.perf_counter() - loaded, 3)}


def _fetch_images(root: str, images: list[str], folder: Path) -> list[str]:
    """Download a shard's images from the S3 data dir (an image that cannot be fetched is left absent: the
    shard records it as unreadable)."""
    client = storage.s3_client()
    bucket, prefix = storage.split_s3(f"{root.rstrip('/')}/{CATALOG_DIR}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, image in enumerate(images):
        target = folder / f"{j:05d}{Path(image).suffix}"
        try:
            client.download_file(bucket, f"{prefix}/{image}", str(target))
        except Exception as error:  # noqa: BLE001 - reported per image by the shard, never fatal
            log.warning("could not fetch %s/%s: %s", root, image, error)
        paths.append(str(target))
    return paths


def run(data_dir: str, shard_rows: int, batch_size: int, master: str | None) -> dict:
    """Run vectorize as a Spark job; see `pipeline.vectorize.run` (engine spark) for the arguments."""
    with tempfile.TemporaryDirectory(prefix="visual-search-driver-") as tmp:
        local = _driver_view(data_dir, Path(tmp)) if is_s3(data_dir) else Path(data_dir)
        layout = Layout(local)
        catalog, keys, _ = catalog_inputs(layout)
        config = storage.read_json(layout.extractor / EXTRACTOR_CONFIG)
        stamps = shards.plan(layout, keys, config["export_id"], shard_rows)
        todo = [i for i, stamp in enumerate(stamps) if not embeddings.is_current(layout, i, stamp)]
        spark = spark_session(master)
        try:
            return _run_job(spark, data_dir, layout, catalog, keys, config, stamps, todo, shard_rows, batch_size)
        finally:
            spark.stop()


def make_tasks(data_dir: str, stamps: list[dict], todo: list[int], keys: list[str], images: list[str],
               batch_size: int, threads: int) -> list[dict]:
    """One task per shard to embed: its stamp, its rows' keys and images, and where to write."""
    root = str(data_dir) if is_s3(data_dir) else str(Path(data_dir).resolve())
    return [{"root": root, "shard": i, "stamp": stamps[i], "keys": keys[slice(*stamps[i]["rows"])],
             "images": images[slice(*stamps[i]["rows"])], "batch_size": batch_size, "threads": threads}
            for i in todo]


def _run_job(spark: Any, data_dir: str, layout: Layout, catalog: Any, keys: list[str], config: dict,
             stamps: list[dict], todo: list[int], shard_rows: int, batch_size: int) -> dict:
    """Submit the shards still to do as one task each, then write the report and summary as the local engine does."""
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    images = catalog["image"].tolist()
    tasks = make_tasks(data_dir, stamps, todo, keys, images, batch_size, threads)
    log.info("spark (%s): %d of %d shards to embed, %d kept", spark.sparkContext.master, len(todo), len(stamps),
             len(stamps) - len(todo))
    started = time.perf_counter()
    results = (spark.sparkContext.parallelize(tasks, max(len(tasks), 1)).map(embed_task).collect()
               if tasks else [])
    seconds = time.perf_counter() - started
    if is_s3(data_dir):
        _pull_stamps(data_dir, layout, len(stamps))
    layout.embeddings.mkdir(parents=True, exist_ok=True)
    summary = shards.finish(layout, catalog, config, len(stamps), shard_rows, len(stamps) - len(todo),
                            sum(r["computed"] for r in results), seconds, "spark")
    summary["spark"] = {"master": spark.sparkContext.master, "tasks": len(results),
                        "python_workers": len({r["pid"] for r in results}),
                        "extractor_loads": sum(1 for r in results if r["load_s"]),
                        "worker_start_s": max((r["load_s"] for r in results), default=0.0),
                        "task_seconds": round(sum(r["seconds"] + r["load_s"] for r in results), 3)}
    storage.write_json(layout.embeddings_summary, summary)
    if is_s3(data_dir):
        _push_results(data_dir, layout, len(stamps))
    return summary


def _driver_view(root: str, tmp: Path) -> Path:
    """Mirror what the driver reads of an S3 data dir (catalog.csv, the extractor's config, the stamps) locally."""
    client = storage.s3_client()
    bucket, prefix = storage.split_s3(root.rstrip("/"))
    layout = Layout(tmp)
    wanted = {f"{CATALOG_DIR}/{CATALOG_CSV}": layout.catalog_csv,
              f"{MODEL_DIR}/{EXTRACTOR_DIR}/{EXTRACTOR_CONFIG}": layout.extractor / EXTRACTOR_CONFIG}
    for rel, target in wanted.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, f"{prefix}/{rel}", str(target))
        except Exception as error:
            raise StageError(f"{root}/{rel} could not be read ({error}); run acquire and finetune, and "
                                    "upload the data dir") from error
    layout.embeddings.mkdir(parents=True, exist_ok=True)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{EMBEDDINGS_DIR}/")
    for obj in (o for page in pages for o in page.get("Contents", [])):
        name = obj["Key"].rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(".json"):
            client.download_file(bucket, obj["Key"], str(layout.embeddings / name))
            (layout.embeddings / name.replace(".json", ".npy")).touch()  # is_current needs the shard to exist
    return tmp


def _pull_stamps(root: str, layout: Layout, n_shards: int) -> None:
    """Fetch every shard's stamp after the job (finish reads them)."""
    client = storage.s3_client()
    bucket, prefix = storage.split_s3(f"{root.rstrip('/')}/{EMBEDDINGS_DIR}")
    for i in range(n_shards):
        client.download_file(bucket, f"{prefix}/{SHARD_STAMP.format(index=i)}", str(layout.shard_stamp(i)))


def _push_results(root: str, layout: Layout, n_shards: int) -> None:
    """Upload the summary and the unreadable images' report; delete shards past the catalog's end on S3."""
    client = storage.s3_client()
    bucket, prefix = storage.split_s3(root.rstrip("/"))
    client.upload_file(str(layout.embeddings_summary), bucket, f"{prefix}/{EMBEDDINGS_DIR}/{EMBEDDINGS_SUMMARY}")
    client.upload_file(str(layout.vectorize_rejects_csv), bucket, f"{prefix}/{CATALOG_DIR}/{VECTORIZE_REJECTS_CSV}")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{EMBEDDINGS_DIR}/part-")
    for obj in (o for page in pages for o in page.get("Contents", [])):
        if embeddings.shard_number(obj["Key"]) >= n_shards:
            client.delete_object(Bucket=bucket, Key=obj["Key"])
