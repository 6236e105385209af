"""Prometheus text-format metrics of one worker: requests, latencies (histograms) and errors."""

from __future__ import annotations

import os
import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "visual_search"
EXTENSION = "visual_search_metrics"  # the key of the app's Metrics on app.extensions


def get_metrics() -> Metrics:
    """Return the current app's metrics registry."""
    from flask import current_app

    return current_app.extensions[EXTENSION]


class Metrics:
    """Counters and histograms kept in memory, rendered in the Prometheus exposition format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.stages: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.stage_sum: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}

    @staticmethod
    def _observe(hist: list[int], seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist[i] += 1
                return
        hist[-1] += 1

    def record(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        with self._lock:
            self.requests[(endpoint, method, status)] += 1
            self._observe(self.latency[endpoint], seconds)
            self.latency_sum[endpoint] += seconds

    def stage(self, name: str, seconds: float) -> None:
        """Record the time of one stage of a search (decode, embed, search)."""
        with self._lock:
            self._observe(self.stages[name], seconds)
            self.stage_sum[name] += seconds

    def render(self) -> str:
        """Return every metric in the Prometheus text format."""
        pid = os.getpid()
        lines = [f"# HELP {PREFIX}_requests_total HTTP requests by endpoint, method and status.",
                 f"# TYPE {PREFIX}_requests_total counter"]
        with self._lock:
            for (endpoint, method, status), count in sorted(self.requests.items()):
                lines.append(f'{PREFIX}_requests_total{{endpoint="{endpoint}",method="{method}",status="{status}",'
                             f'worker="{pid}"}} {count}')
            lines += [f"# HELP {PREFIX}_errors_total Responses with a 4xx or 5xx status.",
                      f"# TYPE {PREFIX}_errors_total counter"]
            for klass in ("4xx", "5xx"):
                total = sum(c for (_, _, s), c in self.requests.items() if str(s)[0] == klass[0])
                lines.append(f'{PREFIX}_errors_total{{class="{klass}",worker="{pid}"}} {total}')
            for name, hists, sums, label, help_text in (
                    ("request_duration_seconds", self.latency, self.latency_sum, "endpoint", "Request latency."),
                    ("search_stage_seconds", self.stages, self.stage_sum, "stage", "Time per search stage.")):
                lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} histogram"]
                for key, hist in sorted(hists.items()):
                    cumulative = 0
                    for bound, count in zip((*BUCKETS, "+Inf"), hist, strict=True):
                        cumulative += count
                        lines.append(f'{PREFIX}_{name}_bucket{{{label}="{key}",le="{bound}",worker="{pid}"}} '
                                     f"{cumulative}")
                    lines.append(f'{PREFIX}_{name}_sum{{{label}="{key}",worker="{pid}"}} {sums[key]:.6f}')
                    lines.append(f'{PREFIX}_{name}_count{{{label}="{key}",worker="{pid}"}} {cumulative}')
            for gauge, value in sorted(self.gauges.items()):
                lines += [f"# TYPE {PREFIX}_{gauge} gauge", f'{PREFIX}_{gauge}{{worker="{pid}"}} {value}']
        return "\n".join(lines) + "\n"
