"""The least a Flask search endpoint can do under gunicorn: read the upload, decode it, run the encoder, answer.

`python -m benchmarks.service_latency --floor` serves this app with the service's own gunicorn.conf.py, beside the
service and in the same rounds. Its latency minus decode + encoder is what gunicorn, Flask and the kernel cost any
Python app on this machine; the service's latency minus the floor's is what the service itself adds (options,
search, result JSON). It answers only `POST /api/search` (a multipart `image`) and `GET /health`.

    ARTIFACTS=data/demo/index/current gunicorn -c gunicorn.conf.py benchmarks.floor_app:application
"""

from __future__ import annotations

import os
import time

from flask import Flask, g, jsonify, request

from runtime import artifacts
from runtime.extractor import load_extractor
from runtime.layout import EXTRACTOR_DIR
from service.config import encoder_threads, load_config
from service.forms import parse_multipart
from service.uploads import decode

LIMITS = load_config({}, environ={})  # the service's default limits, for decoding as a worker does


def create_floor_app(index: str) -> Flask:
    """A Flask app that embeds an uploaded photo with the extractor of `index` and returns the vector's norm."""
    folder = artifacts.resolve_index(index)
    extractor = load_extractor(folder / EXTRACTOR_DIR, encoder_threads({"ENCODER_THREADS": 0}))
    app = Flask(__name__)

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def server_timing(response):
        response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - g.started):.3f}"
        return response

    @app.post("/api/search")
    def search():
        boundary = request.mimetype_params.get("boundary", "").encode("latin-1")
        photo = parse_multipart(request.get_data(), boundary)[1]["image"].read()
        pixels = decode(photo, LIMITS, extractor.input_size).pixels
        vector = extractor.embed(pixels[None])[0]
        return jsonify({"norm": float((vector ** 2).sum())})

    @app.get("/health")
    def health():
        return jsonify({"worker": os.getpid()})

    return app


application = create_floor_app(os.environ["ARTIFACTS"]) if "ARTIFACTS" in os.environ else None
