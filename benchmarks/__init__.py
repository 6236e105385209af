"""Benchmarks that print figures (`python -m benchmarks.<name> --help`); timed tests do not exist here.

- ann_methods: nearest-neighbour methods (exact scan, LSH, Annoy, Annoy on a projection, hnswlib, faiss) on
  real and synthetic vectors: recall against speed, build time, size and serving memory (with ann_memory,
  ann_report, lsh, vectors);
- dataset_difficulty: how hard each vector set is for nearest-neighbour search;
- vectorize_throughput: the bare encoder's images/s next to the vectorize stage's, and backbone passes per image;
- service_latency: the service over HTTP under gunicorn against one bare encoder pass, and under load;
- worker_memory: each gunicorn worker's private and shared memory for 1, 2, 4 workers (and set-ups side by side);
- serving_footprint: what the Beanstalk bundle carries and what the serving environment installs.
Shared helpers (HTTP timing, gunicorn start-up, /proc memory readers) are in `common`.
"""
