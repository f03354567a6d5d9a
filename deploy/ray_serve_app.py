"""synood's detector as a Ray Serve deployment: past one machine, replicas on every GPU of a Ray cluster.

Not a dependency of synood (nor in CI): install Ray next to synood, e.g. in its own venv,

    python -m venv rayvenv && rayvenv/bin/pip install -e . "ray[serve]"

Each replica loads the detector once through the Python API (`synood_cli.api.Detector`: class
names, profile, checkpoint, and a threshold refused when made for other scores) and answers with
`synood serve`'s scoring path (`synood_cli.serve.service.ScoringService`: the same decoding,
preprocessing, forward and JSON as `synood score` / `synood serve`), with Ray's `@serve.batch`
merging the images of concurrent requests into one forward pass instead of serve's own batcher.
POST / takes what `synood serve`'s POST /score takes (multipart files, or JSON
{"images": [{"name", "data": BASE64}]}) and answers the same JSON; GET /metrics is the answering
replica's Prometheus text (Ray Serve exports its own request metrics for the whole application).

Run it here (one machine, CPU):

    python deploy/ray_serve_app.py --profile world --classnames w/id/val --calibration result.json --port 8765

or on a cluster with Ray's own CLI (arguments as key=value; one replica per GPU):

    serve run deploy.ray_serve_app:build classnames=classes.txt checkpoint=ck replicas=8 gpus_per_replica=1
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


class _RayBatches:
    """Stands in for serve's Batcher: every image goes through the replica's @serve.batch method."""

    def __init__(self, one):
        self.one = one

    async def submit(self, rows: list) -> list:
        return list(await asyncio.gather(*(self.one(r) for r in rows)))


@serve.deployment
class SynoodDetector:
    def __init__(self, classnames: str | None = None, profile: str | None = None, method: str | None = None,
                 checkpoint: str | None = None, calibration: str | None = None, device: str = "auto",
                 max_images: int = 64, max_request_bytes: int = 64 * 1024 * 1024, top_k: int = 5, home: str | None = None):
        from synood_cli.api import Detector
        from synood_cli.serve.metrics import Metrics
        from synood_cli.serve.service import Limits, Loaded, ScoringService

        det = Detector(classnames, profile=profile, method=method, checkpoint=checkpoint, device=device, home=home)
        if calibration:
            det.load_threshold(calibration)  # refused (ValueError) when made for other scores
        threshold = det.threshold_info
        self.service = ScoringService(lambda: Loaded(det.setup, det.method, det.identity, threshold),
                                      Limits(max_request_bytes, max_images), top_k=top_k,
                                      metrics=Metrics(devices=(str(det.setup.clip.device),)))
        self.service.batcher = _RayBatches(self.forward)
        self.service.load_and_warm()  # loads (already done above), scores a warm-up image
        if self.service.fatal is not None:
            raise self.service.fatal
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="synood-forward")  # forwards off the replica's event loop

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def forward(self, rows: list) -> list:
        out = await asyncio.get_running_loop().run_in_executor(self.executor, self.service.forward, rows)
        self.service.metrics.batch_done(len(rows))
        return out

    async def __call__(self, request: Request):
        from starlette.responses import PlainTextResponse

        from synood_cli.serve.service import RequestRefused, parse_images, read_body

        if request.method == "GET" and request.url.path.rstrip("/").endswith("/metrics"):  # this replica's own numbers
            return PlainTextResponse(self.service.metrics.render(), media_type="text/plain; version=0.0.4")
        try:
            body = await read_body(request, self.service.limits.max_request_bytes)
            items = await parse_images(request, body, self.service.limits.max_images)
            return JSONResponse(await self.service.score(items))
        except RequestRefused as e:
            return JSONResponse({"error": e.message, "hint": e.hint}, status_code=e.status)


def build(args: dict):
    """The application for `serve run deploy.ray_serve_app:build key=value ...`."""
    args = dict(args)
    replicas = int(args.pop("replicas", 1))
    gpus = float(args.pop("gpus_per_replica", 0))
    cpus = float(args.pop("cpus_per_replica", 1))
    for key in ("max_images", "max_request_bytes", "top_k"):
        if key in args:
            args[key] = int(args[key])
    return SynoodDetector.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus, "num_gpus": gpus}).bind(**args)


def main() -> None:
    p = argparse.ArgumentParser(description="Run the synood detector on Ray Serve on this machine until Ctrl-C.")
    p.add_argument("--classnames")
    p.add_argument("--profile")
    p.add_argument("--method")
    p.add_argument("--checkpoint")
    p.add_argument("--calibration")
    p.add_argument("--device", default="auto")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--gpus-per-replica", type=float, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    import ray

    ray.init(include_dashboard=False)
    serve.start(http_options={"host": a.host, "port": a.port})
    args = {k: v for k, v in vars(a).items() if v is not None and k not in ("host", "port", "replicas", "gpus_per_replica")}
    serve.run(build({**args, "replicas": a.replicas, "gpus_per_replica": a.gpus_per_replica}), route_prefix="/", blocking=False)
    print(f"ready: POST http://{a.host}:{a.port}/ (Ctrl-C or SIGTERM stops)", flush=True)
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's background job starts with it ignored
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    serve.shutdown()
    ray.shutdown()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
