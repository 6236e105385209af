"""gunicorn settings for the query service (Procfile: `gunicorn -c gunicorn.conf.py application:application`)."""

import os

# Elastic Beanstalk's nginx proxies to port 8000 (PORT); locally, e.g. PORT=8080.
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# TensorFlow hangs in workers forked after it was imported: each worker imports the app (and TF) itself.
preload_app = False
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))  # loading a large index from S3 can take a while
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
