"""The scoring service: one loaded scoring setup, requests decoded in threads, forwards merged by the batcher.

Scores come out of the same code path as `synood score`: the same decoding and preprocessing
(`data/pixels.iterate_pixels`, with the pixel cap of `data/guard.py`), the same encoder call and
scorer, and the same identity; a threshold is checked against that identity before the service
reports ready. Nothing here prints: the command passes a `log` callable.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime

import asyncio
import base64
import binascii
import hmac
import json
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable

from synood_cli.errors import SynoodError, UsageError, first_line
from synood_cli.serve.batching import Batcher
from synood_cli.serve.metrics import Metrics

DIRECTION = "higher = in-distribution"
NAME_LIMIT = 200  # a client's file name is echoed back, cut to this many characters; never used as a path


class RequestRefused(UsageError):
    """A request the service will not score: the one-line message and hint of a CLI error, and an HTTP status."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


@dataclass
class Limits:
    """What one request may hold; the pixel cap per image is the CLI's (--max-pixels, data/guard.py)."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_images: int = 64


@dataclass
class Loaded:
    """What the command's loader returns: the scoring setup, its method, the identity of its scores, the threshold (or None)."""

    setup: object
    method: str
    identity: dict
    threshold: object | None


class _Blobs:
    """Request bytes as a loader `reader` (item i is read with `read(i)`)."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs

    def read(self, i: int) -> bytes:
        return self.blobs[i]


class ScoringService:
    """Holds the model once; `load()` is the command's (prepare_scoring + identity + threshold checks)."""

    def __init__(self, load: Callable[[], Loaded], limits: Limits, token: str | None = None, max_batch_size: int = 32,
                 max_wait_s: float = 0.005, top_k: int = 5, log: Callable[[str], None] = lambda _: None,
                 metrics: Metrics | None = None, worker: int = 0):
        self._load = load
        self.limits = limits
        self.token = token
        self.top_k = top_k
        self.log = log
        self.metrics = metrics or Metrics()  # a worker of several gets one that shares its numbers (metrics.py)
        self.worker = worker  # this worker's index among the --devices (0 alone)
        self.batcher = Batcher(self.forward, max_batch_size, max_wait_s, self.metrics.batch_done)
        self.loaded: Loaded | None = None
        self.device: str | None = None  # where the encoder runs, once loaded (answered with every score)
        self.ready = False
        self.fatal: BaseException | None = None  # a load failure: the command reports it and exits with its code
        self.on_fatal: Callable[[], None] = lambda: None

    # -- loading ---------------------------------------------------------------------------

    def load_and_warm(self) -> None:
        """Load the models, score one generated image through the whole path, then report ready (a thread)."""
        try:
            self.loaded = self._load()
            started = time.perf_counter()
            rows, errors = self.decode([_warmup_png()])
            if errors[0]:
                raise SynoodError(f"warm-up image could not be decoded: {errors[0]}")
            self.forward([rows[0]])
            self.device = str(self.loaded.setup.clip.device)
            self.ready = True
            self.metrics.set_ready()
            self.log(f"ready: models loaded, warm-up forward {1000 * (time.perf_counter() - started):.0f} ms")
        except BaseException as exc:  # noqa: BLE001 - any failure ends the service with the CLI's message
            self.fatal = exc
            self.on_fatal()

    # -- scoring ---------------------------------------------------------------------------

    def decode(self, blobs: list[bytes]) -> tuple[list, list[str | None]]:
        """Each image's preprocessed pixels [3, h, w] (None when bad) and its error (None when good), as `synood score` reads files."""
        from synood_cli.data.pixels import iterate_pixels

        clip = self.loaded.setup.clip
        rows: list = [None] * len(blobs)
        errors: list[str | None] = [None] * len(blobs)
        todo = [i for i, b in enumerate(blobs) if b]
        for i, b in enumerate(blobs):
            if not b:
                errors[i] = "empty image (0 bytes)"
        if not todo:
            return rows, errors
        # names of our own: a loader's error path looks at the name on disk, and a client's name is not a path here
        names = [f"upload {i}" for i in todo]
        for pixels, idx, errs in iterate_pixels(clip, names, len(todo), 0, _Blobs([blobs[i] for i in todo])):
            k = 0
            for j, err in zip(idx.tolist(), errs):
                i = todo[j]
                if err:
                    errors[i] = err  # "(row bytes)" stands for the image: score() names it
                else:
                    rows[i] = pixels[k]
                    k += 1
        return rows, errors

    def forward(self, rows: list) -> list[tuple[float, list]]:
        """One forward pass over merged rows: (score, top ID classes) per row, as `scoring.score_pixels` computes them."""
        import torch

        setup, method = self.loaded.setup, self.loaded.method
        batch = torch.stack(rows)
        if rows[0].unsqueeze(0).is_contiguous(memory_format=torch.channels_last):
            # the batched preprocessing hands `synood score` a channels-last batch; stack() makes it NCHW,
            # and a convolutional encoder (ResNet CLIPs, the world CLIP) then rounds differently (1e-5)
            batch = batch.contiguous(memory_format=torch.channels_last)
        feats = setup.clip.encode_raw(batch)  # g, as score_pixels: the scorer normalises
        scorer = setup.scorers[method]
        scores, _ = scorer(feats)
        with torch.no_grad():
            sims = torch.nn.functional.normalize(feats.float(), dim=-1) @ scorer.inputs.id_text.T  # the scorer's prediction
            k = min(self.top_k, sims.shape[1])
            top_v, top_i = sims.topk(k, dim=1)
        names = setup.class_names
        out = []
        for s, vs, ix in zip(scores.cpu().double().tolist(), top_v.cpu().tolist(), top_i.cpu().tolist()):
            out.append((s, [{"class": i, "name": names[i], "similarity": v} for v, i in zip(vs, ix)]))
        return out

    async def score(self, items: list[tuple[str, bytes | None, str | None]]) -> dict:
        """Score (name, bytes, error) items; a bad image is an error in its own entry, the others are scored."""
        loop = asyncio.get_running_loop()
        blobs = [b if b is not None else b"" for _, b, _ in items]
        rows, errors = await loop.run_in_executor(None, self.decode, blobs)
        errors = [pre or (err and err.replace("(row bytes)", repr(name))) for (name, _, pre), err in zip(items, errors)]
        good = [i for i, r in enumerate(rows) if r is not None and not errors[i]]
        results = dict(zip(good, await self.batcher.submit([rows[i] for i in good]))) if good else {}
        loaded = self.loaded
        t = loaded.threshold
        out, flags = [], []
        for i, (name, _, _) in enumerate(items):
            if i not in results:
                out.append({"name": name, "error": errors[i]})
                continue
            value, top = results[i]
            finite = math.isfinite(value)
            is_ood = t.is_ood(value) if t is not None else None  # None for a NaN score: nothing vouches for it
            flags.append(is_ood)
            out.append({
                "name": name,
                "score": value if finite else None,
                "direction": DIRECTION,
                "is_ood": is_ood,
                "threshold": t.as_meta() if t is not None else None,
                "top": top,
                "identity": loaded.identity,
            })
        self.metrics.images_done(len(results), len(items) - len(results), flags)
        return {"scored": len(results), "failed": len(items) - len(results), "results": out,
                "worker": {"index": self.worker, "device": self.device}}

    # -- requests --------------------------------------------------------------------------

    def check_auth(self, header: str | None) -> None:
        if self.token is None:
            return
        given = header[7:].strip() if header and header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise RequestRefused(401, "missing or wrong bearer token", hint="send the header `Authorization: Bearer TOKEN` with the token of --token-file")


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: never read whole first."""
    too_large = RequestRefused(413, f"the request body is over the limit of {limit:,} bytes", hint="send fewer or smaller images per request, or raise --max-request-bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body
    return body


async def parse_images(request, body: bytes, max_images: int) -> list[tuple[str, bytes | None, str | None]]:
    """(name, bytes, per-item error) from multipart files or JSON {"images": [base64 | {"name", "data"}]}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    too_many = "{n} images in one request, over the limit of {m} (--max-images)"
    many_hint = "split them over several requests (concurrent requests are batched together)"
    items: list[tuple[str, bytes | None, str | None]] = []
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
        except Exception as exc:  # python-multipart's and Starlette's errors: a malformed body
            detail = getattr(exc, "detail", None) or first_line(exc)
            if "Too many files" in str(detail):
                raise RequestRefused(413, f"more than {max_images} images in one request, over the limit of {max_images} (--max-images)", hint=many_hint) from None
            raise RequestRefused(400, f"malformed multipart body: {detail}", hint="send each image as a file part: curl -F file=@a.jpg") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read") and hasattr(v, "filename")]
        if len(files) > max_images:
            raise RequestRefused(413, too_many.format(n=len(files), m=max_images), hint=many_hint)
        for i, f in enumerate(files):
            items.append((_name(f.filename, i), await f.read(), None))
    elif ctype == "application/json":
        hint = 'send {"images": [{"name": "a.jpg", "data": BASE64}, ...]} (or a list of base64 strings)'
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRefused(400, f"the request body is not valid JSON: {first_line(exc)}", hint=hint) from None
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list):
            raise RequestRefused(400, 'the JSON body has no "images" list', hint=hint)
        if len(images) > max_images:
            raise RequestRefused(413, too_many.format(n=len(images), m=max_images), hint=many_hint)
        for i, entry in enumerate(images):
            name, data = (entry.get("name"), entry.get("data")) if isinstance(entry, dict) else (None, entry)
            if not isinstance(data, str):
                items.append((_name(name, i), None, "no base64 image: data must be a base64 string"))
                continue
            try:
                items.append((_name(name, i), base64.b64decode(data, validate=True), None))
            except (binascii.Error, ValueError) as exc:
                items.append((_name(name, i), None, f"not valid base64: {first_line(exc)}"))
    else:
        raise RequestRefused(415, f"POST /score takes multipart/form-data files or application/json, not {ctype or 'a body without a content type'}",
                             hint="curl -F file=@a.jpg URL/score, or a JSON body {\"images\": [BASE64, ...]}")
    if not items:
        raise RequestRefused(400, "no images in the request", hint="send image files (multipart) or base64 images (JSON)")
    return items


def _name(name, i: int) -> str:
    if not isinstance(name, str) or not name:
        return f"image {i}"
    return name if len(name) <= NAME_LIMIT else name[: NAME_LIMIT - 3] + "..."


def _warmup_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def build_app(service: ScoringService):
    """The ASGI app: POST /score, GET /healthz, /readyz, /metrics. The loader runs in a thread once the app starts."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    @asynccontextmanager
    async def lifespan(_app):
        service.batcher.start()
        threading.Thread(target=service.load_and_warm, name="synood-load", daemon=True).start()
        yield
        await service.batcher.stop()  # after uvicorn drained the in-flight requests

    app = FastAPI(title="synood", lifespan=lifespan, docs_url=None, redoc_url=None)  # no pages that fetch scripts from a CDN

    def refused(e: RequestRefused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=e.status, headers=headers)

    @app.get("/healthz")
    async def healthz():
        """The process answers (it may still be loading: see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """200 once the models are loaded and a warm-up image went through (in every worker); 503 before."""
        several = len(service.metrics.devices) > 1
        workers = {"workers": service.metrics.worker_states()} if several else {}
        if service.ready and service.metrics.all_ready():
            loaded = service.loaded
            return {"ready": True, "method": loaded.method, "identity": loaded.identity,
                    "threshold": loaded.threshold.as_meta() if loaded.threshold is not None else None, **workers}
        state = f"failed: {first_line(service.fatal)}" if service.fatal is not None else "loading"
        return JSONResponse({"ready": False, "status": state, **workers}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request):
        try:
            service.check_auth(request.headers.get("authorization"))
        except RequestRefused as e:
            return refused(e)
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/score")
    async def score(request: Request):
        """Score one or many images: multipart files, or JSON {"images": [base64 | {"name", "data"}]}."""
        started, status = time.perf_counter(), 200
        service.metrics.request_started()
        try:
            service.check_auth(request.headers.get("authorization"))
            if not service.ready:
                raise RequestRefused(503, "not ready: the models are still loading", hint="wait until GET /readyz answers 200")
            body = await read_body(request, service.limits.max_request_bytes)
            items = await parse_images(request, body, service.limits.max_images)
            return JSONResponse(await service.score(items))
        except RequestRefused as e:
            status = e.status
            return refused(e)
        except Exception as exc:  # a failed forward: one line, the service goes on
            status = 500
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {first_line(exc)}", "hint": None}, status_code=500)
        finally:
            service.metrics.request_done(time.perf_counter() - started, status)

    return app


def load_scoring(cfg, class_names: list[str], threshold, reporter) -> Loaded:
    """The models of `cfg` on its device, the identity of their scores, and the threshold checked against it.

    The threshold's identity is checked again once the weights are known (score refuses it the same
    way): a threshold made for other weights, negatives or preprocessing ends the service before it is ready.
    """
    from synood_cli.scoring import prepare_scoring, score_identity

    setup = prepare_scoring(cfg, class_names, reporter)
    identity = score_identity(setup, cfg.method)
    if threshold is not None:
        threshold.check(identity)
        reporter.info(f"threshold {threshold.value!r} (score < T is OOD) from {threshold.source}")
    return Loaded(setup, cfg.method, identity, threshold)


def run_server(service: ScoringService, sock, verbose: bool) -> None:
    """uvicorn on an already listening socket until SIGTERM (or SIGINT) drained it; a load failure is raised here."""
    import signal

    import uvicorn

    config = uvicorn.Config(build_app(service), log_config=None, log_level="info" if verbose else "warning",
                            access_log=verbose, timeout_graceful_shutdown=30, lifespan="on")
    server = uvicorn.Server(config)
    service.on_fatal = lambda: setattr(server, "should_exit", True)
    # uvicorn drains in-flight requests on SIGTERM, then raises the signal again under the handler it
    # found: this one, which lets the command end normally (exit 0) instead of dying of the signal.
    # A SIGTERM that comes before uvicorn has its own handlers in place stops it at start-up.
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if service.fatal is not None:
        raise service.fatal
