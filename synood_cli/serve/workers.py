"""One worker process per device behind one address (`synood serve --devices cuda:0,cuda:1`).

Why processes sharing the port (SO_REUSEPORT) rather than a front process that forwards batches:
each worker is the whole single-device service (its own decoding, batcher and models), so a
worker's scores are the one-device scores by construction, decoding spreads over the workers'
cores instead of one front process, and no image crosses a process boundary. The kernel spreads
new connections over the workers' sockets (by a hash of the client's address and port). What
must be one service's is shared: the metrics rows (a shared-memory array, metrics.py), readiness
(GET /readyz is 200 only once every worker is), and the life cycle: this parent starts the
workers, stops all of them if one fails (its error becomes the command's, with its exit code) and
forwards SIGTERM so that every worker drains its requests before the command exits 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable

from synood_cli.errors import ResourceMissing, SynoodError, UsageError, first_line

STOP_TIMEOUT_S = 40  # uvicorn's graceful drain is 30 s; a worker still there after this is killed


def parse_devices(text: str) -> tuple[str, ...]:
    """--devices cpu,cpu | cuda:0,cuda:1 | all (every CUDA device here): one worker per entry."""
    from synood_cli.runtime import validate_device

    text = text.strip().lower()
    if text == "all":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ResourceMissing("--devices all: CUDA is not available on this machine",
                                  hint="name the devices (--devices cpu,cpu runs two CPU workers), or check the NVIDIA driver")
        return tuple(f"cuda:{i}" for i in range(n))
    devices = tuple(d.strip() for d in text.split(","))
    for d in devices:
        if not d or validate_device(d) in ("auto", "cuda"):  # one named device per worker
            raise UsageError(f"--devices {text}: name each device as cpu or cuda:N, got {d!r}",
                             hint="e.g. --devices cuda:0,cuda:1, or --devices all for every GPU")
    return devices


def listen(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """`count` listening sockets on one address; several share it by SO_REUSEPORT (Linux: same user only).

    A taken port is one line (exit 3). A fixed port is first bound without SO_REUSEPORT, so that a
    second service never joins the port group of one already running there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if count == 1 or port != 0:
            first = socket.create_server((host, port), family=family, backlog=2048)
            if count == 1:
                return [first]
            first.close()
        socks = [socket.create_server((host, port), family=family, backlog=2048, reuse_port=True)]
        bound = socks[0].getsockname()[1]
        socks += [socket.create_server((host, bound), family=family, backlog=2048, reuse_port=True) for _ in range(count - 1)]
        return socks
    except (OSError, ValueError) as exc:
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)  # create_server's own text repeats the address
        raise ResourceMissing(f"cannot listen on {host}:{port}: {reason}", hint="pick another --port (0: any free one)") from None


@dataclass
class WorkerSpec:
    """Everything a worker process needs to build its service (picklable: it crosses the spawn)."""

    index: int
    devices: tuple[str, ...]
    cfg: object  # ScoringConfig, resolved; the worker runs it on devices[index]
    class_names: list[str]
    threshold: object | None
    limits: object
    token: str | None
    max_batch_size: int
    max_wait_s: float
    top_k: int
    verbose: bool
    make_reporter: Callable  # module-level callable -> a reporter (the CLI's, on stderr)
    threads: int | None  # torch threads of a CPU worker: the cores shared out, not one thread per core each

    @property
    def device(self) -> str:
        return self.devices[self.index]

    @property
    def label(self) -> str:
        return f"worker {self.index} ({self.device})"


class _Prefixed:
    """A reporter whose lines say which worker wrote them."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def info(self, message: str) -> None:
        self.inner.info(self.prefix + message)

    def warn(self, message: str) -> None:
        self.inner.warn(self.prefix + message)

    def task(self, description: str, total, unit: str = "img"):
        return self.inner.task(self.prefix + description, total, unit)


def _describe(exc: BaseException) -> tuple[int, str, str | None]:
    """(exit code, message, hint) of a worker's failure, as the CLI's error boundary would report it."""
    if isinstance(exc, SynoodError):
        return exc.exit_code, exc.message, exc.hint
    if type(exc).__name__ == "OutOfMemoryError":
        return 3, "the GPU ran out of memory", "lower --max-batch-size, or use --precision bf16"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted", None
    return 1, f"internal error: {type(exc).__name__}: {first_line(exc)}", "rerun with SYNOOD_DEBUG=1 for the full traceback and report it"


def _stop_now(*_):
    raise SystemExit(0)


def worker_main(spec: WorkerSpec, sock: socket.socket, shared, failures) -> None:
    """A worker process: the one-device service on its share of the port, until SIGTERM or a failure."""
    import threading
    from functools import partial

    # Ctrl-C reaches every process of the terminal's group: the parent stops the workers (by SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_now)  # until uvicorn runs: nothing to drain yet
    try:
        from synood_cli.serve.metrics import Metrics
        from synood_cli.serve.service import ScoringService, load_scoring, run_server

        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        if spec.device.startswith("cuda:"):
            import torch

            if torch.cuda.is_available() and int(spec.device[5:]) < torch.cuda.device_count():
                torch.cuda.set_device(spec.device)  # else a stray allocation on "cuda" opens a context on cuda:0 in every worker
        reporter = _Prefixed(spec.make_reporter(), f"{spec.label}: ")
        cfg = dataclasses.replace(spec.cfg, device=spec.device)
        service = ScoringService(partial(load_scoring, cfg, spec.class_names, spec.threshold, reporter), spec.limits, spec.token,
                                 spec.max_batch_size, spec.max_wait_s, spec.top_k, reporter.info,
                                 metrics=Metrics(shared=shared, index=spec.index, devices=spec.devices), worker=spec.index)

        def orphaned():  # the parent died without stopping us (SIGKILL): stop serving too
            import multiprocessing
            from multiprocessing.connection import wait

            wait([multiprocessing.parent_process().sentinel])
            service.on_fatal()

        threading.Thread(target=orphaned, name="synood-parent-watch", daemon=True).start()
        run_server(service, sock, spec.verbose)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which exits with its code
        if isinstance(exc, SystemExit) and not exc.code:
            return
        code, message, hint = _describe(exc)
        failures.put((spec.index, code, message, hint))
        sys.exit(code)


def run_workers(specs: list[WorkerSpec], sockets: list[socket.socket], log: Callable[[str], None]) -> None:
    """Start one process per spec, each on its socket; return once SIGTERM drained them all, raise if one failed."""
    import multiprocessing
    from multiprocessing.connection import wait

    from synood_cli.serve.metrics import WIDTH, Metrics

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
    shared = ctx.Array("d", WIDTH * len(specs))
    failures = ctx.SimpleQueue()
    procs = [ctx.Process(target=worker_main, args=(spec, sock, shared, failures), name=f"synood-{spec.label}") for spec, sock in zip(specs, sockets)]
    asked: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: asked.append("SIGTERM"))
    view = Metrics(shared=shared, devices=specs[0].devices)
    interrupted, announced = False, False
    try:
        for p in procs:
            p.start()
        for s in sockets:
            s.close()  # the workers hold their own copies
        while not asked and all(p.exitcode is None for p in procs):
            wait([p.sentinel for p in procs], timeout=0.25)
            if not announced and view.all_ready():
                announced = True
                log(f"ready: {len(procs)} workers ({', '.join(specs[0].devices)})")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _stop(procs)
        signal.signal(signal.SIGTERM, previous)
    reported = []
    while not failures.empty():
        reported.append(failures.get())
    if reported:
        index, code, message, hint = reported[0]  # the first to fail: the others were stopped because of it
        err = SynoodError(f"{specs[index].label}: {message}", hint)
        err.exit_code = code
        raise err
    if interrupted:
        raise KeyboardInterrupt
    for spec, p in zip(specs, procs):
        if p.exitcode != 0 and not asked:
            raise SynoodError(f"{spec.label} ended with {_exit_text(p.exitcode)}",
                              hint="the other workers were stopped; see the lines above for its last words")


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _stop(procs) -> None:
    """SIGTERM to every worker still running (each drains its requests), then wait; kill what outlives the drain."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        if p.pid is None:
            continue
        p.join(STOP_TIMEOUT_S)
        if p.exitcode is None:
            p.kill()
            p.join()
