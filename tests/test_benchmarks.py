"""The benchmarks' own logic: the seeds' LSH, Annoy on a projection re-ranked exactly, the synthetic 1M data dir,
serving memory in a fresh process, dataset difficulty, and the serving footprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.ann_memory import serve_mb
from benchmarks.ann_methods import bench_annoy, exact_truth, recall
from benchmarks.dataset_difficulty import difficulty
from benchmarks.lsh import RandomProjectionLSH
from benchmarks.vectors import clustered
from pipeline import index
from service.searcher import Searcher


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(3000, 64, seed=1, clusters=50)
    base, queries = vectors[200:], vectors[:200]
    return base, queries, exact_truth(base, queries)


def test_clustered_vectors_are_unit_and_reproducible() -> None:
    a, b = clustered(500, 32, seed=3), clustered(500, 32, seed=3)
    assert np.array_equal(a, b) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_lsh_finds_neighbours_and_more_tables_find_more(data) -> None:
    base, queries, truth = data
    few = RandomProjectionLSH(base.shape[1], tables=2, bits=10).build(base)
    many = RandomProjectionLSH(base.shape[1], tables=32, bits=10).build(base)
    recall_few = recall([few.query(q, 10) for q in queries], truth)
    recall_many = recall([many.query(q, 10) for q in queries], truth)
    assert recall_many > recall_few and recall_many >= 0.9
    # A stored vector always lands in its own bucket, and results are ordered by exact cosine.
    ids = many.query(base[17], 10)
    assert ids[0] == 17
    scores = base[ids] @ base[17]
    assert np.all(np.diff(scores) <= 1e-6)
    assert len(many.candidates(base[17])) < len(base)  # it is a filter, not a scan


def test_lsh_rejects_impossible_bit_counts() -> None:
    with pytest.raises(ValueError, match="bits must be between 1 and 62"):
        RandomProjectionLSH(8, bits=64)


def test_annoy_on_a_projection_with_exact_reranking_keeps_recall(data, tmp_path) -> None:
    base, queries, truth = data
    rows = bench_annoy("small", base, queries, truth, [20], [8], tmp_path, project=16)
    assert rows[0]["method"] == "Annoy PCA-16 + exact re-rank" and rows[0]["recall_at_10"] >= 0.9
    plain = bench_annoy("small", base, queries, truth, [20], [8], tmp_path)
    assert plain[0]["recall_at_10"] >= 0.95


def test_synthetic_data_dir_goes_through_the_index_stage_and_the_searcher(demo_index, tmp_path, monkeypatch) -> None:
    from scripts.make_synthetic_data_dir import make
    summary = make(tmp_path / "syn", 3000, demo_index, clusters=30, images=5)
    assert summary["rows"] == 3000 and summary["dim"] == 32
    monkeypatch.setattr(index, "ON_DISK_ABOVE", 0)  # the path a 1M x 256 build takes: trees built in the file
    manifest = index.run(tmp_path / "syn", trees=8)
    assert manifest["count"] == 3000 and manifest["search_k_measurements"][-1]["recall_at_10"] >= 0.99
    assert manifest["index_bytes"] > 3000 * 32 * 4
    searcher = Searcher(tmp_path / "syn")
    # the searcher serves as the index stage measured
    assert searcher.products.exact is (manifest["strategy"] == "exact")
    assert len(list((searcher.folder / "thumbs").iterdir())) <= 5  # one thumbnail per distinct image
    for exact in (True, False):
        searcher.products.exact = exact
        found = [m.item["id"] for m in searcher.similar("S0000007", 10)]
        vectors = np.array(searcher.vectors)
        truth = exact_truth(vectors, vectors[7:8], 11)[0][1:].tolist()
        assert len(set(found) & set(truth)) >= 9
    with pytest.raises(FileExistsError, match="not empty"):
        make(tmp_path / "syn", 10, demo_index)


def test_serving_memory_is_measured_in_a_fresh_process(tmp_path) -> None:
    base = clustered(20_000, 128, seed=5)  # 9.8 MiB
    np.save(tmp_path / "base.npy", base)
    grown = serve_mb("exact", tmp_path / "base.npy", base[:20], base.shape[1])
    assert 0.8 * base.nbytes / 2**20 <= grown <= 3 * base.nbytes / 2**20
    with pytest.raises(Exception, match="returned non-zero"):
        serve_mb("exact", tmp_path / "missing.npy", base[:2], base.shape[1])


def test_difficulty_sees_intrinsic_dimension_and_contrast() -> None:
    rng = np.random.default_rng(0)
    low = np.zeros((5000, 64), np.float32)
    low[:, :4] = rng.standard_normal((5000, 4))  # a 4-d subspace of a 64-d space
    high = rng.standard_normal((5000, 64)).astype(np.float32)
    low /= np.linalg.norm(low, axis=1, keepdims=True)
    high /= np.linalg.norm(high, axis=1, keepdims=True)
    easy, hard = difficulty(low[100:], low[:100]), difficulty(high[100:], high[:100])
    assert easy["lid"] < 6 < 20 < hard["lid"]
    assert easy["relative_contrast"] > hard["relative_contrast"] > 1


def test_feature_memory_runs_both_stages_in_fresh_processes_and_prints_their_peaks(tmp_path, capsys) -> None:
    from benchmarks import feature_memory

    feature_memory.main(["--rows", "3000", "--dim", "64", "--work-dir", str(tmp_path)])
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("3,000"))
    finetune_mib, vectorize_mib = float(row[2].replace(",", "")), float(row[4].replace(",", ""))
    assert 100 < finetune_mib < 3072 and 100 < vectorize_mib < 3072
    summary = (tmp_path / "rows-3000" / "embeddings" / "embeddings.json").read_text()
    assert '"rows": 3000' in summary and '"backbone_images_computed": 0' in summary  # every feature came from the cache


def test_extractor_latency_times_each_extractor_and_its_ratio_to_the_first(built, tmp_path, capsys) -> None:
    from benchmarks import extractor_latency

    image = next((built / "catalog" / "images").rglob("*.jpg"))
    extractor_latency.main(["--image", str(image), "--rounds", "3", "--extractor", f"a={built / 'model' / 'extractor'}",
                            "--extractor", f"b={built / 'index' / 'current'}"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("a ", "b "))]
    assert len(lines) == 2 and all("(n=3)" in line for line in lines) and "p50 1.00x the first" in lines[0]


def test_server_timing_reads_each_metric_duration() -> None:
    from benchmarks.common import server_timing

    header = "parse;dur=0.21, cache;desc=\"hit\", embed;desc=x;dur=1.5,app;dur=3"
    assert server_timing(header) == {"parse": 0.21, "embed": 1.5, "app": 3.0}
    assert server_timing("") == {}


def test_raw_request_returns_at_content_length_not_at_close() -> None:
    import http.server
    import threading
    import time

    from tests.helpers import free_port, raw_request

    class Lingering(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Server-Timing", "app;dur=0.5")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            time.sleep(2)  # the connection stays open after the answer: a client waiting for the close waits 2 s

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Lingering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reply = raw_request(port, "/echo", b"x" * 70_000, "application/octet-stream", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert reply.status == 201 and reply.body == b"x" * 70_000 and reply.headers["Server-Timing"] == "app;dur=0.5"
    assert reply.seconds < 1.5


def test_floor_app_embeds_an_upload_and_nothing_else(demo_index) -> None:
    from benchmarks.common import multipart
    from benchmarks.floor_app import create_floor_app
    from runtime.artifacts import resolve_index

    client = create_floor_app(str(demo_index / "index" / "current")).test_client()
    photo = next(resolve_index(demo_index / "index" / "current").rglob("*.jpg")).read_bytes()
    body, content_type = multipart("image", "q.jpg", photo)
    response = client.post("/api/search", data=body, content_type=content_type)
    assert response.status_code == 200 and abs(response.get_json()["norm"] - 1) < 1e-4  # the extractor's unit vector
    assert "app;dur=" in response.headers["Server-Timing"]
    assert client.get("/health").get_json()["worker"] > 0


def test_service_latency_runs_the_service_and_the_floor_in_the_same_rounds(demo_index, capsys) -> None:
    from benchmarks import service_latency

    service_latency.main(["--index", str(demo_index / "index" / "current"), "--requests", "6", "--seconds", "1",
                          "--workers", "1", "--floor"])
    out = capsys.readouterr().out
    for line in ("JPEG decode + encoder, in rounds", "POST /api/search (HTTP)", "floor app (decode + encoder)",
                 "search p50 - floor p50", "Server-Timing p50 (ms): parse", "GET /api/products/<id>/similar"):
        assert line in out, out
    assert "errors 0 (goal 0)" in out and "(n=6)" in out


def test_near_duplicates_benchmark_prints_the_calibration_and_the_reproduction(demo_index, capsys) -> None:
    from benchmarks import near_duplicates as bench

    bench.main(["--data-dir", str(demo_index), "--thresholds", "0.99", "--factors", "0.1"])
    out = capsys.readouterr().out
    assert "calibrated: median similarity to the nearest other product" in out
    rows = [line for line in out.splitlines() if line.startswith(("| calibrated", "| 0.99 ", "| factor 0.1"))]
    assert len(rows) == 3 and all(" of " in row for row in rows)
    bench.main(["--synthetic", "3000"])
    out = capsys.readouterr().out
    assert "30 planted copies" in out and "1.0000 of them grouped with their original" in out


def test_index_scale_builds_indexes_and_serves_them(demo_index, tmp_path, capsys) -> None:
    from benchmarks import index_scale

    cgroup = index_scale.cgroups_available()  # root with cgroup v1, as on this machine
    index_scale.main(["--sizes", "3000", "--extractor-from", str(demo_index), "--work", str(tmp_path),
                      "--requests", "5", "--trees", "4", *(["--memory-limit", "4"] if cgroup else [])])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 3,000 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 12 and cells[-3].endswith(" ms") and cells[4].endswith(" GiB")  # peak anonymous
    assert "with 4 trees" in out
    if cgroup:  # the stage's cgroup peak, and the group removed afterwards
        assert cells[5].endswith(" GiB") and not list(index_scale.CGROUP_V1.glob("index-scale-*"))
    else:
        assert cells[5] == "-"
    assert list(tmp_path.iterdir()) == []  # the data dir is deleted: at 10M it is tens of GB


def test_catalog_refresh_runs_three_pipelines_and_prints_their_shares(tiny_hub_model, tmp_path, capsys) -> None:
    from benchmarks import catalog_refresh

    catalog_refresh.main(["--n", "120", "--work", str(tmp_path), "--encoder", f"hub:{tiny_hub_model}",
                          "--encoder-weights", ""])
    out = capsys.readouterr().out
    assert "delta: 0 added, 0 removed, 1 renamed" in out
    for stage in catalog_refresh.STAGES:
        assert sum(line.startswith(f"| {stage} |") for line in out.splitlines()) == 1
    assert "nothing changed: " in out and "of the first run (target <= 5%)" in out


def test_catalog_memory_measures_each_way_in_a_fresh_process(tmp_path, capsys) -> None:
    from benchmarks import catalog_memory

    catalog_memory.main(["--rows", "3000", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and " GiB |" in line]
    assert any(line.startswith("| without acquire's source columns, Python strings (the index stage) |")
               for line in rows)
    assert len(rows) + out.count("left out, pyarrow is not installed") == len(catalog_memory.WAYS)
    assert list(tmp_path.iterdir()) == []  # the CSV goes with its temporary folder


def test_delta_benchmarks_measure_and_leave_the_data_dir_as_it_was(own_index, capsys) -> None:
    from benchmarks import delta_index, delta_serving

    current = (own_index / "index" / "current").resolve()
    catalog = (own_index / "catalog" / "catalog.csv").read_bytes()
    delta_serving.main(["--data-dir", str(own_index), "--shares", "0.1", "--queries", "20"])
    out = capsys.readouterr().out
    assert "| 10% removed |" in out and "| 10% changed |" in out
    changed = next(line for line in out.splitlines() if line.startswith("| 10% changed |"))
    assert float(changed.rstrip(" |").split("|")[-1]) >= 0.98  # scanned exactly: the same top 10 (ties aside)
    delta_index.main(["--data-dir", str(own_index), "--share", "0.05"])
    out = capsys.readouterr().out
    assert "'changed': " in out and "'removed': 0, 'added': 0" in out
    assert (own_index / "index" / "current").resolve() == current
    assert sorted(p.name for p in (own_index / "index").iterdir() if p.is_dir() and not p.is_symlink()) == \
        [current.name]
    assert (own_index / "catalog" / "catalog.csv").read_bytes() == catalog


def test_items_reading_times_every_reader_in_a_fresh_process(capsys) -> None:
    from benchmarks import items_reading

    items_reading.main(["--products", "500,1500"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith(("500", "1,500"))]
    assert sorted((row[0], row[2]) for row in rows) == sorted(
        (n, reader) for n in ("500", "1,500") for reader in items_reading.READERS)
    assert all(float(row[-2]) >= 0 and float(row[-1]) > 20 for row in rows)  # seconds, and a Python process


def test_vectorize_views_runs_both_ways_of_cutting_views_in_turns(sample_catalog, tmp_path, capsys) -> None:
    from benchmarks import vectorize_views
    from tests.conftest import shared_path

    weights = shared_path("models", "mobilenet_v3_small_075_224_embedder.tflite")
    vectorize_views.main(["--source", f"fashion:{sample_catalog}", "--weights", str(weights), "--rounds", "1",
                          "--work-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for mode in vectorize_views.MODES:
        line = next(line for line in out.splitlines() if line.startswith(mode))
        assert float(line.split()[-1]) > 0
    configs = [json.loads((tmp_path / d / "model" / "extractor" / "extractor.json").read_text())
               for d in ("cut", "inside")]
    assert [c["views_in_backbone"] for c in configs] == [False, True] and {c["multicrop"] for c in configs} == {0.5}
