"""The `synood` Typer app: global options and the command table.

Kept import-light (no torch, no HF libraries): shell completion and `--help` import this module
on every call. Each command module imports the heavy libraries inside its function.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from synood_cli import __version__
from synood_cli.cli.flags import SynoodCommand, SynoodCommandMixin, SynoodSubGroup
from typer.core import TyperGroup
from synood_cli.data.guard import MAX_PIXELS_ENV, MAX_PIXELS_HELP, parse_max_pixels
from synood_cli.runtime import normalize_precision, resolve_home, set_offline, validate_device

EPILOG = (
    "[bold]Exit codes[/bold]: 0 done (skipped corrupt images are reported and counted) · 1 internal error · "
    "2 usage or validation error before any work · 3 resource missing (weights not cached offline, CUDA absent, "
    "GPU out of memory, a missing or damaged artifact, a store or output that cannot be written) · "
    "4 data errors under --strict · 130 interrupted, rerun to resume.\n\n"
    "Quick start: [cyan]synood demo[/cyan] (offline, CPU, tiny random models)."
)

GLOBAL_FLAGS = ("--quiet", "-q", "--verbose", "-v", "--offline")
GLOBAL_VALUED = ("--home", "--device", "--precision", "--seed", "--max-pixels")


def hoist_global_options(args: list[str], commands) -> list[str]:
    """Move global options written after the command in front of it: `synood score x --device cpu`.

    Typer accepts options of the app callback only before the subcommand; users put them last.
    Nothing after `--` moves; no command defines an option of the same name.
    """
    args = list(args)
    i = 0
    while i < len(args) and args[i] not in commands:  # the command name, past leading global options
        if args[i] == "--":
            return args
        i += 1
    if i >= len(args):
        return args
    head, tail, moved = args[: i + 1], [], []
    rest = args[i + 1 :]
    j = 0
    while j < len(rest):
        a = rest[j]
        if a == "--":
            tail += rest[j:]
            break
        if a in GLOBAL_FLAGS:
            moved.append(a)
        elif a in GLOBAL_VALUED and j + 1 < len(rest):
            moved += [a, rest[j + 1]]
            j += 1
        elif a.split("=", 1)[0] in GLOBAL_VALUED and "=" in a:
            moved.append(a)
        else:
            tail.append(a)
        j += 1
    return moved + head + tail if moved else args


class SynoodGroup(SynoodCommandMixin, TyperGroup):
    """The root command: global options are accepted after the subcommand too."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_global_options(args, set(self.commands)))


app = typer.Typer(
    name="synood",
    cls=SynoodGroup,
    help="Out-of-distribution detection with vision-language models (SynOOD, NegLabel, MCM, ...).",
    epilog=EPILOG,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """Resolved global options, handed to every command through the Typer context."""

    home: Path
    device: str
    precision: str
    seed: int
    quiet: bool
    verbose: bool
    offline: bool

    def reporter(self):
        from synood_cli.cli.render import RichReporter
        from synood_cli.runtime import rank_info

        # under torchrun/srun every rank sees the same inputs: rank 0 reports, the others only print errors
        return RichReporter(quiet=self.quiet, verbose=self.verbose, follower=rank_info()[0] != 0)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synood {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Optional[Path] = typer.Option(
        None, "--home", envvar="SYNOOD_HOME", help="Artifact store folder \\[default: $XDG_CACHE_HOME/synood or ~/.cache/synood]."
    ),
    device: str = typer.Option("auto", "--device", envvar="SYNOOD_DEVICE", help="auto, cpu, cuda or cuda:N (auto: cuda:$LOCAL_RANK when present)."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 for encoder forwards (auto: bf16 on CUDA, fp32 on CPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice (negative grouping, selection, noise)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings, errors and data."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on stderr."),
    offline: bool = typer.Option(
        False, "--offline", envvar="SYNOOD_OFFLINE", help="Never reach a hub: use only cached weights (sets HF_HUB_OFFLINE=1)."
    ),
    max_pixels: Optional[str] = typer.Option(None, "--max-pixels", envvar="SYNOOD_MAX_PIXELS", metavar="PIXELS", help=MAX_PIXELS_HELP),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Global options go before or after the command: [cyan]synood score ... --device cpu[/cyan]."""
    from synood_cli.cli.render import error_boundary

    @error_boundary
    def resolve() -> State:
        set_offline(offline)  # before any HF import: the libraries read it at import time
        if max_pixels is not None:  # the loader processes read the cap from the environment
            os.environ[MAX_PIXELS_ENV] = str(parse_max_pixels(max_pixels))
        return State(
            home=resolve_home(home),
            device=validate_device(device),
            precision=normalize_precision(precision),
            seed=seed,
            quiet=quiet,
            verbose=verbose,
            offline=offline or os.environ.get("HF_HUB_OFFLINE") == "1",
        )

    ctx.obj = resolve()
    _mute_followers()


def _mute_followers() -> None:
    """Under torchrun/srun every rank runs the command; only rank 0 writes data to stdout."""
    from synood_cli.runtime import rank_info

    if rank_info()[0] != 0:
        sys.stdout = open(os.devnull, "w")


def _register() -> None:
    from synood_cli.cli import demo, env, evaluate, finetune, negatives, profiles, prompt, score, serve, store, synthesize

    app.command("score", cls=SynoodCommand, help=score.HELP, epilog=score.EPILOG)(score.score)
    app.command("evaluate", cls=SynoodCommand, help=evaluate.HELP, epilog=evaluate.EPILOG)(evaluate.evaluate)
    app.command("prompt", cls=SynoodCommand, help=prompt.HELP, epilog=prompt.EPILOG)(prompt.prompt)
    app.command("synthesize", cls=SynoodCommand, help=synthesize.HELP, epilog=synthesize.EPILOG)(synthesize.synthesize)
    app.command("finetune", cls=SynoodCommand, help=finetune.HELP, epilog=finetune.EPILOG)(finetune.finetune)
    app.command("run", cls=SynoodCommand, help=finetune.RUN_HELP, epilog=finetune.RUN_EPILOG)(finetune.run)
    app.command("negatives", cls=SynoodCommand, help=negatives.HELP, epilog=negatives.EPILOG)(negatives.negatives)
    app.command("demo", cls=SynoodCommand, help=demo.HELP, epilog=demo.EPILOG)(demo.demo)
    app.command("serve", cls=SynoodCommand, help=serve.HELP, epilog=serve.EPILOG)(serve.serve)
    app.command("env", cls=SynoodCommand, help=env.HELP, epilog=env.EPILOG)(env.env)
    app.add_typer(store.app, name="store", cls=SynoodSubGroup)
    app.add_typer(profiles.app, name="profiles", cls=SynoodSubGroup)


_register()


def main() -> None:
    try:
        app(prog_name="synood")
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            _exit_now(e.code or 0)
        raise


def _exit_now(code: int) -> None:
    """End the process without CPython's teardown once a model-using command has finished.

    With torch, open_clip and the HF libraries loaded the interpreter tracks ~400,000 objects;
    its finalisation runs several full garbage collections over them and frees every module:
    `score` sat 1 s (4 s on a loaded 2-core machine) after its last row before the shell got
    its prompt back. Streams are flushed and the atexit handlers (logging, multiprocessing
    workers, temp-file finalizers, the process group) still run; only the teardown is skipped.
    A command that left a non-daemon thread running exits the normal way, which waits for it.
    """
    import threading

    if "torch" not in sys.modules or any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader went away (`| head`) or the stream is closed: nothing left to say
            pass
    atexit._run_exitfuncs()
    os._exit(code)
