"""Benchmark nearest-neighbour search: exact scan, the seeds' LSH, Annoy (grid), Annoy on a projection with exact
re-ranking, hnswlib and faiss, on real embeddings and on synthetic clustered unit vectors.

Queries run one at a time on one thread (BLAS and OpenMP are pinned to one thread before numpy loads);
builds may use every core. Prints a table and writes it, as Markdown and JSON, with a recall-vs-queries/s
chart, to --out.

    python -m benchmarks.ann_methods --data-dir /tmp/fs-mediapipe --sizes 100000 --dims 256,2048
    python -m benchmarks.ann_methods --sizes 1000000 --dims 256 --annoy-trees 50,100
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before numpy loads; not when the tests import this module
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.ann_memory import serve_mb
from benchmarks.ann_report import write_report
from benchmarks.common import ROOT, peak_rss_mib, reset_peak
from benchmarks.lsh import RandomProjectionLSH
from benchmarks.vectors import clustered, real_datasets
from runtime.topk import exact_top_k

K = 10
CORES = os.cpu_count() or 1


def exact_truth(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Ids of the exact k nearest (cosine) neighbours of each query."""
    return np.concatenate([exact_top_k(base, queries[i:i + 100], k) for i in range(0, len(queries), 100)])


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Mean fraction of the exact top k found."""
    return float(np.mean([len(set(np.asarray(f)[:K].tolist()) & set(t.tolist())) / K
                          for f, t in zip(found, truth, strict=True)]))


def run_queries(search, queries: np.ndarray) -> tuple[list, np.ndarray]:
    """Run queries one at a time; return results and per-query seconds."""
    found, seconds = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        started = time.perf_counter()
        found.append(search(q))
        seconds[i] = time.perf_counter() - started
    return found, seconds


def row(dataset: str, method: str, params: str, found, seconds, truth, build_s=0.0, size=0, build_mb=0.0,
        serving=0.0) -> dict:
    return {"dataset": dataset, "method": method, "params": params, "recall_at_10": round(recall(found, truth), 4),
            "qps": round(len(seconds) / seconds.sum(), 1), "p50_ms": round(1000 * float(np.median(seconds)), 3),
            "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 3), "build_s": round(build_s, 2),
            "size_mb": round(size / 2**20, 1), "build_peak_mb": round(build_mb, 1), "serve_mb": round(serving, 1)}


def bench_exact(name, base, queries, truth, n_exact: int, tmp: Path) -> list[dict]:
    rows = []
    found, seconds = run_queries(lambda q: np.argpartition(-(base @ q), K)[:K], queries[:n_exact])
    path = tmp / "exact.npy"
    np.save(path, base)
    serving = serve_mb("exact", path, queries[:n_exact], base.shape[1])
    path.unlink()
    rows.append(row(name, "exact numpy", "matrix-vector + argpartition", found, seconds, truth[:n_exact],
                    size=base.nbytes, serving=serving))
    if len(base) == 100_000 and base.shape[1] == 256:  # the seeds' dict sort, timed once
        def dict_sort(q):
            scores = {i: float(s) for i, s in enumerate(base @ q)}
            return np.array([i for i, _ in sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:K]])
        found, seconds = run_queries(dict_sort, queries[:20])
        rows.append(row(name, "exact, Python dict sort (seeds)", "20 queries", found, seconds, truth[:20]))
    return rows


def bench_lsh(name, base, queries, truth, configs, tmp: Path) -> list[dict]:
    import pickle

    rows = []
    for tables, bits in configs:
        before = reset_peak()
        started = time.perf_counter()
        lsh = RandomProjectionLSH(base.shape[1], tables, bits).build(base)
        build_s = time.perf_counter() - started
        build_mb = peak_rss_mib() - before
        found, seconds = run_queries(lambda q, lsh=lsh: lsh.query(q, K), queries)
        path = tmp / "lsh.pickle"
        path.write_bytes(pickle.dumps(lsh, protocol=pickle.HIGHEST_PROTOCOL))
        serving = serve_mb("lsh", path, queries, base.shape[1])
        path.unlink()
        rows.append(row(name, "LSH (seeds)", f"tables={tables} bits={bits}", found, seconds, truth, build_s,
                        lsh.nbytes(), build_mb, serving))
    return rows


def bench_annoy(name, base, queries, truth, trees_grid, multipliers, tmp: Path, project: int | None = None) -> list:
    from annoy import AnnoyIndex

    rows = []
    vectors, q_vectors, label = base, queries, "Annoy"
    if project:  # PCA to `project` dims for the tree search, exact re-ranking with the full vectors
        sample = base[np.random.default_rng(0).choice(len(base), min(len(base), 20_000), replace=False)]
        _, _, vt = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
        basis = vt[:project].T.astype(np.float32)
        vectors, q_vectors, label = base @ basis, queries @ basis, f"Annoy PCA-{project} + exact re-rank"
    for trees in trees_grid:
        path = tmp / f"{name}-{trees}-{project}.ann"
        before = reset_peak()
        started = time.perf_counter()
        index = AnnoyIndex(vectors.shape[1], "angular")
        index.on_disk_build(str(path))
        for i in range(len(vectors)):
            index.add_item(i, vectors[i])
        index.build(trees, n_jobs=-1)
        build_s, build_mb = time.perf_counter() - started, peak_rss_mib() - before
        index.unload()
        index = AnnoyIndex(vectors.shape[1], "angular")
        index.load(str(path), prefault=True)  # as the service loads it: no page faults while timing
        if project:
            np.savez(path.with_suffix(".npz"), basis=basis)
            np.save(path.with_suffix(".full.npy"), base)
        serving = serve_mb("annoy-rerank" if project else "annoy", path, queries, vectors.shape[1],
                           K * trees * multipliers[-1])
        path.with_suffix(".npz").unlink(missing_ok=True)
        path.with_suffix(".full.npy").unlink(missing_ok=True)
        for mult in multipliers:
            search_k = K * trees * mult
            if project:
                def search(q, index=index, search_k=search_k):
                    cand = np.array(index.get_nns_by_vector(q @ basis, 5 * K, search_k=search_k))
                    return cand[np.argsort(-(base[cand] @ q))[:K]]
            else:
                def search(q, index=index, search_k=search_k):
                    return index.get_nns_by_vector(q, K, search_k=search_k)
            found, seconds = run_queries(search, queries if project else q_vectors)
            rows.append(row(name, label, f"trees={trees} search_k={search_k}", found, seconds, truth, build_s,
                            path.stat().st_size, build_mb, serving))
        index.unload()
        path.unlink()
    return rows


def bench_hnswlib(name, base, queries, truth, efs, tmp: Path) -> list[dict]:
    import hnswlib

    before = reset_peak()
    started = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=16, ef_construction=200)
    index.set_num_threads(CORES)
    index.add_items(base, np.arange(len(base)))
    build_s, build_mb = time.perf_counter() - started, peak_rss_mib() - before
    path = tmp / "hnsw.bin"
    index.save_index(str(path))
    index.set_num_threads(1)
    serving = serve_mb("hnswlib", path, queries, base.shape[1], efs[-1])
    rows = []
    for ef in efs:
        index.set_ef(max(ef, K))
        found, seconds = run_queries(lambda q: index.knn_query(q, K)[0][0], queries)
        rows.append(row(name, "hnswlib", f"M=16 efC=200 ef={ef}", found, seconds, truth, build_s,
                        path.stat().st_size, build_mb, serving))
    path.unlink()
    return rows


def bench_faiss(name, base, queries, truth, efs, n_exact: int, tmp: Path) -> list[dict]:
    import faiss

    rows = []
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    found, seconds = run_queries(lambda q: flat.search(q[None], K)[1][0], queries[:n_exact])
    path = tmp / "flat.index"
    faiss.write_index(flat, str(path))
    serving = serve_mb("faiss", path, queries[:n_exact], base.shape[1])
    path.unlink()
    rows.append(row(name, "faiss Flat (exact)", "IndexFlatIP", found, seconds, truth[:n_exact], 0, base.nbytes,
                    serving=serving))
    faiss.omp_set_num_threads(CORES)
    before = reset_peak()
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(base)
    build_s, build_mb = time.perf_counter() - started, peak_rss_mib() - before
    path = tmp / "faiss.index"
    faiss.write_index(index, str(path))
    faiss.omp_set_num_threads(1)
    serving = serve_mb("faiss", path, queries, base.shape[1], efs[-1])
    for ef in efs:
        index.hnsw.efSearch = max(ef, K)
        found, seconds = run_queries(lambda q: index.search(q[None], K)[1][0], queries)
        rows.append(row(name, "faiss HNSW", f"M=32 efC=200 ef={ef}", found, seconds, truth, build_s,
                        path.stat().st_size, build_mb, serving))
    path.unlink()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its table and chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, action="append", default=[], help="pipeline data dir (real data)")
    parser.add_argument("--sizes", default="100000", help="synthetic N values, comma-separated (0: none)")
    parser.add_argument("--dims", default="256", help="synthetic dimensions, comma-separated")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed for the exact scans")
    parser.add_argument("--annoy-trees", default="10,25,50,100")
    parser.add_argument("--multipliers", default="1,2,4,8,16,32,64", help="search_k = 10 * trees * m")
    parser.add_argument("--efs", default="10,16,32,64,128,256")
    parser.add_argument("--skip", default="", help="methods to skip: lsh,annoy,pca,hnswlib,faiss")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    args = parser.parse_args(argv)
    skip = set(args.skip.split(","))
    datasets = [d for path in args.data_dir for d in real_datasets(path, args.queries)]
    for n in (int(x) for x in args.sizes.split(",") if int(x)):
        for dim in (int(x) for x in args.dims.split(",")):
            vectors = clustered(n + args.queries, dim, seed=dim + n)
            datasets.append((f"synthetic clustered N={n:,} d={dim}", vectors[args.queries:], vectors[:args.queries]))
    trees = [int(x) for x in args.annoy_trees.split(",")]
    multipliers = [int(x) for x in args.multipliers.split(",")]
    efs = [int(x) for x in args.efs.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=ROOT / "data" if (ROOT / "data").is_dir() else None) as tmp:
        for name, base, queries in datasets:
            print(f"\n== {name}", flush=True)
            truth = exact_truth(base, queries)
            new = bench_exact(name, base, queries, truth, args.exact_queries, Path(tmp))
            n = len(base)
            if "lsh" not in skip:
                new += bench_lsh(name, base, queries, truth,
                                 [(8, max(4, int(np.log2(n)) - 6)), (16, max(4, int(np.log2(n)) - 5)),
                                  (32, max(4, int(np.log2(n)) - 4))], Path(tmp))
            if "annoy" not in skip:
                new += bench_annoy(name, base, queries, truth, trees, multipliers, Path(tmp))
            if "pca" not in skip and base.shape[1] > 64:
                new += bench_annoy(name, base, queries, truth, trees[-1:], multipliers, Path(tmp), project=64)
            if "hnswlib" not in skip:
                new += bench_hnswlib(name, base, queries, truth, efs, Path(tmp))
            if "faiss" not in skip:
                new += bench_faiss(name, base, queries, truth, efs, args.exact_queries, Path(tmp))
            for r in new:
                print(f"{r['method']:34s} {r['params']:28s} recall {r['recall_at_10']:.4f}  {r['qps']:9.1f} q/s  "
                      f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  build {r['build_s']:7.1f} s  size "
                      f"{r['size_mb']:7.1f} MB  build peak {r['build_peak_mb']:7.1f} MB  serve {r['serve_mb']:7.1f} MB",
                      flush=True)
            rows += new
    stem = f"index-{date.today().isoformat()}{'-' + args.tag if args.tag else ''}"
    command = "python -m benchmarks.ann_methods " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(rows, args.out, stem, command, CORES)
    print(f"\nwrote {args.out / stem}.md, .json and .png")


if __name__ == "__main__":
    main()
