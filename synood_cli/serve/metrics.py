"""Service metrics in the Prometheus text format, kept by hand (no client library: a few counters).

Why a rolling OOD rate: a deployed detector's share of OOD calls drifting away from what it was
calibrated for is the cheapest drift signal there is; it is a gauge over the last `window` images.

With several worker processes (`--devices`), each worker writes its numbers into its own row of
a shared-memory array after every update, and whichever worker answers GET /metrics sums the rows:
the totals are the service's, not one worker's, and `synood_worker_*{worker, device}` break them down.
"""

from __future__ import annotations

import threading
from collections import deque

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STATUSES = (400, 401, 413, 415, 500, 503)  # every status the handlers answer with; anything else counts as "other"


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

    def values(self) -> list[float]:
        return [*self.counts, self.sum, self.count]


def _histogram_lines(name: str, buckets, values) -> list[str]:
    counts, total, count = values[: len(buckets)], values[len(buckets)], values[len(buckets) + 1]
    out = [f'{name}_bucket{{le="{_num(b)}"}} {_num(c)}' for b, c in zip(buckets, counts)]
    out += [f'{name}_bucket{{le="+Inf"}} {_num(count)}', f"{name}_sum {_num(total)}", f"{name}_count {_num(count)}"]
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


# one worker's numbers as a flat row of floats (what the shared array holds per worker)
_FIELDS = (("ready", 1), ("in_flight", 1), ("latency", len(LATENCY_BUCKETS) + 2), ("batch", len(BATCH_BUCKETS) + 2),
           ("images_scored", 1), ("image_errors", 1), ("errors", len(STATUSES) + 1), ("ood", 1), ("window", 1))
WIDTH = sum(n for _, n in _FIELDS)


def _split(row) -> dict[str, list[float]]:
    out, i = {}, 0
    for name, n in _FIELDS:
        out[name] = list(row[i : i + n])
        i += n
    return out


class Metrics:
    """Counters the request handlers and the batcher update (from the event loop and the forward thread).

    `shared` (a multiprocessing Array of WIDTH x workers doubles), `index` and `devices`: the
    worker's row and every worker's device, for a service of several worker processes.
    """

    def __init__(self, window: int = 1000, shared=None, index: int = 0, devices: tuple[str, ...] = ("",)):
        self.lock = threading.Lock()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.images_scored = 0
        self.image_errors = 0
        self.request_errors: dict[int, int] = {}
        self.requests = 0
        self.in_flight = 0
        self.ready = False
        self.window = window
        self.recent: deque[bool] = deque(maxlen=window)
        self.shared, self.index, self.devices = shared, index, tuple(devices)

    def set_ready(self) -> None:
        with self.lock:
            self.ready = True
            self._publish()

    def request_started(self) -> None:
        with self.lock:
            self.in_flight += 1
            self._publish()

    def request_done(self, seconds: float, status: int) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight -= 1
            self.latency.observe(seconds)
            if status >= 400:
                self.request_errors[status] = self.request_errors.get(status, 0) + 1
            self._publish()

    def batch_done(self, size: int) -> None:
        with self.lock:
            self.batch_size.observe(size)
            self._publish()

    def images_done(self, scored: int, failed: int, ood_flags) -> None:
        with self.lock:
            self.images_scored += scored
            self.image_errors += failed
            self.recent.extend(bool(f) for f in ood_flags if f is not None)
            self._publish()

    def row(self) -> list[float]:
        """This worker's numbers, laid out as _FIELDS (call under the lock)."""
        errors = [self.request_errors.get(s, 0) for s in STATUSES]
        errors.append(sum(n for s, n in self.request_errors.items() if s not in STATUSES))
        return [float(self.ready), self.in_flight, *self.latency.values(), *self.batch_size.values(),
                self.images_scored, self.image_errors, *errors, sum(self.recent), len(self.recent)]

    def _publish(self) -> None:
        if self.shared is None:
            return
        row = self.row()
        with self.shared.get_lock():
            self.shared[self.index * WIDTH : (self.index + 1) * WIDTH] = row

    def rows(self) -> list[list[float]]:
        """Every worker's row: the shared array's, or this process's own."""
        if self.shared is None:
            with self.lock:
                return [self.row()]
        with self.shared.get_lock():
            flat = list(self.shared)
        return [flat[i * WIDTH : (i + 1) * WIDTH] for i in range(len(self.devices))]

    def all_ready(self) -> bool:
        return all(_split(r)["ready"][0] == 1 for r in self.rows())

    def worker_states(self) -> list[dict]:
        return [{"worker": i, "device": d, "ready": _split(r)["ready"][0] == 1} for i, (d, r) in enumerate(zip(self.devices, self.rows()))]

    def render(self) -> str:
        """The /metrics body (text format 0.0.4): the service's totals over every worker, then each worker's own."""
        rows = [_split(r) for r in self.rows()]
        total = {name: [sum(col) for col in zip(*(r[name] for r in rows))] for name, _ in _FIELDS}
        ready = all(r["ready"][0] == 1 for r in rows)
        rate = total["ood"][0] / total["window"][0] if total["window"][0] else float("nan")
        errors = [(str(s), n) for s, n in zip((*STATUSES, "other"), total["errors"]) if n]
        labels = [f'worker="{i}",device="{d}"' for i, d in enumerate(self.devices)]
        lines = [
            "# HELP synood_ready 1 once the models are loaded and warmed up (in every worker).",
            "# TYPE synood_ready gauge",
            f"synood_ready {int(ready)}",
            "# HELP synood_request_seconds Latency of POST /score requests, from the first byte read to the response.",
            "# TYPE synood_request_seconds histogram",
            *_histogram_lines("synood_request_seconds", LATENCY_BUCKETS, total["latency"]),
            "# HELP synood_requests_in_flight POST /score requests being answered now.",
            "# TYPE synood_requests_in_flight gauge",
            f"synood_requests_in_flight {_num(total['in_flight'][0])}",
            "# HELP synood_batch_size Images per forward pass (requests merged by the dynamic batcher).",
            "# TYPE synood_batch_size histogram",
            *_histogram_lines("synood_batch_size", BATCH_BUCKETS, total["batch"]),
            "# HELP synood_images_scored_total Images scored.",
            "# TYPE synood_images_scored_total counter",
            f"synood_images_scored_total {_num(total['images_scored'][0])}",
            "# HELP synood_image_errors_total Images in a request that could not be decoded or were refused (per-item errors).",
            "# TYPE synood_image_errors_total counter",
            f"synood_image_errors_total {_num(total['image_errors'][0])}",
            "# HELP synood_request_errors_total POST /score requests answered with an error status.",
            "# TYPE synood_request_errors_total counter",
            *[f'synood_request_errors_total{{status="{s}"}} {_num(n)}' for s, n in errors],
            f"# HELP synood_ood_rate Share of the last synood_ood_window images called OOD (the last {self.window} of each worker; NaN before any, or with no threshold).",
            "# TYPE synood_ood_rate gauge",
            f"synood_ood_rate {'NaN' if rate != rate else repr(rate)}",
            "# HELP synood_ood_window Images the OOD rate is over.",
            "# TYPE synood_ood_window gauge",
            f"synood_ood_window {_num(total['window'][0])}",
            "# HELP synood_worker_ready 1 once this worker's models are loaded and warmed up.",
            "# TYPE synood_worker_ready gauge",
            *[f"synood_worker_ready{{{lab}}} {_num(r['ready'][0])}" for lab, r in zip(labels, rows)],
            "# HELP synood_worker_images_scored_total Images this worker scored.",
            "# TYPE synood_worker_images_scored_total counter",
            *[f"synood_worker_images_scored_total{{{lab}}} {_num(r['images_scored'][0])}" for lab, r in zip(labels, rows)],
            "# HELP synood_worker_requests_in_flight POST /score requests this worker is answering now.",
            "# TYPE synood_worker_requests_in_flight gauge",
            *[f"synood_worker_requests_in_flight{{{lab}}} {_num(r['in_flight'][0])}" for lab, r in zip(labels, rows)],
        ]
        return "\n".join(lines) + "\n"
