"""Serving memory of one saved nearest-neighbour index, measured the same way for every method of ann_methods.

A fresh Python process imports the method's library, loads the saved index from disk exactly as a server
would, answers the queries, and reports how much its resident memory (VmRSS) grew from just before the
load to just after the last query. Page-cache pages of a memory-mapped file (Annoy) count once they are
touched, as they do for a server process.

    python -m benchmarks.ann_memory annoy INDEX_FILE QUERIES.npy --dim 256 --setting 4000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.common import rss_mib  # noqa: E402

K = 10
KINDS = ("exact", "lsh", "annoy", "annoy-rerank", "hnswlib", "faiss")


def _loader(kind: str, path: Path, dim: int, setting: int):
    """Import the library, then return a function that loads the index and returns a search function."""
    if kind == "exact":
        def load():
            base = np.load(path)
            return lambda q: np.argpartition(-(base @ q), K)[:K]
    elif kind == "lsh":
        import benchmarks.lsh  # noqa: F401  (the pickle needs the class)

        def load():
            with open(path, "rb") as fh:
                index = pickle.load(fh)
            return lambda q: index.query(q, K)
    elif kind in ("annoy", "annoy-rerank"):
        from annoy import AnnoyIndex

        def load():
            index = AnnoyIndex(dim, "angular")
            index.load(str(path), prefault=True)  # as the service loads it
            if kind == "annoy":
                return lambda q: index.get_nns_by_vector(q, K, search_k=setting)
            extra = np.load(path.with_suffix(".npz"))
            basis, full = extra["basis"], np.load(path.with_suffix(".full.npy"), mmap_mode="r")

            def search(q):
                cand = np.array(index.get_nns_by_vector(q @ basis, 5 * K, search_k=setting))
                return cand[np.argsort(-(full[cand] @ q))[:K]]
            return search
    elif kind == "hnswlib":
        import hnswlib

        def load():
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(path))
            index.set_num_threads(1)
            index.set_ef(max(setting, K))
            return lambda q: index.knn_query(q, K)[0][0]
    elif kind == "faiss":
        import faiss

        def load():
            faiss.omp_set_num_threads(1)
            index = faiss.read_index(str(path))
            if hasattr(index, "hnsw"):
                index.hnsw.efSearch = max(setting, K)
            return lambda q: index.search(q[None], K)[1][0]
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return load


def measure(kind: str, path: Path, queries: np.ndarray, dim: int, setting: int = 0) -> float:
    """Resident MiB that loading `path` and answering `queries` adds to this process."""
    load = _loader(kind, path, dim, setting)
    before = rss_mib()
    search = load()
    for q in queries:
        search(q)
    return rss_mib() - before


SERVE_QUERIES = 300


def serve_mb(kind: str, path: Path, queries: np.ndarray, dim: int, setting: int = 0) -> float:
    """Run `measure` in a fresh process (so nothing this process holds is counted) and return its MiB.

    The first SERVE_QUERIES queries are answered: enough to touch what a query path touches.
    """
    qpath = path.parent / f"{path.name}.queries.npy"
    np.save(qpath, np.ascontiguousarray(queries[:SERVE_QUERIES], np.float32))
    try:
        command = [sys.executable, "-m", "benchmarks.ann_memory", kind, str(path), str(qpath), "--dim", str(dim),
                   "--setting", str(setting)]
        out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    finally:
        qpath.unlink(missing_ok=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["serve_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("path", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--setting", type=int, default=0, help="search_k (Annoy) or ef (HNSW)")
    args = parser.parse_args()
    queries = np.load(args.queries)
    print(json.dumps({"serve_mb": round(measure(args.kind, args.path, queries, args.dim, args.setting), 1)}))


if __name__ == "__main__":
    main()
