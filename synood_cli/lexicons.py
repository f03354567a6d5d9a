"""Candidate words for negative-label mining.

NegLabel (Jiang et al., ICLR 2024) draws its candidate negative labels from the nouns and
adjectives of WordNet 3.0. The ``neglabel`` lexicon rebuilds NegLabel's word pool (docs/method.md,
"Negative labels"): one candidate per synset of ``data.noun`` and ``data.adj`` (its first lemma),
nouns from every lexicographer file but ``noun.animal`` and ``noun.food``. The ``wordnet`` lexicons
read every lemma of ``index.noun`` and ``index.adj`` instead. Both read WordNet's files directly, which works with the Debian/Ubuntu ``wordnet-base`` package
(/usr/share/wordnet, which lacks the ``lexnames`` file nltk's reader wants) as well as with
nltk's copy (``nltk_data/corpora/wordnet/`` or just ``corpora/wordnet.zip``). No nltk needed.

Other sources:

* ``basic``: a small hand-written list shipped with the package (tiny profile, offline demos).
* ``world``: the generated world's words (docs/world.md), for the world profile.
* a word-list file: UTF-8 text, one entry per line. A line is either ``word`` or
  ``word<TAB>pos`` where pos is ``noun``/``n`` or ``adj``/``a``/``adjective`` (case-insensitive);
  the POS column is TAB-separated only (words may contain spaces), the default is noun. Blank
  lines and lines starting with ``#`` are ignored.

Every lemma goes through :func:`clean_lemma`; within each part of speech duplicates are dropped
(first occurrence wins) and the source order is kept.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from synood_cli.errors import UsageError, read_user_text
from synood_cli.registry import Registry

__all__ = [
    "BUILTIN_LEXICONS",
    "Lexicon",
    "WORD_LIST_FORMAT",
    "clean_lemma",
    "load_basic",
    "load_lexicon",
    "load_word_list",
    "load_neglabel",
    "load_wordnet",
    "parse_word_list",
    "wordnet_search_locations",
]

WORD_LIST_FORMAT = (
    "one word per line, optionally followed by a TAB and noun|adj; "
    "blank lines and lines starting with # are ignored"
)

def _python() -> str:
    """How to run this interpreter: `python` when that is it on PATH, else its full path (a venv not activated)."""
    import shutil

    found = shutil.which("python")
    try:
        if found and Path(found).resolve() == Path(sys.executable).resolve():
            return "python"
    except OSError:
        pass
    return sys.executable


def _wordnet_hint() -> str:
    """Ways to get WordNet 3.0 that work from this environment (nltk is not a dependency: installed first)."""
    py = _python()
    return (
        "apt-get install wordnet-base (Debian/Ubuntu), or "
        f"{py} -m pip install nltk && {py} -m nltk.downloader -d ~/nltk_data wordnet, "
        "or SYNOOD_WORDNET=DIR for a WordNet 3.0 folder elsewhere; or pass --lexicon FILE (one word per line)"
    )

_POS_ALIASES = {
    "noun": "noun",
    "n": "noun",
    "adj": "adj",
    "a": "adj",
    "adjective": "adj",
}

# WordNet's data.adj marks syntactic positions with "(a)", "(p)" and "(ip)" after a lemma.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)\s*$")
_BRACKETS = re.compile(r"[()\[\]{}]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Lexicon:
    """Candidate nouns and adjectives, cleaned and deduplicated, in source order."""

    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    source: str

    def fingerprint(self) -> str:
        """First 16 hex digits of sha256 over the words (order kept; name and source ignored)."""
        h = hashlib.sha256()
        for word in self.nouns:
            h.update(f"noun\t{word}\n".encode("utf-8"))
        for word in self.adjectives:
            h.update(f"adj\t{word}\n".encode("utf-8"))
        return h.hexdigest()[:16]

    def words(self) -> tuple[str, ...]:
        """Nouns then adjectives, a word that is both appearing once (at its first place)."""
        return _dedupe(self.nouns + self.adjectives)

    def __len__(self) -> int:
        return len(self.nouns) + len(self.adjectives)


def clean_lemma(word: str | None) -> str | None:
    """Normalize one lemma: ``_`` -> space, drop a trailing ``(a)``/``(p)``/``(ip)`` marker and
    any other bracket characters, collapse whitespace, lowercase. None if nothing is left."""
    if not isinstance(word, str):
        return None
    text = word.replace("_", " ")
    text = _ADJ_MARKER.sub("", text.rstrip())
    text = _BRACKETS.sub(" ", text)
    text = _SPACES.sub(" ", text).strip().lower()
    return text or None


def _dedupe(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(words))


def _clean_all(words: Iterable[str]) -> tuple[str, ...]:
    return _dedupe(w for w in (clean_lemma(x) for x in words) if w)


# --------------------------------------------------------------------------------------------
# WordNet


@dataclass(frozen=True)
class _WordNetFiles:
    """Where index.noun and index.adj live: a folder, or a folder inside a zip archive."""

    path: Path
    member_dir: str | None = None  # set for zip archives ("" for the archive root)

    @property
    def source(self) -> str:
        if self.member_dir is None:
            return str(self.path)
        return f"{self.path}:{self.member_dir}" if self.member_dir else str(self.path)

    def read(self, name: str) -> str:
        try:
            if self.member_dir is None:
                data = (self.path / name).read_bytes()
            else:
                with zipfile.ZipFile(self.path) as zf:
                    data = zf.read(self.member_dir + name)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise UsageError(
                f"cannot read WordNet file {name} from {self.source}: {exc}", hint=_wordnet_hint()
            ) from None
        return data.decode("utf-8", errors="replace")


def _zip_wordnet(path: Path) -> _WordNetFiles | None:
    """The shallowest folder of a zip holding both index.noun and index.adj, if any."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return None
    dirs = sorted(
        (n[: -len("index.noun")] for n in names if n == "index.noun" or n.endswith("/index.noun")),
        key=lambda d: (d.count("/"), d),
    )
    for d in dirs:
        if d + "index.adj" in names:
            return _WordNetFiles(path, d)
    return None


def _has_index(folder: Path) -> bool:
    return (folder / "index.noun").is_file() and (folder / "index.adj").is_file()


def _resolve_wordnet(path: Path) -> _WordNetFiles | None:
    """Accept a WordNet folder, its parent (``dict/``), an nltk_data folder, or a zip."""
    try:
        if path.is_file():
            return _zip_wordnet(path) if zipfile.is_zipfile(path) else None
        if not path.is_dir():
            return None
        for folder in (path, path / "dict", path / "wordnet", path / "corpora" / "wordnet"):
            if _has_index(folder):
                return _WordNetFiles(folder)
        for archive in (path / "wordnet.zip", path / "corpora" / "wordnet.zip"):
            if archive.is_file():
                found = _zip_wordnet(archive)
                if found is not None:
                    return found
    except OSError:
        return None
    return None


def _nltk_data_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    dirs += [
        Path("~/nltk_data").expanduser(),
        Path("/usr/share/nltk_data"),
        Path("/usr/local/share/nltk_data"),
        Path("/usr/lib/nltk_data"),
        Path("/usr/local/lib/nltk_data"),
        Path(sys.prefix) / "nltk_data",
        Path(sys.prefix) / "share" / "nltk_data",
        Path(sys.prefix) / "lib" / "nltk_data",
    ]
    return dirs


def wordnet_search_locations() -> list[Path]:
    """Where :func:`load_wordnet` looks when no path is given, in order."""
    locations: list[Path] = []
    for var in ("SYNOOD_WORDNET", "WNHOME"):
        if os.environ.get(var):
            locations.append(Path(os.environ[var]).expanduser())
    locations += [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet")]
    for d in _nltk_data_dirs():
        locations += [d / "corpora" / "wordnet", d / "corpora" / "wordnet.zip"]
    return list(dict.fromkeys(locations))


def wordnet_howto() -> str:
    """`synood env`'s advice when WordNet is missing."""
    return (
        "the default and paper profiles mine negatives from WordNet 3.0; get it with " + _wordnet_hint()
        + " (nltk's copy is read as ~/nltk_data/corpora/wordnet.zip; NLTK_DATA moves it)"
    )


def _check_env_wordnet() -> None:
    """SYNOOD_WORDNET names one place on purpose: when it holds no WordNet, say so instead of looking elsewhere."""
    value = os.environ.get("SYNOOD_WORDNET")
    if value and _resolve_wordnet(Path(value).expanduser()) is None:
        raise UsageError(
            f"SYNOOD_WORDNET={value} holds no WordNet 3.0 (a folder with index.noun and index.adj, its parent, or nltk's wordnet.zip)",
            hint="point it at such a folder, or unset it to use the usual places (`synood env` lists them)",
        )


def find_wordnet() -> tuple[str | None, list[Path]]:
    """(where WordNet 3.0 was found or None, the places looked in), without parsing it: for `synood env`.

    Raises:
        UsageError: SYNOOD_WORDNET is set but holds no WordNet.
    """
    _check_env_wordnet()
    locations = wordnet_search_locations()
    for candidate in locations:
        found = _resolve_wordnet(candidate)
        if found is not None:
            return found.source, locations
    return None, locations


def _index_lemmas(text: str) -> Iterable[str]:
    for line in text.splitlines():
        if not line.strip() or line.startswith("  "):  # license header lines start with 2 spaces
            continue
        yield line.split(None, 1)[0]


_SINGLE_WORD = re.compile(r"^[a-z]+$")


def _find_wordnet(path) -> _WordNetFiles:
    if path is not None and str(path) != "":
        candidates = [Path(path).expanduser()]
    else:
        _check_env_wordnet()
        candidates = wordnet_search_locations()
    for candidate in candidates:
        found = _resolve_wordnet(candidate)
        if found is not None:
            return found
    # one short line: the full list (18 places) is what `synood env` is for
    looked = str(candidates[0]) + (f" or {len(candidates) - 1} other places (`synood env` lists them)" if len(candidates) > 1 else "")
    raise UsageError(f"WordNet 3.0 not found in {looked}", hint=_wordnet_hint())


def load_wordnet(path: str | os.PathLike | None = None, single_words: bool = True) -> Lexicon:
    """WordNet 3.0 nouns and adjectives from index.noun / index.adj.

    With ``single_words`` (the ``wordnet`` lexicon) only one-word, letters-only lemmas are kept:
    73,065 candidates, which gives about 10,950 negatives for ImageNet-1k, close to NegLabel's
    10,499; all 139,277 lemmas (``wordnet-full``) give twice as many, mostly multi-word names.

    ``path`` may be a WordNet folder (or its parent holding ``dict/``), an nltk_data folder,
    or a zip such as nltk's ``corpora/wordnet.zip``. Without it the places listed by
    :func:`wordnet_search_locations` are tried in order.
    """
    found = _find_wordnet(path)
    nouns = _clean_all(_index_lemmas(found.read("index.noun")))
    adjectives = _clean_all(_index_lemmas(found.read("index.adj")))
    if single_words:
        nouns = tuple(w for w in nouns if _SINGLE_WORD.match(w))
        adjectives = tuple(w for w in adjectives if _SINGLE_WORD.match(w))
    if not nouns and not adjectives:
        raise UsageError(
            f"WordNet index files in {found.source} contain no lemmas", hint=_wordnet_hint()
        )
    name = "wordnet" if single_words else "wordnet-full"
    return Lexicon(name=name, nouns=nouns, adjectives=adjectives, source=found.source)


# NegLabel's word files leave out these noun lexicographer files (numbers as in WordNet's lexnames)
NEGLABEL_EXCLUDED_NOUN_FILES = {5: "noun.animal", 13: "noun.food"}


def _first_lemmas(text: str, exclude: set[int] = frozenset()) -> Iterable[str]:
    """The first lemma of each synset line of a ``data.*`` file, skipping the given lexicographer files.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id ...``: the file number is the
    second field, the first lemma the fifth.
    """
    for line in text.splitlines():
        if not line.strip() or line.startswith("  "):  # license header lines start with 2 spaces
            continue
        fields = line.split(None, 5)
        if len(fields) < 5 or int(fields[1]) in exclude:
            continue
        yield fields[4]


def load_neglabel(path: str | os.PathLike | None = None) -> Lexicon:
    """NegLabel's candidate pool from WordNet 3.0 ``data.noun`` and ``data.adj``.

    One candidate per synset: its first lemma, lowercased, underscores to spaces, adjective markers
    ``(a)``/``(p)``/``(ip)`` removed, multi-word lemmas kept; nouns from every lexicographer file
    except ``noun.animal`` (05) and ``noun.food`` (13); adjectives from all three adjective files.
    Deduplicated over the whole pool keeping the first occurrence, nouns first: NegLabel's code kept
    one dictionary of seen words across all its word files, so a word that is both a noun and an
    adjective is a candidate once (as a noun here; in NegLabel, whichever file its directory listing
    gave first). Debian's WordNet 3.0 gives 58,514 nouns and 12,280 adjectives.
    """
    found = _find_wordnet(path)
    nouns = _clean_all(_first_lemmas(found.read("data.noun"), set(NEGLABEL_EXCLUDED_NOUN_FILES)))
    seen = set(nouns)
    adjectives = tuple(w for w in _clean_all(_first_lemmas(found.read("data.adj"))) if w not in seen)
    if not nouns and not adjectives:
        raise UsageError(f"WordNet data files in {found.source} contain no synsets", hint=_wordnet_hint())
    return Lexicon(name="neglabel", nouns=nouns, adjectives=adjectives, source=found.source)


# --------------------------------------------------------------------------------------------
# Word lists


def parse_word_list(text: str, name: str, source: str) -> Lexicon:
    """Parse word-list text (see :data:`WORD_LIST_FORMAT`); ``source`` names it in errors."""
    nouns: list[str] = []
    adjectives: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in raw.rstrip("\r\n").split("\t")]
        while len(fields) > 1 and not fields[-1]:
            fields.pop()
        if len(fields) > 2:
            raise UsageError(
                f"{source}:{lineno}: expected 'word' or 'word<TAB>noun|adj', got {len(fields)} "
                "tab-separated fields",
                hint=f"word-list format: {WORD_LIST_FORMAT}",
            )
        pos = "noun"
        if len(fields) == 2:
            pos_raw = fields[1]
            if pos_raw.lower() not in _POS_ALIASES:
                raise UsageError(
                    f"{source}:{lineno}: unknown part of speech {pos_raw!r}",
                    hint="use noun (or n) or adj (or a, adjective) after a TAB",
                )
            pos = _POS_ALIASES[pos_raw.lower()]
        (nouns if pos == "noun" else adjectives).append(fields[0])
    lexicon = Lexicon(
        name=name, nouns=_clean_all(nouns), adjectives=_clean_all(adjectives), source=source
    )
    if not lexicon.nouns and not lexicon.adjectives:
        raise UsageError(
            f"word list {source} has no words", hint=f"word-list format: {WORD_LIST_FORMAT}"
        )
    return lexicon


def load_word_list(path: str | os.PathLike) -> Lexicon:
    """A plain-text word list (see :data:`WORD_LIST_FORMAT`); the lexicon is named by ``path``."""
    text = read_user_text(path, "word-list file", f"a text file with {WORD_LIST_FORMAT}, or a WordNet folder holding index.noun")
    p = Path(path).expanduser()
    return parse_word_list(text, name=str(path), source=str(p.resolve()))


def load_basic() -> Lexicon:
    """The small word list shipped with the package (``synood_cli/data_files/basic_words.txt``)."""
    resource = importlib.resources.files("synood_cli") / "data_files" / "basic_words.txt"
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:  # a broken install
        raise UsageError(
            f"the built-in basic word list is missing from the installed package ({exc})",
            hint="reinstall synood, or pass --lexicon wordnet or --lexicon FILE",
        ) from None
    return parse_word_list(text, name="basic", source=str(resource))


# --------------------------------------------------------------------------------------------
# Registry and entry point

BUILTIN_LEXICONS: Registry[Callable[[], Lexicon]] = Registry("lexicon", option="--lexicon")


@BUILTIN_LEXICONS.register("neglabel")
def _builtin_neglabel() -> Lexicon:
    return load_neglabel()


@BUILTIN_LEXICONS.register("wordnet")
def _builtin_wordnet() -> Lexicon:
    return load_wordnet()


@BUILTIN_LEXICONS.register("wordnet-full")
def _builtin_wordnet_full() -> Lexicon:
    return load_wordnet(single_words=False)


BUILTIN_LEXICONS.add("basic", load_basic)


@BUILTIN_LEXICONS.register("world")
def _builtin_world() -> Lexicon:
    """The generated world's words (synood_cli/world/spec.py): kinds, contexts, attributes, unseen words."""
    from synood_cli.world.spec import lexicon_lines

    return parse_word_list("\n".join(lexicon_lines()), name="world", source="synood_cli.world.spec (generated world)")


def load_lexicon(spec: str) -> Lexicon:
    """A registered name (``wordnet``, ``basic``) or a path: a word-list file, a WordNet folder
    holding index.noun, or a zip archive of one. Registered names win over same-named files
    (write ``./basic`` for a file called basic)."""
    if spec in BUILTIN_LEXICONS:
        return BUILTIN_LEXICONS.get(spec)()
    if not spec or not spec.strip():
        raise UsageError(
            "empty --lexicon value",
            hint=f"choose one of {', '.join(BUILTIN_LEXICONS.names())} or pass a word-list file",
        )
    p = Path(spec).expanduser()
    if p.is_dir():
        if _resolve_wordnet(p) is None:
            raise UsageError(
                f"folder {spec!r} holds no WordNet index files (index.noun, index.adj)",
                hint="pass a WordNet dict folder or a word-list file with one word per line",
            )
        return load_wordnet(p)
    if p.is_file():
        if zipfile.is_zipfile(p):
            return load_wordnet(p)
        return load_word_list(p)
    close = BUILTIN_LEXICONS.hint(spec)
    file_hint = f"A path to a word-list file also works: {WORD_LIST_FORMAT}"
    raise UsageError(
        BUILTIN_LEXICONS.unknown_message(spec) + " (and no file of that name exists)",
        hint=f"{close} {file_hint}" if close else file_hint,
    )


def wordnet_synonyms(name: str) -> set[str]:
    """Lemmas of the first (most frequent) noun sense of `name`, or an empty set without WordNet.

    Used to strip the class's other names from MLLM answers ("domestic dog" for "dog"). Only the
    first sense: the rarer ones ("heel", "frank" for dog) would strip real context words.
    """
    found = _default_wordnet_files()
    if found is None:
        return set()
    key = name.strip().lower().replace(" ", "_")
    index = _noun_index(found)
    offsets = index.get(key, ())[:1]
    out: set[str] = set()
    data = _noun_data(found)
    for off in offsets:
        start = data.find("\n" + off + " ")
        if start < 0:
            continue
        line = data[start + 1 : data.find("\n", start + 1)]
        fields = line.split()
        count = int(fields[3], 16)
        for i in range(count):
            lemma = clean_lemma(fields[4 + 2 * i])
            if lemma:
                out.add(lemma)
    out.discard(name.strip().lower())
    return out


_WN_CACHE: dict = {}


def _default_wordnet_files():
    if "files" not in _WN_CACHE:
        _WN_CACHE["files"] = next((f for f in map(_resolve_wordnet, wordnet_search_locations()) if f is not None), None)
    return _WN_CACHE["files"]


def _noun_index(found) -> dict[str, tuple[str, ...]]:
    if "index" not in _WN_CACHE:
        index = {}
        for line in found.read("index.noun").splitlines():
            if not line or line.startswith("  "):
                continue
            fields = line.split()
            synset_cnt = int(fields[2])
            index[fields[0]] = tuple(fields[-synset_cnt:])
        _WN_CACHE["index"] = index
    return _WN_CACHE["index"]


def _noun_data(found) -> str:
    if "data" not in _WN_CACHE:
        _WN_CACHE["data"] = "\n" + found.read("data.noun")
    return _WN_CACHE["data"]
