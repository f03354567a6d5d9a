"""One spelling per concept: declared choices, help panels, deprecated aliases, and help without `<bool>`.

Import-light on purpose (no torch): `--help` and shell completion import it on every call. The
choice lists are the registries' names, kept here as literals because the registries import
torch; a test checks that they agree.
"""

from __future__ import annotations

import copy
import inspect
import re

from typer.core import TyperCommand, TyperGroup

METHODS = ("neglabel", "mcm", "msp", "energy", "synood", "csp", "adaneg")
POOLS = ("neglabel", "csp")  # pools.POOLS
PROFILES = ("tiny", "default", "paper", "world")
BENCHMARKS = ("imagenet-mos", "openood-imagenet-near", "openood-imagenet-far")
GUIDANCES = ("energy", "msp", "mean-log-softmax", "none")
SOURCE_FITS = ("crop", "squash")  # synthesis.SOURCE_FITS, without importing torch for --help
TABLE_FORMATS = ("table", "csv", "json")
SCORE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
TEXT_FORMATS = ("table", "json")


def choices(values, label: str | None = None) -> dict:
    """Keyword arguments that list `values` in help (as the metavar) and in shell completion.

    A long list gets a short `label` instead (the help text names the values, see `listed`): a
    wide metavar column squeezes the option names until Rich cuts them at 80 columns.
    Validation stays with the registries, which name the closest match ("did you mean").
    """
    values = tuple(values)

    def complete(incomplete: str):
        return [v for v in values if v.startswith(incomplete)]

    return {"metavar": label or "|".join(values), "autocompletion": complete}


def listed(values) -> str:
    """`a, b or c`: the choices of an option in its help text."""
    values = list(values)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def in_panel(option, panel: str, help: str | None = None):
    """A copy of a shared `typer.Option` shown under `panel` in one command's help (with its own `help`)."""
    opt = copy.copy(option)
    opt.rich_help_panel = panel
    if help is not None:
        opt.help = help
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


def reflow(text: str | None) -> str | None:
    """Join the hard-wrapped lines of each paragraph: Typer's rich mode keeps them, so a narrow
    terminal rewraps every source line apart and leaves stubs. Indented lines (examples) stay."""
    if not text:
        return text
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines = para.split("\n")
        if para.startswith("\b") or any(line.startswith(" ") for line in lines):
            paragraphs.append(para)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def _plain_list_label(param, ctx) -> None:
    """A repeatable option or a variadic argument shows its element type (`<str>`), not `<list[str]>`."""
    label = param.display_type_rich(ctx) if hasattr(param, "display_type_rich") else None
    if not label or "list[" not in label:
        return
    plain = re.sub(r"list\[(.*)\]", lambda m: m.group(1).lower(), label)
    if param.param_type_name == "option":
        param.metavar = plain
    else:  # an argument's metavar would rename it in the usage line: change only its type label
        param.display_type_rich = lambda ctx, plain=plain: plain


def _tidy_help(cmd, ctx=None) -> None:
    """Help that reads well at 80 columns: flags take no value, so show none (Typer prints `<bool>`),
    list types as their elements, docstring paragraphs reflowed."""
    params = list(getattr(cmd, "params", []))
    if ctx is not None:
        help_opt = cmd.get_help_option(ctx)
        if help_opt is not None:
            params.append(help_opt)
    for p in params:
        if getattr(p, "is_flag", False) and not p.metavar:
            p.metavar = ""
        _plain_list_label(p, ctx)
    cmd.help = reflow(cmd.help)
    for sub in getattr(cmd, "commands", {}).values():
        _tidy_help(sub, ctx)


class SynoodCommandMixin:
    def get_params(self, ctx):
        _tidy_help(self, ctx)
        return super().get_params(ctx)


class SynoodCommand(SynoodCommandMixin, TyperCommand):
    """A command whose help shows flags without a `<bool>` label."""


class SynoodSubGroup(SynoodCommandMixin, TyperGroup):
    """A command group (store, profiles) whose help shows flags without a `<bool>` label."""
