"""An honest first hour: `synood env` says whether WordNet is found and exactly how to get it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_env_says_where_wordnet_is(invoke):
    if not Path("/usr/share/wordnet/index.noun").is_file():
        pytest.skip("needs Debian's wordnet-base")
    info = json.loads(invoke("env", "--format", "json").stdout)
    assert info["wordnet"] == "/usr/share/wordnet"
    assert "wordnet_howto" not in info


def test_env_says_how_to_get_wordnet_when_missing(invoke, monkeypatch, tmp_path):
    import synood_cli.lexicons as lexicons

    nowhere = [tmp_path / "wordnet", tmp_path / "nltk_data" / "corpora" / "wordnet.zip"]
    monkeypatch.setattr(lexicons, "wordnet_search_locations", lambda: nowhere)
    r = invoke("env")
    assert r.returncode == 0, r.stderr
    assert "wordnet: not found" in r.stdout
    assert "apt-get install wordnet-base" in r.stdout and "nltk.downloader" in r.stdout and "corpora/wordnet.zip" in r.stdout
    info = json.loads(invoke("env", "--format", "json").stdout)
    assert info["wordnet_looked_in"] == [str(p) for p in nowhere]
