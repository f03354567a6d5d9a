"""Rendering shared by the commands: the stderr console, the progress reporter, the error boundary.

stdout carries data only; everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from synood_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, SynoodError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # soft: a path or summary stays one copyable line
PLAIN_INTERVAL_S = 30.0


def esc(value) -> str:
    """Any user- or data-supplied value as literal text in Rich markup (a file named `x[/red].jpg`)."""
    return escape(str(value))


def rank_prefix() -> str:
    """`rank R/W: ` under torchrun/srun (which rank said it), else nothing."""
    from synood_cli.runtime import rank_info

    rank, world, _ = rank_info()
    return f"rank {rank}/{world}: " if world > 1 else ""


def leader_print(*objects, **kwargs) -> None:
    """A command's result line on stderr, printed once under torchrun/srun (by rank 0)."""
    from synood_cli.runtime import rank_info

    if rank_info()[0] == 0:
        err_console.print(*objects, **kwargs)


def warn_line(message: str) -> None:
    """One `warning:` line on stderr; the message is printed as it is, never read as markup."""
    err_console.print(f"[yellow]warning:[/yellow] {esc(rank_prefix() + message)}", soft_wrap=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # library warnings (a damaged cache rebuilt, PIL's DecompressionBombWarning) as one line each
    text = " ".join(str(message).split())
    warn_line(text if issubclass(category, UserWarning) and category.__module__.startswith("synood") else f"{category.__name__}: {text}")


def _fmt_eta(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_rate(per_second: float, unit: str) -> str:
    """`2310 img/s`, `2.5 img/s`; below 1/s per minute (`12.0 img/min`), never `0 img/s`."""
    if per_second >= 10:
        return f"{per_second:.0f} {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{60 * per_second:.1f} {unit}/min"


class _PlainTask:
    """On a non-terminal stderr Rich draws nothing until the end: print a line every 30 s instead."""

    def __init__(self, label: str, total: int | None, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PLAIN_INTERVAL_S:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            done = int(round(self.done, 6))  # synthesis advances in fractions of an image
            if self.total:
                eta = (self.total - self.done) / rate if rate > 0 else 0
                line = f"{self.label}: {done}/{self.total} {100 * self.done / self.total:.1f}% {format_rate(rate, self.unit)} eta {_fmt_eta(eta)}"
            else:
                line = f"{self.label}: {done} {format_rate(rate, self.unit)}"
            print(line, file=sys.stderr, flush=True)

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        if total is not None:
            self.total = total
        if description is not None:
            self.label = description


class _RichTask:
    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task_id, n)

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        kw = {}
        if total is not None:
            kw["total"] = total
        if description is not None:
            kw["description"] = esc(description)
        self.progress.update(self.task_id, **kw)


class RichReporter:
    """Progress bars and messages on stderr; quiet drops info lines, verbose keeps everything."""

    def __init__(self, quiet: bool = False, verbose: bool = False, follower: bool = False):
        self.quiet = quiet or follower
        self.verbose = verbose and not follower
        self.follower = follower  # a rank other than 0: rank 0 reports the (shared) data's warnings; errors still show
        self.warnings = 0

    def info(self, message: str) -> None:
        if not self.quiet:  # soft_wrap: a path or a threshold stays one copyable line in a narrow terminal
            err_console.print(f"[dim]{esc(message)}[/dim]", soft_wrap=True)

    def warn(self, message: str) -> None:
        self.warnings += 1
        if not self.follower:
            warn_line(message)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator:
        if self.quiet:
            from synood_cli.reporting import _NullTask

            yield _NullTask()
            return
        if not err_console.is_terminal:
            yield _PlainTask(description, total, unit)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task):
                return Text(format_rate(task.speed, unit) if task.speed else f"- {unit}/s", style="cyan")

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        # redirect_* False: with a terminal stderr Rich would otherwise swallow prints to stdout
        with Progress(*columns, console=err_console, transient=False, redirect_stdout=False, redirect_stderr=False) as progress:
            yield _RichTask(progress, progress.add_task(esc(description), total=total))


def report_error(exc: SynoodError) -> None:
    err_console.print(f"[bold red]error:[/bold red] {esc(rank_prefix() + exc.message)}", soft_wrap=True, markup=True, highlight=False)
    if exc.hint:
        err_console.print(f"[bold]hint:[/bold] {esc(exc.hint)}", soft_wrap=True)


_FAILURE_CLEANUPS: list = []


def on_failure(cleanup) -> None:
    """Run `cleanup()` if the command ends with an error or an interrupt (e.g. drop a `.partial` output)."""
    _FAILURE_CLEANUPS.append(cleanup)


def error_boundary(fn):
    """One place that turns exceptions into one line on stderr and a meaningful exit code."""
    inner = _boundary(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except BaseException as e:
            if not (isinstance(e, typer.Exit) and e.exit_code == 0):
                while _FAILURE_CLEANUPS:
                    with contextlib.suppress(Exception):
                        _FAILURE_CLEANUPS.pop()()
            raise
        finally:
            _FAILURE_CLEANUPS.clear()

    return wrapper


def _boundary(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import warnings

        shown = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SynoodError as e:
            report_error(e)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; rerun the same command to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # the reader went away (`synood score ... | head`): end quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as e:  # noqa: BLE001 - the boundary
            if isinstance(e, OSError):  # permission denied, read-only or full disk: exit 3 with a hint
                from synood_cli.store import disk_full_hint

                storage = disk_full_hint(e, verb="access")
                if storage is not None:
                    report_error(storage)
                    raise typer.Exit(storage.exit_code) from None
            if os.environ.get("SYNOOD_DEBUG"):
                raise
            oom = _as_oom(e)
            if oom is not None:
                report_error(oom)
                raise typer.Exit(oom.exit_code) from None
            first = str(e).splitlines()[0] if str(e) else ""
            err_console.print(f"[bold red]internal error:[/bold red] {esc(rank_prefix() + type(e).__name__)}: {esc(first)}", soft_wrap=True, markup=True)
            err_console.print("[bold]hint:[/bold] rerun with SYNOOD_DEBUG=1 for the full traceback and report it")
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            warnings.showwarning = shown

    return wrapper


def _as_oom(e: Exception) -> SynoodError | None:
    if type(e).__name__ == "OutOfMemoryError":
        from synood_cli.errors import ResourceMissing

        return ResourceMissing("the GPU ran out of memory", hint="lower --batch-size, or use --precision bf16")
    return None
