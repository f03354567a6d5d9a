"""`synood serve`: a scoring service (FastAPI on uvicorn) holding one model and its threshold in memory.

Thin: options, the checks `synood score` makes before loading, the socket, then uvicorn.
The service itself is synood_cli/serve/ (library: no printing). fastapi and uvicorn are the
optional `serve` extra and are imported here, inside the command.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from synood_cli.cli import common
from synood_cli.cli.flags import in_panel
from synood_cli.cli.render import RichReporter, error_boundary
from synood_cli.errors import ResourceMissing, UsageError

HELP = """Serve scores over HTTP: the model loads once, concurrent requests are merged into batches.

POST /score takes image files (multipart) or base64 images in JSON ({"images": [...]}) and
returns per image: score (higher = in-distribution), is_ood with the threshold and where it came
from, the top ID classes and the identity of the scores; a bad image is an error in its own
entry while the others are scored. GET /healthz (the process answers), GET /readyz (200 once the
models are loaded and warmed up), GET /metrics (Prometheus text: latency and batch size
histograms, images scored, errors, the OOD rate over the last 1000 images).

The same scores as `synood score` with the same options. The threshold is the checkpoint's stored
one or --calibration FILE's (an evaluate --format json result), refused when made for other
scores, as score refuses it. Binds 127.0.0.1 unless --host says otherwise; --token-file requires a
bearer token; the pixel cap per image is the global --max-pixels. SIGTERM stops accepting
requests, finishes those in flight and exits 0. Needs the serve extra: pip install 'synood\\[serve]'."""

EPILOG = """[bold]Examples[/bold]

  synood serve --checkpoint synood-in1k --port 8000

  synood serve --checkpoint synood-in1k --devices all

  synood serve --profile tiny --classnames classes.txt --calibration result.json --token-file token.txt

  curl -s -F file=@a.jpg -F file=@b.png http://127.0.0.1:8000/score | jq '.results[] | {name, score, is_ood}'"""


@error_boundary
def serve(
    ctx: typer.Context,
    profile: Optional[str] = in_panel(common.SCORE_PROFILE, "Method and model"),
    method: Optional[str] = in_panel(common.METHOD, "Method and model"),
    checkpoint: Optional[str] = in_panel(common.CHECKPOINT, "Method and model"),
    model: Optional[str] = in_panel(common.MODEL, "Method and model"),
    pretrained: Optional[str] = in_panel(common.PRETRAINED, "Method and model"),
    classnames: Optional[Path] = in_panel(common.CLASSNAMES, "Method and model"),
    lexicon: Optional[str] = in_panel(common.LEXICON, "Method and model"),
    groups: Optional[int] = in_panel(common.GROUPS, "Method and model"),
    neg_ratio: Optional[float] = in_panel(common.NEG_RATIO, "Method and model"),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="fpr95, tprNN or a score: is_ood = score < T \\[default: fpr95 with --calibration or a checkpoint that stores one, else none (is_ood null)].", rich_help_panel="Threshold"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="A saved `synood evaluate --format json` result the threshold is read from (made for the same scores).", rich_help_panel="Threshold"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens the service to the network.", rich_help_panel="Service"),
    port: int = typer.Option(8000, "--port", help="TCP port; 0 picks a free one (printed on stderr).", rich_help_panel="Service"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="A file holding a bearer token that POST /score and GET /metrics then require.", rich_help_panel="Service"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Most images in one forward pass (from any number of requests).", rich_help_panel="Service"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long the first image of a batch waits for others to join it.", rich_help_panel="Service"),
    max_images: int = typer.Option(64, "--max-images", help="Most images in one request (413 above).", rich_help_panel="Service"),
    max_request_bytes: int = typer.Option(64 * 1024 * 1024, "--max-request-bytes", help="Largest request body in bytes (413 above).", rich_help_panel="Service"),
    top_k: int = typer.Option(5, "--top-k", help="ID classes returned per image, most similar first.", rich_help_panel="Service"),
    devices: Optional[str] = typer.Option(None, "--devices", help="One worker process per device behind the one address: cuda:0,cuda:1, all (every GPU) or cpu,cpu; each holds its own models and batcher \\[default: one worker on --device].", rich_help_panel="Service"),
) -> None:
    state = ctx.obj
    reporter = state.reporter()
    _check_ranges(port, max_batch_size, max_wait_ms, max_images, max_request_bytes, top_k)
    if method and "," in method:
        raise UsageError("serve takes one --method", hint="run one service per method")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ResourceMissing(f"synood serve needs fastapi and uvicorn ({exc.name} is not installed)", hint="pip install 'synood[serve]'") from None
    token = _read_token(token_file) if token_file is not None else None
    device_list = _devices(devices, state.device)
    cfg = common.scoring_config(state, profile, method, model, pretrained, lexicon, groups, neg_ratio, None, 0, checkpoint)
    _refuse_transductive(cfg.method)
    class_names = common.class_names_from(classnames, reporter=reporter, checkpoint_config=cfg)
    chosen = _threshold(threshold, calibration, cfg, reporter)
    from synood_cli.scoring import planned_identity

    if chosen is not None:
        planned = planned_identity(cfg, cfg.method, class_names)
        chosen.check(planned, keys=list(planned))  # as score: most mismatches are refused before anything loads
    from functools import partial

    from synood_cli.serve import workers
    from synood_cli.serve.service import Limits, ScoringService, load_scoring, run_server

    limits = Limits(max_request_bytes, max_images)
    socks = workers.listen(host, port, len(device_list))
    bound = socks[0].getsockname()[1]
    if not _is_loopback(host) and token is None:
        reporter.warn(f"--host {host} without --token-file: anyone who reaches port {bound} can use the service")
    shown = f"[{host}]" if ":" in host else host
    several = f"{len(device_list)} workers ({', '.join(device_list)}); " if len(device_list) > 1 else ""
    reporter.info(f"listening on http://{shown}:{bound} ({several}GET /readyz answers 200 once the models are loaded)")
    if len(device_list) == 1:
        if devices is not None:
            cfg = dataclasses.replace(cfg, device=device_list[0])
        from synood_cli.serve.metrics import Metrics

        service = ScoringService(partial(load_scoring, cfg, class_names, chosen, reporter), limits, token, max_batch_size,
                                 max_wait_ms / 1000, top_k, reporter.info, metrics=Metrics(devices=device_list))
        run_server(service, socks[0], state.verbose)
    else:
        from synood_cli.data.loading import available_cpus

        cpu_workers = device_list.count("cpu")
        threads = max(1, available_cpus() // cpu_workers) if cpu_workers else None
        specs = [workers.WorkerSpec(i, device_list, cfg, class_names, chosen, limits, token, max_batch_size, max_wait_ms / 1000, top_k,
                                    state.verbose, partial(RichReporter, quiet=state.quiet, verbose=state.verbose),
                                    threads if d == "cpu" else None) for i, d in enumerate(device_list)]
        workers.run_workers(specs, socks, reporter.info)
    reporter.info("stopped: in-flight requests finished")


def _devices(text: str | None, device: str) -> tuple[str, ...]:
    if text is None:
        return (device,)
    from synood_cli.serve.workers import parse_devices

    return parse_devices(text)


def _refuse_transductive(method: str) -> None:
    """A test-time adaptive score (AdaNeg) depends on the requests before it: one client's images would move another's scores."""
    from synood_cli.scores import SCORES

    if SCORES.get(method).transductive:
        raise UsageError(f"score method {method!r} is test-time adaptive (transductive): the service does not serve it",
                         hint="serve neglabel, csp or synood; score a fixed stream with `synood score --method " + method + "`")


def _check_ranges(port: int, max_batch_size: int, max_wait_ms: float, max_images: int, max_request_bytes: int, top_k: int) -> None:
    import math

    for name, value, low in (("--max-batch-size", max_batch_size, 1), ("--max-images", max_images, 1),
                             ("--max-request-bytes", max_request_bytes, 1), ("--top-k", top_k, 1)):
        if value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if not (0 <= port <= 65535):
        raise UsageError(f"--port must be between 0 and 65535, got {port}", hint="0 picks a free port")
    if not (math.isfinite(max_wait_ms) and 0 <= max_wait_ms <= 10_000):
        raise UsageError(f"--max-wait-ms must be between 0 and 10000, got {max_wait_ms}", hint="a few ms: the wait a lone image pays for others to join it")


def _read_token(path: Path) -> str:
    from synood_cli.errors import read_user_text

    text = read_user_text(path, "token file", "one line: the bearer token clients send").strip()
    if not text or len(text.splitlines()) != 1:
        raise UsageError(f"--token-file {path} must hold one line, the token", hint="e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt")
    return text


def _threshold(text: str | None, calibration: Path | None, cfg, reporter):
    """--threshold / --calibration / the checkpoint's stored threshold, resolved as `synood score` resolves them."""
    from synood_cli import thresholds

    if text is None:
        stored = bool(cfg.checkpoint) and (thresholds.checkpoint_folder_and_id(cfg.home, cfg.checkpoint)[0] / thresholds.THRESHOLD_FILE).is_file()
        if calibration is None and not stored:
            reporter.info("no threshold: is_ood is null (pass --calibration result.json, or a checkpoint that stores one)")
            return None
        text = "fpr95"
    return thresholds.resolve(thresholds.requested(text, calibration), text, calibration, cfg.method, cfg.checkpoint, cfg.home)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
