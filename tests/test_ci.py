"""`.ci/run`: it runs the README's two commands, and stops at the first failing step, naming it.

The script runs from a copy in tmp_path with fake `python3` and `apt-get` first on PATH, so nothing
is installed and no venv is made; only bash and coreutils are real.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"


def readme_commands() -> list[str]:
    """The commands of README's set-up section, the `&&` lists split into their commands."""
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return [part for c in commands for part in c.split(" && ")]


def ci_steps() -> list[tuple[str, str]]:
    return re.findall(r'^step "([^"]+)" (.+)$', CI_RUN.read_text(), flags=re.M)


def test_ci_runs_exactly_the_readme_commands():
    assert readme_commands() == [
        "python3 -m venv .venv", '.venv/bin/pip install -e ".[test]"', ".venv/bin/synood demo", ".venv/bin/pytest -q",
    ]
    assert [command for _, command in ci_steps()] == readme_commands()


def fake_repo(tmp_path: Path, wordnet: bool) -> Path:
    """A copy of .ci/run in an empty repo; without `wordnet` it looks for WordNet in an empty folder."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    script = CI_RUN.read_text()
    if not wordnet:
        assert "WORDNET=/usr/share/wordnet\n" in script
        script = script.replace("WORDNET=/usr/share/wordnet\n", f"WORDNET={tmp_path / 'no-wordnet'}\n")
    (repo / ".ci" / "run").write_text(script)
    (repo / ".ci" / "run").chmod(0o755)
    return repo


def fake_bin(tmp_path: Path, pip_rc: int) -> Path:
    """`python3 -m venv .venv` makes a .venv whose pip exits `pip_rc` and whose other tools succeed;
    `apt-get` always fails. Every call is logged to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    tool = "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> {log}\nexit {rc}\n"
    python3 = (
        "#!/bin/sh\n"
        f"echo \"python3 $*\" >> {log}\n"
        "mkdir -p .venv/bin\n"
        f"printf '%s' {shlex.quote(tool.format(log=log, rc=pip_rc))} > .venv/bin/pip\n"
        f"printf '%s' {shlex.quote(tool.format(log=log, rc=0))} > .venv/bin/synood\n"
        f"printf '%s' {shlex.quote(tool.format(log=log, rc=0))} > .venv/bin/pytest\n"
        "chmod +x .venv/bin/*\n"
    )
    (bin_dir / "python3").write_text(python3)
    (bin_dir / "apt-get").write_text(tool.format(log=log, rc=100))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def run_ci(repo: Path, bin_dir: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    if ci:
        env["CI"] = "true"
    return subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_failed_install_stops_ci_there_and_names_the_step(tmp_path):
    repo, bin_dir = fake_repo(tmp_path, wordnet=True), fake_bin(tmp_path, pip_rc=5)
    r = run_ci(repo, bin_dir, ci=True)
    assert r.returncode == 5, r.stderr
    assert "ci: FAILED at step 'install' (exit 5)" in r.stderr
    assert calls(tmp_path) == ["python3 -m venv .venv", "pip install -e .[test]"]  # no demo, no pytest after it
    assert "step 'demo'" not in r.stderr and "command not found" not in r.stderr


def test_every_step_runs_when_all_pass(tmp_path):
    repo, bin_dir = fake_repo(tmp_path, wordnet=True), fake_bin(tmp_path, pip_rc=0)
    r = run_ci(repo, bin_dir, ci=True)
    assert r.returncode == 0, r.stderr
    assert calls(tmp_path) == ["python3 -m venv .venv", "pip install -e .[test]", "synood demo", "pytest -q"]
    assert "ci: all steps passed" in r.stderr


def test_missing_wordnet_is_an_error_in_ci(tmp_path):
    repo, bin_dir = fake_repo(tmp_path, wordnet=False), fake_bin(tmp_path, pip_rc=0)
    r = run_ci(repo, bin_dir, ci=True)
    assert r.returncode == 1, r.stderr
    assert "ci: FAILED at step 'WordNet'" in r.stderr and "wordnet-base" in r.stderr
    assert calls(tmp_path) == ["apt-get update -qq"]  # it tried to install it, then stopped before the venv


def test_missing_wordnet_outside_ci_is_a_warning(tmp_path):
    repo, bin_dir = fake_repo(tmp_path, wordnet=False), fake_bin(tmp_path, pip_rc=0)
    r = run_ci(repo, bin_dir, ci=False)
    assert r.returncode == 0, r.stderr
    assert "warning: WordNet 3.0 is not installed" in r.stderr and "will skip" in r.stderr
    assert calls(tmp_path)[-1] == "pytest -q"
