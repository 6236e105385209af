"""Benchmark: vectorize's images/s on the local engine next to Spark, on the same images from an empty cache.

Both engines embed the same `--n` distinct fashion-small images with the same exported extractor (the
encoder with a raw head) and the same shards, each from an empty feature cache, alternating local and Spark
`--repeat` times in this one run (the machine is shared and noisy). The local figure is its embedding loop
(the extractor is loaded before it); Spark's counts from job submission to the last shard, so it includes
each Python worker's start (importing TensorFlow, loading the extractor: a fixed cost per executor), and
its steady state leaves that start out; a second pass on workers already started shows a long job's later
shards. Each engine is also timed as the command a user runs, in a fresh process. Spark's per-task overhead
is measured on a job of empty tasks.

    python -m benchmarks.spark_throughput                                  # MediaPipe embedder, local[2]
    python -m benchmarks.spark_throughput --encoder mobilenet-v1-0.25 \\
        --encoder-weights ../shared/models/mobilenet_2_5_224_tf_no_top.h5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED
from benchmarks.vectorize_throughput import prepare_data_dir
from pipeline import vectorize
from pipeline.catalog.table import catalog_inputs
from pipeline.vectorizing import shards, spark_engine
from runtime import storage
from runtime.layout import EXTRACTOR_CONFIG, Layout


def empty(data: Path) -> None:
    """Forget every embedding and cached feature (the next run starts from an empty cache)."""
    for folder in (Layout(data).embeddings, Layout(data).cache):
        shutil.rmtree(folder, ignore_errors=True)


def task_overhead_ms(master: str, tasks: int = 400) -> tuple[float, float, int]:
    """Return (session start s, ms of wall time per empty task times the slots, slots) for a Spark master."""
    started = time.perf_counter()
    spark = spark_engine.spark_session(master)
    session_s = time.perf_counter() - started
    context = spark.sparkContext
    try:
        context.parallelize(range(tasks), tasks).map(lambda x: x).collect()  # start the Python workers
        started = time.perf_counter()
        context.parallelize(range(tasks), tasks).map(lambda x: x).collect()
        wall = time.perf_counter() - started
        slots = context.defaultParallelism
        return session_s, 1000 * wall * slots / tasks, slots
    finally:
        spark.stop()


def warm_rate(data: Path, master: str, shard_rows: int, batch_size: int) -> float:
    """Images/s of Spark tasks on Python workers that have already run a task (a long job's later shards).

    The timed pass works on a second data dir (the same catalog and extractor, linked), so no worker finds the
    features its first pass computed.
    """
    layout = Layout(data)
    catalog, keys, _ = catalog_inputs(layout)
    export_id = storage.read_json(layout.extractor / EXTRACTOR_CONFIG)["export_id"]
    stamps = shards.plan(layout, keys, export_id, shard_rows)
    spark = spark_engine.spark_session(master)
    try:
        context = spark.sparkContext
        for root in (data, data / "warm"):  # the first pass starts the workers; the second is timed
            if root != data:
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                for folder in ("catalog", "model"):
                    (root / folder).symlink_to(data / folder)
            empty(root)
            Layout(root).embeddings.mkdir(parents=True)
            tasks = spark_engine.make_tasks(str(root), stamps, list(range(len(stamps))), keys,
                                               catalog["image"].tolist(), batch_size, 1)
            started = time.perf_counter()
            context.parallelize(tasks, len(tasks)).map(spark_engine.embed_task).collect()
        return len(keys) / (time.perf_counter() - started)
    finally:
        spark.stop()
        shutil.rmtree(data / "warm", ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=f"fashion:{SHARED / 'data' / 'fashion-small'}")
    parser.add_argument("--encoder", default="mediapipe-embedder", help="an encoder name; hub:PATH for a SavedModel")
    parser.add_argument("--encoder-weights",
                        default=str(SHARED / "models" / "mobilenet_v3_small_075_224_embedder.tflite"),
                        help="the encoder's weights file ('' for none, e.g. with hub:PATH)")
    parser.add_argument("--n", type=int, default=2000, help="catalog images (default 2000)")
    parser.add_argument("--shard-rows", type=int, default=250, help="rows per shard, i.e. per Spark task (250)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each engine, alternated (default 2)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data dir here (default: temporary)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.work_dir or Path(tmp)
        _, catalog = prepare_data_dir(args.source, data, args.n, args.encoder, args.encoder_weights or None)
        n = len(catalog)
        rates: dict[str, list[float]] = {"local": [], "spark": [], "steady": []}
        walls: dict[str, list[float]] = {"local": [], "spark": []}
        for _ in range(args.repeat):
            for engine in ("local", "spark"):
                empty(data)
                started = time.perf_counter()
                summary = vectorize.run(data, shard_rows=args.shard_rows, batch_size=args.batch_size, engine=engine,
                                        spark_master=args.master if engine == "spark" else None)
                walls[engine].append(n / (time.perf_counter() - started))
                rates[engine].append(n / summary["seconds"])
                if engine == "spark":  # without the Python workers' start (TensorFlow import, extractor load)
                    rates["steady"].append(n / (summary["seconds"] - summary["spark"]["worker_start_s"]))
                assert summary["backbone_images_computed"] == n, summary
        commands = {}  # what a user waits for: the command in a fresh process, start-up and all
        for engine in ("local", "spark"):
            empty(data)
            command = [sys.executable, "-m", "pipeline", "vectorize", "--data-dir", str(data), "--shard-rows",
                       str(args.shard_rows), "--batch-size", str(args.batch_size), "--engine", engine]
            started = time.perf_counter()
            subprocess.run(command + (["--spark-master", args.master] if engine == "spark" else []), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            commands[engine] = time.perf_counter() - started
        warm = warm_rate(data, args.master, args.shard_rows, args.batch_size)
        session_s, overhead_ms, slots = task_overhead_ms(args.master)
    local, spark = statistics.mean(rates["local"]), statistics.mean(rates["spark"])
    cores = os.cpu_count()
    print(f"\nspark_throughput: {n} distinct images, encoder {args.encoder}, {args.shard_rows} rows per shard "
          f"({-(-n // args.shard_rows)} tasks), batch {args.batch_size}, {cores} cores, {args.repeat} runs each")
    print(f"{'measure':52s} {'images/s':>10s}")
    print(f"{'local engine (one process, all cores)':52s} {local:10.1f}   runs {rates['local']}")
    print(f"{'spark ' + args.master + ' (submission to last shard)':52s} {spark:10.1f}   runs {rates['spark']}")
    print(f"{'spark / local':52s} {spark / local:10.2f}x  (goal >= 0.80x)")
    steady = statistics.mean(rates["steady"])
    print(f"{'spark, after its workers started (steady state)':52s} {steady:10.1f}   runs {rates['steady']}")
    print(f"{'spark steady state / local':52s} {steady / local:10.2f}x")
    print(f"{'local, wall incl. loading the extractor':52s} {statistics.mean(walls['local']):10.1f}")
    print(f"{'spark, wall incl. session start':52s} {statistics.mean(walls['spark']):10.1f}")
    print(f"{'spark steady state per executor core (' + str(slots) + ' slots)':52s} {steady / slots:10.1f}")
    print(f"{'spark on workers already started (a later pass)':52s} {warm:10.1f}   ({warm / local:.2f}x local)")
    print(f"{'the command in a fresh process, local (s)':52s} {commands['local']:10.1f}")
    print(f"{'the command in a fresh process, spark (s)':52s} {commands['spark']:10.1f}   "
          f"({commands['local'] / commands['spark']:.2f}x local's speed)")
    print(f"spark session start {session_s:.1f} s; per-task overhead {overhead_ms:.1f} ms (empty tasks, wall x slots "
          "/ tasks)")


if __name__ == "__main__":
    main()
