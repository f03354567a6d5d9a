"""Consistent, discoverable flags: global options anywhere, one spelling per concept, declared choices, clean help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import assert_clean_error, rows_of
from synood_cli.cli.app import app, hoist_global_options

TINY = ["--profile", "tiny"]
COMMANDS = ["score", "evaluate", "prompt", "synthesize", "finetune", "run", "negatives", "demo", "env", "store", "profiles"]


def _click_app():
    import typer

    return typer.main.get_command(app)


def _all_commands():
    """(path, click command) for every command and subcommand."""
    root = _click_app()
    out = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            out += [(f"{name} {s}", c) for s, c in subs.items()]
        else:
            out.append((name, cmd))
    return out


# --------------------------------------------------------------------------- global options anywhere


def test_hoist_global_options():
    cmds = {"score", "store"}
    assert hoist_global_options(["score", "x", "--device", "cpu", "-q"], cmds) == ["--device", "cpu", "-q", "score", "x"]
    assert hoist_global_options(["--seed", "1", "score", "x", "--home=/h"], cmds) == ["--home=/h", "--seed", "1", "score", "x"]
    assert hoist_global_options(["store", "ls", "--home", "/h"], cmds) == ["--home", "/h", "store", "ls"]
    assert hoist_global_options(["score", "--", "--device"], cmds) == ["score", "--", "--device"]  # nothing after --
    assert hoist_global_options(["score", "x", "-m", "mcm"], cmds) == ["score", "x", "-m", "mcm"]


def test_global_options_after_the_subcommand(invoke, shared_home, image_tree):
    r = invoke("score", str(image_tree.root), *TINY, "--classnames", str(image_tree.root), "--device", "cpu", "-q", "--seed", "0", home=shared_home)
    assert r.returncode == 0, r.stderr
    assert len(rows_of(r.stdout, "csv")) == len(image_tree.good)
    assert "loading CLIP" not in r.stderr  # -q after the command was honoured
    # a value is parsed by the global option: our error, not "No such option"
    assert_clean_error(invoke("score", str(image_tree.root), *TINY, "--device", "gpu9"), 2, "gpu9")


def test_home_after_the_subcommand(invoke, tmp_path):
    other = tmp_path / "other-home"
    assert invoke("profiles", "ls").returncode == 0
    r = invoke("env", "--format", "json", "--home", str(other))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["home"] == str(other)


# --------------------------------------------------------------------------- one spelling per concept


def test_no_flag_letter_has_two_meanings():
    meaning: dict[str, set] = {}
    for _, cmd in _all_commands():
        for p in cmd.params:
            if getattr(p, "hidden", False) or not hasattr(p, "opts"):
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in p.opts + p.secondary_opts if len(o) == 2 and o.startswith("-")):
                meaning.setdefault(short, set()).update(longs)
    doubled = {k: v for k, v in meaning.items() if len(v) > 1}
    assert not doubled, doubled


def test_one_output_flag_and_one_json_switch():
    for path, cmd in _all_commands():
        visible = {o for p in cmd.params if not getattr(p, "hidden", False) for o in getattr(p, "opts", [])}
        assert "--out" not in visible, path
        assert "--json" not in visible, path
        if "-o" in visible:
            assert "--output" in visible, path
    negatives = dict(_all_commands())["negatives"]
    visible = {o for p in negatives.params if not p.hidden for o in p.opts}
    assert "--classnames" in visible and "--classes" not in visible  # --classes is a class range everywhere else


def test_deprecated_spellings_still_work(invoke):
    r = invoke("env", "--json")
    assert r.returncode == 0
    assert "home" in json.loads(r.stdout)
    assert "--json is deprecated; use --format json" in r.stderr
    r = invoke("profiles", "ls", "--json")
    assert {p["name"] for p in json.loads(r.stdout)} == {"tiny", "default", "paper", "world"}
    assert "deprecated" in r.stderr


def test_negatives_old_classes_and_out_spellings(invoke, shared_home, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    out_new, out_old = tmp_path / "new.txt", tmp_path / "old.txt"
    r = invoke("negatives", "--classnames", str(names), *TINY, "-o", str(out_new), home=shared_home)
    assert r.returncode == 0, r.stderr
    r = invoke("negatives", "--classes", str(names), *TINY, "--out", str(out_old), home=shared_home)
    assert r.returncode == 0, r.stderr
    assert "--classes FILE is deprecated" in r.stderr and "--out is deprecated" in r.stderr
    assert out_old.read_text() == out_new.read_text() != ""
    assert_clean_error(invoke("negatives", *TINY), 2, "--classnames")


# --------------------------------------------------------------------------- declared choices, clean help


def test_declared_choices_match_the_registries():
    from synood_cli.cli import flags
    from synood_cli.guidance import GUIDANCE
    from synood_cli.profiles import PROFILE_NAMES
    from synood_cli.scores import SCORES
    from synood_cli.suites import SUITES

    assert set(flags.METHODS) == set(SCORES.names())
    assert set(flags.GUIDANCES) == set(GUIDANCE.names())
    assert set(flags.BENCHMARKS) == set(SUITES)
    assert set(flags.PROFILES) == set(PROFILE_NAMES)


@pytest.mark.parametrize(
    "command,text",
    [
        ("evaluate", "neglabel, mcm, msp, energy, synood, csp or adaneg"),
        ("evaluate", "tiny (offline, random), world (offline, trained on the generated world), default or paper"),
        ("evaluate", "imagenet-mos, openood-imagenet-near or openood-imagenet-far"),
        ("evaluate", "table|csv|json"),
        ("score", "csv|tsv|jsonl|parquet"),
        ("synthesize", "energy or msp (higher = ID), mean-log-softmax (higher = OOD) or none"),
    ],
)
def test_help_lists_the_choices(invoke, command, text):
    r = invoke(command, "--help", env={"COLUMNS": "250"})
    assert text in r.stdout


def test_shell_completion_lists_the_choices():
    import typer

    root = _click_app()
    cmd = root.commands["evaluate"]
    ctx = typer.Context(cmd)
    params = {p.name: p for p in cmd.params}
    assert [c.value for c in params["method"].shell_complete(ctx, "ne")] == ["neglabel"]
    assert [c.value for c in params["benchmark"].shell_complete(ctx, "openood")] == ["openood-imagenet-near", "openood-imagenet-far"]


def test_no_bool_labels_in_any_help(invoke):
    for path, _ in [("", None)] + _all_commands():
        r = invoke(*path.split(), "--help", env={"COLUMNS": "200"})
        assert r.returncode == 0, path
        assert "<bool>" not in r.stdout, path


def test_evaluate_groups_its_options_into_panels(invoke):
    out = invoke("evaluate", "--help", env={"COLUMNS": "200"}).stdout
    for panel in ("Inputs", "Benchmarks", "Score files", "Method and model", "Output", "Performance"):
        assert f"─ {panel}" in out, panel


def test_help_imports_neither_torch_nor_numpy():
    code = (
        "import sys\nfrom synood_cli.cli.app import app\n"
        "try:\n    app(prog_name='synood', args=['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'open_clip', 'PIL') if m in sys.modules), file=sys.stderr)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr


# --------------------------------------------------------------------------- store ls: never cut, caches hidden


def test_store_ls_in_80_columns_keeps_ids_names_dates_and_hides_caches(tmp_path):
    from synood_cli.store import Store

    home = tmp_path / "home"
    store = Store(home)
    made = {}
    for kind, name in (("checkpoint", "a-rather-long-checkpoint-name-for-the-in1k-run"), ("text-features", None), ("weights", None)):
        art = store.build(kind, {"k": kind}, lambda folder: (folder / "x.bin").write_bytes(b"0" * 10) and None, name=name)
        made[kind] = art
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SYNOOD_")}
    env.update({"SYNOOD_HOME": str(home), "COLUMNS": "80", "TERM": "xterm"})
    code = "from synood_cli.cli.app import main; main()"
    # a terminal of 80 columns: TTY_COMPATIBLE makes Rich treat the pipe as one
    p = subprocess.run([sys.executable, "-c", code, "store", "ls"], capture_output=True, text=True, env={**env, "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}, timeout=120)
    assert p.returncode == 0, p.stderr
    import re

    out = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout)  # bold headers: drop the escape codes
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert made["checkpoint"].id in out  # the whole id, never `3f2a…`
    assert "…" not in out
    created = made["checkpoint"].manifest["created"][:16].replace("T", " ")
    assert created in out
    names_cells = [line.split("│")[3].strip() for line in lines if line.startswith("│")]
    assert "".join(names_cells) == "a-rather-long-checkpoint-name-for-the-in1k-run"  # wrapped, never cut
    assert made["weights"].id not in out and "2 cache artifact(s) not listed" in p.stderr
    p = subprocess.run([sys.executable, "-c", code, "store", "ls", "--all"], capture_output=True, text=True, env={**env, "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}, timeout=120)
    assert made["weights"].id in p.stdout and made["text-features"].id in p.stdout
    p = subprocess.run([sys.executable, "-c", code, "store", "ls", "--format", "json"], capture_output=True, text=True, env=env, timeout=120)
    assert {json.loads(line)["kind"] for line in p.stdout.splitlines()} == {"checkpoint", "text-features", "weights"}  # machines get everything


def test_stderr_lines_are_never_broken_at_the_console_width():
    """A summary, hint or path on stderr stays one copyable line in an 80-column terminal or a log."""
    from synood_cli.cli.render import err_console, warn_line

    path = "/data/" + "a-long-folder-name/" * 8 + "preview.png"
    with err_console.capture() as cap:
        err_console.print(f"synth/0123456789abcdef: 6 images in 3 shards; preview {path}")
        warn_line(f"skipped {path}: truncated or corrupt image")
    lines = cap.get().splitlines()
    assert len(lines) == 2 and lines[0].endswith(path), lines
