"""gunicorn settings for the query service (Procfile: `gunicorn -c gunicorn.conf.py application:application`).

A worker loads and warms its index while it boots (application.py) and accepts connections only after, so a
new instance or a restarted worker never answers "not loaded" to a shopper; the listening socket is shared, and
connections wait in its backlog for a ready worker. While it boots, a worker's heartbeat is kept by a thread
(`post_fork`), so a long load is not mistaken for a hung worker and `timeout` stays short for real hangs.
"""

import os
import shutil
import tempfile
import threading

# Elastic Beanstalk's nginx proxies to port 8000 (PORT); locally, e.g. PORT=8080.
# One BLAS thread per worker: a query's matrix-vector product is too small to share, and OpenBLAS threads spin
# after each call, so two workers' spare threads slowed each other's queries by a third (docs/service.md, "Hot path").
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# TensorFlow hangs in workers forked after it was imported: each worker imports the app (and TF) itself.
preload_app = False
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))  # a request (not a boot) running longer is a hung worker
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
BOOT_HEARTBEAT_S = 2.0

# prometheus_client's multiprocess mode: each worker writes its values under this folder and /metrics sums them.
# One folder per gunicorn master (several may run on one machine), emptied when the master starts.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="visual-search-metrics-")


def on_starting(server) -> None:
    """Start from an empty metrics folder: values of a previous master's workers are not this one's."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))


def post_fork(server, worker) -> None:
    """Keep the worker's heartbeat while it loads its index (the arbiter kills workers silent for `timeout`)."""

    def beat() -> None:
        while not worker.booted and worker.alive:
            worker.tmp.notify()
            threading.Event().wait(BOOT_HEARTBEAT_S)

    threading.Thread(target=beat, name="boot-heartbeat", daemon=True).start()


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics folder this master made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
