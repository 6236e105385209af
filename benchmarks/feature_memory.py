"""Benchmark: peak resident memory of finetune and vectorize over a feature cache of N synthetic rows, for several N.

For each N, a data dir gets a catalog of N products (synthetic sha256s, 100 classes) and a feature cache
filled with N random float32 rows of `--dim` features, written part by part, under the fingerprint of a
small TF Hub-style SavedModel that outputs `--dim` features (built here). finetune then trains its head from
that cache (every feature cached: no backbone pass) and vectorize embeds every row; each runs in a fresh
process, and its own peak RSS (/proc VmHWM, read as it exits) is printed. Flat figures across N
are the point: the target is under 3 GiB for each stage at 1M x 2,048.

    python -m benchmarks.feature_memory --rows 100000 1000000 --dim 2048 --work-dir /tmp/feature-memory
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

PART_ROWS = 1024
CLASSES = 100


def hub_model(path: Path, dim: int) -> Path:
    """Save a tiny SavedModel (images -> `dim` features) that the `hub:` encoder loads."""
    from runtime import tfenv

    keras = tfenv.keras()
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.AveragePooling2D(56)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(dim)(x))
    model.save(str(path), save_format="tf")
    return path


def synthetic_data_dir(data: Path, rows: int, dim: int, fingerprint: str, seed: int = 0) -> None:
    """Write a catalog of `rows` products and their cached features (random), part by part."""
    from pipeline.features.cache import FeatureCache
    from runtime.layout import Layout

    layout = Layout(data)
    layout.catalog.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cache = FeatureCache(layout.features(fingerprint))
    with open(layout.catalog_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["product_id", "name", "category", "image", "sha256"])
        for start in tqdm(range(0, rows, PART_ROWS), desc=f"cache {rows}", unit="part", disable=None):
            n = min(PART_ROWS, rows - start)
            keys = [f"{i:064x}" for i in range(start, start + n)]
            labels = rng.integers(0, CLASSES, n)
            cache.add(keys, rng.standard_normal((n, dim), dtype=np.float32))
            writer.writerows([i, f"product {i}", f"class-{c}", f"images/class-{c}/{i}.jpg", k]
                             for i, c, k in zip(range(start, start + n), labels, keys, strict=True))


# Runs a module and writes its process's own peak RSS (VmHWM, KiB) to a file at exit. wait4's ru_maxrss is not
# that: Linux keeps the pre-exec high-water mark, so a child forked from a large parent (pytest after training
# tests) reports at least the parent's RSS.
_REPORT_PEAK = """
import atexit, runpy, sys
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
def report():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    with open(out, "w") as f:
        f.write(kib)
atexit.register(report)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def peak_mib(command: list[str]) -> tuple[float, float]:
    """Run `[python, "-m", module, *args]` in a fresh process; return (its own peak RSS in MiB, seconds)."""
    if len(command) < 3 or command[1] != "-m":
        raise ValueError(f"expected [python, '-m', module, ...], got {command}")
    module, args = command[2], command[3:]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "peak"
        command = [command[0], "-c", _REPORT_PEAK, str(report), module, *args]
        returncode = subprocess.run(command, stdout=subprocess.DEVNULL, check=False).returncode
        if returncode:
            raise RuntimeError(f"python -m {module} {' '.join(args)} exited {returncode}")
        return int(report.read_text()) / 1024, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=2048, help="feature length (BiT-M R50x1: 2,048)")
    parser.add_argument("--epochs", type=int, default=1, help="head epochs (memory does not grow with them)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the data dirs go (default: temporary)")
    args = parser.parse_args(argv)
    from pipeline.encoders.backbones import load_encoder

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="feature-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "hub-model"
    if not model.is_dir():
        hub_model(model, args.dim)
    fingerprint = load_encoder(f"hub:{model}").fingerprint
    table = []
    for rows in args.rows:
        data = work / f"rows-{rows}"
        shutil.rmtree(data, ignore_errors=True)
        synthetic_data_dir(data, rows, args.dim, fingerprint)
        cache_gib = sum(p.stat().st_size for p in data.rglob("part-*.npy")) / 2**30
        stage = [sys.executable, "-m", "pipeline"]
        finetune_mib, finetune_s = peak_mib([*stage, "finetune", "--data-dir", str(data), "--encoder", f"hub:{model}",
                                             "--epochs", str(args.epochs)])
        vectorize_mib, vectorize_s = peak_mib([*stage, "vectorize", "--data-dir", str(data)])
        table.append((rows, cache_gib, finetune_mib, finetune_s, vectorize_mib, vectorize_s))
        if not args.work_dir:
            shutil.rmtree(data, ignore_errors=True)
    print(f"\nfeature_memory: {args.dim}-d float32 features, {CLASSES} classes, {args.epochs} head epoch(s), "
          f"{os.cpu_count()} CPUs")
    print(f"{'rows':>10} {'cache GiB':>10} {'finetune peak MiB':>18} {'s':>7} {'vectorize peak MiB':>19} {'s':>7}")
    for rows, gib, f_mib, f_s, v_mib, v_s in table:
        print(f"{rows:>10,} {gib:>10.2f} {f_mib:>18,.0f} {f_s:>7.1f} {v_mib:>19,.0f} {v_s:>7.1f}")


if __name__ == "__main__":
    main()
