"""Tests for synood_cli.lexicons: WordNet index parsing, word lists, the built-in lists."""

from __future__ import annotations

import importlib.resources
import re
import zipfile
from pathlib import Path

import pytest

from synood_cli import lexicons
from synood_cli.errors import UsageError
from synood_cli.lexicons import (
    BUILTIN_LEXICONS,
    Lexicon,
    clean_lemma,
    load_basic,
    load_lexicon,
    load_word_list,
    load_wordnet,
)

LICENSE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "  3   \n"
)

INDEX_NOUN = LICENSE + (
    "'hood n 1 2 @ ; 1 0 08641944  \n"
    ".22 n 1 1 @ 1 0 04511002  \n"
    "apple n 2 3 @ ~ + 2 1 07739125 12633994  \n"
    "ice_cream n 1 2 @ ~ 1 1 07614500  \n"
    "apple n 2 3 @ ~ + 2 1 07739125 12633994  \n"
    "new_york_city n 1 2 @ #p 1 0 08524735  \n"
    "b12 n 1 1 @ 1 0 15236475  \n"
    "x-ray n 2 3 @ ~ + 2 0 04613158 11514082  \n"
    "u.s. n 1 1 @ 1 0 08542634  \n"
    "Zulu n 2 2 @ ; 2 0 09731436 06953627  \n"
    "zebra n 1 3 @ ~ #m 1 0 02391049  \n"
)

INDEX_ADJ = LICENSE + (
    "able a 4 4 ! = + ; 4 4 01017738 00307631 00510050 01018238  \n"
    "blue a 2 4 & = + ; 2 1 00370869 00371262  \n"
    "dark-blue a 1 1 & 1 0 00370869  \n"
    "blue a 2 4 & = + ; 2 1 00370869 00371262  \n"
    "well_known a 1 1 & 1 0 01375831  \n"
    "3d a 1 1 & 1 0 02199547  \n"
    "o'clock a 1 1 & 1 0 00105042  \n"
    "green a 1 1 & 1 0 00375969  \n"
)

# Every lemma, cleaned and deduplicated (load_wordnet(..., single_words=False), "wordnet-full").
EXPECTED_NOUNS = (
    "'hood", ".22", "apple", "ice cream", "new york city", "b12", "x-ray", "u.s.", "zulu", "zebra"
)
EXPECTED_ADJS = ("able", "blue", "dark-blue", "well known", "3d", "o'clock", "green")

# The default (the "wordnet" lexicon): one-word, letters-only lemmas; no spaces, digits, dots,
# hyphens or apostrophes. "Zulu" is kept because lemmas are lowercased before the filter.
SINGLE_NOUNS = ("apple", "zulu", "zebra")
SINGLE_ADJS = ("able", "blue", "green")


def write_fake_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.noun").write_text(INDEX_NOUN)
    (folder / "index.adj").write_text(INDEX_ADJ)
    (folder / "data.noun").write_text(LICENSE)
    return folder


# ------------------------------------------------------------------ clean_lemma


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ice_cream", "ice cream"),
        ("new_york_city", "new york city"),
        ("long(a)", "long"),
        ("afraid(p)", "afraid"),
        ("galore(ip)", "galore"),
        ("well_known(a)", "well known"),
        ("  Hot   Dog  ", "hot dog"),
        ("__a__b__", "a b"),
        ("[stray", "stray"),
        ("odd)", "odd"),
        ("dark-blue", "dark-blue"),
        ("'hood", "'hood"),
        (".22-caliber", ".22-caliber"),
        ("", None),
        ("   ", None),
        ("___", None),
        ("()", None),
        ("(a)", None),
        (None, None),
    ],
)
def test_clean_lemma(raw, expected):
    assert clean_lemma(raw) == expected


# ------------------------------------------------------------------ WordNet


def test_wordnet_folder(tmp_path):
    folder = write_fake_wordnet(tmp_path / "dict")
    lex = load_wordnet(folder, single_words=False)
    assert lex.name == "wordnet-full"
    assert lex.nouns == EXPECTED_NOUNS
    assert lex.adjectives == EXPECTED_ADJS
    assert lex.source == str(folder)
    assert len(lex) == len(EXPECTED_NOUNS) + len(EXPECTED_ADJS)


def test_wordnet_default_keeps_single_words_only(tmp_path):
    folder = write_fake_wordnet(tmp_path / "dict")
    lex = load_wordnet(folder)
    assert lex.name == "wordnet"
    assert lex.nouns == SINGLE_NOUNS
    assert lex.adjectives == SINGLE_ADJS
    assert lex.source == str(folder)
    assert len(lex) == len(SINGLE_NOUNS) + len(SINGLE_ADJS)
    assert load_wordnet(folder, single_words=True) == lex


@pytest.mark.parametrize(
    "dropped",
    [
        "ice cream",  # multi-word
        "new york city",  # multi-word
        "well known",  # multi-word adjective
        "b12",  # digit
        "3d",  # digit
        ".22",  # dot and digits
        "u.s.",  # dots
        "x-ray",  # hyphen
        "dark-blue",  # hyphen
        "'hood",  # apostrophe
        "o'clock",  # apostrophe
    ],
)
def test_wordnet_default_drops_odd_lemmas(tmp_path, dropped):
    folder = write_fake_wordnet(tmp_path / "dict")
    full = load_wordnet(folder, single_words=False)
    assert dropped in full.words()
    assert dropped not in load_wordnet(folder).words()


def test_wordnet_single_and_full_fingerprints_differ(tmp_path):
    folder = write_fake_wordnet(tmp_path / "dict")
    single, full = load_wordnet(folder), load_wordnet(folder, single_words=False)
    assert single.fingerprint() != full.fingerprint()
    assert single.fingerprint() == Lexicon("x", SINGLE_NOUNS, SINGLE_ADJS, "y").fingerprint()
    assert full.fingerprint() == Lexicon("x", EXPECTED_NOUNS, EXPECTED_ADJS, "y").fingerprint()


def test_wordnet_default_with_no_single_words_is_an_error(tmp_path):
    folder = tmp_path / "dict"
    folder.mkdir()
    (folder / "index.noun").write_text(LICENSE + "ice_cream n 1 2 @ ~ 1 1 07614500  \n")
    (folder / "index.adj").write_text(LICENSE + "dark-blue a 1 1 & 1 0 00370869  \n")
    assert load_wordnet(folder, single_words=False).words() == ("ice cream", "dark-blue")
    with pytest.raises(UsageError, match="contain no lemmas"):
        load_wordnet(folder)


def test_wordnet_parent_with_dict_folder(tmp_path):
    write_fake_wordnet(tmp_path / "WordNet-3.0" / "dict")
    assert load_wordnet(tmp_path / "WordNet-3.0", single_words=False).nouns == EXPECTED_NOUNS
    assert load_wordnet(tmp_path / "WordNet-3.0").nouns == SINGLE_NOUNS


def test_wordnet_nltk_unzipped(tmp_path):
    write_fake_wordnet(tmp_path / "nltk_data" / "corpora" / "wordnet")
    lex = load_wordnet(tmp_path / "nltk_data", single_words=False)
    assert lex.name == "wordnet-full"
    assert lex.nouns == EXPECTED_NOUNS
    assert lex.adjectives == EXPECTED_ADJS
    lex = load_wordnet(tmp_path / "nltk_data")
    assert lex.nouns == SINGLE_NOUNS
    assert lex.adjectives == SINGLE_ADJS


def make_nltk_zip(nltk_data: Path) -> Path:
    archive = nltk_data / "corpora" / "wordnet.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wordnet/", "")
        zf.writestr("wordnet/index.noun", INDEX_NOUN)
        zf.writestr("wordnet/index.adj", INDEX_ADJ)
        zf.writestr("wordnet/LICENSE", "license text")
    return archive


def test_wordnet_nltk_zip(tmp_path):
    archive = make_nltk_zip(tmp_path / "nltk_data")
    for where in (tmp_path / "nltk_data", archive):
        lex = load_wordnet(where, single_words=False)
        assert lex.name == "wordnet-full"
        assert lex.nouns == EXPECTED_NOUNS
        assert lex.adjectives == EXPECTED_ADJS
        assert lex.source == f"{archive}:wordnet/"
        lex = load_wordnet(where)
        assert lex.name == "wordnet"
        assert lex.nouns == SINGLE_NOUNS
        assert lex.adjectives == SINGLE_ADJS
        assert lex.source == f"{archive}:wordnet/"


def test_wordnet_found_through_nltk_data_env(tmp_path, monkeypatch):
    make_nltk_zip(tmp_path / "nltk_data")
    monkeypatch.delenv("SYNOOD_WORDNET", raising=False)
    monkeypatch.delenv("WNHOME", raising=False)
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    locations = lexicons.wordnet_search_locations()
    assert tmp_path / "nltk_data" / "corpora" / "wordnet.zip" in locations
    # Keep only the locations under tmp_path (this machine may have WordNet in /usr/share).
    ours = [p for p in locations if tmp_path in p.parents]
    monkeypatch.setattr(lexicons, "wordnet_search_locations", lambda: ours)
    assert load_wordnet(single_words=False).nouns == EXPECTED_NOUNS
    assert load_wordnet().nouns == SINGLE_NOUNS


def test_wordnet_env_var_comes_first(tmp_path, monkeypatch):
    folder = write_fake_wordnet(tmp_path / "wn")
    monkeypatch.setenv("SYNOOD_WORDNET", str(folder))
    assert lexicons.wordnet_search_locations()[0] == folder
    lex = load_wordnet(single_words=False)
    assert lex.nouns == EXPECTED_NOUNS
    assert lex.source == str(folder)
    lex = load_wordnet()
    assert lex.nouns == SINGLE_NOUNS
    assert lex.source == str(folder)


def test_builtin_wordnet_lexicons_from_env_var(tmp_path, monkeypatch):
    folder = write_fake_wordnet(tmp_path / "wn")
    monkeypatch.setenv("SYNOOD_WORDNET", str(folder))
    full = load_lexicon("wordnet-full")
    assert full.name == "wordnet-full"
    assert full.nouns == EXPECTED_NOUNS and full.adjectives == EXPECTED_ADJS
    assert full.source == str(folder)
    single = load_lexicon("wordnet")
    assert single.name == "wordnet"
    assert single.nouns == SINGLE_NOUNS and single.adjectives == SINGLE_ADJS


def test_wordnet_missing(tmp_path, monkeypatch):
    with pytest.raises(UsageError) as info:
        load_wordnet(tmp_path / "nowhere")
    assert info.value.message.startswith("WordNet 3.0 not found in ")
    assert str(tmp_path / "nowhere") in info.value.message
    assert "wordnet-base" in info.value.hint and "--lexicon FILE" in info.value.hint

    monkeypatch.setattr(lexicons, "wordnet_search_locations", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UsageError, match="WordNet 3.0 not found"):
        load_wordnet()
    with pytest.raises(UsageError, match="WordNet 3.0 not found"):
        load_wordnet(single_words=False)
    with pytest.raises(UsageError, match="WordNet 3.0 not found"):
        load_lexicon("wordnet-full")


def test_wordnet_zip_without_index(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wordnet/index.noun", INDEX_NOUN)  # no index.adj
    with pytest.raises(UsageError, match="WordNet 3.0 not found"):
        load_wordnet(archive)


REAL_WORDNET = Path("/usr/share/wordnet")
needs_real_wordnet = pytest.mark.wordnet  # skipped without WordNet 3.0 there, failed when CI is set (conftest.py)
SINGLE_WORD = re.compile(r"^[a-z]+$")


@needs_real_wordnet
def test_real_wordnet_full():
    lex = load_wordnet(REAL_WORDNET, single_words=False)
    assert lex.name == "wordnet-full"
    assert len(lex.nouns) > 100_000
    assert len(lex.adjectives) > 20_000
    assert len(set(lex.nouns)) == len(lex.nouns)
    assert "ice cream" in lex.nouns and "blue" in lex.adjectives
    assert all(w == w.strip() and "_" not in w for w in lex.nouns[:1000])


@needs_real_wordnet
def test_real_wordnet_single_words():
    lex = load_wordnet(REAL_WORDNET)
    assert lex.name == "wordnet"
    assert 50_000 <= len(lex.nouns) <= 60_000
    assert 15_000 <= len(lex.adjectives) <= 20_000
    assert len(set(lex.nouns)) == len(lex.nouns)
    assert len(set(lex.adjectives)) == len(lex.adjectives)
    bad = [w for w in lex.nouns + lex.adjectives if not SINGLE_WORD.match(w)]
    assert bad == []
    assert "apple" in lex.nouns and "blue" in lex.adjectives
    assert "ice cream" not in lex.nouns and "dark-blue" not in lex.adjectives


@needs_real_wordnet
def test_real_wordnet_builtin_lexicons(monkeypatch):
    # Make the search start at /usr/share/wordnet whatever this shell exports.
    monkeypatch.delenv("SYNOOD_WORDNET", raising=False)
    monkeypatch.delenv("WNHOME", raising=False)
    single = load_lexicon("wordnet")
    assert single.name == "wordnet"
    assert single.source == str(REAL_WORDNET)
    assert single.fingerprint() == load_wordnet().fingerprint()
    full = load_lexicon("wordnet-full")
    assert full.name == "wordnet-full"
    assert full.source == str(REAL_WORDNET)
    assert len(full.nouns) > 100_000 and len(full.adjectives) > 20_000
    assert full.fingerprint() == load_wordnet(single_words=False).fingerprint()
    assert set(single.nouns) < set(full.nouns)
    assert set(single.adjectives) < set(full.adjectives)


# ------------------------------------------------------------------ word lists


def test_word_list_pos_column(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(
        "# my candidates\n"
        "\n"
        "cat\n"
        "Hot_Dog\tnoun\n"
        "red\tadj\n"
        "  # indented comment\n"
        "dog\tn\n"
        "big\ta\n"
        "shiny\tAdjective\n"
        "cat\n"
        "fire truck\tNOUN\n"
        "red\tadj\n"
        "red\tnoun\n"
        "tree\t\n"
        "\n",
        encoding="utf-8",
    )
    lex = load_word_list(path)
    assert lex.name == str(path)
    assert lex.source == str(path.resolve())
    assert lex.nouns == ("cat", "hot dog", "dog", "fire truck", "red", "tree")
    assert lex.adjectives == ("red", "big", "shiny")
    assert lex.words() == ("cat", "hot dog", "dog", "fire truck", "red", "tree", "big", "shiny")


def test_word_list_bom_and_crlf(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes("\ufeffapple\r\nblue\tadj\r\n".encode("utf-8"))
    lex = load_word_list(path)
    assert lex.nouns == ("apple",)
    assert lex.adjectives == ("blue",)


def test_word_list_bad_pos_reports_line(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# header\ncat\ndog\tverb\n")
    with pytest.raises(UsageError) as info:
        load_word_list(path)
    assert f"{path.resolve()}:3:" in info.value.message
    assert "'verb'" in info.value.message
    assert info.value.hint


def test_word_list_too_many_columns(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("cat\tnoun\textra\n")
    with pytest.raises(UsageError, match=":1: expected"):
        load_word_list(path)


def test_word_list_empty(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# only comments\n\n   \n")
    with pytest.raises(UsageError, match="has no words"):
        load_word_list(path)


def test_word_list_missing_and_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_word_list(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="is a folder"):
        load_word_list(tmp_path)


def test_word_list_not_utf8(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_word_list(path)


# ------------------------------------------------------------------ basic list, registry


def test_basic_list():
    lex = load_basic()
    assert lex.name == "basic"
    assert len(lex.nouns) >= 400
    assert len(lex.adjectives) >= 100
    # No duplicates in the shipped file, not even across parts of speech.
    resource = importlib.resources.files("synood_cli") / "data_files" / "basic_words.txt"
    text = resource.read_text(encoding="utf-8")
    entries = [
        line.split("\t")[0] for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(entries) == len(set(entries)) == len(lex.nouns) + len(lex.adjectives)
    assert all(line.count("\t") == 1 for line in text.splitlines() if line and line[0] != "#")
    assert "apple" in lex.nouns and "red" in lex.adjectives
    assert load_lexicon("basic") == lex


def test_registry_names_and_unknown_name():
    assert BUILTIN_LEXICONS.names() == ["basic", "neglabel", "wordnet", "wordnet-full", "world"]
    with pytest.raises(UsageError) as info:
        BUILTIN_LEXICONS.get("wordnett")
    assert "did you mean --lexicon wordnet?" in info.value.hint


def test_load_lexicon_unknown_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        load_lexicon("wordnett")
    assert "unknown lexicon 'wordnett'" in info.value.message
    assert "did you mean --lexicon wordnet?" in info.value.hint
    assert "word-list file" in info.value.hint
    with pytest.raises(UsageError) as info:
        load_lexicon("qqqqqqqq")
    assert "did you mean" not in info.value.hint
    assert "word-list file" in info.value.hint
    with pytest.raises(UsageError):
        load_lexicon("")


def test_load_lexicon_paths(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("cat\nred\tadj\n")
    lex = load_lexicon(str(words))
    assert lex.nouns == ("cat",) and lex.adjectives == ("red",)

    # A WordNet path gives the default (single-word) lexicon.
    folder = write_fake_wordnet(tmp_path / "dict")
    assert load_lexicon(str(folder)).nouns == SINGLE_NOUNS
    assert load_lexicon(str(folder)).name == "wordnet"
    archive = make_nltk_zip(tmp_path / "nltk")
    assert load_lexicon(str(archive)).adjectives == SINGLE_ADJS

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(UsageError, match="no WordNet index files"):
        load_lexicon(str(empty))


# ------------------------------------------------------------------ fingerprint


def test_fingerprint():
    a = Lexicon("a", ("cat", "dog"), ("red",), "x")
    b = Lexicon("b", ("cat", "dog"), ("red",), "y")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)
    assert Lexicon("a", ("cat", "dot"), ("red",), "x").fingerprint() != a.fingerprint()
    assert Lexicon("a", ("cat",), ("dog", "red"), "x").fingerprint() != a.fingerprint()
    assert Lexicon("a", ("dog", "cat"), ("red",), "x").fingerprint() != a.fingerprint()


def test_fingerprint_stable_across_sources(tmp_path):
    folder = write_fake_wordnet(tmp_path / "dict")
    archive = make_nltk_zip(tmp_path / "nltk")
    assert load_wordnet(folder).fingerprint() == load_wordnet(archive).fingerprint()
    assert load_wordnet(folder) != load_wordnet(archive)  # sources differ
    full_folder = load_wordnet(folder, single_words=False)
    assert full_folder.fingerprint() == load_wordnet(archive, single_words=False).fingerprint()
