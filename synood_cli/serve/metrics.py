"""Service metrics in the Prometheus text format, kept by hand (no client library: a few counters).

Why a rolling OOD rate: a deployed detector's share of OOD calls drifting away from what it was
calibrated for is the cheapest drift signal there is; it is a gauge over the last `window` images.
"""

from __future__ import annotations

import threading
from collections import deque

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are exposed."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {_num(self.sum)}", f"{name}_count {self.count}"]
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


class Metrics:
    """Counters the request handlers and the batcher update (from the event loop and the forward thread)."""

    def __init__(self, window: int = 1000):
        self.lock = threading.Lock()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.images_scored = 0
        self.image_errors = 0
        self.request_errors: dict[int, int] = {}
        self.requests = 0
        self.window = window
        self.recent: deque[bool] = deque(maxlen=window)

    def request_done(self, seconds: float, status: int) -> None:
        with self.lock:
            self.requests += 1
            self.latency.observe(seconds)
            if status >= 400:
                self.request_errors[status] = self.request_errors.get(status, 0) + 1

    def batch_done(self, size: int) -> None:
        with self.lock:
            self.batch_size.observe(size)

    def images_done(self, scored: int, failed: int, ood_flags) -> None:
        with self.lock:
            self.images_scored += scored
            self.image_errors += failed
            self.recent.extend(bool(f) for f in ood_flags if f is not None)

    def render(self, ready: bool) -> str:
        """The /metrics body (text format 0.0.4)."""
        with self.lock:
            rate = sum(self.recent) / len(self.recent) if self.recent else float("nan")
            lines = [
                "# HELP synood_ready 1 once the models are loaded and warmed up.",
                "# TYPE synood_ready gauge",
                f"synood_ready {int(ready)}",
                "# HELP synood_request_seconds Latency of POST /score requests, from the first byte read to the response.",
                "# TYPE synood_request_seconds histogram",
                *self.latency.lines("synood_request_seconds"),
                "# HELP synood_batch_size Images per forward pass (requests merged by the dynamic batcher).",
                "# TYPE synood_batch_size histogram",
                *self.batch_size.lines("synood_batch_size"),
                "# HELP synood_images_scored_total Images scored.",
                "# TYPE synood_images_scored_total counter",
                f"synood_images_scored_total {self.images_scored}",
                "# HELP synood_image_errors_total Images in a request that could not be decoded or were refused (per-item errors).",
                "# TYPE synood_image_errors_total counter",
                f"synood_image_errors_total {self.image_errors}",
                "# HELP synood_request_errors_total POST /score requests answered with an error status.",
                "# TYPE synood_request_errors_total counter",
                *[f'synood_request_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.request_errors.items())],
                "# HELP synood_ood_rate Share of the last synood_ood_window images called OOD (NaN before any, or with no threshold).",
                "# TYPE synood_ood_rate gauge",
                f"synood_ood_rate {'NaN' if rate != rate else repr(rate)}",
                "# HELP synood_ood_window Images the OOD rate is over (at most the window).",
                "# TYPE synood_ood_window gauge",
                f"synood_ood_window {len(self.recent)}",
            ]
        return "\n".join(lines) + "\n"
