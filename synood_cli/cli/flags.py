"""One spelling per concept: declared choices, help panels, deprecated aliases, and help without `<bool>`.

Import-light on purpose (no torch): `--help` and shell completion import it on every call. The
choice lists are the registries' names, kept here as literals because the registries import
torch; a test checks that they agree.
"""

from __future__ import annotations

import copy

from typer.core import TyperCommand, TyperGroup

METHODS = ("neglabel", "mcm", "msp", "energy", "synood")
PROFILES = ("tiny", "default", "paper", "world")
BENCHMARKS = ("imagenet-mos", "openood-imagenet-near", "openood-imagenet-far")
GUIDANCES = ("energy", "msp", "mean-log-softmax", "none")
TABLE_FORMATS = ("table", "csv", "json")
SCORE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
TEXT_FORMATS = ("table", "json")


def choices(values) -> dict:
    """Keyword arguments that list `values` in help (as the metavar) and in shell completion.

    Validation stays with the registries, which name the closest match ("did you mean").
    """
    values = tuple(values)

    def complete(incomplete: str):
        return [v for v in values if v.startswith(incomplete)]

    return {"metavar": "|".join(values), "autocompletion": complete}


def in_panel(option, panel: str):
    """A copy of a shared `typer.Option` shown under `panel` in one command's help."""
    opt = copy.copy(option)
    opt.rich_help_panel = panel
    return opt


def deprecated(old: str, new: str, value, current):
    """Resolve a renamed flag: the old spelling still works, with a warning on stderr."""
    if value is None or value is False:
        return current
    from synood_cli.cli.render import err_console

    err_console.print(f"[yellow]warning:[/yellow] {old} is deprecated; use {new}", soft_wrap=True, markup=True, highlight=False)
    return value


def check_text_format(fmt: str, old_json: bool = False, allowed: tuple = TEXT_FORMATS) -> str:
    """--format of the listing commands (env, profiles, store), with the deprecated --json; refused before any work."""
    if deprecated("--json", "--format json", old_json, None):
        fmt = "json"
    if fmt not in allowed:
        from synood_cli.errors import UsageError

        raise UsageError(f"unknown --format {fmt!r}", hint=f"use {' or '.join(allowed)}")
    return fmt


def _no_bool_labels(cmd, ctx=None) -> None:
    """Flags take no value: show none (Typer prints `<bool>` after them)."""
    params = list(getattr(cmd, "params", []))
    if ctx is not None:
        help_opt = cmd.get_help_option(ctx)
        if help_opt is not None:
            params.append(help_opt)
    for p in params:
        if getattr(p, "is_flag", False) and not p.metavar:
            p.metavar = ""
    for sub in getattr(cmd, "commands", {}).values():
        _no_bool_labels(sub, ctx)


class SynoodCommandMixin:
    def get_params(self, ctx):
        _no_bool_labels(self, ctx)
        return super().get_params(ctx)


class SynoodCommand(SynoodCommandMixin, TyperCommand):
    """A command whose help shows flags without a `<bool>` label."""


class SynoodSubGroup(SynoodCommandMixin, TyperGroup):
    """A command group (store, profiles) whose help shows flags without a `<bool>` label."""
