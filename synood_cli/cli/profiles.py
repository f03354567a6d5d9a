"""`synood profiles ls|show`: the named presets and what they set."""

from __future__ import annotations

import json

import typer

from synood_cli.cli.flags import TEXT_FORMATS, check_text_format, choices
from synood_cli.cli.render import error_boundary

app = typer.Typer(help="Named presets: tiny (offline random models), default, paper.", no_args_is_help=True, rich_markup_mode="rich")


@app.command("ls", epilog="[bold]Example[/bold]\n\n  synood profiles ls --format json")
@error_boundary
def ls(
    fmt: str = typer.Option("table", "--format", "-f", help="table or json.", **choices(TEXT_FORMATS)),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
) -> None:
    """List the profiles with their models and defaults."""
    as_json = check_text_format(fmt, old_json) == "json"
    from rich.table import Table

    from synood_cli.profiles import list_profiles

    profiles = list_profiles()
    if as_json:
        print(json.dumps(profiles, indent=2))
        return
    t = Table()
    for col in ("profile", "CLIP", "lexicon", "groups", "description"):
        t.add_column(col)
    for p in profiles:
        clip = p["clip"]
        t.add_row(p["name"], f"{clip['model']} / {clip.get('pretrained')}", p["lexicon"], str(p["neglabel"]["groups"]), p["description"])
    from synood_cli.cli.tables import wide_console

    wide_console().print(t)


@app.command("show", epilog="[bold]Examples[/bold]\n\n  synood profiles show paper\n\n  synood profiles show default --format json")
@error_boundary
def show(
    name: str = typer.Argument(..., help="tiny, default or paper."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (the recipe step by step) or json (every setting).", metavar="text|json"),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
) -> None:
    """Show the recipe a profile computes, step by step (docs/method.md has the formulas)."""
    from synood_cli.profiles import describe_recipe, load_profile

    if check_text_format(fmt, old_json, ("text", "json")) == "json":
        print(json.dumps(load_profile(name), indent=2))
        return
    for step, what in describe_recipe(name):
        print(f"{step}:\t{what}")
