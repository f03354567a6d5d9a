"""`--help` at 80 columns (a pipe gets 80 too): option names whole, no `…`, no Python types, reflowed prose."""

from __future__ import annotations

import re

import click
import pytest
import typer

from synood_cli.cli.app import app

ROOT = typer.main.get_command(app)


def _commands(group: click.Group, prefix=()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(prefix, group)]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + (name,))
        else:
            out.append((prefix + (name,), cmd))
    return out


COMMANDS = _commands(ROOT)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "synood" for p, _ in COMMANDS])
def test_help_at_80_columns_cuts_nothing(invoke, path, cmd):
    r = invoke(*path, "--help", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "…" not in out, out
    assert "list[" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.param_type_name != "option":
            continue
        for name in p.opts + p.secondary_opts:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), (name, out)
        choices = (p.metavar or "").split("|") if "|" in (p.metavar or "") else []
        for c in choices:  # a choice list is never broken inside a word
            assert re.search(rf"(?<![\w-]){re.escape(c.strip())}(?![\w-])", out), (c, out)


def test_help_paragraphs_reflow(invoke):
    """A paragraph of the docstring is one flowing text: no line ends after a word or two the width allowed."""
    out = invoke("score", "--help", env={"COLUMNS": "80"}).stdout
    prose = out[: out.index("Arguments")]
    lines = [line.strip() for line in prose.splitlines()]
    # hard-wrapped source lines rewrapped one by one leave short stubs ("save_to_disk folders or")
    # followed by another line of the same paragraph
    for a, b in zip(lines, lines[1:]):
        if a and b:
            assert len(a) + 1 + len(b.split()[0]) > 78, (a, b)


def test_score_options_are_grouped_in_panels(invoke):
    out = invoke("score", "--help", env={"COLUMNS": "120"}).stdout
    panels = re.findall(r"╭─ (.+?) ─", out)
    assert len(panels) >= 4, panels
    assert "Method and model" in panels and "Output" in panels


def test_help_copy_names_only_what_the_command_has(invoke):
    score = invoke("score", "--help", env={"COLUMNS": "200"}).stdout
    assert "--benchmark" not in score  # --data-root's shared text once sent score users to an option it lacks
    assert "--benchmark" in invoke("evaluate", "--help", env={"COLUMNS": "200"}).stdout
    # no magic threshold in the examples: a threshold is a score on one method's scale
    assert "score < 0." not in score and not re.search(r"--threshold [0-9]", score)


def test_evaluate_stdin_example_keeps_the_roles(invoke):
    """The ID scores come from the ID (validation) set, never from the new images."""
    out = invoke("evaluate", "--help", env={"COLUMNS": "250"}).stdout
    line = next(x for x in out.splitlines() if "--id-scores -" in x)
    scored = re.search(r"synood score (\S+) -o (\S+)", line)
    assert scored and "val" in scored.group(1) and "--id-scores -" in line and scored.group(2) not in line.split("--ood-scores")[1]
