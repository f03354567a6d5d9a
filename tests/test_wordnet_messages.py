"""WordNet messages: a hint that works in a venv without nltk, a short error line, a wrong SYNOOD_WORDNET named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synood_cli import lexicons
from synood_cli.errors import UsageError


def _many_places(tmp_path):
    return [tmp_path / f"place{i}" / "corpora" / "wordnet.zip" for i in range(18)]


def test_not_found_is_one_short_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNOOD_WORDNET", raising=False)
    monkeypatch.setattr(lexicons, "wordnet_search_locations", lambda: _many_places(tmp_path))
    with pytest.raises(UsageError) as info:
        lexicons.load_wordnet()
    message = info.value.message
    assert "\n" not in message and len(message) < 200 + len(str(tmp_path)), message
    assert str(_many_places(tmp_path)[0]) in message and "17 other places" in message and "synood env" in message
    assert str(_many_places(tmp_path)[5]) not in message


def test_hint_installs_nltk_before_using_it(tmp_path, monkeypatch):
    """nltk is no dependency: `python -m nltk.downloader` alone fails in the project's own venv."""
    monkeypatch.setattr(lexicons, "wordnet_search_locations", lambda: _many_places(tmp_path))
    monkeypatch.delenv("SYNOOD_WORDNET", raising=False)
    with pytest.raises(UsageError) as info:
        lexicons.load_wordnet()
    hint = info.value.hint
    assert "apt-get install wordnet-base" in hint and "--lexicon FILE" in hint
    install, download = hint.index("-m pip install nltk"), hint.index("-m nltk.downloader")
    assert install < download
    # the interpreter named runs this very environment (python on PATH, or its full path)
    python = hint[:install].split()[-1]
    out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.strip() == sys.prefix


def test_a_synood_wordnet_pointing_nowhere_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNOOD_WORDNET", str(tmp_path / "typo"))
    with pytest.raises(UsageError) as info:
        lexicons.load_lexicon("wordnet")
    assert f"SYNOOD_WORDNET={tmp_path / 'typo'}" in info.value.message and info.value.exit_code == 2
    with pytest.raises(UsageError, match="SYNOOD_WORDNET="):
        lexicons.load_lexicon("neglabel")


def test_env_reports_a_wrong_synood_wordnet_and_still_runs(invoke, tmp_path):
    r = invoke("env", env={"SYNOOD_WORDNET": str(tmp_path / "typo")})
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("wordnet:"))
    assert "SYNOOD_WORDNET=" in line and "typo" in line and "holds no WordNet" in line
